//! The ONNX Runtime options of an onnx predictor: `session_options` and `execution_providers`,
//! kept as a draft until `compute.cpu` gives the default thread count.

use marked_yaml::Node;

use crate::spec::{
    ExecutionMode, ExecutionProviderName, GraphOptimizationLevel, OnnxOptions, PredictorType,
};
use crate::units::Cpu;
use crate::walker::{Ctx, Field, Got, IntRange, Names, Schema, Section};
use crate::yaml::{classify, quote, span_pos, Scalar};

use super::schema::SESSION_OPTIONS;

/// ONNX Runtime's thread counts: 0 lets it decide.
const THREADS: IntRange = IntRange::between(0, 1024);

const LEVELS: Names<GraphOptimizationLevel> = Names {
    what: "graph optimization level",
    canonical: &[
        ("disable_all", GraphOptimizationLevel::DisableAll),
        ("enable_basic", GraphOptimizationLevel::EnableBasic),
        ("enable_extended", GraphOptimizationLevel::EnableExtended),
        ("enable_all", GraphOptimizationLevel::EnableAll),
    ],
    aliases: &[
        ("ORT_DISABLE_ALL", GraphOptimizationLevel::DisableAll),
        ("ORT_ENABLE_BASIC", GraphOptimizationLevel::EnableBasic),
        (
            "ORT_ENABLE_EXTENDED",
            GraphOptimizationLevel::EnableExtended,
        ),
        ("ORT_ENABLE_ALL", GraphOptimizationLevel::EnableAll),
    ],
    ignore_case: false,
    hints: &[
        ("all", "enable_all"),
        ("none", "disable_all"),
        ("basic", "enable_basic"),
        ("extended", "enable_extended"),
    ],
};

const MODES: Names<ExecutionMode> = Names {
    what: "execution mode",
    canonical: &[
        ("sequential", ExecutionMode::Sequential),
        ("parallel", ExecutionMode::Parallel),
    ],
    aliases: &[
        ("ORT_SEQUENTIAL", ExecutionMode::Sequential),
        ("ORT_PARALLEL", ExecutionMode::Parallel),
    ],
    ignore_case: false,
    hints: &[],
};

const PROVIDERS: Names<ExecutionProviderName> = Names {
    what: "execution provider",
    canonical: &[
        ("tensorrt", ExecutionProviderName::Tensorrt),
        ("cuda", ExecutionProviderName::Cuda),
        ("cpu", ExecutionProviderName::Cpu),
    ],
    aliases: &[
        ("TensorrtExecutionProvider", ExecutionProviderName::Tensorrt),
        ("CUDAExecutionProvider", ExecutionProviderName::Cuda),
        ("CPUExecutionProvider", ExecutionProviderName::Cpu),
    ],
    ignore_case: true,
    hints: &[("gpu", "cuda"), ("trt", "tensorrt")],
};

/// The ONNX options as written, before `compute.cpu` gives the default
/// `intra_op_num_threads`.
pub(super) struct OnnxDraft {
    intra_op_num_threads: Option<u32>,
    options: OnnxOptions,
}

impl OnnxDraft {
    pub(super) fn resolve(self, cpu: Cpu) -> OnnxOptions {
        OnnxOptions {
            intra_op_num_threads: self
                .intra_op_num_threads
                .unwrap_or_else(|| OnnxOptions::default_intra_op_num_threads(cpu)),
            ..self.options
        }
    }
}

/// `session_options` and `execution_providers`. For a predictor of another type than onnx
/// their presence is the error; when the type is unknown they are still checked.
pub(super) fn onnx_options(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
    schema: &Schema,
    kind: Option<PredictorType>,
) -> Option<OnnxDraft> {
    if let Some(kind) = kind.filter(|k| *k != PredictorType::Onnx) {
        for key in ["session_options", "execution_providers"] {
            if let (Some(f), Some(at)) = (s.get(key), s.key_pos(key)) {
                ctx.error(
                    at,
                    &f.path,
                    format!("only allowed when predictor.type is onnx, not {kind}"),
                );
            }
        }
        return None;
    }
    let section = s.child(ctx, "session_options", SESSION_OPTIONS.0, schema);
    let written = section.map(|sec| {
        let intra = sec.int(ctx, "intra_op_num_threads", THREADS);
        let inter = sec.int(ctx, "inter_op_num_threads", THREADS);
        let level = match sec.get("graph_optimization_level") {
            Some(f) => f.named(ctx, &LEVELS),
            None => Got::Absent,
        };
        let mode = match sec.get("execution_mode") {
            Some(f) => f.named(ctx, &MODES),
            None => Got::Absent,
        };
        let sequential =
            matches!(&mode, Got::Absent) || mode.value() == Some(ExecutionMode::Sequential);
        if let Some(i) = inter.set().filter(|i| sequential && i.value > 1) {
            ctx.warn(
                i.at,
                &i.path,
                "has no effect while execution_mode is sequential (the default); set \
                 execution_mode: parallel to run independent operators at once",
            );
        }
        OnnxDraft {
            intra_op_num_threads: intra.value(),
            options: OnnxOptions {
                intra_op_num_threads: 0,
                inter_op_num_threads: inter.or(1),
                graph_optimization_level: level.or(GraphOptimizationLevel::EnableAll),
                execution_mode: mode.or(ExecutionMode::Sequential),
                execution_providers: None,
            },
        }
    });
    let providers = execution_providers(ctx, s);
    let mut draft = written?;
    draft.options.execution_providers = providers?;
    Some(draft)
}

/// `execution_providers`: `Some(None)` for `auto` (the default), `Some(Some(list))` for a
/// non-empty list of distinct known providers, `None` when invalid (reported).
fn execution_providers(
    ctx: &mut Ctx<'_>,
    s: &Section<'_>,
) -> Option<Option<Vec<ExecutionProviderName>>> {
    let Some(f) = s.get("execution_providers") else {
        return Some(None);
    };
    let is_auto = |text: &str| text.eq_ignore_ascii_case("auto");
    let list = match f.node {
        Node::Sequence(list) => list,
        Node::Scalar(v) if matches!(classify(v), Scalar::Str(t) if is_auto(t)) => {
            return Some(None)
        }
        _ => {
            f.wrong::<()>(
                ctx,
                "auto or a list of execution providers (like [cuda, cpu])",
            );
            return None;
        }
    };
    if list.is_empty() {
        ctx.error(
            span_pos(list.span()),
            &f.path,
            "must list at least one execution provider (or be auto)",
        );
        return None;
    }
    let errors_before = ctx.errors.len();
    let mut seen: Vec<(ExecutionProviderName, String)> = Vec::new();
    for (i, node) in list.iter().enumerate() {
        let item = Field {
            path: format!("{}[{i}]", f.path),
            node,
        };
        let Got::Set(p) = item.named(ctx, &PROVIDERS) else {
            continue;
        };
        match seen.iter().find(|(v, _)| *v == p.value) {
            Some((_, first)) => {
                let same = if p.found == quote(p.value.as_str()) {
                    String::new()
                } else {
                    format!("{}, ", p.value)
                };
                ctx.error(
                    p.at,
                    &p.path,
                    format!(
                        "duplicate execution provider {} ({same}already listed as {first})",
                        p.found
                    ),
                );
            }
            None => seen.push((p.value, p.path)),
        }
    }
    (ctx.errors.len() == errors_before).then(|| Some(seen.into_iter().map(|(v, _)| v).collect()))
}
