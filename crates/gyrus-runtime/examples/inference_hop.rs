//! What the inference service's thread hop costs: the same inference run inline on a
//! single-threaded tokio runtime (as the replica's handlers did before the service) and through
//! [`InferenceService::infer`] (one bounded-channel send to the engine thread, one oneshot
//! back), one call at a time (latency) and from 64 tasks at once (throughput).
//!
//! ```text
//! cargo run --release -p gyrus-runtime --example inference_hop              # a trivial fake model
//! ORT_DYLIB_PATH=... cargo run --release -p gyrus-runtime --example inference_hop -- iris.onnx
//! taskset -c 0 target/release/examples/inference_hop iris.onnx   # one core, like bench/onnx_bench.py
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use gyrus_engine::{DataType, ModelSignature, ShapePolicy, Tensor, TensorData, TensorInfo};
use gyrus_runtime::{
    Backend, InferenceError, InferenceService, ModelInfo, OnnxBackend, ServiceConfig,
};

/// y = x, copied: about the cost of moving a small tensor, nothing more.
struct Copy {
    models: Vec<ModelInfo>,
}

impl Backend for Copy {
    fn models(&self) -> &[ModelInfo] {
        &self.models
    }
    fn infer(
        &self,
        _model: &str,
        inputs: Vec<Tensor>,
        _policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, InferenceError> {
        Ok(inputs)
    }
}

fn input(info: &ModelInfo) -> Vec<Tensor> {
    info.signature
        .inputs
        .iter()
        .map(|t| {
            let shape: Vec<i64> = t
                .shape
                .iter()
                .map(|d| if *d < 0 { 1 } else { *d })
                .collect();
            let count = shape.iter().product::<i64>() as usize;
            Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                data: TensorData::Raw(vec![0; count * t.dtype.size().unwrap_or(1)]),
            }
        })
        .collect()
}

fn percentiles(mut d: Vec<Duration>) -> String {
    d.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let mean = d.iter().map(|x| us(*x)).sum::<f64>() / d.len() as f64;
    format!(
        "p50 {:6.1} us  p99 {:6.1} us  mean {:6.1} us",
        us(d[d.len() / 2]),
        us(d[d.len() * 99 / 100]),
        mean
    )
}

/// Context switches (voluntary + involuntary) of this thread and of the engine thread, from
/// /proc (Linux).
fn switches() -> (u64, u64) {
    let count = |status: &str| -> u64 {
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    };
    let mut mine = 0;
    let mut engine = 0;
    let me = gettid().to_string();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            if comm.trim() == "gyrus-engine" {
                engine = count(&status);
            } else if task.file_name().to_string_lossy() == me {
                mine = count(&status);
            }
        }
    }
    (mine, engine)
}

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend: Arc<dyn Backend> = match std::env::args().nth(1) {
        Some(path) => {
            let library = std::env::var("ORT_DYLIB_PATH").map_err(|_| "set ORT_DYLIB_PATH")?;
            gyrus_engine::init_library(std::path::Path::new(&library))?;
            let model = gyrus_engine::Model::load(
                "m",
                std::path::Path::new(&path),
                &gyrus_engine::SessionConfig::default(),
                &mut |w| eprintln!("warning: {w}"),
            )?;
            Arc::new(OnnxBackend::new(gyrus_engine::ModelSet::new(vec![model])))
        }
        None => Arc::new(Copy {
            models: vec![ModelInfo {
                name: "m".into(),
                version: "1".into(),
                platform: "onnxruntime_onnx",
                signature: ModelSignature {
                    inputs: vec![TensorInfo {
                        name: "x".into(),
                        dtype: DataType::Fp32,
                        shape: vec![1, 4],
                    }],
                    outputs: vec![],
                },
            }],
        }),
    };
    let info = backend.models()[0].clone();
    // Every inference through the engine thread (the hop itself), and as the replica runs it
    // (quick models on the caller's thread while the engine is idle).
    let always_hop = ServiceConfig {
        inline_below: Duration::ZERO,
        ..ServiceConfig::default()
    };
    let mode = std::env::var("SERVICE").unwrap_or_default();
    let config = if mode == "default" {
        ServiceConfig::default()
    } else {
        always_hop
    };
    println!(
        "service: {} (SERVICE=default for the replica's own settings)",
        if mode == "default" {
            "default"
        } else {
            "every inference on the engine thread"
        }
    );
    let service = InferenceService::start(backend.clone(), config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = 20_000;
    rt.block_on(async {
        for round in 0..2 {
            let mut inline = Vec::with_capacity(n);
            let mut hop = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                backend
                    .infer(&info.name, input(&info), ShapePolicy::Exact)
                    .unwrap();
                inline.push(t.elapsed());
                let t = Instant::now();
                service
                    .infer(&info.name, input(&info), ShapePolicy::Exact)
                    .await
                    .unwrap();
                hop.push(t.elapsed());
            }
            if round == 1 {
                println!("one at a time, inline:  {}", percentiles(inline));
                println!("one at a time, service: {}", percentiles(hop));
            }
        }
        for via_service in [false, true] {
            let before = switches();
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let (service, backend, info) = (service.clone(), backend.clone(), info.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n / 64 {
                        if via_service {
                            service
                                .infer(&info.name, input(&info), ShapePolicy::Exact)
                                .await
                                .unwrap();
                        } else {
                            backend
                                .infer(&info.name, input(&info), ShapePolicy::Exact)
                                .unwrap();
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let per_s = (n / 64 * 64) as f64 / started.elapsed().as_secs_f64();
            let how = if via_service { "service" } else { "inline " };
            let after = switches();
            let per_job = |a: u64, b: u64| (a - b) as f64 / (n / 64 * 64) as f64;
            println!(
                "64 tasks, {how}: {per_s:9.0} inferences/s; context switches per inference: \
                 this thread {:.2}, engine thread {:.2}",
                per_job(after.0, before.0),
                per_job(after.1, before.1)
            );
        }
    });
    Ok(())
}
