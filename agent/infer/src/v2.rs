//! The KServe Open Inference Protocol v2 REST JSON: requests, responses,
//! model metadata, and the one request parser ([`parse_request`]).
//!
//! Tensor data travels as JSON arrays, flat or nested, in row-major order.
//! In memory it is typed ([`TensorData`]): the parser checks each element
//! against the declared datatype, so a request that parsed holds no value
//! out of range for its type.
//!
//! Tensors may also travel as raw little-endian bytes after the JSON, as in
//! the protocol's binary tensor data extension (what Triton's clients send
//! by default): see [`binary`].

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Map;
use std::fmt;
use tract_onnx::prelude::f16;

pub mod binary;
pub use binary::{binary_request, BinaryOutputs, HEADER_LENGTH};

use crate::InferError;

/// A request body as the server received it, typed and checked against
/// the limits. Built by [`parse_request`] (or directly, by a caller that
/// made the tensors itself).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InferRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, serde_json::Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: Datatype,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, serde_json::Value>>,
    pub data: TensorData,
}

/// An output the request asks for by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, serde_json::Value>>,
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of a response; `data` is flat, row-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireTensor")]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: Datatype,
    pub data: TensorData,
}

/// `GET /v2/models/{name}[/versions/{version}]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor a model takes or gives; `-1` in `shape` is a dimension the
/// request chooses (the batch, or a free dimension such as image width).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
}

/// The protocol's tensor datatypes, spelled as on the wire.
#[allow(clippy::upper_case_acronyms)] // the protocol's own spelling
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Datatype {
    BOOL,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    INT8,
    INT16,
    INT32,
    INT64,
    FP16,
    FP32,
    FP64,
    BYTES,
}

impl Datatype {
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::BOOL => "BOOL",
            Datatype::UINT8 => "UINT8",
            Datatype::UINT16 => "UINT16",
            Datatype::UINT32 => "UINT32",
            Datatype::UINT64 => "UINT64",
            Datatype::INT8 => "INT8",
            Datatype::INT16 => "INT16",
            Datatype::INT32 => "INT32",
            Datatype::INT64 => "INT64",
            Datatype::FP16 => "FP16",
            Datatype::FP32 => "FP32",
            Datatype::FP64 => "FP64",
            Datatype::BYTES => "BYTES",
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor, flat and row-major, typed by datatype.
/// On the wire: a JSON array of booleans, numbers or strings.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Uint16(v) => v.len(),
            TensorData::Uint32(v) => v.len(),
            TensorData::Uint64(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The datatype these elements are.
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Bool(_) => Datatype::BOOL,
            TensorData::Uint8(_) => Datatype::UINT8,
            TensorData::Uint16(_) => Datatype::UINT16,
            TensorData::Uint32(_) => Datatype::UINT32,
            TensorData::Uint64(_) => Datatype::UINT64,
            TensorData::Int8(_) => Datatype::INT8,
            TensorData::Int16(_) => Datatype::INT16,
            TensorData::Int32(_) => Datatype::INT32,
            TensorData::Int64(_) => Datatype::INT64,
            TensorData::Fp16(_) => Datatype::FP16,
            TensorData::Fp32(_) => Datatype::FP32,
            TensorData::Fp64(_) => Datatype::FP64,
            TensorData::Bytes(_) => Datatype::BYTES,
        }
    }

    /// Types JSON elements as `datatype`; the error names the first element
    /// that does not fit.
    fn from_elements(datatype: Datatype, elements: Vec<Element>) -> Result<TensorData, String> {
        fn each<T>(
            elements: Vec<Element>,
            datatype: Datatype,
            f: impl Fn(&Element) -> Option<T>,
        ) -> Result<Vec<T>, String> {
            elements
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    f(e).ok_or_else(|| format!("element {i} ({e}) is not a valid {datatype}"))
                })
                .collect()
        }
        let d = datatype;
        Ok(match datatype {
            Datatype::BOOL => TensorData::Bool(each(elements, d, |e| match e {
                Element::Bool(b) => Some(*b),
                _ => None,
            })?),
            Datatype::UINT8 => TensorData::Uint8(each(elements, d, Element::integer)?),
            Datatype::UINT16 => TensorData::Uint16(each(elements, d, Element::integer)?),
            Datatype::UINT32 => TensorData::Uint32(each(elements, d, Element::integer)?),
            Datatype::UINT64 => TensorData::Uint64(each(elements, d, Element::integer)?),
            Datatype::INT8 => TensorData::Int8(each(elements, d, Element::integer)?),
            Datatype::INT16 => TensorData::Int16(each(elements, d, Element::integer)?),
            Datatype::INT32 => TensorData::Int32(each(elements, d, Element::integer)?),
            Datatype::INT64 => TensorData::Int64(each(elements, d, Element::integer)?),
            Datatype::FP16 => TensorData::Fp16(each(elements, d, |e| {
                let v = e.float()?;
                (v.abs() <= f64::from(f16::MAX.to_f32())).then(|| f16::from_f64(v))
            })?),
            Datatype::FP32 => TensorData::Fp32(each(elements, d, |e| {
                let v = e.float()?;
                (v.abs() <= f64::from(f32::MAX)).then_some(v as f32)
            })?),
            Datatype::FP64 => TensorData::Fp64(each(elements, d, Element::float)?),
            Datatype::BYTES => TensorData::Bytes(
                elements
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| match e {
                        Element::Str(s) => Ok(s),
                        e => Err(format!("element {i} ({e}) is not a valid BYTES")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Bool(v) => v.serialize(s),
            TensorData::Uint8(v) => v.serialize(s),
            TensorData::Uint16(v) => v.serialize(s),
            TensorData::Uint32(v) => v.serialize(s),
            TensorData::Uint64(v) => v.serialize(s),
            TensorData::Int8(v) => v.serialize(s),
            TensorData::Int16(v) => v.serialize(s),
            TensorData::Int32(v) => v.serialize(s),
            TensorData::Int64(v) => v.serialize(s),
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Fp32(v) => v.serialize(s),
            TensorData::Fp64(v) => v.serialize(s),
            TensorData::Bytes(v) => v.serialize(s),
        }
    }
}

/// Bounds on what one request may declare, checked before anything is
/// allocated for its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most elements over all inputs of one request.
    pub max_elements: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_elements: 1 << 24,
        }
    }
}

