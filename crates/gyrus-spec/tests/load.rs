//! Valid configs: the seeds' examples, defaults, the legacy format, the `models` shapes, the
//! JSON round trip of resolved specs and the YAML printer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gyrus_spec::{
    load, ApiKind, ApiSpec, AutoscalingSpec, ComputeSpec, ConfigFormat, CountOrPercent, Cpu,
    DurationSpec, ExecutionMode, ExecutionProviderName, GraphOptimizationLevel, Memory, ModelType,
    ModelsSpec, NamedModel, OnnxOptions, PredictorSpec, PredictorType, TrackerSpec,
    UpdateStrategySpec,
};
use serde_json::json;

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/project")
}

fn load_ok(text: &str) -> Vec<ApiSpec> {
    match load("cortex.yaml", text, Some(&project())) {
        Ok(parsed) => parsed.apis,
        Err(e) => panic!("{e}"),
    }
}

fn load_one(text: &str) -> ApiSpec {
    let mut apis = load_ok(text);
    assert_eq!(apis.len(), 1);
    apis.remove(0)
}

/// Seed 000 (ONNX), example section.
const SEED_000: &str = "\
- name: my-api
  predictor:
    type: onnx
    path: predictor.py
    model: s3://my-bucket/my-model.onnx
  compute:
    gpu: 1
";

/// Seed 001 (kind: api), example section.
const SEED_001: &str = "\
- kind: api
  name: my-api
  predictor:
    path: predictor.py
  compute:
    gpu: 1
";

/// Seed 003 (Python), example section.
const SEED_003: &str = "\
- name: my-api
  predictor:
    type: python
    path: predictor.py
  compute:
    gpu: 1
";

fn python_predictor() -> PredictorSpec {
    PredictorSpec {
        kind: PredictorType::Python,
        path: Some("predictor.py".into()),
        model: None,
        models: None,
        config: serde_json::Map::new(),
        python_path: None,
        env: BTreeMap::new(),
        onnx: None,
        s3: None,
        signature_key: None,
        server_side_batching: None,
        batching: None,
        preinstalled_packages: true,
    }
}

#[test]
fn seed_examples_parse() {
    let onnx = load_one(SEED_000);
    assert_eq!(onnx.predictor.kind, PredictorType::Onnx);
    assert_eq!(
        onnx.predictor.model.as_deref(),
        Some("s3://my-bucket/my-model.onnx")
    );
    assert_eq!(onnx.compute.gpu, 1);
    assert_eq!(onnx.endpoint, "/my-api");

    let legacy = load_one(SEED_001);
    assert_eq!(legacy.format, ConfigFormat::Legacy);
    assert_eq!(legacy.predictor, python_predictor());
    assert_eq!(legacy.compute.gpu, 1);

    let python = load_one(SEED_003);
    assert_eq!(python.format, ConfigFormat::Current);
    assert_eq!(python.predictor, python_predictor());
    assert_eq!(python.compute.gpu, 1);

    // Without a project directory nothing is looked up on disk.
    for seed in [SEED_000, SEED_001, SEED_003] {
        assert!(load("cortex.yaml", seed, None).is_ok());
    }
}

