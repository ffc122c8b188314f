//! The raw floor of ONNX serving: ONNX Runtime's own `Session::run` on one model, single
//! threaded, timed per call the way a server would do it (input tensor creation, `run`, copying
//! every output out of ONNX Runtime's memory). No HTTP, no JSON. Used by `bench/onnx_bench.py`.
//!
//! ```sh
//! cargo build --release -p gyrus-engine --example raw_floor
//! ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.31.1 \
//!     target/release/examples/raw_floor model.onnx [ITERATIONS] [--input 5.1,3.5,1.4,0.2]
//! ```
//!
//! Every model input must be a float32 tensor; dynamic dimensions are taken as 1 (batch 1).
//! Without `--input`, a 4-element input is the iris sample `[5.1, 3.5, 1.4, 0.2]` and any other
//! input counts up in steps of 0.01. Prints one line of JSON: latency per call in microseconds
//! (p50, p99, mean, min, max) and the outputs of the last call, to check the model's answer.
//!
//! `raw_floor --serve 127.0.0.1:PORT` is the other floor, of HTTP on loopback: a minimal
//! HTTP/1.1 keep-alive responder (std only, a thread per connection, TCP_NODELAY) that reads
//! each request, its body included, and answers `200 {}`. A client's latency against it is the
//! loopback round trip that no server can go below.

use std::borrow::Cow;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

use ort::session::{builder::GraphOptimizationLevel, Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef};

type Error = Box<dyn std::error::Error>;

/// Parsed command line: the model, how many timed calls, optional input values.
struct Args {
    model: String,
    iterations: usize,
    input: Option<Vec<f32>>,
}

fn parse_args() -> Result<Args, Error> {
    let mut positional = Vec::new();
    let mut input = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--input" {
            let list = args
                .next()
                .ok_or("--input needs a comma-separated list of numbers")?;
            let values = list
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<Vec<_>, _>>()?;
            input = Some(values);
        } else if arg == "-h" || arg == "--help" {
            return Err("usage: raw_floor MODEL.onnx [ITERATIONS] [--input 1,2,3] \
                        (ORT_DYLIB_PATH must name libonnxruntime) | raw_floor --serve ADDR"
                .into());
        } else {
            positional.push(arg);
        }
    }
    let model = positional
        .first()
        .ok_or("usage: raw_floor MODEL.onnx [ITERATIONS]")?
        .clone();
    let iterations = match positional.get(1) {
        Some(n) => n.parse()?,
        None => 20_000,
    };
    if iterations == 0 {
        return Err("ITERATIONS must be at least 1".into());
    }
    Ok(Args {
        model,
        iterations,
        input,
    })
}

/// One model input: its name, its shape at batch 1, and the values fed to it.
struct Input {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn model_inputs(session: &Session, given: Option<&[f32]>) -> Result<Vec<Input>, Error> {
    let mut inputs = Vec::new();
    for outlet in session.inputs() {
        let dtype = outlet.dtype();
        if dtype.tensor_type() != Some(TensorElementType::Float32) {
            return Err(format!(
                "input {:?} is {dtype}; raw_floor feeds float32 only",
                outlet.name()
            )
            .into());
        }
        let dims = dtype.tensor_shape().ok_or("input is not a tensor")?;
        let shape: Vec<usize> = dims
            .iter()
            .map(|&d| if d < 0 { 1 } else { d as usize })
            .collect();
        let len: usize = shape.iter().product();
        let data = match given {
            Some(values) if values.len() == len => values.to_vec(),
            Some(values) => {
                return Err(format!(
                    "--input has {} values but input {:?} needs {len} (shape {shape:?})",
                    values.len(),
                    outlet.name()
                )
                .into())
            }
            None if len == 4 => vec![5.1, 3.5, 1.4, 0.2],
            None => (0..len).map(|i| i as f32 * 0.01).collect(),
        };
        inputs.push(Input {
            name: outlet.name().to_string(),
            shape,
            data,
        });
    }
    Ok(inputs)
}

/// Runs the model once: tensors from borrowed input data (as a server would after decoding
/// JSON), `run`, then every output copied into owned vectors. Returns the outputs as JSON.
fn call(
    session: &mut Session,
    inputs: &[Input],
) -> Result<Vec<(String, serde_json::Value)>, Error> {
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let tensor = TensorRef::from_array_view((input.shape.clone(), &input.data[..]))?;
        values.push((Cow::Borrowed(input.name.as_str()), tensor.into()));
    }
    let outputs = session.run(values)?;
    let mut result = Vec::with_capacity(outputs.len());
    for (name, value) in outputs.iter() {
        let json = match value.dtype().tensor_type() {
            Some(TensorElementType::Float32) => {
                let (_, data) = value.try_extract_tensor::<f32>()?;
                serde_json::json!(data.to_vec())
            }
            Some(TensorElementType::Int64) => {
                let (_, data) = value.try_extract_tensor::<i64>()?;
                serde_json::json!(data.to_vec())
            }
            Some(TensorElementType::Float64) => {
                let (_, data) = value.try_extract_tensor::<f64>()?;
                serde_json::json!(data.to_vec())
            }
            Some(TensorElementType::Int32) => {
                let (_, data) = value.try_extract_tensor::<i32>()?;
                serde_json::json!(data.to_vec())
            }
            other => return Err(format!("output {name:?} has unsupported type {other:?}").into()),
        };
        result.push((name.to_string(), json));
    }
    Ok(result)
}

fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

/// The loopback HTTP floor: answers every request on `addr` with `200 {}` until killed.
fn serve(addr: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(addr)?;
    eprintln!(
        "raw_floor: serving 200 {{}} on http://{}",
        listener.local_addr()?
    );
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = answer(stream);
        });
    }
    Ok(())
}

/// Serves one keep-alive connection: every complete request (head and Content-Length body) in
/// the buffer gets the fixed response; returns when the client closes.
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let body_len = content_length(&buf[..end]);
            let total = end + 4 + body_len;
            if buf.len() < total {
                break;
            }
            buf.drain(..total);
            stream.write_all(RESPONSE)?;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

fn run() -> Result<(), Error> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--serve") {
        let addr = argv
            .next()
            .ok_or("--serve needs an address, e.g. 127.0.0.1:8080")?;
        return serve(&addr);
    }
    let args = parse_args()?;
    let dylib = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
        "ORT_DYLIB_PATH must name libonnxruntime.so (e.g. the onnxruntime wheel's capi/)"
    })?;
    let env = ort::init_from(&dylib)?.with_name("raw_floor").build()?;
    let mut session = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .commit_from_file(&args.model)?;
    let inputs = model_inputs(&session, args.input.as_deref())?;

    let warmup = (args.iterations / 10).clamp(100, 2_000);
    for _ in 0..warmup {
        black_box(call(&mut session, &inputs)?);
    }
    let mut micros = Vec::with_capacity(args.iterations);
    let mut last = Vec::new();
    for _ in 0..args.iterations {
        let start = Instant::now();
        last = black_box(call(&mut session, &inputs)?);
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    micros.sort_by(f64::total_cmp);
    let outputs: serde_json::Map<String, serde_json::Value> = last.into_iter().collect();
    let report = serde_json::json!({
        "model": args.model,
        "iterations": args.iterations,
        "warmup": warmup,
        "p50_us": percentile(&micros, 50.0),
        "p99_us": percentile(&micros, 99.0),
        "mean_us": mean,
        "min_us": micros[0],
        "max_us": micros[micros.len() - 1],
        "outputs": outputs,
    });
    println!("{report}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
