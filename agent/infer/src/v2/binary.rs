//! The binary tensor data extension of the v2 protocol, as Triton and its
//! clients speak it.
//!
//! A request body is JSON followed by raw tensor bytes; the header
//! `Inference-Header-Content-Length` gives the JSON's length. An input
//! whose bytes follow has no `data` but `"parameters": {"binary_data_size":
//! N}`; inputs take their bytes in the order they are listed. Elements are
//! little-endian and row-major; BOOL is one byte (0 or 1); BYTES elements
//! are each a 4-byte little-endian length and that many bytes.
//!
//! A response carries an output the same way when the request asks for it:
//! `"binary_data": true` in that output's parameters, or
//! `"binary_data_output": true` in the request's parameters for every
//! output. Parsing a large float tensor from JSON costs more than running
//! a small model; its bytes cost a copy.

use super::{Datatype, InferRequest, InferResponse, TensorData, WireTensor};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use tract_onnx::prelude::f16;

/// The header giving the length of the JSON part of a binary body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The tensor parameter giving the length of its bytes.
pub const SIZE_PARAMETER: &str = "binary_data_size";
/// The output parameter asking for its bytes.
pub const OUTPUT_PARAMETER: &str = "binary_data";
/// The request parameter asking for every output's bytes.
pub const ALL_OUTPUTS_PARAMETER: &str = "binary_data_output";

/// The JSON part of a body and, with a header length, the bytes after it.
pub(super) fn split(
    body: &[u8],
    header_len: Option<usize>,
) -> Result<(&[u8], Option<&[u8]>), String> {
    match header_len {
        None => Ok((body, None)),
        Some(n) if n <= body.len() => {
            let (json, rest) = body.split_at(n);
            Ok((json, Some(rest)))
        }
        Some(n) => Err(format!(
            "{HEADER_LENGTH} is {n}, more than the body's {} bytes",
            body.len()
        )),
    }
}

/// Takes `binary_data_size` out of a tensor's parameters.
pub(super) fn take_size(
    parameters: &mut Option<Map<String, serde_json::Value>>,
) -> Result<Option<usize>, String> {
    let Some(p) = parameters else {
        return Ok(None);
    };
    let Some(v) = p.remove(SIZE_PARAMETER) else {
        return Ok(None);
    };
    if p.is_empty() {
        *parameters = None;
    }
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| format!("{SIZE_PARAMETER} {v} is not a byte count"))
}

/// The next `size` bytes of the binary part.
pub(super) fn take<'a>(binary: Option<&mut &'a [u8]>, size: usize) -> Result<&'a [u8], String> {
    let Some(rest) = binary else {
        return Err(format!(
            "{SIZE_PARAMETER} given, but the request has no {HEADER_LENGTH} header, so no binary data"
        ));
    };
    if size > rest.len() {
        return Err(format!(
            "{SIZE_PARAMETER} is {size}, but only {} bytes of binary data are left",
            rest.len()
        ));
    }
    let (mine, after) = rest.split_at(size);
    *rest = after;
    Ok(mine)
}

/// Every byte of the binary part must belong to a tensor.
pub(super) fn all_taken(rest: Option<&[u8]>) -> Result<(), String> {
    match rest {
        Some(r) if !r.is_empty() => Err(format!(
            "{} bytes of binary data follow the last tensor's",
            r.len()
        )),
        _ => Ok(()),
    }
}

/// Little-endian fixed-width elements.
fn fixed<const W: usize, T>(bytes: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(W)
        .map(|c| f(c.try_into().expect("chunks of W")))
        .collect()
}

impl Datatype {
    /// Bytes per element; `None` for BYTES, whose elements vary.
    pub fn width(self) -> Option<usize> {
        Some(match self {
            Datatype::BOOL | Datatype::UINT8 | Datatype::INT8 => 1,
            Datatype::UINT16 | Datatype::INT16 | Datatype::FP16 => 2,
            Datatype::UINT32 | Datatype::INT32 | Datatype::FP32 => 4,
            Datatype::UINT64 | Datatype::INT64 | Datatype::FP64 => 8,
            Datatype::BYTES => return None,
        })
    }
}

