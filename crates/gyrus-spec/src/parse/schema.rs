//! The keys each format allows in each section, and the hints given for a key it does not:
//! the current realtime and batch formats, and the legacy `kind: api` / `kind: deployment`.

use crate::walker::Schema;

const AUTOSCALING_KEYS: &[&str] = &[
    "min_replicas",
    "max_replicas",
    "init_replicas",
    "workers_per_replica",
    "threads_per_worker",
    "target_replica_concurrency",
    "max_replica_concurrency",
    "window",
    "downscale_stabilization_period",
    "upscale_stabilization_period",
    "max_downscale_factor",
    "max_upscale_factor",
    "downscale_tolerance",
    "upscale_tolerance",
];

const PREDICTOR_KEYS: &[&str] = &[
    "type",
    "path",
    "model",
    "models",
    "config",
    "python_path",
    "env",
    "session_options",
    "execution_providers",
    "s3",
    "signature_key",
    "server_side_batching",
    "batching",
    "preinstalled_packages",
];

pub(super) const BATCHING_KEYS: &[&str] = &[
    "enabled",
    "max_batch_size",
    "max_latency",
    "max_queue_delay",
    "max_queue_size",
];

pub(super) const SERVER_SIDE_BATCHING: (&str, &[&str]) = (
    "predictor.server_side_batching",
    &["max_batch_size", "batch_interval"],
);

pub(super) const S3_SECTION: (&str, &[&str]) = ("predictor.s3", &["endpoint_url", "region"]);

pub(super) const SESSION_OPTIONS: (&str, &[&str]) = (
    "predictor.session_options",
    &[
        "intra_op_num_threads",
        "inter_op_num_threads",
        "graph_optimization_level",
        "execution_mode",
    ],
);

const MODELS_SECTIONS: [(&str, &[&str]); 3] = [
    ("predictor.models", &["paths", "dir", "signature_key"]),
    (
        "predictor.models[]",
        &["name", "model", "model_path", "signature_key", "batching"],
    ),
    (
        "predictor.models.paths[]",
        &["name", "model_path", "model", "signature_key", "batching"],
    ),
];

const CURRENT_HINTS: &[(&str, &str)] = &[
    ("predictor.models[].path", ", did you mean \"model\"?"),
    (
        "predictor.models.paths[].path",
        ", did you mean \"model_path\"?",
    ),
    (
        "predictor.metadata",
        ", did you mean \"config\"? (metadata is its name in the older kind: api format)",
    ),
    (
        "predictor.providers",
        ", did you mean \"execution_providers\"?",
    ),
    (
        "predictor.session_options.providers",
        ", did you mean \"predictor.execution_providers\"?",
    ),
    (
        "compute.target_cpu_utilization",
        ": gyrus scales on in-flight requests, see autoscaling.target_replica_concurrency",
    ),
];

/// Seeds 000/003: realtime APIs.
pub(super) const REALTIME: Schema = Schema {
    sections: &[
        (
            "",
            &[
                "name",
                "kind",
                "endpoint",
                "predictor",
                "tracker",
                "compute",
                "autoscaling",
                "update_strategy",
            ],
        ),
        ("predictor", PREDICTOR_KEYS),
        SESSION_OPTIONS,
        S3_SECTION,
        SERVER_SIDE_BATCHING,
        ("predictor.batching", BATCHING_KEYS),
        ("predictor.models[].batching", BATCHING_KEYS),
        ("predictor.models.paths[].batching", BATCHING_KEYS),
        MODELS_SECTIONS[0],
        MODELS_SECTIONS[1],
        MODELS_SECTIONS[2],
        ("tracker", &["key", "model_type"]),
        ("compute", &["cpu", "gpu", "mem"]),
        ("autoscaling", AUTOSCALING_KEYS),
        ("update_strategy", &["max_surge", "max_unavailable"]),
    ],
    hints: CURRENT_HINTS,
};

/// Batch APIs: no replicas to scale or update, no tracker.
pub(super) const BATCH: Schema = Schema {
    sections: &[
        ("", &["name", "kind", "endpoint", "predictor", "compute"]),
        ("predictor", PREDICTOR_KEYS),
        SESSION_OPTIONS,
        S3_SECTION,
        SERVER_SIDE_BATCHING,
        ("predictor.batching", BATCHING_KEYS),
        ("predictor.models[].batching", BATCHING_KEYS),
        ("predictor.models.paths[].batching", BATCHING_KEYS),
        MODELS_SECTIONS[0],
        MODELS_SECTIONS[1],
        MODELS_SECTIONS[2],
        ("compute", &["cpu", "gpu", "mem"]),
    ],
    hints: &[
        (
            "autoscaling",
            ": a BatchAPI does not autoscale (the number of workers is set per job)",
        ),
        ("tracker", ": a BatchAPI has no tracker"),
        (
            "update_strategy",
            ": a BatchAPI has no replicas to update (each job starts its own workers)",
        ),
        CURRENT_HINTS[0],
        CURRENT_HINTS[1],
        CURRENT_HINTS[2],
        CURRENT_HINTS[3],
        CURRENT_HINTS[4],
        CURRENT_HINTS[5],
    ],
};

/// Seed 001: `kind: api`.
pub(super) const LEGACY: Schema = Schema {
    sections: &[
        (
            "",
            &[
                "kind",
                "name",
                "endpoint",
                "predictor",
                "tracker",
                "compute",
            ],
        ),
        ("predictor", &["path", "model", "python_path", "metadata"]),
        ("tracker", &["key", "model_type"]),
        (
            "compute",
            &[
                "min_replicas",
                "max_replicas",
                "init_replicas",
                "target_cpu_utilization",
                "cpu",
                "gpu",
                "mem",
            ],
        ),
    ],
    hints: &[
        (
            "predictor.config",
            ", did you mean \"metadata\"? (this API uses the older kind: api format)",
        ),
        (
            "predictor.type",
            ": a kind: api predictor has no type (it is always python); remove kind: api to use \
             the current format",
        ),
        (
            "predictor.env",
            ": the kind: api format has no predictor.env; use a .env file, or remove kind: api \
             to use the current format",
        ),
        (
            "autoscaling",
            ": in the kind: api format, min_replicas, max_replicas and init_replicas go under \
             compute; remove kind: api to use the current format",
        ),
        (
            "update_strategy",
            ": the kind: api format has no update_strategy; remove kind: api to use the current \
             format",
        ),
    ],
};

/// Seed 001: `kind: deployment`.
pub(super) const DEPLOYMENT: Schema = Schema {
    sections: &[("", &["kind", "name"])],
    hints: &[],
};

/// Cortex's `kind: TrafficSplitter`: an endpoint and the APIs its requests are shared among.
pub(super) const SPLITTER: Schema = Schema {
    sections: &[
        ("", &["name", "kind", "endpoint", "networking", "apis"]),
        ("networking", &["endpoint"]),
        ("apis[]", &["name", "weight", "shadow"]),
    ],
    hints: &[
        (
            "predictor",
            ": a TrafficSplitter has no predictor; it shares its requests among the APIs in apis",
        ),
        (
            "compute",
            ": a TrafficSplitter has no replicas; the APIs in apis have their own compute",
        ),
        (
            "autoscaling",
            ": a TrafficSplitter has no replicas; the APIs in apis scale on their own",
        ),
        (
            "update_strategy",
            ": a TrafficSplitter has no replicas; change the weights and deploy again",
        ),
        ("tracker", ": a TrafficSplitter has no tracker"),
    ],
};
