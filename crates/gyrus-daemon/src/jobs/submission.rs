//! A job submission as Cortex's users send it (cortex-semantics.md section 5), checked field
//! by field, and cut into batches under gyrus's limits.
//!
//! Accepted: `workers` (required), `timeout` (seconds), `config` (merged over the API's),
//! `sqs_dead_letter_queue.max_receive_count` (its `arn` is ignored, with a warning), and one
//! data source: `item_list` (the items inline), or `file_path_lister` / `delimited_files`
//! (files read when the job is enqueued: `sources.rs`).

use serde_json::{Map, Value};

use super::queue::NewBatch;
use super::sources::{FileSource, FilesKind, FoundFile};

/// The largest submission body (Cortex's limit).
pub const MAX_SUBMISSION_BYTES: usize = 10 * 1024 * 1024;
/// The largest batch, as JSON (Cortex's limit).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// The most items one job may have.
pub const MAX_ITEMS: usize = 1_000_000;
/// The most workers one job may start on this machine.
pub const MAX_WORKERS: u32 = 64;

/// A checked submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub workers: u32,
    pub timeout_secs: Option<u64>,
    pub config: Map<String, Value>,
    /// Tries a batch gets when `predict` raises (1 without a dead-letter setting: no retry).
    pub max_receive_count: u32,
    /// The items: given inline, or filled in from `files` by [`Submission::read_files`].
    pub items: Vec<Value>,
    pub files: Option<FileSource>,
    pub batch_size: usize,
    /// Things accepted but ignored, for the response and the job's log.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} is {actual}, over the limit of {limit}")]
    TooLarge {
        what: String,
        actual: String,
        limit: String,
    },
    /// Listing or reading a remote file source failed.
    #[error("{at}: {source}")]
    Fetch {
        at: String,
        source: gyrus_remote::FetchError,
    },
}

fn invalid(message: impl Into<String>) -> SubmissionError {
    SubmissionError::Invalid(message.into())
}

fn positive(value: Option<&Value>, field: &str) -> Result<Option<u64>, SubmissionError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(invalid(format!(
                "{field} must be a whole number of at least 1, not {v}"
            ))),
        },
    }
}