impl TensorData {
    /// Types `n` elements of `datatype` from their wire bytes; the error says
    /// what does not fit.
    pub fn from_le_bytes(datatype: Datatype, n: u64, bytes: &[u8]) -> Result<TensorData, String> {
        let Some(width) = datatype.width() else {
            return strings(n, bytes).map(TensorData::Bytes);
        };
        if (bytes.len() as u64) != n.saturating_mul(width as u64) {
            return Err(format!(
                "{SIZE_PARAMETER} is {}, but {n} {datatype} elements take {} bytes",
                bytes.len(),
                n.saturating_mul(width as u64)
            ));
        }
        Ok(match datatype {
            Datatype::BOOL => TensorData::Bool(
                bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        b => Err(format!("element {i} ({b}) is not a valid BOOL")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Datatype::UINT8 => TensorData::Uint8(bytes.to_vec()),
            Datatype::INT8 => TensorData::Int8(fixed(bytes, i8::from_le_bytes)),
            Datatype::UINT16 => TensorData::Uint16(fixed(bytes, u16::from_le_bytes)),
            Datatype::INT16 => TensorData::Int16(fixed(bytes, i16::from_le_bytes)),
            Datatype::FP16 => {
                TensorData::Fp16(fixed(bytes, |b| f16::from_bits(u16::from_le_bytes(b))))
            }
            Datatype::UINT32 => TensorData::Uint32(fixed(bytes, u32::from_le_bytes)),
            Datatype::INT32 => TensorData::Int32(fixed(bytes, i32::from_le_bytes)),
            Datatype::FP32 => TensorData::Fp32(fixed(bytes, f32::from_le_bytes)),
            Datatype::UINT64 => TensorData::Uint64(fixed(bytes, u64::from_le_bytes)),
            Datatype::INT64 => TensorData::Int64(fixed(bytes, i64::from_le_bytes)),
            Datatype::FP64 => TensorData::Fp64(fixed(bytes, f64::from_le_bytes)),
            Datatype::BYTES => unreachable!("BYTES has no width"),
        })
    }

    /// The elements as wire bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn each<T: Copy, const W: usize>(v: &[T], f: impl Fn(T) -> [u8; W]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * W);
            for &x in v {
                out.extend_from_slice(&f(x));
            }
            out
        }
        match self {
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            TensorData::Uint8(v) => v.clone(),
            TensorData::Int8(v) => each(v, i8::to_le_bytes),
            TensorData::Uint16(v) => each(v, u16::to_le_bytes),
            TensorData::Int16(v) => each(v, i16::to_le_bytes),
            TensorData::Fp16(v) => each(v, |x: f16| x.to_bits().to_le_bytes()),
            TensorData::Uint32(v) => each(v, u32::to_le_bytes),
            TensorData::Int32(v) => each(v, i32::to_le_bytes),
            TensorData::Fp32(v) => each(v, f32::to_le_bytes),
            TensorData::Uint64(v) => each(v, u64::to_le_bytes),
            TensorData::Int64(v) => each(v, i64::to_le_bytes),
            TensorData::Fp64(v) => each(v, f64::to_le_bytes),
            TensorData::Bytes(v) => {
                let mut out = Vec::new();
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                out
            }
        }
    }
}

