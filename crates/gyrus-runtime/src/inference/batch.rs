//! Several requests run as one batch: their inputs concatenated along the batch dimension
//! (axis 0) and the outputs split back, byte for byte, so each request gets exactly what it
//! would have got alone (for models whose rows do not interact, which is what a dynamic batch
//! axis promises). Requests are grouped only when every non-batch dimension agrees: nothing is
//! padded.
//!
//! Pure functions over [`Tensor`]s; the engine thread decides what to group (`service`).

use std::time::Duration;

use gyrus_engine::{Tensor, TensorData};

/// How one model's requests are batched (`predictor.batching`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The most rows (the batch axis, summed over requests) in one run.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for company while the engine is idle;
    /// zero: never (a batch is what arrived while the engine was busy).
    pub max_queue_delay: Duration,
    /// A request still waiting after this is dropped unrun (503); `None`: no deadline.
    pub max_latency: Option<Duration>,
    /// The most requests of this model waiting at once; beyond, 503 at once.
    pub max_queue_size: usize,
}

impl Default for BatchPolicy {
    /// Good without tuning: batches grow only from requests that arrive while the engine is
    /// busy (no added latency when it is idle), up to 32 rows; no deadline; 1024 waiting.
    fn default() -> Self {
        BatchPolicy {
            max_batch_size: 32,
            max_queue_delay: Duration::ZERO,
            max_latency: None,
            max_queue_size: 1024,
        }
    }
}

/// The rows (size of axis 0) of a request whose inputs all have a batch axis of one size;
/// `None` when an input is a scalar or the inputs disagree.
pub(super) fn rows(inputs: &[Tensor]) -> Option<usize> {
    let first = usize::try_from(*inputs.first()?.shape.first()?).ok()?;
    inputs
        .iter()
        .all(|t| t.shape.first().and_then(|&d| usize::try_from(d).ok()) == Some(first))
        .then_some(first)
}

/// Whether two requests (inputs in the model's order) can share a batch: the same inputs, each
/// with the same dtype and the same dimensions after the first.
pub(super) fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.dtype == y.dtype
                && x.shape.len() == y.shape.len()
                && !x.shape.is_empty()
                && x.shape[1..] == y.shape[1..]
        })
}

/// Concatenates requests (each [`compatible`] with the first, inputs in the model's order)
/// along axis 0. Returns the batch and the rows each request put in it.
pub(super) fn concat(requests: Vec<Vec<Tensor>>) -> (Vec<Tensor>, Vec<usize>) {
    let rows: Vec<usize> = requests.iter().map(|r| rows(r).unwrap_or(0)).collect();
    let total: usize = rows.iter().sum();
    let mut requests = requests.into_iter();
    let Some(mut batch) = requests.next() else {
        return (Vec::new(), rows);
    };
    for t in &mut batch {
        t.shape[0] = total as i64;
    }
    for request in requests {
        for (into, t) in batch.iter_mut().zip(request) {
            match (&mut into.data, t.data) {
                (TensorData::Raw(a), TensorData::Raw(b)) => a.extend_from_slice(&b),
                (TensorData::Strings(a), TensorData::Strings(b)) => a.extend(b),
                // `compatible` checked the dtypes, which fix the representation.
                _ => {}
            }
        }
    }
    (batch, rows)
}

