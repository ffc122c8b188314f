//! The worker pool against real Python workers: every row of the payload and response
//! tables, init failures, threads, several workers, a worker dying mid-request, workers
//! that keep crashing, and calls that find no free thread in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gyrus_runtime::{
    install_worker_script, PredictRequest, PredictResponse, RuntimeError, WorkerConfig, WorkerPool,
};
use serde_json::{json, Value};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A project directory holding `predictor.py` with `source`.
struct Project {
    dir: TempDir,
}

impl Project {
    fn new(source: &str) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("project"))?;
        std::fs::write(dir.path().join("project/predictor.py"), source)?;
        Ok(Project { dir })
    }

    fn config(&self, threads: usize) -> std::io::Result<WorkerConfig> {
        Ok(WorkerConfig {
            python: "python3".into(),
            script: install_worker_script(&self.dir.path().join("lib"))?,
            cwd: self.dir.path().join("project"),
            env: vec![("GYRUS_TEST_ENV".into(), "from-env".into())],
            init: json!({
                "predictor_path": "predictor.py",
                "predictor_type": "python",
                "config": {"greeting": "hello"},
                "api_spec": {"name": "test-api"},
                "job_spec": null,
                "model_path": "/models/m",
                "api_name": "test-api",
            }),
            threads,
            tensors: None,
            queue_timeout: Duration::from_secs(30),
            restart_backoff: Duration::from_secs(1),
        })
    }

    async fn start(&self, workers: usize, threads: usize) -> Result<Arc<WorkerPool>, RuntimeError> {
        WorkerPool::start(self.config(threads)?, workers).await
    }
}

fn request(content_type: &str, body: impl Into<Bytes>) -> PredictRequest {
    PredictRequest {
        content_type: content_type.into(),
        body: body.into(),
        ..Default::default()
    }
}

fn json_body(response: &PredictResponse) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "response is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

#[track_caller]
fn assert_error(response: &PredictResponse, status: u16, starts_with: &str) {
    assert_eq!(
        response.status,
        status,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.content_type, "application/json");
    let error = json_body(response)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.starts_with(starts_with),
        "error {error:?} should start with {starts_with:?}"
    );
}

const ECHO: &str = r#"
import os