#[test]
fn seed_config_templates_with_every_field_parse() {
    let api = load_one(
        "\
- name: iris-classifier
  endpoint: /iris/predict
  predictor:
    type: python
    path: predictor.py
    config:
      bucket: my-bucket
      threshold: 0.5
      retries: 3
      debug: false
      labels: [setosa, versicolor]
      quoted: \"12\"
    python_path: src
    env:
      LOG_LEVEL: debug
      WORKERS: 4
      VERBOSE: true
  tracker:
    key: label
    model_type: classification
  compute:
    cpu: 1.5
    gpu: 0
    mem: 512Mi
  autoscaling:
    min_replicas: 2
    max_replicas: 10
    init_replicas: 3
    workers_per_replica: 2
    threads_per_worker: 4
    target_replica_concurrency: 6.5
    max_replica_concurrency: 64
    window: 30s
    downscale_stabilization_period: 1m30s
    upscale_stabilization_period: 250ms
    max_downscale_factor: 0.75
    max_upscale_factor: 2
    downscale_tolerance: 0.05
    upscale_tolerance: 0
  update_strategy:
    max_surge: 1
    max_unavailable: 0%
",
    );
    let expected = ApiSpec {
        name: "iris-classifier".into(),
        kind: ApiKind::RealtimeAPI,
        endpoint: "/iris/predict".into(),
        predictor: PredictorSpec {
            kind: PredictorType::Python,
            path: Some("predictor.py".into()),
            model: None,
            models: None,
            config: json!({
                "bucket": "my-bucket", "threshold": 0.5, "retries": 3, "debug": false,
                "labels": ["setosa", "versicolor"], "quoted": "12",
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            python_path: Some("src".into()),
            env: [
                ("LOG_LEVEL", "debug"),
                ("WORKERS", "4"),
                ("VERBOSE", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            onnx: None,
            s3: None,
            signature_key: None,
            server_side_batching: None,
            batching: None,
            preinstalled_packages: true,
        },
        tracker: Some(TrackerSpec {
            key: Some("label".into()),
            model_type: ModelType::Classification,
        }),
        compute: ComputeSpec {
            cpu: Cpu::from_millis(1500),
            gpu: 0,
            mem: Some(Memory::from_bytes(512 << 20)),
        },
        autoscaling: AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 10,
            init_replicas: 3,
            workers_per_replica: 2,
            threads_per_worker: 4,
            target_replica_concurrency: 6.5,
            max_replica_concurrency: 64,
            window: DurationSpec::from_secs(30),
            downscale_stabilization_period: DurationSpec::from_secs(90),
            upscale_stabilization_period: DurationSpec::new(std::time::Duration::from_millis(250)),
            max_downscale_factor: 0.75,
            max_upscale_factor: 2.0,
            downscale_tolerance: 0.05,
            upscale_tolerance: 0.0,
            target_cpu_utilization: None,
        },
        update_strategy: UpdateStrategySpec {
            max_surge: CountOrPercent::Count(1),
            max_unavailable: CountOrPercent::Percent(0),
        },
        format: ConfigFormat::Current,
    };
    assert_eq!(api, expected);
}

#[test]
fn a_minimal_config_resolves_to_the_defaults() {
    let api = load_one("- name: iris\n  predictor:\n    type: python\n    path: predictor.py\n");
    assert_eq!(
        api,
        ApiSpec {
            name: "iris".into(),
            kind: ApiKind::RealtimeAPI,
            endpoint: "/iris".into(),
            predictor: python_predictor(),
            tracker: None,
            compute: ComputeSpec {
                cpu: Cpu::from_millis(200),
                gpu: 0,
                mem: None,
            },
            autoscaling: AutoscalingSpec {
                min_replicas: 1,
                max_replicas: 100,
                init_replicas: 1,
                workers_per_replica: 1,
                threads_per_worker: 1,
                target_replica_concurrency: 1.0,
                max_replica_concurrency: 1024,
                window: DurationSpec::from_secs(60),
                downscale_stabilization_period: DurationSpec::from_secs(300),
                upscale_stabilization_period: DurationSpec::from_secs(0),
                max_downscale_factor: 0.5,
                max_upscale_factor: 10.0,
                downscale_tolerance: 0.1,
                upscale_tolerance: 0.1,
                target_cpu_utilization: None,
            },
            update_strategy: UpdateStrategySpec {
                max_surge: CountOrPercent::Percent(25),
                max_unavailable: CountOrPercent::Percent(25),
            },
            format: ConfigFormat::Current,
        }
    );
    assert_eq!(api.autoscaling, AutoscalingSpec::default());
    assert_eq!(api.compute, ComputeSpec::default());
    assert_eq!(api.update_strategy, UpdateStrategySpec::default());
}

#[test]
fn derived_defaults_follow_other_fields() {
    let api = load_one(
        "\
- name: iris
  predictor: {type: python, path: predictor.py}
  autoscaling: {min_replicas: 3, workers_per_replica: 2, threads_per_worker: 5}
",
    );
    assert_eq!(api.autoscaling.init_replicas, 3);
    assert_eq!(api.autoscaling.target_replica_concurrency, 10.0);
}

#[test]
fn empty_sections_and_nulls_mean_defaults() {
    let api = load_one(
        "\
- name: iris
  endpoint:
  predictor:
    type: python
    path: predictor.py
    config:
    env: {}
  compute: {}
  autoscaling:
  update_strategy: {max_surge: ~}
",
    );
    assert_eq!(api.endpoint, "/iris");
    assert_eq!(api.predictor, python_predictor());
    assert_eq!(api.autoscaling, AutoscalingSpec::default());
    assert_eq!(api.update_strategy, UpdateStrategySpec::default());
}

#[test]
fn the_legacy_format_maps_onto_the_same_spec() {
    let parsed = load(
        "cortex.yaml",
        "\
- kind: deployment
  name: iris
- kind: api
  name: classifier
  predictor:
    path: predictor.py
    model: s3://bucket/model.pt
    python_path: src
    metadata:
      labels: [setosa, versicolor, virginica]
  tracker:
    model_type: classification
  compute:
    min_replicas: 2
    max_replicas: 4
    target_cpu_utilization: 60
    cpu: 1
    mem: 1G
- kind: api
  name: other
  endpoint: /custom
  predictor:
    path: predictor.py
",
        Some(&project()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let [classifier, other] = &parsed.apis[..] else {
        panic!("expected two APIs: {:?}", parsed.apis);
    };
    assert_eq!(classifier.format, ConfigFormat::Legacy);
    assert_eq!(classifier.kind, ApiKind::RealtimeAPI);
    assert_eq!(classifier.endpoint, "/iris/classifier");
    assert_eq!(classifier.predictor.kind, PredictorType::Python);
    assert_eq!(
        classifier.predictor.model.as_deref(),
        Some("s3://bucket/model.pt")
    );
    assert_eq!(classifier.predictor.python_path.as_deref(), Some("src"));
    assert_eq!(
        serde_json::Value::Object(classifier.predictor.config.clone()),
        json!({"labels": ["setosa", "versicolor", "virginica"]})
    );
    assert_eq!(
        classifier.tracker.as_ref().map(|t| t.model_type),
        Some(ModelType::Classification)
    );
    assert_eq!(classifier.autoscaling.min_replicas, 2);
    assert_eq!(classifier.autoscaling.max_replicas, 4);
    assert_eq!(classifier.autoscaling.init_replicas, 2);
    assert_eq!(classifier.autoscaling.target_cpu_utilization, Some(60));
    assert_eq!(classifier.compute.cpu.millis(), 1000);
    assert_eq!(
        classifier.compute.mem.map(|m| m.bytes()),
        Some(1_000_000_000)
    );
    assert_eq!(classifier.update_strategy, UpdateStrategySpec::default());

    assert_eq!(other.endpoint, "/custom");
    assert_eq!(other.autoscaling.target_cpu_utilization, Some(80));
    assert_eq!(other.autoscaling.min_replicas, 1);

    let [warning] = &parsed.warnings[..] else {
        panic!("expected one warning: {:?}", parsed.warnings);
    };
    assert_eq!(warning.line, 16);
    assert_eq!(
        warning.field.as_deref(),
        Some("compute.target_cpu_utilization")
    );
    assert_eq!(warning.api.as_deref(), Some("classifier"));
}

#[test]
fn legacy_without_deployment_uses_the_api_name() {
    let api = load_one(SEED_001);
    assert_eq!(api.endpoint, "/my-api");
    assert_eq!(api.autoscaling.target_cpu_utilization, Some(80));
}

#[test]
fn models_as_a_list_with_aliases() {
    let api = load_one(
        "\
- name: iris
  predictor:
    type: onnx
    path: predictor.py
    models:
      - name: iris-a
        model: s3://bucket/a.onnx
      - name: iris-b
        model_path: models/iris.onnx
",
    );
    assert_eq!(
        api.predictor.models,
        Some(ModelsSpec {
            paths: vec![
                NamedModel {
                    name: "iris-a".into(),
                    model: "s3://bucket/a.onnx".into(),
                    signature_key: None,
                    batching: None,
                },
                NamedModel {
                    name: "iris-b".into(),
                    model: "models/iris.onnx".into(),
                    signature_key: None,
                    batching: None,
                },
            ],
            dir: None,
            signature_key: None,
        })
    );
    assert_eq!(api.predictor.model, None);
}

#[test]
fn models_as_a_mapping() {
    let api = load_one(
        "\
- name: iris
  predictor:
    type: onnx
    models:
      paths:
        - name: iris
          model_path: models/iris
        - name: remote
          model: gs://bucket/remote.onnx
",
    );
    let models = api.predictor.models.unwrap_or_else(|| panic!("no models"));
    assert_eq!(models.paths.len(), 2);
    assert_eq!(models.paths[0].model, "models/iris");
    assert_eq!(models.dir, None);
    assert_eq!(api.predictor.path, None);

    let api =
        load_one("- name: iris\n  predictor:\n    type: onnx\n    models:\n      dir: models\n");
    assert_eq!(
        api.predictor.models,
        Some(ModelsSpec {
            paths: vec![],
            dir: Some("models".into()),
            signature_key: None,
        })
    );
    let api = load_one(
        "- name: iris\n  predictor:\n    type: tensorflow\n    models: {dir: s3://bucket/models/}\n",
    );
    assert_eq!(api.predictor.kind, PredictorType::Tensorflow);
}

#[test]
fn local_and_absolute_model_paths() {
    let absolute = project().join("models/iris.onnx");
    let text = format!(
        "- name: iris\n  predictor:\n    type: onnx\n    model: {}\n",
        absolute.display()
    );
    assert_eq!(
        load_one(&text).predictor.model.as_deref(),
        Some(absolute.to_string_lossy().as_ref())
    );
    load_one("- name: iris\n  predictor:\n    type: onnx\n    model: ./models/iris.onnx\n");
}

#[test]
fn kinds_and_single_mapping() {
    let api =
        load_one("name: iris\nkind: SyncAPI\npredictor: {type: python, path: predictor.py}\n");
    assert_eq!(api.kind, ApiKind::RealtimeAPI);
    let api = load_one("- name: batch\n  kind: BatchAPI\n  predictor: {type: python, path: predictor.py}\n  compute: {cpu: 2}\n");
    assert_eq!(api.kind, ApiKind::BatchAPI);
    assert_eq!(api.compute.cpu.to_string(), "2");
    let apis = load_ok(
        "\
- name: a
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
- name: b
  predictor: {type: python, path: ./predictor.py}
",
    );
    assert_eq!(apis.len(), 2);
    assert_eq!(apis[1].endpoint, "/b");
}

#[test]
fn json_round_trip_is_exact() {
    let apis = load_ok(&format!(
        "{SEED_000}{}{}",
        SEED_003.replace("my-api", "python-api"),
        "\
- name: full
  predictor:
    type: onnx
    models:
      paths: [{name: m, model: s3://b/m.onnx}]
    config: {nested: {list: [1, 2.5, \"x\", null, true]}}
    env: {A: b}
  tracker: {model_type: regression}
  compute: {cpu: 250m, mem: 1.5Gi}
  autoscaling: {target_replica_concurrency: 2.25, window: 1h30m, upscale_stabilization_period: 0}
  update_strategy: {max_surge: 3, max_unavailable: 10%}
"
    ));
    assert_eq!(apis.len(), 3);
    for api in &apis {
        let value = serde_json::to_value(api).unwrap_or_default();
        let back: ApiSpec =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"));
        assert_eq!(&back, api);
        let text = serde_json::to_string(api).unwrap_or_default();
        let back: ApiSpec = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(&back, api);
    }
    let full = serde_json::to_value(&apis[2]).unwrap_or_default();
    assert_eq!(full["kind"], "RealtimeAPI");
    assert_eq!(full["format"], "current");
    assert_eq!(full["predictor"]["type"], "onnx");
    assert_eq!(full["tracker"]["model_type"], "regression");
    assert_eq!(full["compute"]["cpu"], "250m");
    assert_eq!(full["compute"]["mem"], "1536Mi");
    assert_eq!(full["autoscaling"]["window"], "1h30m");
    assert_eq!(full["autoscaling"]["upscale_stabilization_period"], "0s");
    assert_eq!(full["update_strategy"]["max_surge"], 3);
    assert_eq!(full["update_strategy"]["max_unavailable"], "10%");
}

#[test]
fn specs_print_as_parseable_yaml() {
    let apis = load_ok(&format!("{SEED_000}{}", SEED_003.replace("my-api", "b")));
    let value = serde_json::to_value(&apis).unwrap_or_default();
    let text = serde_saphyr::to_string(&value).unwrap_or_default();
    assert!(text.starts_with("- "), "{text}");
    assert!(text.starts_with("- name: my-api\n"), "{text}");
    assert!(text.contains("\n  kind: RealtimeAPI\n"), "{text}");
    assert!(text.contains("\n  endpoint: /my-api\n"), "{text}");
    assert!(text.contains("  tracker: null\n"), "{text}");
    assert!(text.contains("    config: {}\n"), "{text}");
    assert!(text.contains("    cpu: 200m\n"), "{text}");
    assert!(text.contains("\n    execution_providers: auto\n"), "{text}");
    assert!(
        text.contains("\n      graph_optimization_level: enable_all\n"),
        "{text}"
    );
    // It parses back to the same value.
    let node = parse_back(&text);
    assert_eq!(yaml_to_json(&node), value, "{text}");
}

/// What a YAML reader (marked-yaml, without coercion) makes of the printed text.
fn parse_back(text: &str) -> marked_yaml::Node {
    marked_yaml::parse_yaml_with_options(
        0,
        text,
        marked_yaml::LoaderOptions::default()
            .toplevel_sequence()
            .prevent_coercion(true),
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A minimal YAML-to-JSON conversion for the test (core schema for plain scalars).
fn yaml_to_json(node: &marked_yaml::Node) -> serde_json::Value {
    use marked_yaml::Node;
    use serde_json::Value;
    match node {
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), yaml_to_json(v)))
                .collect(),
        ),
        Node::Sequence(s) => Value::Array(s.iter().map(yaml_to_json).collect()),
        Node::Scalar(s) if !s.may_coerce() => Value::String(s.as_str().to_string()),
        Node::Scalar(s) => match s.as_str() {
            "null" | "~" | "" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            text => text
                .parse::<i64>()
                .map(Value::from)
                .ok()
                .or_else(|| {
                    text.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                })
                .unwrap_or_else(|| Value::String(text.to_string())),
        },
    }
}

#[test]
fn diagnostics_serialize_and_display() {
    let err = load(
        "cortex.yaml",
        "- name: Bad\n  predictor: {type: python}\n",
        None,
    )
    .err()
    .unwrap_or_else(|| panic!("expected errors"));
    assert_eq!(err.diagnostics.len(), 2);
    let first = serde_json::to_value(&err.diagnostics[0]).unwrap_or_default();
    assert_eq!(first["file"], "cortex.yaml");
    assert_eq!(first["line"], 1);
    assert_eq!(first["api"], "Bad");
    assert_eq!(first["field"], "name");
    assert_eq!(
        err.to_string().lines().count(),
        2,
        "one line per diagnostic: {err}"
    );
}

#[test]
fn truncated_and_mangled_inputs_never_panic() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/invalid-configs");
    let mut texts: Vec<String> = vec![SEED_000.into(), SEED_001.into(), SEED_003.into()];
    for entry in std::fs::read_dir(cases).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("cortex.yaml")) {
            texts.push(text);
        }
    }
    for text in &texts {
        for (cut, _) in text.char_indices() {
            let _ = load("cortex.yaml", &text[..cut], Some(&project()));
            let _ = load("cortex.yaml", &text[cut..], None);
        }
        let _ = load("cortex.yaml", &text.replace(": ", ":\n  - "), None);
        let _ = load("cortex.yaml", &text.replace("  ", "\t"), None);
    }
}

#[test]
fn a_second_document_is_rejected() {
    let err = load("cortex.yaml", &format!("{SEED_003}---\n{SEED_000}"), None)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "cortex.yaml:7:1: expected a single YAML document, found a second one (put every \
             API in one list)"
        )
    );
}

// --- ONNX Runtime session options ---------------------------------------------------------

/// An ONNX API with `predictor_extra` appended to its predictor and `compute_extra` as its
/// compute section.
fn onnx_api(predictor_extra: &str, compute: &str) -> ApiSpec {
    load_one(&format!(
        "- name: iris\n  predictor:\n    type: onnx\n    model: s3://bucket/iris.onnx\n\
         {predictor_extra}  compute: {compute}\n"
    ))
}

fn onnx_options(predictor_extra: &str, compute: &str) -> OnnxOptions {
    onnx_api(predictor_extra, compute)
        .predictor
        .onnx
        .unwrap_or_else(|| panic!("no onnx options"))
}

#[test]
fn onnx_options_default_from_compute_cpu() {
    let defaults = OnnxOptions {
        intra_op_num_threads: 1,
        inter_op_num_threads: 1,
        graph_optimization_level: GraphOptimizationLevel::EnableAll,
        execution_mode: ExecutionMode::Sequential,
        execution_providers: None,
    };
    // The default cpu is 200m: one thread.
    assert_eq!(load_one(SEED_000).predictor.onnx, Some(defaults.clone()));
    assert_eq!(onnx_options("", "{}"), defaults);
    assert_eq!(onnx_options("", "{cpu: 200m}"), defaults);
    assert_eq!(OnnxOptions::defaults_for(Cpu::default()), defaults);
    for (cpu, threads) in [
        ("1", 1),
        ("1000m", 1),
        ("1001m", 2),
        ("2", 2),
        ("2.5", 3),
        ("16", 16),
    ] {
        let options = onnx_options("", &format!("{{cpu: {cpu}}}"));
        assert_eq!(options.intra_op_num_threads, threads, "cpu {cpu}");
        assert_eq!(options.inter_op_num_threads, 1, "cpu {cpu}");
    }
    // Written values win over the default, 0 included (ONNX Runtime decides).
    let options = onnx_options(
        "    session_options: {intra_op_num_threads: 0, inter_op_num_threads: 0}\n",
        "{cpu: 2.5}",
    );
    assert_eq!(options.intra_op_num_threads, 0);
    assert_eq!(options.inter_op_num_threads, 0);
    let options = onnx_options(
        "    session_options: {intra_op_num_threads: 4}\n",
        "{cpu: 1}",
    );
    assert_eq!(options.intra_op_num_threads, 4);
    // Null and empty sections mean defaults; so does `auto`.
    for extra in [
        "    session_options:\n",
        "    session_options: {}\n",
        "    session_options: {}\n    execution_providers: auto\n",
        "    execution_providers: AUTO\n",
        "    execution_providers: ~\n",
    ] {
        assert_eq!(onnx_options(extra, "{}"), defaults, "{extra}");
    }
    // A BatchAPI's ONNX predictor has them too.
    let batch = load_one(
        "- name: b\n  kind: BatchAPI\n  predictor:\n    type: onnx\n    model: s3://b/m.onnx\n    \
         session_options: {execution_mode: parallel}\n  compute: {cpu: 3}\n",
    );
    let options = batch.predictor.onnx.unwrap_or_else(|| panic!("no options"));
    assert_eq!(options.execution_mode, ExecutionMode::Parallel);
    assert_eq!(options.intra_op_num_threads, 3);
}

#[test]
fn only_onnx_predictors_have_onnx_options() {
    assert_eq!(load_one(SEED_003).predictor.onnx, None);
    assert_eq!(load_one(SEED_001).predictor.onnx, None);
    let tf = load_one("- name: tf\n  predictor:\n    type: tensorflow\n    model: s3://b/m\n");
    assert_eq!(tf.predictor.onnx, None);
}

#[test]
fn every_spelling_of_the_onnx_options() {
    use ExecutionProviderName::{Cpu as CpuEp, Cuda, Tensorrt};
    use GraphOptimizationLevel::*;
    for (text, level) in [
        ("disable_all", DisableAll),
        ("enable_basic", EnableBasic),
        ("enable_extended", EnableExtended),
        ("enable_all", EnableAll),
        ("ORT_DISABLE_ALL", DisableAll),
        ("ORT_ENABLE_BASIC", EnableBasic),
        ("ORT_ENABLE_EXTENDED", EnableExtended),
        ("ORT_ENABLE_ALL", EnableAll),
        ("\"enable_basic\"", EnableBasic),
    ] {
        let extra = format!("    session_options: {{graph_optimization_level: {text}}}\n");
        assert_eq!(
            onnx_options(&extra, "{}").graph_optimization_level,
            level,
            "{text}"
        );
    }
    for (text, mode) in [
        ("sequential", ExecutionMode::Sequential),
        ("parallel", ExecutionMode::Parallel),
        ("ORT_SEQUENTIAL", ExecutionMode::Sequential),
        ("ORT_PARALLEL", ExecutionMode::Parallel),
    ] {
        let extra = format!("    session_options: {{execution_mode: {text}}}\n");
        assert_eq!(onnx_options(&extra, "{}").execution_mode, mode, "{text}");
    }
    for (text, providers) in [
        ("[tensorrt, cuda, cpu]", vec![Tensorrt, Cuda, CpuEp]),
        (
            "[TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]",
            vec![Tensorrt, Cuda, CpuEp],
        ),
        (
            "[TensorRTExecutionProvider, cudaexecutionprovider, CpuExecutionProvider]",
            vec![Tensorrt, Cuda, CpuEp],
        ),
        ("[TensorRT, CUDA, CPU]", vec![Tensorrt, Cuda, CpuEp]),
        // Not ending in cpu is fine: CPU is always the last resort.
        ("[cuda]", vec![Cuda]),
        ("[cpu, cuda]", vec![CpuEp, Cuda]),
        ("\n      - \"tensorrt\"\n      - cpu", vec![Tensorrt, CpuEp]),
    ] {
        let extra = format!("    execution_providers: {text}\n");
        assert_eq!(
            onnx_options(&extra, "{}").execution_providers,
            Some(providers),
            "{text}"
        );
    }
    // The names the types print, serialize as and parse from agree.
    for level in GraphOptimizationLevel::ALL {
        assert_eq!(level.to_string(), level.as_str());
        assert_eq!(
            serde_json::to_value(level).ok(),
            Some(json!(level.as_str()))
        );
        let extra = format!(
            "    session_options: {{graph_optimization_level: {}}}\n",
            level.ort_name()
        );
        assert_eq!(onnx_options(&extra, "{}").graph_optimization_level, level);
    }
    for mode in ExecutionMode::ALL {
        assert_eq!(mode.to_string(), mode.as_str());
        assert_eq!(serde_json::to_value(mode).ok(), Some(json!(mode.as_str())));
        assert!(mode.ort_name().starts_with("ORT_"));
    }
    for provider in ExecutionProviderName::ALL {
        assert_eq!(provider.to_string(), provider.as_str());
        assert_eq!(
            serde_json::to_value(provider).ok(),
            Some(json!(provider.as_str()))
        );
        let extra = format!("    execution_providers: [{}]\n", provider.ort_name());
        assert_eq!(
            onnx_options(&extra, "{}").execution_providers,
            Some(vec![provider])
        );
    }
    assert_eq!(Tensorrt.ort_name(), "TensorrtExecutionProvider");
    assert_eq!(Cuda.ort_name(), "CUDAExecutionProvider");
    assert_eq!(CpuEp.ort_name(), "CPUExecutionProvider");
}

#[test]
fn inter_op_threads_without_parallel_mode_warn() {
    let text = "\
- name: iris
  predictor:
    type: onnx
    model: s3://bucket/iris.onnx
    session_options:
      inter_op_num_threads: 4
";
    let parsed = load("cortex.yaml", text, None).unwrap_or_else(|e| panic!("{e}"));
    let [warning] = &parsed.warnings[..] else {
        panic!("expected one warning: {:?}", parsed.warnings);
    };
    assert_eq!((warning.line, warning.column), (6, 29));
    assert_eq!(
        warning.to_string(),
        "cortex.yaml:6:29: api \"iris\": predictor.session_options.inter_op_num_threads: has \
         no effect while execution_mode is sequential (the default); set execution_mode: \
         parallel to run independent operators at once"
    );
    for quiet in [
        text.replace("4\n", "1\n"),
        format!("{text}      execution_mode: parallel\n"),
        format!("{text}      execution_mode: ORT_PARALLEL\n"),
    ] {
        let parsed = load("cortex.yaml", &quiet, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.warnings, vec![], "{quiet}");
    }
}

/// An ONNX API with every option written, and one with the defaults.
const ONNX_APIS: &str = "\
- name: tuned
  predictor:
    type: onnx
    model: s3://bucket/iris.onnx
    session_options:
      intra_op_num_threads: 0
      inter_op_num_threads: 2
      graph_optimization_level: ORT_ENABLE_EXTENDED
      execution_mode: parallel
    execution_providers: [TensorrtExecutionProvider, CUDA, cpu]
  compute:
    cpu: 2.5
- name: auto
  predictor:
    type: onnx
    model: models/iris.onnx
";

#[test]
fn onnx_options_round_trip_through_json() {
    let apis = load_ok(&format!("{ONNX_APIS}{SEED_003}"));
    let [tuned, auto, python] = &apis[..] else {
        panic!("expected three APIs: {apis:?}");
    };
    assert_eq!(
        tuned.predictor.onnx,
        Some(OnnxOptions {
            intra_op_num_threads: 0,
            inter_op_num_threads: 2,
            graph_optimization_level: GraphOptimizationLevel::EnableExtended,
            execution_mode: ExecutionMode::Parallel,
            execution_providers: Some(vec![
                ExecutionProviderName::Tensorrt,
                ExecutionProviderName::Cuda,
                ExecutionProviderName::Cpu,
            ]),
        })
    );
    for api in &apis {
        let text = serde_json::to_string(api).unwrap_or_default();
        let back: ApiSpec = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(&back, api);
    }
    // In JSON the options sit in the predictor as in a config file.
    let value = serde_json::to_value(tuned).unwrap_or_default();
    assert_eq!(
        value["predictor"]["session_options"],
        json!({
            "intra_op_num_threads": 0,
            "inter_op_num_threads": 2,
            "graph_optimization_level": "enable_extended",
            "execution_mode": "parallel",
        })
    );
    assert_eq!(
        value["predictor"]["execution_providers"],
        json!(["tensorrt", "cuda", "cpu"])
    );
    let value = serde_json::to_value(auto).unwrap_or_default();
    assert_eq!(value["predictor"]["execution_providers"], "auto");
    assert_eq!(
        value["predictor"]["session_options"]["intra_op_num_threads"],
        1
    );
    // Other predictors have neither key.
    let value = serde_json::to_value(python).unwrap_or_default();
    let keys: Vec<&String> = value["predictor"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "type",
            "path",
            "model",
            "models",
            "config",
            "python_path",
            "env",
            "preinstalled_packages"
        ]
    );

    // A spec stored before these options existed still reads, with no options.
    let mut old = serde_json::to_value(tuned).unwrap_or_default();
    if let Some(p) = old["predictor"].as_object_mut() {
        p.remove("session_options");
        p.remove("execution_providers");
    }
    let back: ApiSpec = serde_json::from_value(old).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.predictor.onnx, None);
    assert_eq!(back.predictor.model, tuned.predictor.model);
    // execution_providers defaults to auto; alone, or misspelt, it is an error.
    let mut value = serde_json::to_value(tuned).unwrap_or_default();
    if let Some(p) = value["predictor"].as_object_mut() {
        p.remove("execution_providers");
    }
    let back: ApiSpec = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        back.predictor.onnx.map(|o| o.execution_providers),
        Some(None)
    );
    let mut alone = value.clone();
    if let Some(p) = alone["predictor"].as_object_mut() {
        p.remove("session_options");
        p.insert("execution_providers".into(), json!("auto"));
    }
    assert!(serde_json::from_value::<ApiSpec>(alone).is_err());
    value["predictor"]["execution_providers"] = json!("automatic");
    assert!(serde_json::from_value::<ApiSpec>(value.clone()).is_err());
    value["predictor"]["execution_providers"] = json!(["rocm"]);
    assert!(serde_json::from_value::<ApiSpec>(value).is_err());

    // OnnxOptions on its own: flat, with execution_providers as "auto" or a list.
    for options in [tuned.predictor.onnx.clone(), auto.predictor.onnx.clone()]
        .into_iter()
        .flatten()
    {
        let value = serde_json::to_value(&options).unwrap_or_default();
        let back: OnnxOptions =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"));
        assert_eq!(back, options);
    }
    let auto_value = serde_json::to_value(auto.predictor.onnx.clone()).unwrap_or_default();
    assert_eq!(auto_value["execution_providers"], "auto");
}

