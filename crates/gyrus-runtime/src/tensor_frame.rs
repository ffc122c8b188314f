//! Tensors on the worker protocol: how `onnx_client.predict` in a Python worker reaches the
//! replica's [`InferenceService`](crate::InferenceService). Tensors travel as raw little-endian bytes with a dtype code and a shape,
//! never as JSON, so a numpy array crosses with one copy on each side.
//!
//! INFER body (worker → replica): `u16 model_len`, model name (empty: the only model),
//! `u8 flags` (bit 0: add leading dimensions of 1), `u16 count`, then `count` tensors.
//! INFER_RESULT body (replica → worker): `u16 count`, then the output tensors.
//! INFER_ERROR body: `u8 kind` (0: a server fault, 1: the inputs were wrong, 2: the engine is
//! overloaded, retry), then a UTF-8 message.
//!
//! A tensor: `u16 name_len`, name, `u8 dtype` (index in [`DataType::ALL`]), `u8 rank`,
//! `rank × i64` dims, `u64 data_len`, data. String data is each element as `u32 len` + bytes.

use gyrus_engine::{DataType, ShapePolicy, Tensor, TensorData};

pub(crate) const FLAG_ADD_LEADING_DIMS: u8 = 1;

/// A decoded INFER request.
#[derive(Debug, PartialEq)]
pub struct InferCall {
    pub model: Option<String>,
    pub policy: ShapePolicy,
    pub inputs: Vec<Tensor>,
}

struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.data.len() {
            return Err(format!(
                "INFER frame is truncated: needs {n} more bytes, has {}",
                self.data.len()
            ));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

fn read_tensor(c: &mut Cursor<'_>) -> Result<Tensor, String> {
    let name = c.string()?;
    let code = c.u8()? as usize;
    let dtype = *DataType::ALL
        .get(code)
        .ok_or_else(|| format!("unknown dtype code {code}"))?;
    let rank = c.u8()? as usize;
    let shape = (0..rank)
        .map(|_| c.u64().map(|d| d as i64))
        .collect::<Result<Vec<_>, _>>()?;
    let len = usize::try_from(c.u64()?).map_err(|_| "tensor too large".to_string())?;
    let bytes = c.take(len)?;
    let data = if dtype == DataType::String {
        let mut items = Vec::new();
        let mut inner = Cursor { data: bytes };
        while !inner.data.is_empty() {
            let n = inner.u32()? as usize;
            items.push(inner.take(n)?.to_vec());
        }
        TensorData::Strings(items)
    } else {
        TensorData::Raw(bytes.to_vec())
    };
    Ok(Tensor {
        name,
        dtype,
        shape,
        data,
    })
}

fn write_tensor(out: &mut Vec<u8>, t: &Tensor) {
    let name = t.name.as_bytes();
    let name = &name[..name.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    let code = DataType::ALL
        .iter()
        .position(|d| *d == t.dtype)
        .unwrap_or(0);
    out.push(code as u8);
    out.push(t.shape.len().min(u8::MAX as usize) as u8);
    for d in t.shape.iter().take(u8::MAX as usize) {
        out.extend_from_slice(&d.to_le_bytes());
    }
    match &t.data {
        TensorData::Raw(bytes) => {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        TensorData::Strings(items) => {
            let len: usize = items.iter().map(|s| 4 + s.len()).sum();
            out.extend_from_slice(&(len as u64).to_le_bytes());
            for s in items {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
        }
    }
}

pub(crate) fn decode_call(body: &[u8]) -> Result<InferCall, String> {
    let mut c = Cursor { data: body };
    let model = c.string()?;
    let flags = c.u8()?;
    let count = c.u16()?;
    let inputs = (0..count)
        .map(|_| read_tensor(&mut c))
        .collect::<Result<Vec<_>, _>>()?;
    if !c.data.is_empty() {
        return Err(format!("INFER frame has {} trailing bytes", c.data.len()));
    }
    Ok(InferCall {
        model: (!model.is_empty()).then_some(model),
        policy: if flags & FLAG_ADD_LEADING_DIMS != 0 {
            ShapePolicy::AddLeadingDims
        } else {
            ShapePolicy::Exact
        },
        inputs,
    })
}

pub(crate) fn encode_outputs(outputs: &[Tensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(outputs.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for t in outputs.iter().take(u16::MAX as usize) {
        write_tensor(&mut out, t);
    }
    out
}

/// INFER_ERROR's kind byte for an error.
pub(crate) fn error_kind(e: &crate::InferenceError) -> u8 {
    match e.kind() {
        crate::ErrorKind::InvalidRequest | crate::ErrorKind::NotFound => 1,
        crate::ErrorKind::Overloaded => 2,
        crate::ErrorKind::Internal => 0,
    }
}

pub(crate) fn encode_error(kind: u8, message: &str) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(message.as_bytes());
    out
}

/// Encodes an INFER body; the Python side does the same, this is for tests.
#[cfg(test)]
pub(crate) fn encode_call(call: &InferCall) -> Vec<u8> {
    let mut out = Vec::new();
    let model = call.model.as_deref().unwrap_or("");
    out.extend_from_slice(&(model.len() as u16).to_le_bytes());
    out.extend_from_slice(model.as_bytes());
    out.push(if call.policy == ShapePolicy::AddLeadingDims {
        FLAG_ADD_LEADING_DIMS
    } else {
        0
    });
    out.extend_from_slice(&(call.inputs.len() as u16).to_le_bytes());
    for t in &call.inputs {
        write_tensor(&mut out, t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip() {
        let call = InferCall {
            model: Some("iris".into()),
            policy: ShapePolicy::AddLeadingDims,
            inputs: vec![
                Tensor {
                    name: "x".into(),
                    dtype: DataType::Fp32,
                    shape: vec![1, 2],
                    data: TensorData::Raw(vec![0, 0, 128, 63, 0, 0, 0, 64]),
                },
                Tensor {
                    name: "s".into(),
                    dtype: DataType::String,
                    shape: vec![2],
                    data: TensorData::Strings(vec![b"a".to_vec(), b"".to_vec()]),
                },
            ],
        };
        assert_eq!(decode_call(&encode_call(&call)).unwrap(), call);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let call = InferCall {
            model: None,
            policy: ShapePolicy::Exact,
            inputs: vec![Tensor {
                name: "x".into(),
                dtype: DataType::Int64,
                shape: vec![3],
                data: TensorData::Raw(vec![1; 24]),
            }],
        };
        let body = encode_call(&call);
        for cut in 0..body.len() {
            assert!(decode_call(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(decode_call(&long).is_err());
        // A claimed length far beyond the frame fails without allocating it.
        let mut huge = body;
        let at = huge.len() - 24 - 8;
        huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_call(&huge).is_err());
    }
}