class PythonPredictor:
    def __init__(self, config, api_spec):
        self.config = config
        self.api_spec = api_spec

    def predict(self, payload):
        if isinstance(payload, dict) and hasattr(payload, "multi_items"):
            def show(v):
                if isinstance(v, str):
                    return v
                return {"filename": v.filename, "content_type": v.content_type, "data": v.read().decode(),
                        "header": v.headers.get("Content-Type")}
            return {
                "type": "form",
                "items": [[k, show(v)] for k, v in payload.multi_items()],
                "last": {k: v for k, v in payload.items() if isinstance(v, str)},
                "getlist": {k: payload.getlist(k) for k in payload if all(isinstance(v, str) for v in payload.getlist(k))},
            }
        if isinstance(payload, bytes):
            return {"type": "bytes", "hex": payload.hex()}
        if payload == "config":
            return {"config": self.config, "api_spec": self.api_spec, "env": os.environ.get("GYRUS_TEST_ENV"),
                    "unbuffered": os.environ.get("PYTHONUNBUFFERED")}
        return {"type": type(payload).__name__, "value": payload}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_by_content_type() -> TestResult {
    let project = Project::new(ECHO)?;
    let pool = project.start(1, 1).await?;
    assert!(!pool.wants_headers() && !pool.wants_query_params());

    let r = pool
        .call(request("application/json", r#"{"a": [1, 2.5, null]}"#))
        .await?;
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/json")
    );
    assert_eq!(
        json_body(&r),
        json!({"type": "dict", "value": {"a": [1, 2.5, null]}})
    );

    let r = pool
        .call(request("Application/JSON; charset=utf-8", "[1]"))
        .await?;
    assert_eq!(json_body(&r), json!({"type": "list", "value": [1]}));

    let r = pool.call(request("application/json", "{not json")).await?;
    assert_error(&r, 400, "invalid JSON body: ");
    let r = pool.call(request("application/json", "")).await?;
    assert_error(&r, 400, "invalid JSON body: ");

    let r = pool.call(request("text/plain", "h\u{e9}llo")).await?;
    assert_eq!(json_body(&r), json!({"type": "str", "value": "h\u{e9}llo"}));
    let r = pool
        .call(request("text/plain; charset=ISO-8859-1", &b"h\xe9"[..]))
        .await?;
    assert_eq!(json_body(&r), json!({"type": "str", "value": "h\u{e9}"}));
    let r = pool.call(request("text/plain", &b"h\xe9"[..])).await?;
    assert_error(&r, 400, "text/plain body is not valid utf-8");
    let r = pool
        .call(request("text/plain; charset=klingon", "x"))
        .await?;
    assert_error(&r, 400, "unknown charset");

    let r = pool
        .call(request(
            "application/x-www-form-urlencoded",
            "a=1&b=x+y%21&a=3&empty=",
        ))
        .await?;
    let body = json_body(&r);
    assert_eq!(body["type"], "form");
    assert_eq!(body["last"], json!({"a": "3", "b": "x y!", "empty": ""}));
    assert_eq!(body["getlist"]["a"], json!(["1", "3"]));

    let multipart = "--XyZ\r\n\
        Content-Disposition: form-data; name=\"field\"\r\n\r\n\
        value one\r\n\
        --XyZ\r\n\
        Content-Disposition: form-data; name=\"upload\"; filename=\"notes.txt\"\r\n\
        Content-Type: text/csv\r\n\r\n\
        a,b\r\n1,2\r\n\
        --XyZ\r\n\
        Content-Disposition: form-data; name=\"field\"\r\n\r\n\
        value two\r\n\
        --XyZ--\r\n";
    let r = pool
        .call(request("multipart/form-data; boundary=XyZ", multipart))
        .await?;
    let body = json_body(&r);
    assert_eq!(body["type"], "form", "{body}");
    assert_eq!(
        body["items"],
        json!([
            ["field", "value one"],
            ["upload", {"filename": "notes.txt", "content_type": "text/csv", "data": "a,b\r\n1,2", "header": "text/csv"}],
            ["field", "value two"],
        ])
    );
    assert_eq!(body["last"]["field"], "value two");
    let r = pool.call(request("multipart/form-data", multipart)).await?;
    assert_error(&r, 400, "multipart/form-data Content-Type has no boundary");
    let r = pool
        .call(request(
            "multipart/form-data; boundary=XyZ",
            "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
        ))
        .await?;
    assert_error(&r, 400, "multipart body is truncated");

    for ctype in ["application/octet-stream", "image/png", ""] {
        let r = pool.call(request(ctype, &b"\x00\xffab"[..])).await?;
        assert_eq!(
            json_body(&r),
            json!({"type": "bytes", "hex": "00ff6162"}),
            "{ctype:?}"
        );
    }

    let r = pool
        .call(PredictRequest {
            debug: true,
            call: Default::default(),
            ..request("text/plain", "config")
        })
        .await?;
    assert_eq!(
        json_body(&r),
        json!({"config": {"greeting": "hello"}, "api_spec": {"name": "test-api"}, "env": "from-env", "unbuffered": "1"})
    );
    pool.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_by_returned_type() -> TestResult {
    let project = Project::new(
        r#"
import math

class Opaque:
    pass

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {
            "bytes": b"\x00\x01raw",
            "bytearray": bytearray(b"ba"),
            "memoryview": memoryview(b"abcdef")[2:4],
            "str": "h\u00e9llo",
            "dict": {"a": 1, "b": [True, None, 1.5]},
            "list": [1, "two"],
            "tuple": (1, 2),
            "int": 42,
            "float": 0.25,
            "none": None,
            "opaque": Opaque(),
            "set": {1},
            "nan": float("nan"),
        }[payload]
"#,
    )?;
    let pool = project.start(1, 1).await?;
    let cases: &[(&str, &str, &[u8])] = &[
        ("bytes", "application/octet-stream", b"\x00\x01raw"),
        ("bytearray", "application/octet-stream", b"ba"),
        ("memoryview", "application/octet-stream", b"cd"),
        ("str", "text/plain; charset=utf-8", "h\u{e9}llo".as_bytes()),
        (
            "dict",
            "application/json",
            br#"{"a":1,"b":[true,null,1.5]}"#,
        ),
        ("list", "application/json", br#"[1,"two"]"#),
        ("tuple", "application/json", b"[1,2]"),
        ("int", "application/json", b"42"),
        ("float", "application/json", b"0.25"),
        ("none", "application/json", b"null"),
    ];
    for (kind, ctype, body) in cases {
        let r = pool.call(request("text/plain", *kind)).await?;
        assert_eq!(
            (r.status, r.content_type.as_str(), &r.body[..]),
            (200, *ctype, *body),
            "{kind}"
        );
    }
    for kind in ["opaque", "set", "nan"] {
        let r = pool.call(request("text/plain", kind)).await?;
        assert_error(
            &r,
            500,
            "predict() returned a value that is not JSON serialisable: ",
        );
    }
    let r = pool.call(request("text/plain", "opaque")).await?;
    assert!(json_body(&r)["error"]
        .as_str()
        .unwrap_or_default()
        .contains("Opaque"));
    pool.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn function_style_predictor() -> TestResult {
    let project = Project::new(
        r#"
state = {}

def init(model_path, metadata):
    state["model_path"] = model_path
    state["greeting"] = metadata["greeting"]

def predict(sample, metadata):
    return {"sample": sample, "metadata": metadata, "state": state}
"#,
    )?;
    let pool = project.start(1, 1).await?;
    let r = pool
        .call(request("application/json", r#"{"x": 1}"#))
        .await?;
    assert_eq!(
        json_body(&r),
        json!({
            "sample": {"x": 1},
            "metadata": {"greeting": "hello"},
            "state": {"model_path": "/models/m", "greeting": "hello"},
        })
    );
    pool.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn query_params_and_headers_by_name() -> TestResult {
    let project = Project::new(
        r#"
class PythonPredictor:
    def __init__(self, **kwargs):
        self.kwargs = sorted(kwargs)

    def predict(self, payload, query_params, headers):
        return {
            "ctor": self.kwargs,
            "query": query_params,
            "custom": headers["X-Custom"],
            "lower": headers.get("x-custom"),
            "dup": headers["x-dup"],
            "has": "X-CUSTOM" in headers,
            "missing": headers.get("x-missing", "default"),
        }
"#,
    )?;
    let pool = project.start(1, 1).await?;
    assert!(pool.wants_headers() && pool.wants_query_params());
    let r = pool
        .call(PredictRequest {
            query: "a=1&b=two&a=3&debug=true".into(),
            headers: vec![
                ("X-Custom".into(), "v \"quoted\" \u{e9}".into()),
                ("x-dup".into(), "1".into()),
                ("X-Dup".into(), "2".into()),
            ],
            ..request("application/json", "null")
        })
        .await?;
    assert_eq!(
        json_body(&r),
        json!({
            "ctor": ["api_spec", "config", "job_spec"],
            "query": {"a": "3", "b": "two", "debug": "true"},
            "custom": "v \"quoted\" \u{e9}",
            "lower": "v \"quoted\" \u{e9}",
            "dup": "1, 2",
            "has": true,
            "missing": "default",
        })
    );
    pool.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn exception_in_predict_is_500_and_worker_keeps_serving() -> TestResult {
    let project = Project::new(
        r#"
class PythonPredictor:
    def __init__(self, config):
        self.calls = 0

    def predict(self, payload):
        self.calls += 1
        if payload == "fail":
            raise ValueError("bad input")
        if payload == "bare":
            raise KeyError
        return self.calls
"#,
    )?;
    let pool = project.start(1, 1).await?;
    let r = pool.call(request("text/plain", "fail")).await?;
    assert_eq!(
        (r.status, json_body(&r)),
        (500, json!({"error": "ValueError: bad input"}))
    );
    let r = pool.call(request("text/plain", "bare")).await?;
    assert_eq!(
        (r.status, json_body(&r)),
        (500, json!({"error": "KeyError"}))
    );
    let r = pool.call(request("text/plain", "ok")).await?;
    assert_eq!((r.status, json_body(&r)), (200, json!(3)));
    pool.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn constructor_failure_reports_traceback() -> TestResult {
    let project = Project::new(
        r#"
def load(path):
    raise RuntimeError(f"cannot load model from {path}")

class PythonPredictor:
    def __init__(self, config):
        self.model = load(config["greeting"])

    def predict(self, payload):
        return None
"#,
    )?;
    match project.start(2, 1).await {
        Err(RuntimeError::InitFailed {
            error, traceback, ..
        }) => {
            assert_eq!(error, "RuntimeError: cannot load model from hello");
            assert!(
                traceback.contains("Traceback (most recent call last)"),
                "{traceback}"
            );
            assert!(
                traceback.contains("predictor.py\", line 3, in load"),
                "{traceback}"
            );
            assert!(traceback.contains("in __init__"), "{traceback}");
            assert!(
                !traceback.contains("gyrus_worker") && !traceback.contains("worker-"),
                "{traceback}"
            );
        }
        other => panic!("expected InitFailed, got {:?}", other.map(|_| ())),
    }
    Ok(())
}

#[tokio::test]
async fn missing_constructor_parameter_is_named() -> TestResult {
    let project = Project::new(
        r#"
class PythonPredictor:
    def __init__(self, config, onnx_client):
        pass

    def predict(self, payload):
        return None
"#,
    )?;
    match project.start(1, 1).await {
        Err(RuntimeError::InitFailed { error, .. }) => {
            assert!(error.contains("'onnx_client'"), "{error}");
            assert!(error.contains("config, api_spec, job_spec"), "{error}");
        }
        other => panic!("expected InitFailed, got {:?}", other.map(|_| ())),
    }
    Ok(())
}

#[tokio::test]
async fn import_error_and_missing_predictor() -> TestResult {
    let project = Project::new("import module_that_does_not_exist\n")?;
    match project.start(1, 1).await {
        Err(RuntimeError::InitFailed {
            error, traceback, ..
        }) => {
            assert!(error.contains("ModuleNotFoundError"), "{error}");
            assert!(traceback.contains("predictor.py\", line 1"), "{traceback}");
        }
        other => panic!("expected InitFailed, got {:?}", other.map(|_| ())),
    }
    let project = Project::new("x = 1\n")?;
    match project.start(1, 1).await {
        Err(RuntimeError::InitFailed { error, .. }) => {
            assert!(error.contains("PythonPredictor"), "{error}")
        }
        other => panic!("expected InitFailed, got {:?}", other.map(|_| ())),
    }
    Ok(())
}

#[tokio::test]
async fn early_exit_and_missing_interpreter() -> TestResult {
    let project = Project::new("import os\nos._exit(5)\n")?;
    match project.start(1, 1).await {
        Err(RuntimeError::WorkerExited { detail, .. }) => {
            assert!(detail.contains("exit status: 5"), "{detail}")
        }
        other => panic!("expected WorkerExited, got {:?}", other.map(|_| ())),
    }
    let mut config = project.config(1)?;
    config.python = "/nonexistent/python3".into();
    match WorkerPool::start(config, 1).await {
        Err(RuntimeError::Spawn { python, .. }) => {
            assert_eq!(python, std::path::Path::new("/nonexistent/python3"))
        }
        other => panic!("expected Spawn, got {:?}", other.map(|_| ())),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threads_handle_requests_concurrently() -> TestResult {
    let project = Project::new(
        r#"
import time

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        time.sleep(0.3)
        return payload
"#,
    )?;
    let pool = project.start(1, 4).await?;
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(request("application/json", i.to_string())).await })
        })
        .collect();
    let mut answers = vec![];
    for call in calls {
        answers.push(json_body(&call.await??));
    }
    let elapsed = started.elapsed();
    assert_eq!(answers, vec![json!(0), json!(1), json!(2), json!(3)]);
    assert!(
        elapsed < Duration::from_millis(800),
        "4 calls on 4 threads took {elapsed:?}"
    );

    // A fifth concurrent call waits for a free thread instead of failing.
    let started = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(request("application/json", "1")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.in_flight(), 5);
    for call in calls {
        assert_eq!(call.await??.status, 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(pool.in_flight(), 0);
    pool.shutdown().await;
    Ok(())
}

const PID: &str = r#"
import os

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload == "die":
            os._exit(3)
        if isinstance(payload, bytes):
            return payload
        return os.getpid()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_workers() -> TestResult {
    let project = Project::new(PID)?;
    let pool = project.start(2, 1).await?;
    let mut pids = std::collections::HashSet::new();
    for _ in 0..10 {
        pids.insert(json_body(&pool.call(request("text/plain", "pid")).await?).as_u64());
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    pool.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_fails_its_request_and_is_restarted() -> TestResult {
    let project = Project::new(PID)?;
    let pool = project.start(1, 1).await?;
    let before = json_body(&pool.call(request("text/plain", "pid")).await?);
    match pool.call(request("text/plain", "die")).await {
        Err(RuntimeError::WorkerExited { worker: 0, detail }) => {
            assert!(detail.contains("exit status: 3"), "{detail}")
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // The only worker is down: the call waits for the restart (1s backoff) and succeeds.
    let started = Instant::now();
    let after = json_body(&pool.call(request("text/plain", "pid")).await?);
    assert_ne!(before, after);
    assert!(started.elapsed() < Duration::from_secs(10));
    pool.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_fails_every_request_in_flight() -> TestResult {
    let project = Project::new(
        r#"
import os, time

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload == "die":
            time.sleep(0.2)
            os._exit(4)
        time.sleep(5)
"#,
    )?;
    let pool = project.start(1, 2).await?;
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(request("text/plain", "slow")).await })
    };
    let started = Instant::now();
    let died = pool.call(request("text/plain", "die")).await;
    assert!(
        matches!(died, Err(RuntimeError::WorkerExited { .. })),
        "{died:?}"
    );
    let slow = slow.await?;
    assert!(
        matches!(slow, Err(RuntimeError::WorkerExited { .. })),
        "{slow:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    pool.shutdown().await;
    Ok(())
}

/// Waits (polling) until `done` holds, failing the test after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A predictor whose workers die half a second after the constructor returns, while
/// `predict` can be slow: it sleeps for the number of seconds it is sent.
const DIES_SOON: &str = r#"
import os, threading, time

class PythonPredictor:
    def __init__(self, config):
        def die():
            time.sleep(0.5)
            os._exit(7)
        threading.Thread(target=die, daemon=True).start()

    def predict(self, payload):
        time.sleep(payload)
        return "ok"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_fails_calls_fast() -> TestResult {
    let project = Project::new(DIES_SOON)?;
    let mut config = project.config(1)?;
    // Short backoffs keep the test short: exits at about 0.7 s, 1.6 s and 2.7 s, then the
    // worker is down for 0.8 s, up for 0.5 s, down for 1.6 s...
    config.restart_backoff = Duration::from_millis(200);
    let pool = WorkerPool::start(config, 1).await?;
    assert!(!pool.crash_looping());
    assert_eq!(pool.workers_up(), 1);

    // The third quick exit makes it a crash loop; with no worker up, calls fail at once.
    wait_for("a crash loop", Duration::from_secs(15), || {
        pool.crash_looping()
    })
    .await;
    let mut checked = false;
    for _ in 0..3 {
        wait_for("the worker down", Duration::from_secs(10), || {
            pool.workers_up() == 0
        })
        .await;
        let started = Instant::now();
        match pool.call(request("application/json", "0")).await {
            Err(RuntimeError::Unavailable {
                reason,
                retry_after,
                ..
            }) => {
                let elapsed = started.elapsed();
                assert!(elapsed < Duration::from_millis(200), "took {elapsed:?}");
                assert!(
                    reason.starts_with("the predictor's workers keep crashing (worker 0 exited "),
                    "{reason}"
                );
                assert!(reason.ends_with("exit status: 7)"), "{reason}");
                assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");
                checked = true;
                break;
            }
            // A restart came up between looking and calling.
            Ok(_) | Err(RuntimeError::WorkerExited { .. }) => continue,
            Err(e) => panic!("expected Unavailable, got {e}"),
        }
    }
    assert!(checked, "no call found the pool down in its crash loop");
    assert!(pool.crash_looping());

    // A worker up between two crashes does not end the loop. A caller waiting for its only
    // thread is woken when it dies and fails at once, not at the next restart.
    let mut checked = false;
    for _ in 0..3 {
        wait_for("a restart", Duration::from_secs(10), || {
            pool.workers_up() == 1
        })
        .await;
        assert!(pool.crash_looping());
        let slow = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(request("application/json", "5")).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let waiting = pool.call(request("application/json", "0")).await;
        let elapsed = started.elapsed();
        let slow = slow.await?;
        if !matches!(slow, Err(RuntimeError::WorkerExited { .. })) {
            // The worker died before the slow call reached it: the scene did not happen.
            continue;
        }
        assert!(
            matches!(waiting, Err(RuntimeError::Unavailable { .. })),
            "{waiting:?}"
        );
        assert!(elapsed < Duration::from_millis(700), "took {elapsed:?}");
        checked = true;
        break;
    }
    assert!(checked, "no call waited on a worker that then died");
    pool.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_waits_for_a_thread_at_most_the_queue_timeout() -> TestResult {
    let project = Project::new(
        r#"
import time

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        time.sleep(payload)
        return "done"
"#,
    )?;
    let mut config = project.config(1)?;
    config.queue_timeout = Duration::from_millis(300);
    let pool = WorkerPool::start(config, 1).await?;
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(request("application/json", "1")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    match pool.call(request("application/json", "0")).await {
        Err(RuntimeError::Unavailable {
            reason,
            retry_after,
            ..
        }) => {
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(900),
                "took {elapsed:?}"
            );
            assert!(
                reason.starts_with("no worker thread became free within 300ms"),
                "{reason}"
            );
            assert_eq!(retry_after, Duration::from_secs(1));
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!pool.crash_looping());
    assert_eq!(pool.workers_up(), 1);
    // The busy call itself was not disturbed, and the thread serves again once it is free.
    assert_eq!(slow.await??.status, 200);
    assert_eq!(
        pool.call(request("application/json", "0")).await?.status,
        200
    );
    pool.shutdown().await;
    Ok(())
}

/// Whether a process is gone (or a zombie nobody has reaped yet).
fn process_gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status.contains("State:\tZ"),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_kills_its_workers() -> TestResult {
    let project = Project::new(PID)?;
    let pool = project.start(1, 1).await?;
    let pid = json_body(&pool.call(request("text/plain", "pid")).await?)
        .as_u64()
        .ok_or("pid is not a number")?;
    assert!(!process_gone(pid));
    drop(pool);
    let started = Instant::now();
    while !process_gone(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "worker {pid} survived its pool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_round_trip() -> TestResult {
    let project = Project::new(PID)?;
    let pool = project.start(1, 1).await?;
    // Larger than any socket buffer, so both directions need several reads and writes.
    let body: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = pool
        .call(request("application/octet-stream", body.clone()))
        .await?;
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/octet-stream")
    );
    assert!(r.body == body, "echoed body differs");
    pool.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work() -> TestResult {
    let project = Project::new(
        r#"
import time

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        time.sleep(0.3)
        return "done"
"#,
    )?;
    let pool = project.start(1, 2).await?;
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(request("text/plain", "x")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.shutdown().await;
    let r = slow.await??;
    assert_eq!((r.status, &r.body[..]), (200, &b"done"[..]));
    assert!(matches!(
        pool.call(request("text/plain", "x")).await,
        Err(RuntimeError::ShuttingDown)
    ));
    Ok(())
}

/// `cargo test -p gyrus-runtime --release --test pool -- --ignored --nocapture round_trip`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn round_trip_latency() -> TestResult {
    let project = Project::new(
        r#"
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return payload
"#,
    )?;
    let pool = project.start(1, 1).await?;
    let req = request("application/json", r#"{"x": 1}"#);
    for _ in 0..1000 {
        pool.call(req.clone()).await?;
    }
    let n = 10_000;
    let started = Instant::now();
    for _ in 0..n {
        let r = pool.call(req.clone()).await?;
        assert_eq!(r.status, 200);
    }
    let elapsed = started.elapsed();
    println!(
        "{n} calls: mean {:.1} µs per round trip",
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    );
    pool.shutdown().await;
    Ok(())
}