/// Parses and checks a v2 inference request body: JSON syntax and field
/// names (unknown fields are refused), each input's element count against
/// its shape and the limits, and each element against the datatype.
/// Whether the inputs suit a model is [`crate::Model::infer`]'s check.
pub fn parse_request(body: &[u8], limits: &RequestLimits) -> Result<InferRequest, InferError> {
    parse_request_with(body, None, limits)
}

/// [`parse_request`] for a body that may carry binary tensor data:
/// `header_len` is the `Inference-Header-Content-Length` header, the length
/// of the JSON at the start of the body; inputs with a `binary_data_size`
/// parameter take their bytes, in order, from what follows it.
pub fn parse_request_with(
    body: &[u8],
    header_len: Option<usize>,
    limits: &RequestLimits,
) -> Result<InferRequest, InferError> {
    let (json, mut rest) = binary::split(body, header_len).map_err(InferError::BadRequest)?;
    let wire: WireRequest = serde_json::from_slice(json)
        .map_err(|e| InferError::BadRequest(format!("request body: {e}")))?;
    let mut total = 0usize;
    for input in &wire.inputs {
        let n = checked_elements(&input.name, &input.shape, limits.max_elements)?;
        total = total.saturating_add(n);
    }
    if total > limits.max_elements {
        return Err(InferError::BadRequest(format!(
            "the inputs hold {total} elements together, more than the limit of {}",
            limits.max_elements
        )));
    }
    let mut names = std::collections::HashSet::new();
    for input in &wire.inputs {
        if !names.insert(input.name.as_str()) {
            return Err(InferError::BadInput {
                input: input.name.clone(),
                message: "given more than once".into(),
            });
        }
    }
    let inputs = wire
        .inputs
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let (name, shape, datatype, parameters, data) =
                t.typed_data(rest.as_mut())
                    .map_err(|message| InferError::BadInput {
                        input: name,
                        message,
                    })?;
            Ok(RequestInput {
                name,
                shape,
                datatype,
                parameters,
                data,
            })
        })
        .collect::<Result<_, InferError>>()?;
    binary::all_taken(rest).map_err(InferError::BadRequest)?;
    Ok(InferRequest {
        id: wire.id,
        parameters: wire.parameters,
        inputs,
        outputs: wire.outputs,
    })
}