/// BYTES elements: `n` length-prefixed UTF-8 strings filling `bytes` exactly.
fn strings(n: u64, mut bytes: &[u8]) -> Result<Vec<String>, String> {
    // Each element takes at least its 4-byte length, which bounds `n` by
    // the body before anything is allocated for it.
    if n > (bytes.len() / 4) as u64 {
        return Err(format!(
            "{n} BYTES elements need at least {} bytes, {SIZE_PARAMETER} is {}",
            n.saturating_mul(4),
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("element {i}: its length is cut off"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(format!(
                "element {i}: {len} bytes declared, {} left",
                rest.len()
            ));
        }
        let (s, rest) = rest.split_at(len);
        out.push(
            String::from_utf8(s.to_vec()).map_err(|_| format!("element {i} is not valid UTF-8"))?,
        );
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(format!(
            "{} bytes follow the last of the {n} BYTES elements",
            bytes.len()
        ));
    }
    Ok(out)
}

/// `req` as a binary body (every input's bytes after the JSON), and the
/// JSON's length for the header.
pub fn binary_request(req: &InferRequest) -> (Vec<u8>, usize) {
    let mut header = req.clone();
    let mut tail = Vec::new();
    for input in &mut header.inputs {
        let bytes = input.data.to_le_bytes();
        input
            .parameters
            .get_or_insert_with(Default::default)
            .insert(SIZE_PARAMETER.into(), bytes.len().into());
        tail.push(bytes);
    }
    let json = serde_json::to_vec(&HeaderOnly(&header)).expect("a request serialises");
    let len = json.len();
    let mut body = json;
    for t in tail {
        body.extend_from_slice(&t);
    }
    (body, len)
}

/// A request serialised with its inputs' data left out.
struct HeaderOnly<'a>(&'a InferRequest);

impl Serialize for HeaderOnly<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Input<'a> {
            name: &'a str,
            shape: &'a [u64],
            datatype: Datatype,
            #[serde(skip_serializing_if = "Option::is_none")]
            parameters: Option<&'a Map<String, serde_json::Value>>,
        }
        #[derive(Serialize)]
        struct Request<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            parameters: Option<&'a Map<String, serde_json::Value>>,
            inputs: Vec<Input<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            outputs: Option<&'a [super::RequestOutput]>,
        }
        let r = self.0;
        Request {
            id: r.id.as_deref(),
            parameters: r.parameters.as_ref(),
            inputs: r
                .inputs
                .iter()
                .map(|i| Input {
                    name: &i.name,
                    shape: &i.shape,
                    datatype: i.datatype,
                    parameters: i.parameters.as_ref(),
                })
                .collect(),
            outputs: r.outputs.as_deref(),
        }
        .serialize(s)
    }
}

/// Which outputs a request wants as bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryOutputs {
    all: bool,
    /// Outputs named in the request with `binary_data` set: (name, wanted).
    named: Vec<(String, bool)>,
}

impl BinaryOutputs {
    pub fn of(req: &InferRequest) -> BinaryOutputs {
        let flag = |p: Option<&Map<String, serde_json::Value>>, k: &str| {
            p.and_then(|p| p.get(k))
                .and_then(serde_json::Value::as_bool)
        };
        BinaryOutputs {
            all: flag(req.parameters.as_ref(), ALL_OUTPUTS_PARAMETER).unwrap_or(false),
            named: req
                .outputs
                .iter()
                .flatten()
                .filter_map(|o| {
                    flag(o.parameters.as_ref(), OUTPUT_PARAMETER).map(|b| (o.name.clone(), b))
                })
                .collect(),
        }
    }

    pub fn wants(&self, output: &str) -> bool {
        self.named
            .iter()
            .find(|(n, _)| n == output)
            .map_or(self.all, |&(_, b)| b)
    }

    /// `resp` with the wanted outputs' bytes after the JSON, and the JSON's
    /// length; `None` when no output is wanted as bytes (plain JSON then).
    pub fn response(&self, resp: &InferResponse) -> Option<(Vec<u8>, usize)> {
        if !resp.outputs.iter().any(|o| self.wants(&o.name)) {
            return None;
        }
        #[derive(Serialize)]
        struct Output<'a> {
            name: &'a str,
            shape: &'a [u64],
            datatype: Datatype,
            #[serde(skip_serializing_if = "Option::is_none")]
            parameters: Option<Map<String, serde_json::Value>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<&'a TensorData>,
        }
        #[derive(Serialize)]
        struct Response<'a> {
            model_name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            model_version: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            parameters: Option<&'a Map<String, serde_json::Value>>,
            outputs: Vec<Output<'a>>,
        }
        let mut tail = Vec::new();
        let outputs = resp
            .outputs
            .iter()
            .map(|o| {
                let (parameters, data) = if self.wants(&o.name) {
                    let bytes = o.data.to_le_bytes();
                    let mut p = Map::new();
                    p.insert(SIZE_PARAMETER.into(), bytes.len().into());
                    tail.extend_from_slice(&bytes);
                    (Some(p), None)
                } else {
                    (None, Some(&o.data))
                };
                Output {
                    name: &o.name,
                    shape: &o.shape,
                    datatype: o.datatype,
                    parameters,
                    data,
                }
            })
            .collect();
        let mut body = serde_json::to_vec(&Response {
            model_name: &resp.model_name,
            model_version: resp.model_version.as_deref(),
            id: resp.id.as_deref(),
            parameters: resp.parameters.as_ref(),
            outputs,
        })
        .expect("a response serialises");
        let len = body.len();
        body.extend_from_slice(&tail);
        Some((body, len))
    }
}

