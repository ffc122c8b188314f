//! A batch API's calls through the worker pool, against a real Python worker: the constructor
//! gets the job's `config` and `job_spec`, `predict(payload, batch_id)` gets one batch and its
//! id, a failure comes back with the user's traceback, and `on_job_complete()` runs when asked.

use std::time::Duration;

use bytes::Bytes;
use gyrus_runtime::{install_worker_script, Call, PredictRequest, WorkerConfig, WorkerPool};
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BATCH_PREDICTOR: &str = r#"
import json, os

class PythonPredictor:
    def __init__(self, config, api_spec, job_spec):
        self.config = config
        self.job_spec = job_spec
        self.out = config["out"]

    def predict(self, payload, batch_id):
        if "boom" in payload:
            raise ValueError(f"cannot sum batch {batch_id}")
        total = sum(payload)
        with open(os.path.join(self.out, batch_id), "w") as f:
            f.write(str(total))
        return {"batch_id": batch_id, "sum": total, "job_id": self.job_spec["job_id"],
                "scale": self.config["scale"]}

    def on_job_complete(self):
        with open(os.path.join(self.out, "complete"), "a") as f:
            f.write("once\n")
"#;

fn call(call: Call, body: &str) -> PredictRequest {
    PredictRequest {
        content_type: "application/json".into(),
        body: Bytes::from(body.to_owned()),
        call,
        ..PredictRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_reach_predict_and_on_job_complete() -> TestResult {
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&project)?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(project.join("predictor.py"), BATCH_PREDICTOR)?;
    let config = WorkerConfig {
        python: "python3".into(),
        script: install_worker_script(&dir.path().join("lib"))?,
        cwd: project,
        env: Vec::new(),
        init: json!({
            "predictor_path": "predictor.py",
            "predictor_type": "python",
            "api_kind": "BatchAPI",
            "config": {"out": out, "scale": 2},
            "api_spec": {"name": "sums"},
            "job_spec": {"job_id": "j1", "workers": 1},
            "model_path": null,
            "api_name": "sums",
        }),
        threads: 1,
        tensors: None,
        queue_timeout: Duration::from_secs(30),
        restart_backoff: Duration::from_secs(1),
    };
    let pool = WorkerPool::start(config, 1).await?;

    let batch = Call::Batch {
        batch_id: "b-0".into(),
    };
    let r = pool.call(call(batch, "[1, 2, 3.5]")).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body: Value = serde_json::from_slice(&r.body)?;
    assert_eq!(
        body,
        json!({"batch_id": "b-0", "sum": 6.5, "job_id": "j1", "scale": 2})
    );
    assert_eq!(std::fs::read_to_string(out.join("b-0"))?, "6.5");

    let failing = Call::Batch {
        batch_id: "b-1".into(),
    };
    let r = pool.call(call(failing, r#"[1, "boom"]"#)).await?;
    assert_eq!(r.status, 500);
    let body: Value = serde_json::from_slice(&r.body)?;
    assert_eq!(body["error"], "ValueError: cannot sum batch b-1");
    let traceback = body["traceback"].as_str().unwrap_or_default();
    assert!(
        traceback.contains("predictor.py") && traceback.contains("raise ValueError"),
        "{traceback}"
    );

    assert!(!out.join("complete").exists());
    let r = pool.call(call(Call::JobComplete, "")).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(std::fs::read_to_string(out.join("complete"))?, "once\n");
    pool.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_predictor_without_batch_id_is_refused_at_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project)?;
    std::fs::write(
        project.join("predictor.py"),
        "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self, payload, query_params):\n        return 1\n",
    )?;
    let config = WorkerConfig {
        python: "python3".into(),
        script: install_worker_script(&dir.path().join("lib"))?,
        cwd: project,
        env: Vec::new(),
        init: json!({
            "predictor_path": "predictor.py",
            "predictor_type": "python",
            "api_kind": "BatchAPI",
            "config": {},
            "api_spec": {"name": "sums"},
            "job_spec": {"job_id": "j1"},
            "model_path": null,
            "api_name": "sums",
        }),
        threads: 1,
        tensors: None,
        queue_timeout: Duration::from_secs(30),
        restart_backoff: Duration::from_secs(1),
    };
    let error = WorkerPool::start(config, 1)
        .await
        .err()
        .ok_or("the pool started")?;
    let message = error.to_string();
    assert!(message.contains("query_params"), "{message}");
    Ok(())
}