/// The element count `shape` declares, refused when it exceeds `max`
/// (or overflows) so that nothing of that size is ever allocated.
pub(crate) fn checked_elements(name: &str, shape: &[u64], max: usize) -> Result<usize, InferError> {
    let n = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= max);
    n.ok_or_else(|| InferError::BadInput {
        input: name.to_owned(),
        message: format!("shape {shape:?} declares more than the limit of {max} elements"),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, serde_json::Value>>,
    inputs: Vec<WireTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

/// An input or output tensor before its data is typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTensor {
    name: String,
    shape: Vec<u64>,
    datatype: Datatype,
    #[serde(default)]
    parameters: Option<Map<String, serde_json::Value>>,
    /// Absent when the tensor's bytes follow the JSON (`binary_data_size`).
    #[serde(default)]
    data: Option<FlatElements>,
}

/// A tensor, typed: name, shape, datatype, parameters, data.
type Typed = (
    String,
    Vec<u64>,
    Datatype,
    Option<Map<String, serde_json::Value>>,
    TensorData,
);

impl WireTensor {
    /// Checks the element count against the shape (which the caller has
    /// bounded), then types the elements: from the JSON `data`, or from
    /// the next `binary_data_size` bytes of `binary` (`None` when the body
    /// has no binary part). `binary_data_size` is taken out of the
    /// parameters.
    fn typed_data(mut self, binary: Option<&mut &[u8]>) -> Result<Typed, String> {
        let declared = self
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let size = binary::take_size(&mut self.parameters)?;
        let data = match (self.data, size) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "has both data and {}; give one",
                    binary::SIZE_PARAMETER
                ))
            }
            (None, None) => return Err("has no data".into()),
            (None, Some(size)) => {
                let n = declared.ok_or("its shape declares more than 2^64 elements")?;
                let bytes = binary::take(binary, size)?;
                TensorData::from_le_bytes(self.datatype, n, bytes)?
            }
            (Some(elements), None) => {
                if declared != Some(elements.0.len() as u64) {
                    return Err(format!(
                        "data holds {} elements, shape {:?} needs {}",
                        elements.0.len(),
                        self.shape,
                        declared.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
                    ));
                }
                TensorData::from_elements(self.datatype, elements.0)?
            }
        };
        Ok((self.name, self.shape, self.datatype, self.parameters, data))
    }
}

impl TryFrom<WireTensor> for ResponseOutput {
    type Error = String;
    fn try_from(t: WireTensor) -> Result<Self, String> {
        let (name, shape, datatype, _, data) = t.typed_data(None)?;
        Ok(ResponseOutput {
            name,
            shape,
            datatype,
            data,
        })
    }
}

/// One JSON scalar of a tensor's data.
#[derive(Clone, Debug, PartialEq)]
enum Element {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
}

impl Element {
    /// The element as an integer of type `T`, if it is a whole number in
    /// `T`'s range (`3.0` is 3; `1.5` and `300` for `u8` are not).
    fn integer<T: TryFrom<i64> + TryFrom<u64>>(&self) -> Option<T> {
        match *self {
            Element::Int(i) => T::try_from(i).ok(),
            Element::Uint(u) => T::try_from(u).ok(),
            Element::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => T::try_from(f as i64).ok(),
            _ => None,
        }
    }