#[test]
fn specs_print_the_onnx_options_as_yaml() {
    let apis = load_ok(&format!("{ONNX_APIS}{SEED_003}"));
    let value = serde_json::to_value(&apis).unwrap_or_default();
    let text = serde_saphyr::to_string(&value).unwrap_or_default();
    let predictor = |name: &str| {
        let start = text
            .find(&format!("- name: {name}\n"))
            .and_then(|i| text[i..].find("  predictor:\n").map(|j| i + j))
            .unwrap_or_else(|| panic!("no predictor for {name}: {text}"));
        let end = text[start..]
            .find("  tracker:")
            .map_or(text.len(), |j| start + j);
        text[start..end].to_string()
    };
    assert_eq!(
        predictor("tuned"),
        "  predictor:
    type: onnx
    path: null
    model: s3://bucket/iris.onnx
    models: null
    config: {}
    python_path: null
    env: {}
    session_options:
      intra_op_num_threads: 0
      inter_op_num_threads: 2
      graph_optimization_level: enable_extended
      execution_mode: parallel
    execution_providers:
    - tensorrt
    - cuda
    - cpu
    preinstalled_packages: true
"
    );
    assert_eq!(
        predictor("auto"),
        "  predictor:
    type: onnx
    path: null
    model: models/iris.onnx
    models: null
    config: {}
    python_path: null
    env: {}
    session_options:
      intra_op_num_threads: 1
      inter_op_num_threads: 1
      graph_optimization_level: enable_all
      execution_mode: sequential
    execution_providers: auto
    preinstalled_packages: true
"
    );
    assert!(!predictor("my-api").contains("session_options"), "{text}");
    assert!(
        !predictor("my-api").contains("execution_providers"),
        "{text}"
    );
    // It parses back to the same value, and to the same specs.
    let node = parse_back(&text);
    let back = yaml_to_json(&node);
    assert_eq!(back, value, "{text}");
    let specs: Vec<ApiSpec> = serde_json::from_value(back).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(specs, apis);
}

