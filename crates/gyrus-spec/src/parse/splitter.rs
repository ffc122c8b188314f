//! `kind: TrafficSplitter` items (Cortex): the endpoint, and the `apis` list with its rules
//! (weights 0 to 100, the answering APIs' weights summing to 100, one shadow at most, each API
//! once). Which of the named APIs exist and are realtime APIs is checked across the file in
//! the parent module, and against what is deployed by the daemon.

use std::collections::HashMap;

use marked_yaml::Node;

use crate::spec::{SplitTarget, SplitterKind, SplitterSpec};
use crate::walker::{Ctx, Got, IntRange, Section, Spanned};
use crate::yaml::{quote, span_pos, Pos};

use super::schema::SPLITTER;
use super::{endpoint, ApiItem};

/// Reads one splitter item; its spec is set only when the item had no errors.
pub(super) fn splitter_item(ctx: &mut Ctx<'_>, item: &Node) -> ApiItem {
    let errors_before = ctx.errors.len();
    let mut out = ApiItem::empty();
    out.splitter = true;
    let Some(top) = Section::open(ctx, item, String::new(), "", &SPLITTER) else {
        return out;
    };
    out.name = super::item_name(ctx, &top);
    let written = written_endpoint(ctx, &top);
    out.endpoint = endpoint(ctx, written, out.name.as_ref(), None);

    let targets = match top.get("apis") {
        None => {
            top.missing(
                ctx,
                "apis",
                "required: the realtime APIs to share the requests among, each {name, weight}",
            );
            None
        }
        Some(f) => match f.node {
            Node::Sequence(list) if list.is_empty() => {
                ctx.error(span_pos(list.span()), &f.path, "must list at least one API");
                None
            }
            Node::Sequence(list) => {
                let read: Vec<Option<(SplitTarget, Spanned<String>, Pos)>> = list
                    .iter()
                    .enumerate()
                    .map(|(i, node)| target(ctx, node, i))
                    .collect();
                let complete = read.iter().all(Option::is_some);
                let entries: Vec<_> = read.into_iter().flatten().collect();
                // The sum is checked only when every weight could be read.
                let ok = rules(ctx, &entries, &f.path, f.at(), out.name.as_ref(), complete);
                (ok && complete).then_some(entries)
            }
            _ => {
                let _: Got<()> = f.wrong(ctx, "a list of {name, weight} entries");
                None
            }
        },
    };
    if let Some(entries) = &targets {
        out.targets = entries.iter().map(|(_, name, _)| name.clone()).collect();
    }
    if ctx.errors.len() == errors_before {
        if let (Some(name), Some((endpoint, _, _)), Some(entries)) =
            (&out.name, &out.endpoint, targets)
        {
            out.split = Some(SplitterSpec {
                name: name.value.clone(),
                kind: SplitterKind::TrafficSplitter,
                endpoint: endpoint.clone(),
                apis: entries.into_iter().map(|(t, _, _)| t).collect(),
            });
        }
    }
    out
}

/// `endpoint`, or Cortex's `networking.endpoint` (one of them).
fn written_endpoint(ctx: &mut Ctx<'_>, top: &Section<'_>) -> Got<String> {
    let plain = top.string(ctx, "endpoint");
    let nested = match top.child(ctx, "networking", "networking", &SPLITTER) {
        Some(sec) => sec.string(ctx, "endpoint"),
        None => Got::Invalid,
    };
    match (plain, nested) {
        (Got::Set(a), Got::Set(b)) => {
            let later = if a.at > b.at { a } else { b };
            ctx.error(
                later.at,
                &later.path,
                "endpoint and networking.endpoint are the same field: set only one of them",
            );
            Got::Invalid
        }
        (Got::Invalid, _) | (_, Got::Invalid) => Got::Invalid,
        (Got::Set(e), Got::Absent) | (Got::Absent, Got::Set(e)) => Got::Set(e),
        (Got::Absent, Got::Absent) => Got::Absent,
    }
}

/// One `{name, weight, shadow}` entry, with where its name and weight are written.
fn target(ctx: &mut Ctx<'_>, node: &Node, i: usize) -> Option<(SplitTarget, Spanned<String>, Pos)> {
    let sec = Section::open(ctx, node, format!("apis[{i}]"), "apis[]", &SPLITTER)?;
    let name = super::required_name(ctx, &sec, "required: the name of a realtime API");
    let weight = match sec.int(ctx, "weight", IntRange::between(0, 100)) {
        Got::Absent => {
            sec.missing(
                ctx,
                "weight",
                "required: the percent of requests this API gets (0 to 100)",
            );
            None
        }
        got => got.set().map(|w| (w.value, w.at)),
    };
    let shadow = sec.boolean(ctx, "shadow");
    let (name, (weight, weight_at)) = (name?, weight?);
    if shadow.is_invalid() {
        return None;
    }
    Some((
        SplitTarget {
            name: name.value.clone(),
            weight,
            shadow: shadow.or(false),
        },
        name,
        weight_at,
    ))
}

/// The list's rules. Returns whether they hold (errors are reported).
fn rules(
    ctx: &mut Ctx<'_>,
    entries: &[(SplitTarget, Spanned<String>, Pos)],
    path: &str,
    at: Pos,
    own_name: Option<&Spanned<String>>,
    check_sum: bool,
) -> bool {
    let errors_before = ctx.errors.len();
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    let mut first_shadow: Option<Pos> = None;
    for (t, name, _) in entries {
        if own_name.is_some_and(|own| own.value == t.name) {
            ctx.error(
                name.at,
                &name.path,
                "a traffic splitter cannot send requests to itself: name a realtime API",
            );
        }
        if let Some(first) = seen.get(t.name.as_str()) {
            ctx.error(
                name.at,
                &name.path,
                format!(
                    "api {} is listed twice (first at line {}); each API appears once",
                    quote(&t.name),
                    first.line
                ),
            );
        } else {
            seen.insert(&t.name, name.at);
        }
        if t.shadow {
            match first_shadow {
                Some(first) => ctx.error(
                    name.at,
                    &name.path,
                    format!(
                        "only one API may be the shadow (the first is at line {})",
                        first.line
                    ),
                ),
                None => first_shadow = Some(name.at),
            }
        }
    }
    let answering: Vec<&SplitTarget> = entries
        .iter()
        .map(|(t, _, _)| t)
        .filter(|t| !t.shadow)
        .collect();
    if check_sum && answering.is_empty() {
        ctx.error(
            at,
            path,
            "must list at least one API that answers (one that is not shadow: true)",
        );
    }
    let sum: u32 = answering.iter().map(|t| t.weight).sum();
    if check_sum && !answering.is_empty() && sum != 100 {
        let parts: Vec<String> = answering
            .iter()
            .map(|t| format!("{} {}", t.name, t.weight))
            .collect();
        ctx.error(
            at,
            path,
            format!(
                "the weights of the APIs that are not the shadow must sum to 100, found {sum} ({})",
                parts.join(" + ")
            ),
        );
    }
    ctx.errors.len() == errors_before
}