    fn float(&self) -> Option<f64> {
        match *self {
            Element::Int(i) => Some(i as f64),
            Element::Uint(u) => Some(u as f64),
            Element::Float(f) => Some(f),
            _ => None,
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Bool(b) => write!(f, "{b}"),
            Element::Int(i) => write!(f, "{i}"),
            Element::Uint(u) => write!(f, "{u}"),
            Element::Float(x) => write!(f, "{x:?}"),
            Element::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A JSON array, nested to any depth serde_json allows, flattened in
/// row-major order.
struct FlatElements(Vec<Element>);

impl<'de> Deserialize<'de> for FlatElements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten {
            out: &mut out,
            top: true,
        })?;
        Ok(FlatElements(out))
    }
}

struct Flatten<'a> {
    out: &'a mut Vec<Element>,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Flatten<'_> {
    fn scalar<E: de::Error>(self, e: Element) -> Result<(), E> {
        if self.top {
            return Err(E::custom("tensor data must be a JSON array"));
        }
        self.out.push(e);
        Ok(())
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of booleans, numbers or strings, flat or nested")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Element::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Element::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Element::Uint(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Element::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(Element::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.scalar(Element::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                top: false,
            })?
            .is_some()
        {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<InferRequest, InferError> {
        parse_request(body.as_bytes(), &RequestLimits { max_elements: 100 })
    }

    fn one(datatype: &str, shape: &str, data: &str) -> Result<TensorData, InferError> {
        parse(&format!(
            r#"{{"inputs": [{{"name": "x", "shape": {shape}, "datatype": "{datatype}", "data": {data}}}]}}"#
        ))
        .map(|r| r.inputs[0].data.clone())
    }

    fn bad(datatype: &str, shape: &str, data: &str) -> String {
        match one(datatype, shape, data) {
            Err(InferError::BadInput { input, message }) => {
                assert_eq!(input, "x");
                message
            }
            other => panic!("expected BadInput, got {other:?}"),
        }
    }

    #[test]
    fn types_each_datatype() {
        assert_eq!(
            one("FP32", "[3]", "[1, 2.5, -3e2]"),
            Ok(TensorData::Fp32(vec![1.0, 2.5, -300.0]))
        );
        assert_eq!(
            one("FP64", "[2]", "[0.1, 7]"),
            Ok(TensorData::Fp64(vec![0.1, 7.0]))
        );
        assert_eq!(
            one("INT32", "[2, 2]", "[[1, -2], [3, 4.0]]"),
            Ok(TensorData::Int32(vec![1, -2, 3, 4]))
        );
        assert_eq!(
            one(
                "INT64",
                "[2]",
                "[-9223372036854775808, 9223372036854775807]"
            ),
            Ok(TensorData::Int64(vec![i64::MIN, i64::MAX]))
        );
        assert_eq!(
            one("UINT8", "[1, 3]", "[[0, 128, 255]]"),
            Ok(TensorData::Uint8(vec![0, 128, 255]))
        );
        assert_eq!(
            one("INT8", "[2]", "[-128, 127]"),
            Ok(TensorData::Int8(vec![-128, 127]))
        );
        assert_eq!(
            one("BOOL", "[2]", "[true, false]"),
            Ok(TensorData::Bool(vec![true, false]))
        );
        assert_eq!(
            one("FP16", "[1]", "[0.5]"),
            Ok(TensorData::Fp16(vec![f16::from_f32(0.5)]))
        );
        assert_eq!(
            one("BYTES", "[1]", r#"["abc"]"#),
            Ok(TensorData::Bytes(vec!["abc".into()]))
        );
        assert_eq!(one("FP32", "[0]", "[]"), Ok(TensorData::Fp32(vec![])));
    }

    #[test]
    fn refuses_values_out_of_range_for_the_type() {
        assert_eq!(
            bad("UINT8", "[2]", "[1, 300]"),
            "element 1 (300) is not a valid UINT8"
        );
        assert_eq!(
            bad("UINT8", "[1]", "[-1]"),
            "element 0 (-1) is not a valid UINT8"
        );
        assert_eq!(
            bad("INT32", "[2]", "[1.5, 2]"),
            "element 0 (1.5) is not a valid INT32"
        );
        assert_eq!(
            bad("INT32", "[1]", "[2147483648]"),
            "element 0 (2147483648) is not a valid INT32"
        );
        assert_eq!(
            bad("INT8", "[1]", "[-129]"),
            "element 0 (-129) is not a valid INT8"
        );
        assert_eq!(
            bad("BOOL", "[1]", "[1]"),
            "element 0 (1) is not a valid BOOL"
        );
        assert_eq!(
            bad("FP32", "[1]", "[1e39]"),
            "element 0 (1e39) is not a valid FP32"
        );
        assert_eq!(
            bad("FP16", "[1]", "[70000]"),
            "element 0 (70000) is not a valid FP16"
        );
        assert_eq!(
            bad("FP32", "[1]", r#"["1"]"#),
            r#"element 0 ("1") is not a valid FP32"#
        );
        assert_eq!(
            bad("BYTES", "[1]", "[1]"),
            "element 0 (1) is not a valid BYTES"
        );
    }

    #[test]
    fn checks_sizes_before_typing() {
        assert_eq!(
            bad("FP32", "[2, 2]", "[1, 2, 3]"),
            "data holds 3 elements, shape [2, 2] needs 4"
        );
        assert_eq!(
            bad("FP32", "[1000000000000]", "[1]"),
            "shape [1000000000000] declares more than the limit of 100 elements"
        );
        assert_eq!(
            bad("FP32", "[4294967296, 4294967296, 4294967296]", "[1]"),
            "shape [4294967296, 4294967296, 4294967296] declares more than the limit of 100 elements"
        );
        let two = r#"{"inputs": [
            {"name": "a", "shape": [60], "datatype": "FP32", "data": [1]},
            {"name": "b", "shape": [60], "datatype": "FP32", "data": [1]}]}"#;
        assert_eq!(
            parse(two),
            Err(InferError::BadRequest(
                "the inputs hold 120 elements together, more than the limit of 100".into()
            ))
        );
        let twice = r#"{"inputs": [
            {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
            {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}"#;
        assert_eq!(
            parse(twice),
            Err(InferError::BadInput {
                input: "a".into(),
                message: "given more than once".into()
            })
        );
    }

    #[test]
    fn refuses_malformed_bodies() {
        let msg = |body: &str| match parse(body) {
            Err(InferError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        };
        assert!(
            msg("{").starts_with("request body: EOF while parsing"),
            "{}",
            msg("{")
        );
        assert!(msg(r#"{"inputs": [], "input": []}"#).contains("unknown field `input`"));
        assert!(msg(
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}"#
        )
        .contains("unknown variant `FP8`"));
        assert!(
            msg(r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": 1}]}"#)
                .contains("tensor data must be a JSON array")
        );
        assert!(msg(
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [null]}]}"#
        )
        .contains("invalid type: null"));
        let deep = format!(
            r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": {}1{}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(
            msg(&deep).contains("recursion limit exceeded"),
            "{}",
            msg(&deep)
        );
    }

    #[test]
    fn round_trips_request_fields_and_responses() {
        let r = parse(
            r#"{"id": "7", "parameters": {"p": 1}, "outputs": [{"name": "y"}],
                "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "parameters": {"q": true}, "data": [5]}]}"#,
        )
        .expect("parses");
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.outputs.as_ref().map(|o| o[0].name.as_str()), Some("y"));
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"id":"7","parameters":{"p":1},"inputs":[{"name":"x","shape":[1],"datatype":"INT64","parameters":{"q":true},"data":[5]}],"outputs":[{"name":"y"}]}"#
        );
        let resp: InferResponse = serde_json::from_str(
            r#"{"model_name": "m", "outputs": [{"name": "y", "shape": [2], "datatype": "FP32", "data": [0.1, 2]}]}"#,
        )
        .expect("response");
        assert_eq!(resp.outputs[0].data, TensorData::Fp32(vec![0.1, 2.0]));
        assert_eq!(
            serde_json::to_string(&resp).expect("json"),
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[2],"datatype":"FP32","data":[0.1,2.0]}]}"#
        );
    }
}