/// Parses a response body, JSON or (with the header's length) binary.
pub fn parse_response(body: &[u8], header_len: Option<usize>) -> Result<InferResponse, String> {
    #[derive(Deserialize)]
    struct Wire {
        model_name: String,
        #[serde(default)]
        model_version: Option<String>,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        parameters: Option<Map<String, serde_json::Value>>,
        outputs: Vec<WireTensor>,
    }
    let (json, mut rest) = split(body, header_len)?;
    let wire: Wire = serde_json::from_slice(json).map_err(|e| format!("response body: {e}"))?;
    let outputs = wire
        .outputs
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let (name, shape, datatype, _, data) = t
                .typed_data(rest.as_mut())
                .map_err(|e| format!("output {name}: {e}"))?;
            Ok(super::ResponseOutput {
                name,
                shape,
                datatype,
                data,
            })
        })
        .collect::<Result<_, String>>()?;
    all_taken(rest)?;
    Ok(InferResponse {
        model_name: wire.model_name,
        model_version: wire.model_version,
        id: wire.id,
        parameters: wire.parameters,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request_with, RequestInput, RequestLimits, ResponseOutput};
    use super::*;
    use crate::InferError;

    fn input(name: &str, shape: &[u64], data: TensorData) -> RequestInput {
        RequestInput {
            name: name.into(),
            shape: shape.to_vec(),
            datatype: data.datatype(),
            parameters: None,
            data,
        }
    }

    fn parse(body: &[u8], header_len: Option<usize>) -> Result<InferRequest, InferError> {
        parse_request_with(body, header_len, &RequestLimits { max_elements: 100 })
    }

    #[test]
    fn every_datatype_round_trips_through_bytes() {
        let req = InferRequest {
            id: Some("9".into()),
            parameters: None,
            inputs: vec![
                input("b", &[2], TensorData::Bool(vec![true, false])),
                input("u8", &[3], TensorData::Uint8(vec![0, 7, 255])),
                input("i8", &[1], TensorData::Int8(vec![-128])),
                input("u16", &[1], TensorData::Uint16(vec![65535])),
                input("i16", &[1], TensorData::Int16(vec![-2])),
                input("h", &[1], TensorData::Fp16(vec![f16::from_f32(0.5)])),
                input("u32", &[1], TensorData::Uint32(vec![4_000_000_000])),
                input("i32", &[2, 1], TensorData::Int32(vec![-1, 2])),
                input("f", &[2], TensorData::Fp32(vec![1.5, -0.25])),
                input("u64", &[1], TensorData::Uint64(vec![u64::MAX])),
                input("i64", &[1], TensorData::Int64(vec![i64::MIN])),
                input("d", &[1], TensorData::Fp64(vec![0.1])),
                input(
                    "s",
                    &[2],
                    TensorData::Bytes(vec!["héllo".into(), "".into()]),
                ),
            ],
            outputs: None,
        };
        let (body, len) = binary_request(&req);
        // The JSON part holds no data, only sizes.
        let json: serde_json::Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(json["inputs"][8]["parameters"][SIZE_PARAMETER], 8);
        assert!(json["inputs"][8].get("data").is_none());
        assert_eq!(parse(&body, Some(len)).unwrap(), req);
    }

    #[test]
    fn json_and_binary_inputs_mix_in_order() {
        let json = br#"{"inputs": [
            {"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1], "datatype": "FP32", "data": [3]},
            {"name": "c", "shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 1, "other": 1}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 9]);
        let r = parse(&body, Some(json.len())).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Int32(vec![1, 2]));
        assert_eq!(r.inputs[0].parameters, None);
        assert_eq!(r.inputs[1].data, TensorData::Fp32(vec![3.0]));
        assert_eq!(r.inputs[2].data, TensorData::Uint8(vec![9]));
        assert_eq!(
            r.inputs[2].parameters.as_ref().map(|p| p.len()),
            Some(1),
            "other parameters are kept"
        );
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused_naming_the_input() {
        let body = |size: &str, tail: &[u8]| {
            let json = format!(
                r#"{{"inputs": [{{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {{"binary_data_size": {size}}}}}]}}"#
            );
            let len = json.len();
            let mut b = json.into_bytes();
            b.extend_from_slice(tail);
            (b, len)
        };
        let bad = |size: &str, tail: &[u8], header: bool| {
            let (b, len) = body(size, tail);
            match parse(&b, header.then_some(len)) {
                Err(InferError::BadInput { input, message }) => {
                    assert_eq!(input, "x");
                    message
                }
                Err(InferError::BadRequest(m)) => m,
                other => panic!("expected an error, got {other:?}"),
            }
        };
        assert_eq!(
            bad("4", &[0; 4], true),
            "binary_data_size is 4, but 2 FP32 elements take 8 bytes"
        );
        assert_eq!(
            bad("16", &[0; 8], true),
            "binary_data_size is 16, but only 8 bytes of binary data are left"
        );
        assert_eq!(
            bad("8", &[0; 12], true),
            "4 bytes of binary data follow the last tensor's"
        );
        assert!(bad("8", &[], false).contains("no inference-header-content-length header"));
        assert_eq!(
            bad("-1", &[], true),
            "binary_data_size -1 is not a byte count"
        );
        let (b, _) = body("8", &[0; 8]);
        assert_eq!(
            parse(&b, Some(b.len() + 1)).unwrap_err(),
            InferError::BadRequest(format!(
                "inference-header-content-length is {}, more than the body's {} bytes",
                b.len() + 1,
                b.len()
            ))
        );
        let both = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"binary_data_size": 4}}]}"#;
        let mut b = both.to_vec();
        b.extend_from_slice(&[0; 4]);
        assert!(matches!(parse(&b, Some(both.len())),
            Err(InferError::BadInput { message, .. }) if message.contains("both data and binary_data_size")));
        let none = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}"#;
        assert!(matches!(parse(none, None),
            Err(InferError::BadInput { message, .. }) if message == "has no data"));
    }

    #[test]
    fn bad_element_bytes_are_refused() {
        let one = |datatype: Datatype, n: u64, bytes: &[u8]| {
            TensorData::from_le_bytes(datatype, n, bytes).unwrap_err()
        };
        assert_eq!(
            one(Datatype::BOOL, 2, &[1, 2]),
            "element 1 (2) is not a valid BOOL"
        );
        assert_eq!(
            one(Datatype::BYTES, 1, &[5, 0, 0, 0, b'a']),
            "element 0: 5 bytes declared, 1 left"
        );
        assert_eq!(
            one(Datatype::BYTES, 1, &[1, 0, 0, 0, 0xff]),
            "element 0 is not valid UTF-8"
        );
        assert_eq!(
            one(Datatype::BYTES, 1, &[0, 0, 0, 0, 7]),
            "1 bytes follow the last of the 1 BYTES elements"
        );
        // A huge declared count is refused before anything is allocated.
        assert_eq!(
            one(Datatype::BYTES, u64::MAX, &[0; 8]),
            format!(
                "{} BYTES elements need at least {} bytes, binary_data_size is 8",
                u64::MAX,
                u64::MAX
            )
        );
    }

    #[test]
    fn responses_carry_the_outputs_asked_for_as_bytes() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: None,
            parameters: None,
            outputs: vec![
                ResponseOutput {
                    name: "y".into(),
                    shape: vec![2],
                    datatype: Datatype::FP32,
                    data: TensorData::Fp32(vec![0.5, 2.0]),
                },
                ResponseOutput {
                    name: "label".into(),
                    shape: vec![1],
                    datatype: Datatype::INT64,
                    data: TensorData::Int64(vec![3]),
                },
            ],
        };
        let req = |json: &str| {
            let r =
                super::super::parse_request(json.as_bytes(), &RequestLimits::default()).unwrap();
            BinaryOutputs::of(&r)
        };
        let none = req(r#"{"inputs": []}"#);
        assert_eq!(none.response(&resp), None);
        let all = req(r#"{"inputs": [], "parameters": {"binary_data_output": true}}"#);
        let (body, len) = all.response(&resp).unwrap();
        assert_eq!(body.len() - len, 8 + 8);
        assert_eq!(parse_response(&body, Some(len)).unwrap(), resp);
        // One output by name; the other stays JSON.
        let one = req(
            r#"{"inputs": [], "parameters": {"binary_data_output": true},
                "outputs": [{"name": "label", "parameters": {"binary_data": false}}]}"#,
        );
        let (body, len) = one.response(&resp).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"][SIZE_PARAMETER], 8);
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([3]));
        assert_eq!(parse_response(&body, Some(len)).unwrap(), resp);
    }
}
