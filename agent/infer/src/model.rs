use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tract_onnx::prelude::{
    Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoTValue, TDim, TValue, TVec,
    Tensor, TractResult, TypedModel, TypedRunnableModel,
};

use tract_hir::internal::{Factoid, IntoRunnable};
use tract_onnx::pb;

use crate::tensor::{datatype, datum_type, from_tensor, to_tensor};
use crate::v2::{self, Datatype};
use crate::{InferError, LoadError};

/// How to prepare a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The largest batch a plan is made for; 1 is no batching. Ignored (and
    /// [`Model::batch_max`] is 1) when the model has no batch dimension.
    pub batch_max: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { batch_max: 1 }
    }
}

/// An input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: Datatype,
    /// `-1` is a dimension the request chooses: the batch (axis 0, when the
    /// model has one) or another free dimension such as an image's width.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    fn metadata(&self) -> v2::TensorMetadata {
        v2::TensorMetadata {
            name: self.name.clone(),
            datatype: self.datatype,
            shape: self.shape.clone(),
        }
    }
}

/// An optimised plan for one set of concrete input shapes.
type Plan = Arc<TypedRunnableModel>;
/// The concrete shape of each input, in the model's input order.
type Shapes = Vec<Vec<usize>>;
type PlanCell = Arc<OnceLock<Result<Plan, String>>>;

/// How many plans a model whose inputs have free dimensions other than the
/// batch keeps; the least recently used goes first.
const FREE_DIM_PLANS: usize = 16;

/// A loaded model: its interface, and optimised plans made on demand.
/// `Send + Sync`; share it in an `Arc`.
pub struct Model {
    name: String,
    version: String,
    path: PathBuf,
    sha256: [u8; 32],
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    batched: bool,
    batch_max: usize,
    /// The parsed model that each plan is made from.
    source: InferenceModel,
    /// Most recently used last.
    plans: Mutex<Vec<(Shapes, PlanCell)>>,
    plan_capacity: usize,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("batch_max", &self.batch_max)
            .finish_non_exhaustive()
    }
}

/// One request's inputs as checked against the model.
struct Checked<'r> {
    /// Model input order.
    shapes: Shapes,
    data: Vec<&'r v2::TensorData>,
    /// Indices into the model's outputs, in the order the response lists them.
    outputs: Vec<usize>,
    /// Axis 0 of the inputs, when the model is batched.
    batch: usize,
}

