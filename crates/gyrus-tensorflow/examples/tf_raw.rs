//! The raw floor of TensorFlow serving in gyrus: one SavedModel loaded with
//! [`gyrus_tensorflow::Model::load`] (one intra-op and one inter-op thread, as a replica loads
//! it) and [`Model::infer`] timed per call at batch 1, the input tensors built in each call as a
//! server builds them after decoding JSON. No HTTP, no JSON. Used by `bench/tf_bench.py`.
//!
//! ```sh
//! cargo build --release -p gyrus-tensorflow --example tf_raw
//! GYRUS_TF_LIBRARY=.venv/lib/python3.11/site-packages/tensorflow/libtensorflow_cc.so.2 \
//!     target/release/examples/tf_raw MODEL_DIR ITERATIONS NAME=V1,V2,.. [NAME=..]
//! ```
//!
//! Every input is float32 and named with its values; an input whose signature has rank 2 is fed
//! as `[1, len]`, rank 1 as `[len]`. Prints one line of JSON: latency per call in microseconds
//! (p50, p99, mean, min) and the outputs of the last call, flattened, to check the answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gyrus_engine::{DataType, ShapePolicy, Tensor, TensorData};
use gyrus_tensorflow::{Model, SessionConfig};

type Error = Box<dyn std::error::Error>;

const USAGE: &str = "usage: tf_raw MODEL_DIR ITERATIONS NAME=V1,V2,.. [NAME=..] \
                     (GYRUS_TF_LIBRARY must name libtensorflow_cc.so.2)";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tf_raw: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args.iter().any(|a| a == "-h" || a == "--help") {
        return Err(USAGE.into());
    }
    let dir = PathBuf::from(&args[0]);
    let iterations: usize = args[1].parse()?;
    if iterations == 0 {
        return Err("ITERATIONS must be at least 1".into());
    }
    let lib = std::env::var_os("GYRUS_TF_LIBRARY").ok_or(USAGE)?;
    gyrus_tensorflow::init_library(&PathBuf::from(lib))?;
    let model = Model::load("model", &dir, None, &SessionConfig::default())?;

    let mut inputs: Vec<(String, Vec<i64>, Vec<f32>)> = Vec::new();
    for arg in &args[2..] {
        let (name, list) = arg.split_once('=').ok_or(USAGE)?;
        let values = list
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<Vec<_>, _>>()?;
        let info = model
            .signature()
            .inputs
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| format!("the model has no input {name:?}"))?;
        let shape = if info.shape.len() == 2 {
            vec![1, values.len() as i64]
        } else {
            vec![values.len() as i64]
        };
        inputs.push((name.to_string(), shape, values));
    }

    let call = || {
        let tensors = inputs
            .iter()
            .map(|(name, shape, values)| Tensor {
                name: name.clone(),
                dtype: DataType::Fp32,
                shape: shape.clone(),
                data: TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            })
            .collect();
        model.infer(tensors, ShapePolicy::Exact)
    };
    // Warm-up: TensorFlow prepares its executors on the first runs.
    for _ in 0..iterations.clamp(1, 200) {
        call()?;
    }
    let mut times = Vec::with_capacity(iterations);
    let mut last = Vec::new();
    for _ in 0..iterations {
        let start = Instant::now();
        last = std::hint::black_box(call()?);
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(|a, b| a.total_cmp(b));
    let outputs: Vec<String> = last
        .iter()
        .map(|t| Ok(format!("\"{}\": [{}]", t.name, values(t)?.join(", "))))
        .collect::<Result<_, Error>>()?;
    println!(
        "{{\"iterations\": {iterations}, \"p50_us\": {:.2}, \"p99_us\": {:.2}, \"mean_us\": {mean:.2}, \
         \"min_us\": {:.2}, \"outputs\": {{{}}}}}",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times[0],
        outputs.join(", ")
    );
    Ok(())
}

/// A numeric output's elements as JSON numbers.
fn values(t: &Tensor) -> Result<Vec<String>, Error> {
    let TensorData::Raw(bytes) = &t.data else {
        return Err(format!("output {:?} is not numeric", t.name).into());
    };
    let out = match t.dtype {
        DataType::Fp32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()).to_string())
            .collect(),
        DataType::Fp64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()).to_string())
            .collect(),
        DataType::Int64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()).to_string())
            .collect(),
        DataType::Int32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()).to_string())
            .collect(),
        other => return Err(format!("output {:?} is {other:?}", t.name).into()),
    };
    Ok(out)
}

fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