#[test]
fn tensorflow_signature_keys_and_server_side_batching() {
    let api = load_one(
        "\
- name: iris
  predictor:
    type: tensorflow
    path: predictor.py
    model: s3://bucket/iris/
    signature_key: predict
    server_side_batching:
      max_batch_size: 8
      batch_interval: 100ms
",
    );
    assert_eq!(api.predictor.signature_key.as_deref(), Some("predict"));
    let batching = api.predictor.server_side_batching.unwrap();
    assert_eq!(batching.max_batch_size, 8);
    assert_eq!(
        batching.batch_interval.as_duration(),
        std::time::Duration::from_millis(100)
    );
    let back: ApiSpec = serde_json::from_value(serde_json::to_value(&api).unwrap()).unwrap();
    assert_eq!(back, api);

    let api = load_one(
        "\
- name: multi
  predictor:
    type: tensorflow
    models:
      signature_key: serving_default
      paths:
        - name: a
          model_path: s3://bucket/a/
          signature_key: predict
        - name: b
          model_path: s3://bucket/b/
",
    );
    let models = api.predictor.models.clone().unwrap();
    assert_eq!(models.signature_key.as_deref(), Some("serving_default"));
    assert_eq!(models.paths[0].signature_key.as_deref(), Some("predict"));
    assert_eq!(models.paths[1].signature_key, None);
    let back: ApiSpec = serde_json::from_value(serde_json::to_value(&api).unwrap()).unwrap();
    assert_eq!(back, api);
}