/// Splits a batch's outputs back into one list per request (`rows` each, in order). `None`
/// when an output does not have the batch's rows on axis 0 (a model that reduces over the
/// batch): the requests must then run one by one.
pub(super) fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for t in outputs {
        if t.shape.first().and_then(|&d| usize::try_from(d).ok()) != Some(total) {
            return None;
        }
        let per_row = Tensor::element_count(&t.shape[1..])?;
        match t.data {
            TensorData::Raw(bytes) => {
                let row_bytes = per_row.checked_mul(t.dtype.size()?)?;
                if row_bytes.checked_mul(total) != Some(bytes.len()) {
                    return None;
                }
                let mut at = 0;
                for (part, &n) in parts.iter_mut().zip(rows) {
                    let mut shape = t.shape.clone();
                    shape[0] = n as i64;
                    let end = at + n * row_bytes;
                    part.push(Tensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape,
                        data: TensorData::Raw(bytes[at..end].to_vec()),
                    });
                    at = end;
                }
            }
            TensorData::Strings(items) => {
                if items.len() != total * per_row {
                    return None;
                }
                let mut items = items.into_iter();
                for (part, &n) in parts.iter_mut().zip(rows) {
                    let mut shape = t.shape.clone();
                    shape[0] = n as i64;
                    part.push(Tensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape,
                        data: TensorData::Strings(items.by_ref().take(n * per_row).collect()),
                    });
                }
            }
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyrus_engine::DataType;

    fn f32s(name: &str, shape: Vec<i64>, seed: u32) -> Tensor {
        let n = Tensor::element_count(&shape).unwrap();
        let bytes = (0..n)
            .flat_map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed).to_le_bytes())
            .collect();
        Tensor {
            name: name.into(),
            dtype: DataType::Fp32,
            shape,
            data: TensorData::Raw(bytes),
        }
    }

    fn strings(name: &str, shape: Vec<i64>, prefix: &str) -> Tensor {
        let n = Tensor::element_count(&shape).unwrap();
        Tensor {
            name: name.into(),
            dtype: DataType::String,
            shape,
            data: TensorData::Strings(
                (0..n)
                    .map(|i| format!("{prefix}{i}").into_bytes())
                    .collect(),
            ),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_own_rows_back() {
        let requests: Vec<Vec<Tensor>> = [(1, 0), (3, 1), (0, 2), (2, 3)]
            .iter()
            .map(|&(n, seed)| {
                vec![
                    f32s("x", vec![n, 4], seed),
                    strings("s", vec![n, 2], &format!("r{seed}-")),
                ]
            })
            .collect();
        for r in &requests[1..] {
            assert!(compatible(&requests[0], r));
        }
        let (batch, rows) = concat(requests.clone());
        assert_eq!(rows, [1, 3, 0, 2]);
        assert_eq!(batch[0].shape, [6, 4]);
        assert_eq!(batch[1].shape, [6, 2]);
        // An identity model: the outputs are the inputs.
        let parts = split(batch, &rows).unwrap();
        assert_eq!(parts, requests);
    }

    #[test]
    fn only_matching_non_batch_dimensions_share_a_batch() {
        let a = vec![f32s("x", vec![2, 4], 0)];
        assert!(compatible(&a, &[f32s("x", vec![5, 4], 1)]));
        assert!(!compatible(&a, &[f32s("x", vec![2, 3], 1)]));
        assert!(!compatible(&a, &[f32s("y", vec![2, 4], 1)]));
        assert!(!compatible(&a, &[f32s("x", vec![2, 4, 1], 1)]));
        let scalar = vec![f32s("x", vec![], 0)];
        assert!(!compatible(&scalar, &scalar));
        assert_eq!(rows(&scalar), None);
        assert_eq!(
            rows(&[f32s("a", vec![2, 1], 0), f32s("b", vec![3], 0)]),
            None
        );
        assert_eq!(
            rows(&[f32s("a", vec![2, 1], 0), f32s("b", vec![2], 0)]),
            Some(2)
        );
    }

    #[test]
    fn outputs_without_the_batch_rows_cannot_be_split() {
        let rows = [1, 2];
        // A model that sums over the batch: one row out for three in.
        assert!(split(vec![f32s("y", vec![1, 4], 0)], &rows).is_none());
        assert!(split(vec![f32s("y", vec![], 0)], &rows).is_none());
        let ok = split(vec![f32s("y", vec![3], 0)], &rows).unwrap();
        assert_eq!(ok[0][0].shape, [1]);
        assert_eq!(ok[1][0].shape, [2]);
    }
}
