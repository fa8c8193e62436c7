//! Graph rewrites that tract's own declutter passes do not make, run on the
//! typed model before it is optimised.
//!
//! - Exporters write activations out as chains of elementwise ops.
//!   Hard-swish (MobileNetV3, PP-OCR) arrives as `x * clip(x + 3, 0, 6) / 6`:
//!   five ops, four of which tract runs as generic scalar-operand kernels,
//!   each one a pass over the tensor. tract has `HardSwish` as one
//!   elementwise op with SIMD kernels; [`hard_swish_chains`] puts it in the
//!   chain's place.
//! - tract's max pooling takes a per-element path with bounds checks for
//!   every window that is not stride 1 (PP-OCR's 2x2 stride 2 pooling cost
//!   a tenth of the classifier's time); [`MaxPool2d`] is unpadded NCHW
//!   pooling written as plain loops over rows.
//! - A batch normalisation after a convolution arrives as a per-channel
//!   multiply and add. tract folds them into the matrix product of 1x1
//!   convolutions but not into depthwise ones, where they cost a pass each;
//!   [`scale_shift_into_convs`] folds them into the convolution's weights
//!   and bias, as onnxruntime does at load time.
//!
//! All are checked against onnxruntime by the model tests, like every
//! other op.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::model::TypedModelHelpers;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::math::{mul, Add, Max, Min, Mul};
use tract_onnx::tract_core::ops::nn::{hard_swish, DataFormat};

/// A rewrite: the patch it makes at one node, if the node starts its pattern.
type Rewrite = fn(&TypedModel, &TypedNode) -> TractResult<Option<TypedModelPatch>>;

/// Applies `rewrite` wherever it matches, one patch at a time in evaluation
/// order (a patch changes the graph the next match is looked for in), and
/// returns how many patches it applied.
fn rewrite_all(model: &mut TypedModel, rewrite: Rewrite) -> TractResult<usize> {
    let mut applied = 0;
    loop {
        let mut patch = None;
        for id in model.eval_order()? {
            if let Some(p) = rewrite(model, model.node(id))? {
                patch = Some(p);
                break;
            }
        }
        let Some(patch) = patch else {
            return Ok(applied);
        };
        patch.apply(model)?;
        applied += 1;
    }
}

/// Replaces every `x * clip(x + 3, 0, 6) * c` with `HardSwish(x)` (times
/// `6c` when `c` is not 1/6) and returns how many it replaced.
pub(crate) fn hard_swish_chains(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_all(model, hard_swish_at)
}

/// The node's binary mini-op when the node is a `B`.
fn is_bin<B: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<B>())
}

/// A hard-swish chain starting at `add` (`x + 3`), as a patch.
fn hard_swish_at(model: &TypedModel, add: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    if !is_bin::<Add>(add) || !model.matches_single_input_const(add, 3.0) {
        return Ok(None);
    }
    // x: the input of the add that is not the constant.
    let Some(&x) = add
        .inputs
        .iter()
        .find(|i| model.node(i.node).op_as::<Const>().is_none())
    else {
        return Ok(None);
    };
    let x_fact = model.outlet_fact(x)?;
    if !matches!(x_fact.datum_type, DatumType::F32 | DatumType::F16)
        || model.outlet_fact(OutletId::new(add.id, 0))?.shape != x_fact.shape
    {
        return Ok(None);
    }
    // clip(·, 0, 6) as a max then a min, or a min then a max.
    let clipped = match model.single_succ(add.id)? {
        Some(n) if is_bin::<Max>(n) && model.matches_single_input_const(n, 0.0) => {
            model.find_succ_bin_with_const::<Min>(n, 6.0)
        }
        Some(n) if is_bin::<Min>(n) && model.matches_single_input_const(n, 6.0) => {
            model.find_succ_bin_with_const::<Max>(n, 0.0)
        }
        _ => None,
    };
    let Some(clipped) = clipped else {
        return Ok(None);
    };
    let Some(times_x) = model.find_succ_bin_with_outlet::<Mul>(clipped, &x) else {
        return Ok(None);
    };
    // The last step scales by a constant: 1/6 for hard-swish itself, or 1/6
    // folded with a learned scale (PP-OCRv4's learnable activations).
    let Some(scale) = model.single_succ(times_x.id)?.filter(|n| is_bin::<Mul>(n)) else {
        return Ok(None);
    };
    let Some(factor) = scalar_const_input(model, scale)? else {
        return Ok(None);
    };
    let out_fact = model.outlet_fact(OutletId::new(scale.id, 0))?;
    if out_fact.shape != x_fact.shape || out_fact.datum_type != x_fact.datum_type {
        return Ok(None);
    }
    let mut patch = TypedModelPatch::default();
    let tap = patch.taps(model, &[x])?;
    let mut out = patch.wire_node(format!("{}.hard_swish", add.name), hard_swish(), &tap)?[0];
    // hard_swish(x) is x * clip(x + 3, 0, 6) / 6, so the chain is
    // hard_swish(x) * 6 * factor.
    let rescale = factor.1 * 6.0;
    if (rescale - 1.0).abs() > 1e-6 {
        let k = Tensor::from_shape(factor.0.shape(), &[rescale])?
            .cast_to_dt(x_fact.datum_type)?
            .into_owned();
        let k = patch.add_const(format!("{}.hard_swish.scale", add.name), k)?;
        out = patch.wire_node(format!("{}.hard_swish.scaled", add.name), mul(), &[out, k])?[0];
    }
    patch.shunt_outside(model, OutletId::new(scale.id, 0), out)?;
    Ok(Some(patch))
}

