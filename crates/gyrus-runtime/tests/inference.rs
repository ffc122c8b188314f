//! The inference service with a fake backend: results as the backend gives them, errors and
//! their kinds, a full queue, many callers at once, callbacks, and the engine thread's life.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use gyrus_engine::{DataType, ModelSignature, ShapePolicy, Tensor, TensorData, TensorInfo};
use gyrus_runtime::{
    Backend, ErrorKind, InferenceError, InferenceService, ModelInfo, ServiceConfig,
    DEFAULT_QUEUE_CAPACITY,
};

/// Models by name: "double" (y = 2x, FP32), "gate" (y = x, but each run first waits for a
/// token, so a test can hold the engine thread), "slow" (y = x after 2 ms) and "panic"
/// (panics).
struct Fake {
    models: Vec<ModelInfo>,
    runs: AtomicUsize,
    /// Sent to when a "gate" run starts.
    started: Mutex<mpsc::Sender<()>>,
    /// What a "gate" run waits for.
    gate: Mutex<mpsc::Receiver<()>>,
    /// The thread each run happened on.
    threads: Mutex<Vec<String>>,
}

/// The test's side of the fake's gate.
struct Gate {
    started: mpsc::Receiver<()>,
    open: mpsc::Sender<()>,
}

fn info(name: &str) -> ModelInfo {
    let tensor = |name: &str| TensorInfo {
        name: name.into(),
        dtype: DataType::Fp32,
        shape: vec![-1],
    };
    ModelInfo {
        name: name.into(),
        version: "1".into(),
        platform: "onnxruntime_onnx",
        signature: ModelSignature {
            inputs: vec![tensor("x")],
            outputs: vec![tensor("y")],
        },
    }
}

fn fake_with(names: &[&str]) -> (Arc<Fake>, Gate) {
    let (started_tx, started) = mpsc::channel();
    let (open, gate_rx) = mpsc::channel();
    let fake = Fake {
        models: names.iter().map(|n| info(n)).collect(),
        runs: AtomicUsize::new(0),
        started: Mutex::new(started_tx),
        gate: Mutex::new(gate_rx),
        threads: Mutex::new(Vec::new()),
    };
    (Arc::new(fake), Gate { started, open })
}

fn fake() -> (Arc<Fake>, Gate) {
    fake_with(&["double", "gate", "slow", "panic"])
}

/// A service whose every inference goes through the engine thread (these tests are about
/// the queue; quick models running on the caller's thread are tested on their own).
fn start(fake: &Arc<Fake>, capacity: usize) -> InferenceService {
    let config = ServiceConfig {
        queue_capacity: capacity,
        inline_below: Duration::ZERO,
        ..ServiceConfig::default()
    };
    InferenceService::start(fake.clone() as Arc<dyn Backend>, config).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::Raw(bytes) => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        TensorData::Strings(_) => panic!("strings"),
    }
}