impl Model {
    /// Reads, checks and prepares the model at `path`. When the batch is the
    /// only free dimension, the batch-1 plan is made here, so a model tract
    /// cannot run fails now rather than on its first request.
    pub fn load(
        name: &str,
        version: &str,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<Model, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let onnx = tract_onnx::onnx();
        let parse_err = |e: tract_onnx::prelude::TractError| LoadError::Parse {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(parse_err)?;
        drop(bytes);
        let source = onnx.model_for_proto_model(&proto).map_err(parse_err)?;
        // tract does not use the declared output types and shapes (it infers
        // them), so the interface takes them from the file itself.
        let declared_outputs: Vec<(Option<Datatype>, Option<Vec<i64>>)> = proto
            .graph
            .as_ref()
            .map(|g| g.output.iter().map(declared_proto).collect())
            .unwrap_or_default();
        drop(proto);
        let unsupported = |tensor: &str, message: String| LoadError::Unsupported {
            path: path.to_owned(),
            tensor: tensor.to_owned(),
            message,
        };

        let mut inputs = Vec::new();
        for (i, outlet) in source
            .input_outlets()
            .map_err(parse_err)?
            .iter()
            .enumerate()
        {
            let name = source.node(outlet.node).name.clone();
            let fact = source.input_fact(i).map_err(parse_err)?;
            let (datatype, shape) = declared(fact);
            let datatype = datatype.ok_or_else(|| {
                unsupported(&name, "input of no ONNX type the protocol has".into())
            })?;
            let shape =
                shape.ok_or_else(|| unsupported(&name, "input with no declared rank".into()))?;
            inputs.push(TensorSpec {
                name,
                datatype,
                shape,
            });
        }
        if inputs.is_empty() {
            return Err(unsupported("", "the model takes no inputs".into()));
        }
        let batched = inputs.iter().all(|s| s.shape.first() == Some(&-1));
        if opts.batch_max == 0 {
            return Err(LoadError::Options {
                path: path.to_owned(),
                message: "batch_max must be at least 1".into(),
            });
        }
        let batch_max = if batched { opts.batch_max } else { 1 };
        let free_dims = inputs
            .iter()
            .any(|s| s.shape.iter().skip(usize::from(batched)).any(|&d| d < 0));

        let mut model = Model {
            name: name.to_owned(),
            version: version.to_owned(),
            path: path.to_owned(),
            sha256,
            inputs,
            outputs: Vec::new(),
            batched,
            batch_max,
            source,
            plans: Mutex::new(Vec::new()),
            plan_capacity: if free_dims { FREE_DIM_PLANS } else { batch_max },
        };

        // With only the batch free, make the batch-1 plan now; its output
        // facts fill in what the file does not declare.
        let first = if free_dims {
            None
        } else {
            let shapes: Shapes = model
                .inputs
                .iter()
                .map(|s| s.shape.iter().map(|&d| d.max(1) as usize).collect())
                .collect();
            let plan =
                make_plan(&model.source, &model.inputs, &shapes).map_err(|e| LoadError::Plan {
                    path: path.to_owned(),
                    shapes: format!("{shapes:?}"),
                    message: format!("{e:#}"),
                })?;
            model
                .plans
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .push((shapes, Arc::new(OnceLock::from(Ok(plan.clone())))));
            Some(plan)
        };

        for (i, outlet) in model
            .source
            .output_outlets()
            .map_err(parse_err)?
            .iter()
            .enumerate()
        {
            let name = model
                .source
                .outlet_label(*outlet)
                .unwrap_or(&model.source.node(outlet.node).name)
                .to_owned();
            let (mut dt, mut shape) = declared_outputs.get(i).cloned().unwrap_or_default();
            if let Some(plan) = &first {
                let fact = plan.model().output_fact(i).map_err(parse_err)?;
                dt = dt.or_else(|| datatype(fact.datum_type));
                if shape.is_none() {
                    let mut s: Vec<i64> = fact
                        .shape
                        .iter()
                        .map(|d| d.to_i64().unwrap_or(-1))
                        .collect();
                    if batched && !s.is_empty() {
                        s[0] = -1;
                    }
                    shape = Some(s);
                }
            }
            let datatype = dt.ok_or_else(|| {
                unsupported(&name, "output of no ONNX type the protocol has".into())
            })?;
            model.outputs.push(TensorSpec {
                name,
                datatype,
                shape: shape.unwrap_or_default(),
            });
        }
        Ok(model)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the `.onnx` file's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The largest batch one run takes; 1 when the model has no batch
    /// dimension.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    pub fn metadata(&self) -> v2::ModelMetadata {
        v2::ModelMetadata {
            name: self.name.clone(),
            versions: vec![self.version.clone()],
            platform: "onnx".into(),
            inputs: self.inputs.iter().map(TensorSpec::metadata).collect(),
            outputs: self.outputs.iter().map(TensorSpec::metadata).collect(),
        }
    }

    /// Checks the request against the model, runs it and gives the outputs
    /// it asks for (all, in the model's order, when it names none).
    pub fn infer(&self, req: &v2::InferRequest) -> Result<v2::InferResponse, InferError> {
        let checked = self.check(req)?;
        let outputs = self.run(&checked.shapes, &checked.data)?;
        self.respond(req, &checked.outputs, outputs)
    }

    /// Runs several requests as one batch along axis 0 (for dynamic
    /// batching); one result per request, in order. Each request is checked
    /// on its own; the valid ones whose other dimensions agree are run
    /// together, in runs of at most [`Model::batch_max`].
    pub fn infer_batch(
        &self,
        reqs: &[&v2::InferRequest],
    ) -> Vec<Result<v2::InferResponse, InferError>> {
        let mut results: Vec<Option<Result<v2::InferResponse, InferError>>> =
            (0..reqs.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Checked)> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match self.check(req) {
                Ok(c) => pending.push((i, c)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        while !pending.is_empty() {
            // The first pending request, and those after it with the same
            // non-batch shapes, as long as the batch fits.
            let rest = |s: &Shapes| -> Shapes {
                s.iter()
                    .map(|d| d.get(1..).unwrap_or_default().to_vec())
                    .collect()
            };
            let key = rest(&pending[0].1.shapes);
            let mut total = 0;
            let mut group = Vec::new();
            let mut kept = Vec::new();
            for (i, c) in pending {
                if self.batched && rest(&c.shapes) == key && total + c.batch <= self.batch_max {
                    total += c.batch;
                    group.push((i, c));
                } else if group.is_empty() {
                    // Not batchable at all: alone.
                    group.push((i, c));
                } else {
                    kept.push((i, c));
                }
            }
            pending = kept;
            if group.len() == 1 {
                let (i, c) = group.pop().expect("one");
                results[i] = Some(
                    self.run(&c.shapes, &c.data)
                        .and_then(|out| self.respond(reqs[i], &c.outputs, out)),
                );
                continue;
            }
            match self.run_group(&group) {
                Ok(per_request) => {
                    for ((i, c), out) in group.iter().zip(per_request) {
                        results[*i] = Some(self.respond(reqs[*i], &c.outputs, out));
                    }
                }
                Err(e) => {
                    for (i, _) in &group {
                        results[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }

    /// Stacks the group's inputs along axis 0, runs them once and splits
    /// the outputs back. Outputs whose axis 0 is not the batch cannot be
    /// split: the group is then run one request at a time.
    fn run_group(&self, group: &[(usize, Checked)]) -> Result<Vec<TVec<TValue>>, InferError> {
        let total: usize = group.iter().map(|(_, c)| c.batch).sum();
        let mut shapes = group[0].1.shapes.clone();
        let mut stacked = TVec::new();
        for (input, shape) in shapes.iter_mut().enumerate() {
            shape[0] = total;
            let parts = group
                .iter()
                .map(|(_, c)| to_tensor(&c.shapes[input], c.data[input]))
                .collect::<TractResult<Vec<Tensor>>>()
                .and_then(|parts| Tensor::stack_tensors(0, &parts))
                .map_err(|e| self.internal("stacking the batch", e))?;
            stacked.push(parts.into_tvalue());
        }
        let outputs = self.run_tensors(&shapes, stacked)?;
        if outputs
            .iter()
            .any(|o| o.rank() == 0 || o.shape()[0] != total)
        {
            return group
                .iter()
                .map(|(_, c)| self.run(&c.shapes, &c.data))
                .collect();
        }
        let mut start = 0;
        let mut per_request = Vec::with_capacity(group.len());
        for (_, c) in group {
            let one = outputs
                .iter()
                .map(|o| {
                    o.slice(0, start, start + c.batch)
                        .map(IntoTValue::into_tvalue)
                })
                .collect::<TractResult<TVec<TValue>>>()
                .map_err(|e| self.internal("splitting the batch", e))?;
            start += c.batch;
            per_request.push(one);
        }
        Ok(per_request)
    }

    fn check<'r>(&self, req: &'r v2::InferRequest) -> Result<Checked<'r>, InferError> {
        let bad = |input: &str, message: String| InferError::BadInput {
            input: input.to_owned(),
            message,
        };
        let mut given: Vec<Option<&v2::RequestInput>> = vec![None; self.inputs.len()];
        for input in &req.inputs {
            let Some(i) = self.inputs.iter().position(|s| s.name == input.name) else {
                let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(bad(
                    &input.name,
                    format!(
                        "model {:?} has no such input (it takes {names:?})",
                        self.name
                    ),
                ));
            };
            if given[i].replace(input).is_some() {
                return Err(bad(&input.name, "given more than once".into()));
            }
        }
        let mut shapes = Vec::with_capacity(self.inputs.len());
        let mut data = Vec::with_capacity(self.inputs.len());
        let mut batch: Option<usize> = None;
        for (spec, input) in self.inputs.iter().zip(given) {
            let Some(input) = input else {
                return Err(bad(&spec.name, "missing".into()));
            };
            if input.datatype != spec.datatype {
                return Err(bad(
                    &spec.name,
                    format!(
                        "datatype {}, the model takes {}",
                        input.datatype, spec.datatype
                    ),
                ));
            }
            if input.data.datatype() != input.datatype {
                return Err(bad(
                    &spec.name,
                    format!(
                        "data of type {} for datatype {}",
                        input.data.datatype(),
                        input.datatype
                    ),
                ));
            }
            let shape_err = || {
                bad(
                    &spec.name,
                    format!(
                        "shape {:?} does not fit the model's {:?}{}",
                        input.shape,
                        spec.shape,
                        if self.batched {
                            format!(" (batch 1 to {})", self.batch_max)
                        } else {
                            String::new()
                        }
                    ),
                )
            };
            if input.shape.len() != spec.shape.len() {
                return Err(shape_err());
            }
            let mut shape = Vec::with_capacity(spec.shape.len());
            for (axis, (&want, &got)) in spec.shape.iter().zip(&input.shape).enumerate() {
                let fits = if want >= 0 {
                    got == want as u64
                } else if axis == 0 && self.batched {
                    (1..=self.batch_max as u64).contains(&got)
                } else {
                    got >= 1
                };
                if !fits {
                    return Err(shape_err());
                }
                shape.push(usize::try_from(got).map_err(|_| shape_err())?);
            }
            let n = input.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            if n != Some(input.data.len() as u64) {
                return Err(bad(
                    &spec.name,
                    format!(
                        "data holds {} elements, shape {:?} needs {}",
                        input.data.len(),
                        input.shape,
                        n.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
                    ),
                ));
            }
            if self.batched {
                match batch {
                    Some(b) if b != shape[0] => {
                        return Err(bad(
                            &spec.name,
                            format!("batch {}, other inputs have batch {b}", shape[0]),
                        ))
                    }
                    _ => batch = Some(shape[0]),
                }
            }
            shapes.push(shape);
            data.push(&input.data);
        }
        let outputs = match &req.outputs {
            None => (0..self.outputs.len()).collect(),
            Some(wanted) => {
                let mut seen = HashSet::new();
                wanted
                    .iter()
                    .map(|w| {
                        if !seen.insert(w.name.as_str()) {
                            return Err(InferError::BadRequest(format!(
                                "output {:?} asked for more than once",
                                w.name
                            )));
                        }
                        self.outputs
                            .iter()
                            .position(|s| s.name == w.name)
                            .ok_or_else(|| {
                                let names: Vec<&str> =
                                    self.outputs.iter().map(|s| s.name.as_str()).collect();
                                InferError::BadRequest(format!(
                                    "model {:?} has no output {:?} (it gives {names:?})",
                                    self.name, w.name
                                ))
                            })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(Checked {
            shapes,
            data,
            outputs,
            batch: batch.unwrap_or(1),
        })
    }

    fn run(&self, shapes: &Shapes, data: &[&v2::TensorData]) -> Result<TVec<TValue>, InferError> {
        let tensors = shapes
            .iter()
            .zip(data)
            .map(|(shape, d)| to_tensor(shape, d).map(IntoTValue::into_tvalue))
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(|e| self.internal("building the input tensors", e))?;
        self.run_tensors(shapes, tensors)
    }

    fn run_tensors(
        &self,
        shapes: &Shapes,
        tensors: TVec<TValue>,
    ) -> Result<TVec<TValue>, InferError> {
        let plan = self.plan(shapes)?;
        plan.run(tensors)
            .map_err(|e| self.internal(&format!("running on input shapes {shapes:?}"), e))
    }

    /// The plan for these input shapes: cached, or made now. Threads that
    /// want the same new plan wait for the one making it.
    fn plan(&self, shapes: &Shapes) -> Result<Plan, InferError> {
        let cell = {
            let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = match plans.iter().position(|(s, _)| s == shapes) {
                Some(i) => plans.remove(i),
                None => {
                    if plans.len() >= self.plan_capacity {
                        plans.remove(0);
                    }
                    (shapes.clone(), PlanCell::default())
                }
            };
            let cell = entry.1.clone();
            plans.push(entry);
            cell
        };
        cell.get_or_init(|| {
            make_plan(&self.source, &self.inputs, shapes).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|message| {
            InferError::Internal(format!(
                "{}: cannot prepare the model for input shapes {shapes:?}: {message}",
                self.path.display()
            ))
        })
    }

    fn respond(
        &self,
        req: &v2::InferRequest,
        selection: &[usize],
        outputs: TVec<TValue>,
    ) -> Result<v2::InferResponse, InferError> {
        let outputs = selection
            .iter()
            .map(|&i| {
                let t = &outputs[i];
                let data = from_tensor(t)
                    .map_err(|e| self.internal(&format!("output {:?}", self.outputs[i].name), e))?;
                Ok(v2::ResponseOutput {
                    name: self.outputs[i].name.clone(),
                    shape: t.shape().iter().map(|&d| d as u64).collect(),
                    datatype: data.datatype(),
                    data,
                })
            })
            .collect::<Result<_, InferError>>()?;
        Ok(v2::InferResponse {
            model_name: self.name.clone(),
            model_version: Some(self.version.clone()),
            id: req.id.clone(),
            parameters: None,
            outputs,
        })
    }

    fn internal(&self, what: &str, e: tract_onnx::prelude::TractError) -> InferError {
        InferError::Internal(format!("model {:?}: {what}: {e:#}", self.name))
    }
}

/// The datatype and shape an ONNX file declares for a tensor, as far as it
/// does; unknown dimensions are `-1`.
fn declared(fact: &InferenceFact) -> (Option<Datatype>, Option<Vec<i64>>) {
    let dt = fact.datum_type.concretize().and_then(datatype);
    let shape = (!fact.shape.is_open()).then(|| {
        fact.shape
            .dims()
            .map(|d| match d.concretize() {
                Some(TDim::Val(n)) if n >= 0 => n,
                _ => -1,
            })
            .collect()
    });
    (dt, shape)
}

/// The datatype and shape an ONNX graph output declares, as far as it does;
/// unknown dimensions are `-1`.
fn declared_proto(info: &pb::ValueInfoProto) -> (Option<Datatype>, Option<Vec<i64>>) {
    let Some(pb::type_proto::Value::TensorType(t)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return (None, None);
    };
    // ONNX TensorProto.DataType numbers.
    let dt = match t.elem_type {
        1 => Some(Datatype::FP32),
        2 => Some(Datatype::UINT8),
        3 => Some(Datatype::INT8),
        4 => Some(Datatype::UINT16),
        5 => Some(Datatype::INT16),
        6 => Some(Datatype::INT32),
        7 => Some(Datatype::INT64),
        8 => Some(Datatype::BYTES),
        9 => Some(Datatype::BOOL),
        10 => Some(Datatype::FP16),
        11 => Some(Datatype::FP64),
        12 => Some(Datatype::UINT32),
        13 => Some(Datatype::UINT64),
        _ => None,
    };
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n >= 0 => n,
                _ => -1,
            })
            .collect()
    });
    (dt, shape)
}

/// Fixes every input's type and shape, then types, optimises and plans.
fn make_plan(source: &InferenceModel, inputs: &[TensorSpec], shapes: &Shapes) -> TractResult<Plan> {
    let mut model = source.clone();
    for (i, (spec, shape)) in inputs.iter().zip(shapes).enumerate() {
        model.set_input_fact(
            i,
            InferenceFact::dt_shape(datum_type(spec.datatype), shape.as_slice()),
        )?;
    }
    optimise(model)?.into_runnable()
}

/// Types, declutters and optimises a model the way every plan is made:
/// tract's passes plus basalt's own rewrites (see `fuse`).
pub fn optimise(model: InferenceModel) -> TractResult<TypedModel> {
    let mut typed = model.into_typed()?.into_decluttered()?;
    crate::fuse::scale_shift_into_convs(&mut typed)?;
    crate::fuse::hard_swish_chains(&mut typed)?;
    crate::fuse::max_pools(&mut typed)?;
    typed.into_optimized()
}

#[cfg(test)]
mod send_sync {
    fn is_send_sync<T: Send + Sync>() {}
    #[test]
    fn model_is_send_and_sync() {
        is_send_sync::<super::Model>();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::v2::{parse_request, RequestLimits, TensorData};
    use pb::tensor_shape_proto::{dimension, Dimension};
    use prost::Message;

    fn tensor_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                value: Some(match d {
                                    Some(n) => dimension::Value::DimValue(*n),
                                    None => dimension::Value::DimParam("N".into()),
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An ONNX node with one output, named after it.
    pub(crate) fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    /// `a` FP32 [N, 3] and `b` INT32 [N, 3] in; `double` = a + a and
    /// `same` = b out.
    fn small_model(dir: &Path) -> PathBuf {
        let n = None;
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(pb::GraphProto {
                name: "small".into(),
                node: vec![
                    node("Add", &["a", "a"], "double"),
                    node("Identity", &["b"], "same"),
                ],
                input: vec![
                    tensor_info("a", 1, &[n, Some(3)]),
                    tensor_info("b", 6, &[n, Some(3)]),
                ],
                output: vec![
                    tensor_info("double", 1, &[n, Some(3)]),
                    tensor_info("same", 6, &[n, Some(3)]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join("small.onnx");
        std::fs::write(&path, model.encode_to_vec()).expect("write model");
        path
    }

    fn load(batch_max: usize) -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = small_model(dir.path());
        let model = Model::load("small", "3", &path, &LoadOptions { batch_max })
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, model)
    }

    fn req(body: &str) -> v2::InferRequest {
        parse_request(body.as_bytes(), &RequestLimits::default()).expect("parses")
    }

    const GOOD: &str = r#"{"id": "r1", "inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2.5, -3]},
        {"name": "b", "shape": [1, 3], "datatype": "INT32", "data": [[7, 8, 9]]}]}"#;

    fn bad_input(model: &Model, body: &str) -> (String, String) {
        match model.infer(&req(body)) {
            Err(InferError::BadInput { input, message }) => (input, message),
            other => panic!("expected BadInput, got {other:?}"),
        }
    }

    #[test]
    fn describes_the_model() {
        let (_dir, model) = load(4);
        assert_eq!(model.batch_max(), 4);
        assert_eq!(
            model.inputs(),
            [
                TensorSpec {
                    name: "a".into(),
                    datatype: Datatype::FP32,
                    shape: vec![-1, 3]
                },
                TensorSpec {
                    name: "b".into(),
                    datatype: Datatype::INT32,
                    shape: vec![-1, 3]
                },
            ]
        );
        assert_eq!(model.outputs()[0].name, "double");
        assert_eq!(model.outputs()[1].datatype, Datatype::INT32);
        let meta = serde_json::to_string(&model.metadata()).expect("json");
        assert_eq!(
            meta,
            r#"{"name":"small","versions":["3"],"platform":"onnx","inputs":[{"name":"a","datatype":"FP32","shape":[-1,3]},{"name":"b","datatype":"INT32","shape":[-1,3]}],"outputs":[{"name":"double","datatype":"FP32","shape":[-1,3]},{"name":"same","datatype":"INT32","shape":[-1,3]}]}"#
        );
        let bytes = std::fs::read(model.path()).expect("read");
        assert_eq!(model.sha256(), <[u8; 32]>::from(Sha256::digest(bytes)));
    }

    #[test]
    fn runs_and_answers_in_v2_json() {
        let (_dir, model) = load(1);
        let resp = model.infer(&req(GOOD)).expect("runs");
        assert_eq!(
            serde_json::to_string(&resp).expect("json"),
            r#"{"model_name":"small","model_version":"3","id":"r1","outputs":[{"name":"double","shape":[1,3],"datatype":"FP32","data":[2.0,5.0,-6.0]},{"name":"same","shape":[1,3],"datatype":"INT32","data":[7,8,9]}]}"#
        );
    }

    #[test]
    fn selects_outputs_by_name() {
        let (_dir, model) = load(1);
        let body = GOOD.replace(r#""id": "r1","#, r#""outputs": [{"name": "same"}],"#);
        let resp = model.infer(&req(&body)).expect("runs");
        assert_eq!(resp.outputs.len(), 1);
        assert_eq!(resp.outputs[0].data, TensorData::Int32(vec![7, 8, 9]));

        let body = GOOD.replace(r#""id": "r1","#, r#""outputs": [{"name": "triple"}],"#);
        let err = model.infer(&req(&body)).expect_err("unknown output");
        assert_eq!(
            err,
            InferError::BadRequest(
                r#"model "small" has no output "triple" (it gives ["double", "same"])"#.into()
            )
        );
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn refuses_inputs_that_do_not_fit() {
        let (_dir, model) = load(2);
        let cases = [
            (
                GOOD.replace(r#""name": "b""#, r#""name": "c""#),
                "c",
                r#"model "small" has no such input (it takes ["a", "b"])"#,
            ),
            (
                r#"{"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#.into(),
                "b",
                "missing",
            ),
            (
                GOOD.replace(r#""INT32""#, r#""INT64""#),
                "b",
                "datatype INT64, the model takes INT32",
            ),
            (
                GOOD.replace(r#""shape": [1, 3], "datatype": "INT32""#, r#""shape": [3, 1], "datatype": "INT32""#),
                "b",
                "shape [3, 1] does not fit the model's [-1, 3] (batch 1 to 2)",
            ),
            (
                GOOD.replace("[1, 3], \"datatype\": \"FP32\", \"data\": [1, 2.5, -3]", "[3], \"datatype\": \"FP32\", \"data\": [1, 2.5, -3]"),
                "a",
                "shape [3] does not fit the model's [-1, 3] (batch 1 to 2)",
            ),
        ];
        for (body, input, message) in cases {
            assert_eq!(
                bad_input(&model, &body),
                (input.to_owned(), message.to_owned()),
                "{body}"
            );
        }
        // Batch 3 is more than batch_max 2.
        let body = r#"{"inputs": [
            {"name": "a", "shape": [3, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8, 9]},
            {"name": "b", "shape": [3, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6, 7, 8, 9]}]}"#;
        assert_eq!(
            bad_input(&model, body),
            (
                "a".into(),
                "shape [3, 3] does not fit the model's [-1, 3] (batch 1 to 2)".into()
            )
        );
        // Inputs with different batches.
        let body = r#"{"inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "b", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}"#;
        assert_eq!(
            bad_input(&model, body),
            ("b".into(), "batch 1, other inputs have batch 2".into())
        );
    }

    #[test]
    fn refuses_requests_built_inconsistent() {
        let (_dir, model) = load(1);
        let mut r = req(GOOD);
        r.inputs[0].data = TensorData::Fp32(vec![1.0, 2.0]);
        assert_eq!(
            model.infer(&r),
            Err(InferError::BadInput {
                input: "a".into(),
                message: "data holds 2 elements, shape [1, 3] needs 3".into()
            })
        );
        let mut r = req(GOOD);
        r.inputs[1].data = TensorData::Int64(vec![1, 2, 3]);
        assert_eq!(
            model.infer(&r),
            Err(InferError::BadInput {
                input: "b".into(),
                message: "data of type INT64 for datatype INT32".into()
            })
        );
        // A huge declared shape is refused by arithmetic, not by allocating.
        let mut r = req(GOOD);
        r.inputs[0].shape = vec![1, 1 << 40];
        let err = model.infer(&r).expect_err("refused");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn batches_rows_and_keeps_errors_in_place() {
        let (_dir, model) = load(4);
        let one = |x: f32| {
            req(&format!(
                r#"{{"inputs": [
                {{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [{x}, 0, 1]}},
                {{"name": "b", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}}]}}"#
            ))
        };
        let bad = req(&GOOD.replace(r#""INT32""#, r#""INT8""#));
        let reqs = [one(1.0), bad, one(2.0), one(3.0), one(4.0), one(5.0)];
        let refs: Vec<&v2::InferRequest> = reqs.iter().collect();
        let out = model.infer_batch(&refs);
        assert!(matches!(&out[1], Err(InferError::BadInput { input, .. }) if input == "b"));
        for (i, x) in [(0, 1.0f32), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)] {
            let resp = out[i].as_ref().expect("runs");
            assert_eq!(resp.outputs[0].shape, [1, 3]);
            assert_eq!(
                resp.outputs[0].data,
                TensorData::Fp32(vec![2.0 * x, 0.0, 2.0])
            );
        }
        // Batch 4 and batch 1 (the fifth row) have plans now, besides batch 1.
        let plans = model.plans.lock().expect("lock");
        let mut batches: Vec<usize> = plans.iter().map(|(s, _)| s[0][0]).collect();
        batches.sort();
        assert_eq!(batches, [1, 4]);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.onnx");
        let err = Model::load("m", "1", &missing, &LoadOptions::default()).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read the model: ", missing.display())),
            "{err}"
        );
        let junk = dir.path().join("junk.onnx");
        std::fs::write(&junk, b"\xff\xff\xff not protobuf").expect("write");
        let err = Model::load("m", "1", &junk, &LoadOptions::default()).expect_err("junk");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: not a valid ONNX model: ", junk.display())),
            "{err}"
        );
        let path = small_model(dir.path());
        let err = Model::load("m", "1", &path, &LoadOptions { batch_max: 0 }).expect_err("batch 0");
        assert_eq!(
            err.to_string(),
            format!("{}: batch_max must be at least 1", path.display())
        );
    }
}