/// The constant input of a binary node when it holds a single value: the
/// tensor (of whatever rank the graph gave it) and its value.
fn scalar_const_input(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(Tensor, f32)>> {
    let consts: Vec<&Const> = node
        .inputs
        .iter()
        .filter_map(|i| model.node(i.node).op_as::<Const>())
        .collect();
    let [k] = consts.as_slice() else {
        return Ok(None);
    };
    let t = k.val();
    if t.len() != 1 || !matches!(t.datum_type(), DatumType::F32 | DatumType::F16) {
        return Ok(None);
    }
    let v = t.cast_to_scalar::<f32>()?;
    Ok(Some(((**t).clone(), v)))
}

/// Replaces every unpadded, undilated 2-D NCHW `MaxPool` on F32 with
/// [`MaxPool2d`] and returns how many it replaced.
pub(crate) fn max_pools(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_all(model, max_pool_at)
}

fn max_pool_at(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(op) = node.op_as::<MaxPool>() else {
        return Ok(None);
    };
    let spec = &op.pool_spec;
    let fact = model.outlet_fact(node.inputs[0])?;
    let unpadded = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false) => {
            b.iter().chain(a.iter()).all(|&p| p == 0)
        }
        _ => false,
    };
    let (Some(shape), [kh, kw]) = (fact.shape.as_concrete(), spec.kernel_shape.as_slice()) else {
        return Ok(None);
    };
    let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
    if op.with_index_outputs.is_some()
        || spec.data_format != DataFormat::NCHW
        || fact.datum_type != DatumType::F32
        || shape.len() != 4
        || !unpadded
        || spec
            .dilations
            .as_ref()
            .is_some_and(|d| d.iter().any(|&d| d != 1))
        || strides.len() != 2
        || strides.contains(&0)
        || shape[2] < *kh
        || shape[3] < *kw
    {
        return Ok(None);
    }
    let pool = MaxPool2d {
        kernel: [*kh, *kw],
        strides: [strides[0], strides[1]],
    };
    Ok(Some(TypedModelPatch::replace_single_op(
        model,
        node,
        &node.inputs,
        pool,
    )?))
}

/// Max pooling over `kernel` windows every `strides` of the two last axes of
/// an F32 `[N, C, H, W]` tensor, without padding: output rows are
/// `(H - kh) / sh + 1`, columns `(W - kw) / sw + 1`. A NaN counts only in
/// a window of NaNs (`f32::max`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
}

impl MaxPool2d {
    fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h - self.kernel[0]) / self.strides[0] + 1,
            (w - self.kernel[1]) / self.strides[1] + 1,
        )
    }

    /// Pools one `[H, W]` plane into one `[OH, OW]` plane: for each output
    /// row, the maximum of its `kh` input rows element by element (one
    /// contiguous pass per row, which vectorises), then of each window's
    /// `kw` columns of that.
    fn plane(&self, input: &[f32], w: usize, output: &mut [f32], ow: usize, rows: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.strides;
        for (oy, out_row) in output.chunks_exact_mut(ow).enumerate() {
            let top = oy * sh * w;
            rows.copy_from_slice(&input[top..top + w]);
            for ky in 1..kh {
                let row = &input[top + ky * w..top + (ky + 1) * w];
                for (m, &v) in rows.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
            if kw == 2 && sw == 2 {
                for (o, pair) in out_row.iter_mut().zip(rows.chunks_exact(2)) {
                    *o = pair[0].max(pair[1]);
                }
            } else {
                for (ox, o) in out_row.iter_mut().enumerate() {
                    let window = &rows[ox * sw..ox * sw + kw];
                    *o = window[1..].iter().fold(window[0], |m, &v| m.max(v));
                }
            }
        }
    }
}