#[test]
fn engine_batching_with_defaults_and_per_model() {
    let api = load_one(
        "\
- name: mlp
  predictor:
    type: onnx
    batching: {}
    models:
      - name: a
        model: s3://bucket/a.onnx
        batching:
          max_batch_size: 8
          max_latency: 50ms
          max_queue_delay: 2ms
      - name: b
        model: s3://bucket/b.onnx
        batching: {enabled: false}
",
    );
    let all = api.predictor.batching.unwrap();
    assert_eq!(all, gyrus_spec::BatchingSpec::default());
    assert!(all.enabled);
    assert_eq!(all.max_batch_size, 32);
    let models = api.predictor.models.clone().unwrap();
    let a = models.paths[0].batching.unwrap();
    assert_eq!(a.max_batch_size, 8);
    assert_eq!(
        a.max_latency.map(|d| d.as_duration()),
        Some(std::time::Duration::from_millis(50))
    );
    assert_eq!(
        a.max_queue_delay.as_duration(),
        std::time::Duration::from_millis(2)
    );
    assert_eq!(a.max_queue_size, 1024);
    assert!(!models.paths[1].batching.unwrap().enabled);
    let back: ApiSpec = serde_json::from_value(serde_json::to_value(&api).unwrap()).unwrap();
    assert_eq!(back, api);
}