fn tensor(name: &str, values: &[f32]) -> Tensor {
    Tensor {
        name: name.into(),
        dtype: DataType::Fp32,
        shape: vec![values.len() as i64],
        data: TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn input(values: &[f32]) -> Vec<Tensor> {
    vec![tensor("x", values)]
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
        self.runs.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.threads.lock().unwrap().push(thread);
        let factor = match model {
            "double" => 2.0,
            "gate" => {
                let _ = self.started.lock().unwrap().send(());
                let _ = self.gate.lock().unwrap().recv();
                1.0
            }
            "slow" => {
                std::thread::sleep(Duration::from_millis(2));
                1.0
            }
            "panic" => panic!("the fake backend panics on purpose"),
            other => {
                return Err(InferenceError::UnknownModel {
                    name: other.into(),
                    available: self.names(),
                })
            }
        };
        let [x] = inputs.as_slice() else {
            return Err(InferenceError::InvalidInput(format!(
                "the model takes 1 input, found {}",
                inputs.len()
            )));
        };
        let y: Vec<f32> = floats(x).iter().map(|v| v * factor).collect();
        Ok(vec![tensor("y", &y)])
    }
}

#[tokio::test]
async fn results_are_the_backends() {
    let (fake, _gate) = fake();
    let service = start(&fake, DEFAULT_QUEUE_CAPACITY);
    let direct = fake
        .infer("double", input(&[1.0, -2.5]), ShapePolicy::Exact)
        .unwrap();
    let served = service
        .infer("double", input(&[1.0, -2.5]), ShapePolicy::Exact)
        .await
        .unwrap();
    assert_eq!(served, direct);
    assert_eq!(floats(&served[0]), vec![2.0, -5.0]);
    // The service's run happened on the engine thread, not on the caller's.
    assert_eq!(
        fake.threads.lock().unwrap().last().map(String::as_str),
        Some("gyrus-engine")
    );
}

#[tokio::test]
async fn errors_keep_their_kind_and_a_panic_fails_one_request() {
    let (fake, _gate) = fake();
    let service = start(&fake, 4);
    let e = service
        .infer("double", Vec::new(), ShapePolicy::Exact)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    assert_eq!(e.to_string(), "the model takes 1 input, found 0");
    let e = service
        .infer("nope", input(&[1.0]), ShapePolicy::Exact)
        .await
        .unwrap_err();
    assert!(matches!(e, InferenceError::UnknownModel { .. }), "{e:?}");

    let e = service
        .infer("panic", input(&[1.0]), ShapePolicy::Exact)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(!e.is_client_error());
    assert!(e.to_string().contains("panics on purpose"), "{e}");
    // The engine thread survived it.
    let ok = service
        .infer("double", input(&[3.0]), ShapePolicy::Exact)
        .await
        .unwrap();
    assert_eq!(floats(&ok[0]), vec![6.0]);
}

#[test]
fn names_resolve_like_cortex_and_the_open_inference_protocol() {
    let (fake, _gate) = fake();
    let service = start(&fake, 4);
    assert_eq!(service.select(Some("gate")).unwrap().name, "gate");
    let e = service.select(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    assert_eq!(
        e.to_string(),
        "this API serves several models, so the model name is required: \"double\", \"gate\", \"slow\", \"panic\""
    );
    let e = service.select(Some("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    assert_eq!(
        e.to_string(),
        "unknown model \"x\"; this API serves \"double\", \"gate\", \"slow\", \"panic\""
    );
    assert_eq!(service.find("double", Some("1")).unwrap().name, "double");
    assert_eq!(service.find("double", None).unwrap().name, "double");
    let e = service.find("x", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "unknown model \"x\"; this API serves \"double\", \"gate\", \"slow\", \"panic\""
    );
    let e = service.find("double", Some("2")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // One model: a name in the parameters is ignored, as in Cortex; a path must still match.
    let (single, _gate) = fake_with(&["double"]);
    let service = start(&single, 4);
    assert_eq!(service.select(None).unwrap().name, "double");
    assert_eq!(service.select(Some("other")).unwrap().name, "double");
    assert_eq!(
        service.find("other", None).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn a_full_queue_is_overloaded_at_once() {
    let (fake, gate) = fake();
    let service = start(&fake, 2);
    // Hold the engine thread in a run (a callback: this test's thread blocks below)...
    let (held_tx, held) = mpsc::channel();
    service.submit("gate", input(&[1.0]), ShapePolicy::Exact, move |r| {
        let _ = held_tx.send(r);
    });
    gate.started
        .recv_timeout(Duration::from_secs(10))
        .expect("the gated run started");
    // ...fill the queue (capacity 2)...
    let (tx, rx) = mpsc::channel();
    for i in 0..2 {
        let tx = tx.clone();
        service.submit("double", input(&[i as f32]), ShapePolicy::Exact, move |r| {
            let _ = tx.send((i, r));
        });
    }
    // ...and the next one is refused without waiting, on the caller's thread.
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        service.infer("double", input(&[9.0]), ShapePolicy::Exact),
    )
    .await
    .expect("refused at once")
    .unwrap_err();
    assert_eq!(e, InferenceError::Overloaded { capacity: 2 });
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    let (refused_tx, refused_rx) = mpsc::channel();
    let caller = std::thread::current().id();
    service.submit("double", input(&[9.0]), ShapePolicy::Exact, move |r| {
        let _ = refused_tx.send((std::thread::current().id() == caller, r));
    });
    let (on_caller, r) = refused_rx.try_recv().expect("answered at once");
    assert!(on_caller);
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Overloaded);

    // Once the engine thread is free again, the queued jobs are answered in order.
    gate.open.send(()).unwrap();
    let held = held.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(floats(&held.unwrap()[0]), vec![1.0]);
    for want in 0..2 {
        let (i, r) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(i, want);
        assert_eq!(floats(&r.unwrap()[0]), vec![2.0 * want as f32]);
    }
    assert_eq!(fake.runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_at_once() {
    let (fake, _gate) = fake();
    let service = start(&fake, DEFAULT_QUEUE_CAPACITY);
    many_callers(&fake, &service).await;
    assert!(fake
        .threads
        .lock()
        .unwrap()
        .iter()
        .all(|t| t == "gyrus-engine"));
}

/// The same with quick models run on the callers' threads whenever the engine is idle: the
/// two ways mix under load and every caller still gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_at_once_some_inline() {
    let (fake, _gate) = fake();
    let service = InferenceService::start(fake.clone(), ServiceConfig::default()).unwrap();
    many_callers(&fake, &service).await;
}

async fn many_callers(fake: &Arc<Fake>, service: &InferenceService) {
    let mut tasks = Vec::new();
    for task in 0..16 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let x = (task * 1000 + i) as f32;
                let out = service
                    .infer("double", input(&[x, -x]), ShapePolicy::Exact)
                    .await
                    .unwrap();
                assert_eq!(floats(&out[0]), vec![2.0 * x, -2.0 * x]);
            }
        }));
    }
    // Callbacks from plain threads at the same time.
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let service = service.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let x = (t * 1000 + i) as f32;
                    let tx = tx.clone();
                    service.submit("double", input(&[x]), ShapePolicy::Exact, move |r| {
                        let _ = tx.send((x, r));
                    });
                }
            })
        })
        .collect();
    drop(tx);
    for t in threads {
        t.join().unwrap();
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut answered = 0;
    while let Ok((x, r)) = rx.recv_timeout(Duration::from_secs(10)) {
        assert_eq!(floats(&r.unwrap()[0]), vec![2.0 * x]);
        answered += 1;
        if answered == 800 {
            break;
        }
    }
    assert_eq!(answered, 800);
    assert_eq!(fake.runs.load(Ordering::SeqCst), 16 * 200 + 800);
}

