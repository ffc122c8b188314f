//! The batching dispatcher with a fake backend: requests that queue while the engine is busy
//! run as one batch and each gets exactly its own rows back; `max_batch_size`, shapes that do
//! not agree, `max_queue_delay`, `max_queue_size`, `max_latency`, and requests at fault inside
//! a batch.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use gyrus_engine::{DataType, ModelSignature, ShapePolicy, Tensor, TensorData, TensorInfo};
use gyrus_runtime::{
    Backend, BatchPolicy, ErrorKind, InferenceError, InferenceService, ModelInfo, ServiceConfig,
};

/// "rows": x [N, K] float32 -> y = 2x (per-row results must not depend on the batch, so a
/// wrong split shows as another request's values). "picky": like rows but
/// refuses (a client error) any run holding a negative value. "gate": y = x after waiting for
/// the test's token.
struct Fake {
    models: Vec<ModelInfo>,
    /// Rows of each run of "rows"/"picky", in order.
    runs: Mutex<Vec<usize>>,
    started: Mutex<mpsc::Sender<()>>,
    gate: Mutex<mpsc::Receiver<()>>,
}

fn info(name: &str) -> ModelInfo {
    let t = |n: &str| TensorInfo {
        name: n.into(),
        dtype: DataType::Fp32,
        shape: vec![-1, -1],
    };
    ModelInfo {
        name: name.into(),
        version: "1".into(),
        platform: "onnxruntime_onnx",
        signature: ModelSignature {
            inputs: vec![t("x")],
            outputs: vec![t("y")],
        },
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::Raw(b) => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        TensorData::Strings(_) => panic!("strings"),
    }
}

fn rows_of(values: &[f32], k: usize) -> Vec<Tensor> {
    vec![Tensor {
        name: "x".into(),
        dtype: DataType::Fp32,
        shape: vec![(values.len() / k) as i64, k as i64],
        data: TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }]
}

impl Backend for Fake {
    fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    fn infer(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        _policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, InferenceError> {
        let x = &inputs[0];
        let values = floats(x);
        match model {
            "gate" => {
                let _ = self.started.lock().unwrap().send(());
                let _ = self.gate.lock().unwrap().recv();
            }
            _ => {
                self.runs.lock().unwrap().push(x.shape[0] as usize);
                if model == "picky" && values.iter().any(|v| *v < 0.0) {
                    return Err(InferenceError::Rejected("negative values".into()));
                }
            }
        }
        let y: Vec<u8> = values
            .iter()
            .flat_map(|v| (v * 2.0).to_le_bytes())
            .collect();
        Ok(vec![Tensor {
            name: "y".into(),
            dtype: DataType::Fp32,
            shape: x.shape.clone(),
            data: TensorData::Raw(y),
        }])
    }
}

struct Setup {
    fake: Arc<Fake>,
    service: InferenceService,
    started: mpsc::Receiver<()>,
    open: mpsc::Sender<()>,
}

fn setup(policy: BatchPolicy) -> Setup {
    let (started_tx, started) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    let fake = Arc::new(Fake {
        models: ["rows", "picky", "gate"].iter().map(|n| info(n)).collect(),
        runs: Mutex::new(Vec::new()),
        started: Mutex::new(started_tx),
        gate: Mutex::new(gate),
    });
    let config = ServiceConfig {
        inline_below: Duration::ZERO,
        batching: vec![("rows".into(), policy), ("picky".into(), policy)],
        ..ServiceConfig::default()
    };
    let service = InferenceService::start(fake.clone() as Arc<dyn Backend>, config).unwrap();
    Setup {
        fake,
        service,
        started,
        open,
    }
}

impl Setup {
    /// Holds the engine thread in a "gate" run until `release`.
    fn hold(&self) -> tokio::task::JoinHandle<()> {
        let service = self.service.clone();
        let task = tokio::spawn(async move {
            let _ = service
                .infer("gate", rows_of(&[0.0], 1), ShapePolicy::Exact)
                .await;
        });
        self.started.recv_timeout(Duration::from_secs(5)).unwrap();
        task
    }

    fn release(&self) {
        self.open.send(()).unwrap();
    }

    /// Queues a request (the engine is held, so it waits) and returns its pending answer.
    fn send(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
    ) -> mpsc::Receiver<Result<Vec<Tensor>, InferenceError>> {
        let (tx, rx) = mpsc::channel();
        self.service
            .submit(model, inputs, ShapePolicy::Exact, move |r| {
                let _ = tx.send(r);
            });
        rx
    }

