//! What a field may hold: the accepted spellings of an enumeration ([`Names`]) and the
//! allowed ranges of integers and numbers ([`IntRange`], [`FloatRange`]), with the messages
//! that say so.

/// The accepted spellings of an enumeration, for `Field::named`.
pub(crate) struct Names<T: 'static> {
    /// What a value is, in messages (`unknown {what} "x"`).
    pub what: &'static str,
    /// The names listed in messages, with their values.
    pub canonical: &'static [(&'static str, T)],
    /// Other accepted spellings (not listed, but suggested when close).
    pub aliases: &'static [(&'static str, T)],
    /// Whether case is ignored when matching.
    pub ignore_case: bool,
    /// Names to suggest for common wrong ones (compared ignoring case): `(wrong, suggestion)`.
    pub hints: &'static [(&'static str, &'static str)],
}

impl<T: Copy> Names<T> {
    pub(super) fn all(&self) -> impl Iterator<Item = &(&'static str, T)> {
        self.canonical.iter().chain(self.aliases)
    }

    pub(super) fn find(&self, text: &str) -> Option<T> {
        self.all()
            .find(|(name, _)| {
                *name == text || (self.ignore_case && name.eq_ignore_ascii_case(text))
            })
            .map(|(_, v)| *v)
    }

    /// `unknown {what} {found}: expected one of {canonical}`, with the nearest accepted
    /// spelling (ignoring case) when one is close.
    pub(super) fn unknown_message(&self, text: &str, found: &str) -> String {
        let lower = text.to_ascii_lowercase();
        let hint = self
            .hints
            .iter()
            .find(|(wrong, _)| wrong.eq_ignore_ascii_case(text))
            .map(|(_, suggestion)| *suggestion);
        let nearest = || {
            let mut best: Option<(f64, &str)> = None;
            for (name, _) in self.all() {
                let score = strsim::jaro_winkler(&lower, &name.to_ascii_lowercase());
                if score >= 0.8 && best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, name));
                }
            }
            best.map(|(_, name)| name)
        };
        let names: Vec<&str> = self.canonical.iter().map(|(n, _)| *n).collect();
        let mut message = format!(
            "unknown {} {found}: expected one of {}",
            self.what,
            names.join(", ")
        );
        if let Some(suggestion) = hint.or_else(nearest) {
            message.push_str(&format!(" (did you mean \"{suggestion}\"?)"));
        }
        message
    }
}

/// An integer field's allowed range (inclusive).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntRange {
    pub min: i128,
    pub max: i128,
}

impl IntRange {
    pub const fn at_least(min: i128) -> Self {
        IntRange {
            min,
            max: u32::MAX as i128,
        }
    }

    pub const fn between(min: i128, max: i128) -> Self {
        IntRange { min, max }
    }

    /// Why `value` (outside the range; `None` when too large to read) is refused.
    pub(super) fn message(&self, value: Option<i128>) -> String {
        let open_ended = self.max == i128::from(u32::MAX);
        match value {
            Some(v) if open_ended && v < self.min => format!("must be at least {}", self.min),
            _ if open_ended => format!("must be at most {}", self.max),
            _ => format!("must be between {} and {}", self.min, self.max),
        }
    }
}

/// A number field's allowed range.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FloatRange {
    /// `> x`
    Above(f64),
    /// `>= x`
    AtLeast(f64),
    /// `>= a` and `< b`
    From(f64, f64),
}

impl FloatRange {
    pub(super) fn contains(&self, v: f64) -> bool {
        match *self {
            FloatRange::Above(x) => v > x,
            FloatRange::AtLeast(x) => v >= x,
            FloatRange::From(a, b) => v >= a && v < b,
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            FloatRange::Above(x) => format!("must be greater than {x}"),
            FloatRange::AtLeast(x) => format!("must be at least {x}"),
            FloatRange::From(a, b) => format!("must be at least {a} and less than {b}"),
        }
    }
}