/// `gyrus validate -o yaml` prints with serde-saphyr: strings that a YAML reader would take for
/// something else (booleans of YAML 1.1, numbers, null, markers) come back as the same strings.
#[test]
fn yaml_output_keeps_strings_that_look_like_other_things() {
    let tricky = [
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "True",
        "null",
        "~",
        "",
        "0x10",
        "0o7",
        "1e3",
        "012",
        ".5",
        "-",
        "- x",
        "a: b",
        "#c",
        "x #y",
        " lead",
        "trail ",
        "multi\nline",
        "'q'",
        "\"q\"",
        "@at",
        "`tick",
        "%pct",
        "!tag",
        "*star",
        "&amp",
        "{x}",
        "[y]",
        "?",
        "---",
        "...",
        "2026-12-05",
        "12:30",
        "\u{e9}t\u{e9}",
        "tab\there",
    ];
    let env: serde_json::Map<String, serde_json::Value> = tricky
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("K{i}"), serde_json::Value::String(t.to_string())))
        .collect();
    let value = serde_json::json!([{"config": env, "n": [1, 2.5, -3], "b": true, "z": null}]);
    let text = serde_saphyr::to_string(&value).unwrap_or_default();
    let node = parse_back(&text);
    assert_eq!(yaml_to_json(&node), value, "{text}");
    // The YAML 1.2 reading above takes these for strings either way (null and ~ it checks);
    // a YAML 1.1 reader (PyYAML) would not, so they must be quoted.
    for t in [
        "yes", "no", "on", "off", "y", "n", "True", "0x10", "0o7", "1e3", "012",
    ] {
        assert!(
            !text.contains(&format!(": {t}\n")),
            "{t} is not quoted:\n{text}"
        );
    }
}