#[tokio::test]
async fn abandoned_requests_are_skipped() {
    let (fake, gate) = fake();
    let service = start(&fake, 8);
    let (held_tx, held) = mpsc::channel();
    service.submit("gate", input(&[1.0]), ShapePolicy::Exact, move |r| {
        let _ = held_tx.send(r);
    });
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    // Queued behind the held run, then given up on (a client that went away).
    let gone = tokio::time::timeout(
        Duration::from_millis(50),
        service.infer("double", input(&[1.0]), ShapePolicy::Exact),
    )
    .await;
    assert!(gone.is_err());
    gate.open.send(()).unwrap();
    held.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    service
        .infer("double", input(&[2.0]), ShapePolicy::Exact)
        .await
        .unwrap();
    // The gated run and the last one; not the abandoned one.
    assert_eq!(fake.runs.load(Ordering::SeqCst), 2);
}

#[test]
fn the_engine_thread_ends_with_the_last_clone() {
    let (fake, _gate) = fake();
    let weak = Arc::downgrade(&fake);
    let service = start(&fake, 4);
    let clone = service.clone();
    drop(fake);
    drop(service);
    let (tx, rx) = mpsc::channel();
    clone.submit("double", input(&[1.0]), ShapePolicy::Exact, move |r| {
        let _ = tx.send(r);
    });
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap().is_ok());
    drop(clone);
    // The engine thread held the last reference to the backend, and let it go as it ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "engine thread still up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn a_caller_that_goes_away_still_hands_on_the_others() {
    let (fake, gate) = fake();
    let service = start(&fake, 8);
    // Hold the engine thread so that the next two jobs queue up and run back to back: their
    // outputs are handed back together, to the first caller.
    service.submit("gate", input(&[0.0]), ShapePolicy::Exact, |_| {});
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    let first = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .infer("double", input(&[1.0]), ShapePolicy::Exact)
                .await
        }
    });
    let second = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .infer("double", input(&[2.0]), ShapePolicy::Exact)
                .await
        }
    });
    // Let both queue their jobs (this runtime has one thread: they run while this task yields).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.open.send(()).unwrap();
    // Without yielding to the runtime, wait for the engine thread to run both and hand back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.runs.load(Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    // The first caller goes away before it ever sees the delivery...
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // ...and the second still gets its outputs.
    let out = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second caller is answered")
        .unwrap()
        .unwrap();
    assert_eq!(floats(&out[0]), vec![4.0]);
}