impl Op for MaxPool2d {
    fn name(&self) -> StaticName {
        "MaxPool2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "kernel {:?} strides {:?}",
            self.kernel, self.strides
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let &[n, c, h, w] = input.shape() else {
            bail!("MaxPool2d wants a 4-D input, got {:?}", input.shape());
        };
        let (oh, ow) = self.output_hw(h, w);
        let mut output = Tensor::zero::<f32>(&[n, c, oh, ow])?;
        {
            let view = input.try_as_plain_ram()?;
            let x = view.as_slice::<f32>()?;
            let mut out = output.try_as_plain_ram_mut()?;
            let y = out.as_slice_mut::<f32>()?;
            let mut rows = vec![0f32; w];
            for (plane_in, plane_out) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
                self.plane(plane_in, w, plane_out, ow, &mut rows);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0]
            .shape
            .as_concrete()
            .ok_or_else(|| format_err!("MaxPool2d needs a concrete input shape"))?;
        let (oh, ow) = self.output_hw(shape[2], shape[3]);
        Ok(tvec!(f32::fact([shape[0], shape[1], oh, ow])))
    }

    as_op!();
}

/// Folds `conv(x, w, b) * s + t`, with `s` and `t` constant per output
/// channel (or scalars; the add is optional), into `conv(x, w * s, b * s + t)`
/// for float convolutions whose only reader is the multiply, and returns
/// how many it folded.
pub(crate) fn scale_shift_into_convs(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_all(model, scale_shift_at)
}

/// The values of a constant input of `node` that is per-channel along
/// `c_axis` of an output of rank `rank` with `channels` channels, or a
/// scalar, widened to one value per channel.
fn per_channel_const(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    rank: usize,
    c_axis: usize,
    channels: usize,
) -> TractResult<Option<Vec<f32>>> {
    let [a, b] = node.inputs.as_slice() else {
        return Ok(None);
    };
    let other = if *a == from { b } else { a };
    let Some(k) = model.node(other.node).op_as::<Const>() else {
        return Ok(None);
    };
    let t = k.val();
    if t.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    let values = t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    if values.len() == 1 {
        return Ok(Some(vec![values[0]; channels]));
    }
    let per_channel = t.rank() == rank
        && t.shape()
            .iter()
            .enumerate()
            .all(|(ax, &d)| if ax == c_axis { d == channels } else { d == 1 });
    Ok(per_channel.then_some(values))
}

