//! Checking a request's tensors against a model's signature, once for every engine: inputs
//! matched by name, then dtype, rank and fixed dimensions, so that a bad request is a precise
//! [`EngineError::InvalidInput`] instead of a runtime's failure.

use crate::{EngineError, ModelSignature, ShapeDisplay, Tensor, TensorInfo};

/// How an engine treats an input with fewer dimensions than the model declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapePolicy {
    /// The shape must have the declared rank (the Open Inference Protocol).
    Exact,
    /// Leading dimensions of 1 are added up to the declared rank, so a single example can be
    /// sent without its batch dimension (Cortex's `onnx_client`, the simple JSON API).
    AddLeadingDims,
}

/// Matches inputs to the signature by name, then checks dtype, rank and fixed dimensions.
/// Reorders `inputs` into the model's order.
pub fn check_inputs(
    signature: &ModelSignature,
    inputs: &mut Vec<Tensor>,
    policy: ShapePolicy,
) -> Result<(), EngineError> {
    let declared = &signature.inputs;
    for t in inputs.iter() {
        if !declared.iter().any(|d| d.name == t.name) {
            return Err(EngineError::InvalidInput(format!(
                "unknown input \"{}\"; {}",
                t.name,
                describe_inputs(declared)
            )));
        }
        if inputs.iter().filter(|o| o.name == t.name).count() > 1 {
            return Err(EngineError::InvalidInput(format!(
                "input \"{}\" is given more than once",
                t.name
            )));
        }
    }
    let mut ordered = Vec::with_capacity(declared.len());
    for info in declared {
        let Some(pos) = inputs.iter().position(|t| t.name == info.name) else {
            return Err(EngineError::InvalidInput(format!(
                "missing input \"{}\"; {}",
                info.name,
                describe_inputs(declared)
            )));
        };
        let mut t = inputs.swap_remove(pos);
        check_one(info, &mut t, policy)?;
        ordered.push(t);
    }
    *inputs = ordered;
    Ok(())
}

fn check_one(info: &TensorInfo, t: &mut Tensor, policy: ShapePolicy) -> Result<(), EngineError> {
    if t.dtype != info.dtype {
        return Err(EngineError::InvalidInput(format!(
            "input \"{}\": expected {}, found {}",
            info.name, info.dtype, t.dtype
        )));
    }
    t.check().map_err(EngineError::InvalidInput)?;
    if policy == ShapePolicy::AddLeadingDims && t.shape.len() < info.shape.len() {
        let missing = info.shape.len() - t.shape.len();
        let mut shape = vec![1; missing];
        shape.extend_from_slice(&t.shape);
        t.shape = shape;
    }
    let found = ShapeDisplay(&t.shape);
    let expected = ShapeDisplay(&info.shape);
    if t.shape.len() != info.shape.len() {
        return Err(EngineError::InvalidInput(format!(
            "input \"{}\": expected shape {expected} (rank {}), found {found} (rank {})",
            info.name,
            info.shape.len(),
            t.shape.len()
        )));
    }
    for (axis, (&want, &got)) in info.shape.iter().zip(&t.shape).enumerate() {
        if want >= 0 && want != got {
            return Err(EngineError::InvalidInput(format!(
                "input \"{}\": expected shape {expected}, found {found} (dimension {axis} must be {want})",
                info.name
            )));
        }
    }
    Ok(())
}

fn describe_inputs(declared: &[TensorInfo]) -> String {
    let list: Vec<String> = declared
        .iter()
        .map(|d| format!("\"{}\" ({} {})", d.name, d.dtype, ShapeDisplay(&d.shape)))
        .collect();
    format!("the model takes {}", list.join(", "))
}
