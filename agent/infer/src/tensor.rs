//! Between the protocol's typed data and tract's tensors.

use tract_onnx::prelude::{DatumType, Tensor, TractError, TractResult};

use crate::v2::{Datatype, TensorData};

pub(crate) fn datum_type(dt: Datatype) -> DatumType {
    match dt {
        Datatype::BOOL => DatumType::Bool,
        Datatype::UINT8 => DatumType::U8,
        Datatype::UINT16 => DatumType::U16,
        Datatype::UINT32 => DatumType::U32,
        Datatype::UINT64 => DatumType::U64,
        Datatype::INT8 => DatumType::I8,
        Datatype::INT16 => DatumType::I16,
        Datatype::INT32 => DatumType::I32,
        Datatype::INT64 => DatumType::I64,
        Datatype::FP16 => DatumType::F16,
        Datatype::FP32 => DatumType::F32,
        Datatype::FP64 => DatumType::F64,
        Datatype::BYTES => DatumType::String,
    }
}

/// The protocol datatype for a tract type, if the protocol has one.
pub(crate) fn datatype(dt: DatumType) -> Option<Datatype> {
    Some(match dt {
        DatumType::Bool => Datatype::BOOL,
        DatumType::U8 => Datatype::UINT8,
        DatumType::U16 => Datatype::UINT16,
        DatumType::U32 => Datatype::UINT32,
        DatumType::U64 => Datatype::UINT64,
        DatumType::I8 => Datatype::INT8,
        DatumType::I16 => Datatype::INT16,
        DatumType::I32 => Datatype::INT32,
        DatumType::I64 => Datatype::INT64,
        DatumType::F16 => Datatype::FP16,
        DatumType::F32 => Datatype::FP32,
        DatumType::F64 => Datatype::FP64,
        DatumType::String => Datatype::BYTES,
        _ => return None,
    })
}

/// A tensor of `shape` holding `data`; the caller has checked that the
/// element count matches.
pub(crate) fn to_tensor(shape: &[usize], data: &TensorData) -> TractResult<Tensor> {
    match data {
        TensorData::Bool(v) => Tensor::from_shape(shape, v),
        TensorData::Uint8(v) => Tensor::from_shape(shape, v),
        TensorData::Uint16(v) => Tensor::from_shape(shape, v),
        TensorData::Uint32(v) => Tensor::from_shape(shape, v),
        TensorData::Uint64(v) => Tensor::from_shape(shape, v),
        TensorData::Int8(v) => Tensor::from_shape(shape, v),
        TensorData::Int16(v) => Tensor::from_shape(shape, v),
        TensorData::Int32(v) => Tensor::from_shape(shape, v),
        TensorData::Int64(v) => Tensor::from_shape(shape, v),
        TensorData::Fp16(v) => Tensor::from_shape(shape, v),
        TensorData::Fp32(v) => Tensor::from_shape(shape, v),
        TensorData::Fp64(v) => Tensor::from_shape(shape, v),
        TensorData::Bytes(v) => Ok(tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(
            shape,
            v.clone(),
        )?
        .into()),
    }
}

/// The elements of `t`, row-major.
pub(crate) fn from_tensor(t: &Tensor) -> TractResult<TensorData> {
    fn all<T: tract_onnx::prelude::Datum + Clone>(t: &Tensor) -> TractResult<Vec<T>> {
        Ok(t.to_plain_array_view::<T>()?.iter().cloned().collect())
    }
    Ok(match t.datum_type() {
        DatumType::Bool => TensorData::Bool(all(t)?),
        DatumType::U8 => TensorData::Uint8(all(t)?),
        DatumType::U16 => TensorData::Uint16(all(t)?),
        DatumType::U32 => TensorData::Uint32(all(t)?),
        DatumType::U64 => TensorData::Uint64(all(t)?),
        DatumType::I8 => TensorData::Int8(all(t)?),
        DatumType::I16 => TensorData::Int16(all(t)?),
        DatumType::I32 => TensorData::Int32(all(t)?),
        DatumType::I64 => TensorData::Int64(all(t)?),
        DatumType::F16 => TensorData::Fp16(all(t)?),
        DatumType::F32 => TensorData::Fp32(all(t)?),
        DatumType::F64 => TensorData::Fp64(all(t)?),
        DatumType::String => TensorData::Bytes(all(t)?),
        other => {
            return Err(TractError::msg(format!(
                "an output of type {other:?}, which the protocol cannot carry"
            )))
        }
    })
}