fn scale_shift_at(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let (Some(weights), Some(bias)) = (
        node.inputs
            .get(1)
            .and_then(|i| model.node(i.node).op_as::<Const>()),
        node.inputs
            .get(2)
            .and_then(|i| model.node(i.node).op_as::<Const>()),
    ) else {
        return Ok(None);
    };
    let (weights, bias) = (weights.val(), bias.val());
    if conv.q_params.is_some()
        || node.inputs.len() != 3
        || !matches!(conv.kernel_fmt, KernelFormat::OIHW | KernelFormat::OHWI)
        || weights.datum_type() != DatumType::F32
        || bias.datum_type() != DatumType::F32
        || model.outlet_fact(node.inputs[0])?.datum_type != DatumType::F32
    {
        return Ok(None);
    }
    let out = OutletId::new(node.id, 0);
    let out_fact = model.outlet_fact(out)?;
    let rank = out_fact.rank();
    let c_axis = conv
        .pool_spec
        .data_format
        .shape(out_fact.shape.to_tvec())?
        .c_axis();
    let channels = weights.shape()[0];
    let Some(mul_node) = model.single_succ(node.id)?.filter(|n| is_bin::<Mul>(n)) else {
        return Ok(None);
    };
    let Some(scale) = per_channel_const(model, mul_node, out, rank, c_axis, channels)? else {
        return Ok(None);
    };
    let mul_out = OutletId::new(mul_node.id, 0);
    let (last, shift) = match model.single_succ(mul_node.id)?.filter(|n| is_bin::<Add>(n)) {
        Some(add_node) => {
            match per_channel_const(model, add_node, mul_out, rank, c_axis, channels)? {
                Some(shift) => (OutletId::new(add_node.id, 0), shift),
                None => (mul_out, vec![0.0; channels]),
            }
        }
        None => (mul_out, vec![0.0; channels]),
    };
    if model.outlet_fact(last)?.shape != out_fact.shape {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
    let bias: Vec<f32> = match bias.len() {
        1 => vec![bias[0]; channels],
        n if n == channels => bias.to_vec(),
        _ => return Ok(None),
    };
    let mut w = weights.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let per_channel = w.len() / channels;
    for (o, chunk) in w.chunks_exact_mut(per_channel).enumerate() {
        chunk.iter_mut().for_each(|v| *v *= scale[o]);
    }
    let b: Vec<f32> = (0..channels)
        .map(|o| bias[o] * scale[o] + shift[o])
        .collect();
    let mut patch = TypedModelPatch::default();
    let x = patch.taps(model, &node.inputs[..1])?[0];
    let w = patch.add_const(
        format!("{}.folded_weights", node.name),
        Tensor::from_shape(weights.shape(), &w)?,
    )?;
    let b = patch.add_const(
        format!("{}.folded_bias", node.name),
        Tensor::from_shape(&[channels], &b)?,
    )?;
    let y = patch.wire_node(format!("{}.folded", node.name), conv.clone(), &[x, w, b])?[0];
    patch.shunt_outside(model, last, y)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb;
    use tract_onnx::pb::attribute_proto::AttributeType;
    use tract_onnx::prelude::{Framework, InferenceFact, InferenceModel, InferenceModelExt};

    fn init(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: data.to_vec(),
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i: v,
            ..Default::default()
        }
    }

    fn node(
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<pb::AttributeProto>,
    ) -> pb::NodeProto {
        pb::NodeProto {
            attribute,
            ..crate::model::tests::node(op, inputs, output)
        }
    }

    fn value(name: &str) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        }
    }

    /// An ONNX graph of `nodes` from input `x` of `shape` to `outputs`.
    fn model(
        nodes: Vec<pb::NodeProto>,
        initializer: Vec<pb::TensorProto>,
        shape: &[usize],
        outputs: &[&str],
    ) -> InferenceModel {
        let proto = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(pb::GraphProto {
                name: "fuse".into(),
                node: nodes,
                initializer,
                input: vec![pb::ValueInfoProto {
                    name: "x".into(),
                    r#type: Some(pb::TypeProto {
                        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                            elem_type: 1,
                            shape: None,
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                output: outputs.iter().map(|o| value(o)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut m = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .expect("model");
        m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .expect("input fact");
        m
    }

    /// Values spread over [-6, 6), in a fixed order.
    fn input(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let mut state = 0x2545_f491_u32;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 * 12.0 - 6.0
            })
            .collect();
        Tensor::from_shape(shape, &data).expect("tensor")
    }

    fn run(model: TypedModel, x: &Tensor) -> Vec<Vec<f32>> {
        let plan = model.into_runnable().expect("plan");
        plan.run(tvec!(x.clone().into_tvalue()))
            .expect("runs")
            .iter()
            .map(|t| {
                t.try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }

    fn op_names(model: &TypedModel) -> Vec<String> {
        model
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect()
    }

    /// conv(x) * s + t, hard-swish (as exporters write it), a 2x2 pooling,
    /// and a hard-swish with a learned scale.
    fn mobilenet_block() -> InferenceModel {
        let c = 4;
        let weights: Vec<f32> = (0..c * 9)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        model(
            vec![
                node(
                    "Conv",
                    &["x", "w", "b"],
                    "conv",
                    vec![int("group", c as i64), ints("pads", &[1, 1, 1, 1])],
                ),
                node("Mul", &["conv", "s"], "scaled", vec![]),
                node("Add", &["scaled", "t"], "bn", vec![]),
                node("Add", &["bn", "three"], "plus3", vec![]),
                node("Clip", &["plus3", "zero", "six"], "relu6", vec![]),
                node("Mul", &["bn", "relu6"], "times", vec![]),
                node("Div", &["times", "six"], "hswish", vec![]),
                node(
                    "MaxPool",
                    &["hswish"],
                    "pooled",
                    vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
                ),
                node("Add", &["pooled", "three"], "plus3b", vec![]),
                node("Clip", &["plus3b", "zero", "six"], "relu6b", vec![]),
                node("Mul", &["relu6b", "pooled"], "timesb", vec![]),
                node("Mul", &["timesb", "learned"], "learned_hswish", vec![]),
            ],
            vec![
                init("w", &[c as i64, 1, 3, 3], &weights),
                init("b", &[c as i64], &[0.5, -0.25, 0.0, 1.0]),
                init("s", &[1, c as i64, 1, 1], &[1.5, 0.5, -2.0, 1.0]),
                init("t", &[1, c as i64, 1, 1], &[0.1, -1.0, 2.0, 0.0]),
                init("three", &[], &[3.0]),
                init("zero", &[], &[0.0]),
                init("six", &[], &[6.0]),
                init("learned", &[], &[0.0279198]),
            ],
            &[1, c, 6, 10],
            &["learned_hswish"],
        )
    }

    #[test]
    fn a_mobilenet_block_is_rewritten_and_answers_the_same() {
        let source = mobilenet_block();
        let x = input(&[1, 4, 6, 10]);
        let reference = run(source.clone().into_optimized().expect("tract alone"), &x);
        assert!(
            op_names(&source.clone().into_optimized().unwrap())
                .iter()
                .any(|n| n.starts_with("OptBinChain")),
            "tract alone runs the chains as elementwise passes"
        );

        let mut typed = source
            .clone()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap();
        assert_eq!(scale_shift_into_convs(&mut typed).unwrap(), 1);
        assert_eq!(hard_swish_chains(&mut typed).unwrap(), 2);
        assert_eq!(max_pools(&mut typed).unwrap(), 1);

        let fused = crate::model::optimise(source).expect("optimise");
        let names = op_names(&fused);
        assert_eq!(
            names.iter().filter(|n| *n == "HardSwish").count(),
            2,
            "{names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| *n == "MaxPool2d").count(),
            1,
            "{names:?}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("OptBinChain")),
            "{names:?}"
        );
        let got = run(fused, &x);
        for (r, g) in reference.iter().zip(&got) {
            assert_eq!(r.len(), g.len());
            for (a, b) in r.iter().zip(g) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn max_pool_2d_equals_tracts_max_pool() {
        for (kernel, strides, h, w) in [
            ([2, 2], [2, 2], 2, 96),
            ([2, 2], [2, 2], 7, 9),
            ([3, 3], [1, 1], 6, 8),
            ([3, 2], [2, 1], 9, 5),
            ([1, 1], [1, 1], 3, 4),
            ([2, 3], [1, 3], 4, 10),
        ] {
            let source = model(
                vec![node(
                    "MaxPool",
                    &["x"],
                    "y",
                    vec![ints("kernel_shape", &kernel), ints("strides", &strides)],
                )],
                vec![],
                &[2, 3, h, w],
                &["y"],
            );
            let x = input(&[2, 3, h, w]);
            let reference = run(source.clone().into_optimized().unwrap(), &x);
            let fused = crate::model::optimise(source).unwrap();
            assert!(op_names(&fused).contains(&"MaxPool2d".to_string()));
            assert_eq!(
                run(fused, &x),
                reference,
                "kernel {kernel:?} strides {strides:?} {h}x{w}"
            );
        }
    }

    #[test]
    fn padded_pooling_and_lookalike_chains_are_left_to_tract() {
        // Padding: tract's own pooling.
        let padded = model(
            vec![node(
                "MaxPool",
                &["x"],
                "y",
                vec![ints("kernel_shape", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
            )],
            vec![],
            &[1, 2, 4, 4],
            &["y"],
        );
        let mut typed = padded.into_typed().unwrap().into_decluttered().unwrap();
        assert_eq!(max_pools(&mut typed).unwrap(), 0);
        // x * clip(x + 2, 0, 6) / 6 is not hard-swish.
        let lookalike = model(
            vec![
                node("Add", &["x", "two"], "plus2", vec![]),
                node("Clip", &["plus2", "zero", "six"], "clipped", vec![]),
                node("Mul", &["x", "clipped"], "times", vec![]),
                node("Div", &["times", "six"], "y", vec![]),
            ],
            vec![
                init("two", &[], &[2.0]),
                init("zero", &[], &[0.0]),
                init("six", &[], &[6.0]),
            ],
            &[1, 2, 4, 4],
            &["y"],
        );
        let mut typed = lookalike.into_typed().unwrap().into_decluttered().unwrap();
        assert_eq!(hard_swish_chains(&mut typed).unwrap(), 0);
    }
}