/// The threads the fake's runs happened on, from the `from`th run on.
fn threads_since(fake: &Fake, from: usize) -> Vec<String> {
    fake.threads.lock().unwrap()[from..].to_vec()
}

/// Calls "double" until a run happens on the calling thread (the engine thread goes to sleep
/// a moment after it answers; the first run is always on it, the cost being unknown).
async fn until_inline(fake: &Fake, service: &InferenceService, values: &[f32]) {
    let me = std::thread::current().name().unwrap_or("").to_string();
    for _ in 0..200 {
        let from = fake.runs.load(Ordering::SeqCst);
        let out = service
            .infer("double", input(values), ShapePolicy::Exact)
            .await
            .unwrap();
        assert_eq!(floats(&out[0]).len(), values.len());
        if threads_since(fake, from) == [me.clone()] {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("a quick model never ran on the caller's thread");
}

#[tokio::test]
async fn a_quick_model_runs_on_the_callers_thread_once_its_cost_is_known() {
    let (fake, _gate) = fake();
    let service = InferenceService::start(fake.clone(), ServiceConfig::default()).unwrap();
    until_inline(&fake, &service, &[1.0]).await;
    assert_eq!(
        threads_since(&fake, 0)[0],
        "gyrus-engine",
        "the first run is on the engine"
    );

    // A callback is then called on the calling thread too, before `submit` returns.
    std::thread::sleep(Duration::from_millis(5));
    let (tx, rx) = mpsc::channel();
    service.submit("double", input(&[3.0]), ShapePolicy::Exact, move |r| {
        let _ = tx.send((std::thread::current().name().map(String::from), r));
    });
    let (thread, r) = rx.try_recv().expect("answered before submit returned");
    assert_eq!(thread.as_deref(), std::thread::current().name());
    assert_eq!(floats(&r.unwrap()[0]), vec![6.0]);
}

#[tokio::test]
async fn a_slow_model_always_runs_on_the_engine_thread() {
    let (fake, _gate) = fake();
    let service = InferenceService::start(fake.clone(), ServiceConfig::default()).unwrap();
    for _ in 0..5 {
        let out = service
            .infer("slow", input(&[1.0]), ShapePolicy::Exact)
            .await
            .unwrap();
        assert_eq!(floats(&out[0]), vec![1.0]);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(threads_since(&fake, 0), vec!["gyrus-engine"; 5]);
}

#[tokio::test]
async fn a_much_larger_input_than_usual_goes_to_the_engine_thread() {
    let (fake, _gate) = fake();
    let service = InferenceService::start(fake.clone(), ServiceConfig::default()).unwrap();
    until_inline(&fake, &service, &[1.0]).await;
    std::thread::sleep(Duration::from_millis(5));
    // The cost is learnt per input byte: a million floats are estimated far above 50 us.
    let from = fake.runs.load(Ordering::SeqCst);
    let big = vec![1.0; 1_000_000];
    let out = service
        .infer("double", input(&big), ShapePolicy::Exact)
        .await
        .unwrap();
    assert_eq!(floats(&out[0]).len(), big.len());
    assert_eq!(threads_since(&fake, from), vec!["gyrus-engine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_engine_is_busy_a_quick_model_waits_in_the_queue() {
    let (fake, gate) = fake();
    let service = InferenceService::start(fake.clone(), ServiceConfig::default()).unwrap();
    until_inline(&fake, &service, &[1.0]).await;

    let held = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .infer("gate", input(&[1.0]), ShapePolicy::Exact)
                .await
        }
    });
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    let from = fake.runs.load(Ordering::SeqCst);
    let quick = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .infer("double", input(&[4.0]), ShapePolicy::Exact)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !quick.is_finished(),
        "it must wait for the engine, not run beside it"
    );
    gate.open.send(()).unwrap();
    assert_eq!(floats(&held.await.unwrap().unwrap()[0]), vec![1.0]);
    assert_eq!(floats(&quick.await.unwrap().unwrap()[0]), vec![8.0]);
    assert_eq!(threads_since(&fake, from), vec!["gyrus-engine"]);
}