impl Submission {
    /// Checks a submission body.
    pub fn parse(body: &[u8]) -> Result<Submission, SubmissionError> {
        if body.len() > MAX_SUBMISSION_BYTES {
            return Err(SubmissionError::TooLarge {
                what: "the submission".into(),
                actual: format!("{} bytes", body.len()),
                limit: format!("{MAX_SUBMISSION_BYTES} bytes (10 MiB)"),
            });
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the submission is not valid JSON: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(invalid("the submission must be a JSON object"));
        };
        let known = [
            "workers",
            "timeout",
            "config",
            "sqs_dead_letter_queue",
            "item_list",
            "file_path_lister",
            "delimited_files",
        ];
        if let Some(unknown) = top.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown field {unknown:?} in the submission; expected {}",
                known.join(", ")
            )));
        }
        let workers = positive(top.get("workers"), "workers")?
            .ok_or_else(|| invalid("workers is required (how many worker processes to run)"))?;
        if workers > u64::from(MAX_WORKERS) {
            return Err(SubmissionError::TooLarge {
                what: "workers".into(),
                actual: workers.to_string(),
                limit: MAX_WORKERS.to_string(),
            });
        }
        let timeout_secs = positive(top.get("timeout"), "timeout")?;
        let config = match top.remove("config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(invalid(format!("config must be an object, not {other}")));
            }
        };
        let mut warnings = Vec::new();
        let max_receive_count = match top.get("sqs_dead_letter_queue") {
            None | Some(Value::Null) => 1,
            Some(Value::Object(dlq)) => {
                if let Some(unknown) = dlq
                    .keys()
                    .find(|k| *k != "arn" && *k != "max_receive_count")
                {
                    return Err(invalid(format!(
                        "unknown field {unknown:?} in sqs_dead_letter_queue; expected arn, max_receive_count"
                    )));
                }
                if dlq.contains_key("arn") {
                    warnings.push(
                        "sqs_dead_letter_queue.arn is ignored: gyrus keeps failed batches itself (gyrus job get shows them)"
                            .to_owned(),
                    );
                }
                let count = positive(
                    dlq.get("max_receive_count"),
                    "sqs_dead_letter_queue.max_receive_count",
                )?
                .ok_or_else(|| invalid("sqs_dead_letter_queue.max_receive_count is required"))?;
                u32::try_from(count.min(100)).unwrap_or(100)
            }
            Some(other) => {
                return Err(invalid(format!(
                    "sqs_dead_letter_queue must be an object, not {other}"
                )));
            }
        };
        let sources: Vec<&str> = ["item_list", "file_path_lister", "delimited_files"]
            .into_iter()
            .filter(|k| top.contains_key(*k))
            .collect();
        let source = match sources.as_slice() {
            [one] => *one,
            [] => {
                return Err(invalid(
                    "the submission needs one data source: item_list, file_path_lister or delimited_files",
                ))
            }
            many => {
                return Err(invalid(format!(
                    "the submission has {} data sources ({}); give exactly one",
                    many.len(),
                    many.join(", ")
                )))
            }
        };
        let kind = match source {
            "file_path_lister" => Some(FilesKind::PathLister),
            "delimited_files" => Some(FilesKind::Delimited),
            _ => None,
        };
        if let Some(kind) = kind {
            let (files, batch_size) = FileSource::parse(kind, top.remove(source))?;
            return Ok(Submission {
                workers: workers as u32,
                timeout_secs,
                config,
                max_receive_count,
                items: Vec::new(),
                files: Some(files),
                batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
                warnings,
            });
        }
        let Some(Value::Object(mut list)) = top.remove("item_list") else {
            return Err(invalid(
                "item_list must be an object: {\"items\": [...], \"batch_size\": n}",
            ));
        };
        if let Some(unknown) = list.keys().find(|k| *k != "items" && *k != "batch_size") {
            return Err(invalid(format!(
                "unknown field {unknown:?} in item_list; expected items, batch_size"
            )));
        }
        let batch_size = positive(list.get("batch_size"), "item_list.batch_size")?
            .ok_or_else(|| invalid("item_list.batch_size is required"))?;
        let items = match list.remove("items") {
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(Value::Array(_)) => return Err(invalid("item_list.items is empty")),
            Some(other) => {
                return Err(invalid(format!(
                    "item_list.items must be a list, not {}",
                    kind_of(&other)
                )))
            }
            None => return Err(invalid("item_list.items is required")),
        };
        if items.len() > MAX_ITEMS {
            return Err(SubmissionError::TooLarge {
                what: "item_list.items".into(),
                actual: format!("{} items", items.len()),
                limit: format!("{MAX_ITEMS} items"),
            });
        }
        Ok(Submission {
            workers: workers as u32,
            timeout_secs,
            config,
            max_receive_count,
            items,
            files: None,
            batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
            warnings,
        })
    }

    /// The batches, in order: `batch_size` items each (the last may have fewer), ids
    /// `<job id>-<n>`.
    pub fn batches(&self, job_id: &str) -> Result<Vec<NewBatch>, SubmissionError> {
        self.items
            .chunks(self.batch_size.max(1))
            .enumerate()
            .map(|(n, items)| {
                let payload = Value::Array(items.to_vec()).to_string();
                if payload.len() > MAX_BATCH_BYTES {
                    return Err(SubmissionError::TooLarge {
                        what: format!(
                            "batch {n} (items {} to {})",
                            n * self.batch_size,
                            n * self.batch_size + items.len() - 1
                        ),
                        actual: format!("{} bytes of JSON", payload.len()),
                        limit: format!(
                            "{MAX_BATCH_BYTES} bytes (256 KiB); use a smaller batch_size"
                        ),
                    });
                }
                Ok(NewBatch {
                    batch_id: format!("{job_id}-{n}"),
                    payload,
                })
            })
            .collect()
    }

    /// Lists the files of a file source and reads its items; returns the files (none for
    /// `item_list`).
    pub async fn read_files(
        &mut self,
        opts: &gyrus_remote::FetchOptions,
    ) -> Result<Vec<FoundFile>, SubmissionError> {
        let Some(files) = &self.files else {
            return Ok(Vec::new());
        };
        let found = files.list(opts).await?;
        self.items = files.items(&found, opts).await?;
        if self.items.is_empty() {
            return Err(invalid(format!(
                "{}: the files hold no items",
                files.kind.field()
            )));
        }
        Ok(found)
    }

    /// The submission as the job shows it (and the predictor's `job_spec`): everything but
    /// the items, which can be large.
    pub fn spec_json(&self, api: &str, job_id: &str) -> Value {
        let (field, mut source) = match &self.files {
            None => ("item_list", serde_json::json!({})),
            Some(f) => (
                f.kind.field(),
                serde_json::json!({
                    "s3_paths": f.paths, "includes": f.includes, "excludes": f.excludes,
                }),
            ),
        };
        source["batch_size"] = self.batch_size.into();
        source["item_count"] = self.items.len().into();
        let mut spec = serde_json::json!({
            "job_id": job_id,
            "api_name": api,
            "workers": self.workers,
            "timeout": self.timeout_secs,
            "config": self.config,
            "sqs_dead_letter_queue": {"max_receive_count": self.max_receive_count},
        });
        spec[field] = source;
        spec
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Submission, SubmissionError> {
        Submission::parse(v.to_string().as_bytes())
    }

    fn error(v: Value) -> String {
        parse(v).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn cortex_item_list_submissions_are_accepted() {
        let s = parse(serde_json::json!({
            "workers": 2, "timeout": 60, "config": {"dest": "/tmp/x"},
            "sqs_dead_letter_queue": {"arn": "arn:aws:sqs:x", "max_receive_count": 3},
            "item_list": {"items": [[1, 2], [3], [4], [5, 6]], "batch_size": 3}
        }))
        .unwrap();
        assert_eq!(
            (s.workers, s.timeout_secs, s.max_receive_count),
            (2, Some(60), 3)
        );
        assert_eq!(s.warnings.len(), 1, "the arn is ignored with a warning");
        let batches = s.batches("j1").unwrap();
        assert_eq!(
            batches,
            vec![
                NewBatch {
                    batch_id: "j1-0".into(),
                    payload: "[[1,2],[3],[4]]".into()
                },
                NewBatch {
                    batch_id: "j1-1".into(),
                    payload: "[[5,6]]".into()
                },
            ]
        );
        let no_dlq =
            parse(serde_json::json!({"workers": 1, "item_list": {"items": [1], "batch_size": 1}}));
        assert_eq!(no_dlq.unwrap().max_receive_count, 1);
    }

    #[test]
    fn every_mistake_is_named() {
        let items = serde_json::json!({"items": [1], "batch_size": 1});
        for (body, wanted) in [
            (
                serde_json::json!({"item_list": items}),
                "workers is required",
            ),
            (
                serde_json::json!({"workers": 0, "item_list": items}),
                "workers must be a whole number of at least 1, not 0",
            ),
            (
                serde_json::json!({"workers": 65, "item_list": items}),
                "workers is 65, over the limit of 64",
            ),
            (serde_json::json!({"workers": 1}), "needs one data source"),
            (
                serde_json::json!({"workers": 1, "item_list": items, "delimited_files": {}}),
                "has 2 data sources",
            ),
            (
                serde_json::json!({"workers": 1, "file_path_lister": {"s3_paths": ["/x"]}}),
                "file_path_lister.batch_size is required",
            ),
            (
                serde_json::json!({"workers": 1, "item_list": {"items": [], "batch_size": 1}}),
                "item_list.items is empty",
            ),
            (
                serde_json::json!({"workers": 1, "item_list": {"items": "x", "batch_size": 1}}),
                "item_list.items must be a list, not a string",
            ),
            (
                serde_json::json!({"workers": 1, "item_list": {"items": [1]}}),
                "item_list.batch_size is required",
            ),
            (
                serde_json::json!({"workers": 1, "item_list": items, "config": 3}),
                "config must be an object, not 3",
            ),
            (
                serde_json::json!({"workers": 1, "item_list": items, "wrokers": 1}),
                "unknown field \"wrokers\"",
            ),
            (
                serde_json::json!({"workers": 1, "item_list": items, "sqs_dead_letter_queue": {}}),
                "max_receive_count is required",
            ),
        ] {
            let got = error(body.clone());
            assert!(
                got.contains(wanted),
                "{body}: {got:?} should contain {wanted:?}"
            );
        }
        assert!(Submission::parse(b"{nope")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_with_its_position() {
        let big = "x".repeat(MAX_BATCH_BYTES);
        let s = parse(
            serde_json::json!({"workers": 1, "item_list": {"items": ["a", big], "batch_size": 1}}),
        )
        .unwrap();
        let e = s.batches("j").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "batch 1 (items 1 to 1) is 262148 bytes of JSON, over the limit of 262144 bytes"
            ),
            "{e}"
        );
    }
}