    fn runs(&self) -> Vec<usize> {
        self.fake.runs.lock().unwrap().clone()
    }
}

fn wait(
    rx: &mpsc::Receiver<Result<Vec<Tensor>, InferenceError>>,
) -> Result<Vec<Tensor>, InferenceError> {
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn policy(max_batch_size: usize) -> BatchPolicy {
    BatchPolicy {
        max_batch_size,
        ..BatchPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_while_busy_run_as_one_batch_and_get_their_own_rows() {
    let s = setup(policy(32));
    let held = s.hold();
    // Random rows, one to three per request: each answer must be exactly 2x its own rows.
    let mut seed = 7u32;
    let mut next = || {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (seed >> 8) as f32 / 65536.0 - 128.0
    };
    let requests: Vec<Vec<f32>> = (0..8)
        .map(|i| (0..(i % 3 + 1) * 4).map(|_| next()).collect())
        .collect();
    let answers: Vec<_> = requests
        .iter()
        .map(|r| s.send("rows", rows_of(r, 4)))
        .collect();
    s.release();
    held.await.unwrap();
    for (request, answer) in requests.iter().zip(&answers) {
        let y = wait(answer).unwrap();
        let want: Vec<f32> = request.iter().map(|v| v * 2.0).collect();
        assert_eq!(floats(&y[0]), want);
        assert_eq!(y[0].shape, [(request.len() / 4) as i64, 4]);
    }
    let total: usize = requests.iter().map(|r| r.len() / 4).sum();
    assert_eq!(s.runs(), [total], "one run for everything that queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_size_caps_rows_and_other_shapes_run_apart() {
    let s = setup(policy(4));
    let held = s.hold();
    let mut answers: Vec<_> = (0..6)
        .map(|i| s.send("rows", rows_of(&[i as f32; 3], 3)))
        .collect();
    // Another width: never in the same batch as the others.
    answers.push(s.send("rows", rows_of(&[9.0; 2], 2)));
    s.release();
    held.await.unwrap();
    for a in &answers {
        wait(a).unwrap();
    }
    let runs = s.runs();
    assert_eq!(runs.iter().sum::<usize>(), 7);
    assert!(runs.iter().all(|&r| r <= 4), "{runs:?}");
    assert_eq!(
        runs,
        [4, 2, 1],
        "4 rows, the 2 left of that width, then the other width"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_finds_the_engine_idle_runs_at_once_alone() {
    let s = setup(policy(32));
    for i in 0..3 {
        let y = s
            .service
            .infer("rows", rows_of(&[i as f32, 1.0], 2), ShapePolicy::Exact)
            .await
            .unwrap();
        assert_eq!(floats(&y[0]), [i as f32 * 2.0, 2.0]);
    }
    assert_eq!(s.runs(), [1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queue_delay_waits_for_company() {
    let s = setup(BatchPolicy {
        max_queue_delay: Duration::from_millis(300),
        ..policy(2)
    });
    let first = s.send("rows", rows_of(&[1.0], 1));
    std::thread::sleep(Duration::from_millis(50));
    let second = s.send("rows", rows_of(&[2.0], 1));
    assert_eq!(floats(&wait(&first).unwrap()[0]), [2.0]);
    assert_eq!(floats(&wait(&second).unwrap()[0]), [4.0]);
    assert_eq!(s.runs(), [2], "the first waited for the second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_per_model_and_deadlines_drop_requests_unrun() {
    let s = setup(BatchPolicy {
        max_queue_size: 2,
        max_latency: Some(Duration::from_millis(30)),
        ..policy(8)
    });
    let held = s.hold();
    let a = s.send("rows", rows_of(&[1.0], 1));
    let b = s.send("rows", rows_of(&[2.0], 1));
    let full = wait(&s.send("rows", rows_of(&[3.0], 1))).unwrap_err();
    assert_eq!(full.kind(), ErrorKind::Overloaded);
    assert_eq!(
        full.to_string(),
        "model \"rows\" already has 2 requests waiting (its batching.max_queue_size); retry later"
    );
    std::thread::sleep(Duration::from_millis(60));
    s.release();
    held.await.unwrap();
    for late in [a, b] {
        let e = wait(&late).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Overloaded);
        assert!(
            e.to_string()
                .contains("past the model's batching.max_latency of 30 ms"),
            "{e}"
        );
    }
    assert!(s.runs().is_empty(), "nothing late ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_at_fault_fails_alone() {
    let s = setup(policy(32));
    let held = s.hold();
    let good = s.send("picky", rows_of(&[1.0, 2.0], 2));
    let negative = s.send("picky", rows_of(&[-1.0, 2.0], 2));
    let wrong_dtype = s.send(
        "picky",
        vec![Tensor {
            name: "x".into(),
            dtype: DataType::Fp64,
            shape: vec![1, 1],
            data: TensorData::Raw(vec![0; 8]),
        }],
    );
    let also_good = s.send("picky", rows_of(&[3.0, 4.0], 2));
    s.release();
    held.await.unwrap();
    assert_eq!(floats(&wait(&good).unwrap()[0]), [2.0, 4.0]);
    assert_eq!(floats(&wait(&also_good).unwrap()[0]), [6.0, 8.0]);
    let e = wait(&wrong_dtype).unwrap_err();
    assert_eq!(e.to_string(), "input \"x\": expected FP32, found FP64");
    let e = wait(&negative).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    // The batch of three was refused, then each ran alone.
    assert_eq!(s.runs(), [3, 1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_cannot_join_go_back_in_order_and_nothing_starves() {
    let s = setup(policy(32));
    let held = s.hold();
    // 16-row requests: two fit in a batch; the others wait at the head of the queue, ahead of
    // the other model's request that came after them.
    let rows: Vec<_> = (0..10)
        .map(|i| s.send("rows", rows_of(&[i as f32; 16], 1)))
        .collect();
    let other = s.send("picky", rows_of(&[7.0], 1));
    s.release();
    held.await.unwrap();
    for (i, answer) in rows.iter().enumerate() {
        assert_eq!(floats(&wait(answer).unwrap()[0]), [i as f32 * 2.0; 16]);
    }
    assert_eq!(floats(&wait(&other).unwrap()[0]), [14.0]);
    assert_eq!(s.runs(), [32, 32, 32, 32, 32, 1]);
    let stats = s.service.stats();
    assert_eq!(stats[0].requests, 10);
    assert_eq!(stats[0].runs, 5);
    assert_eq!(stats[0].queued, 0);
}
