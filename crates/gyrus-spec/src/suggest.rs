//! "Did you mean ...?" for names a user typed: the closest known name, when one is close.

/// The candidate most like `word` (Jaro-Winkler, case-insensitive), if it is close enough to
/// be a typo of it rather than another name.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .filter(|c| !c.eq_ignore_ascii_case(&word))
        .map(|c| (strsim::jaro_winkler(&word, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `; did you mean "x"?` for a message, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_name() {
        let names = ["iris-classifier", "hello", "text-generator"];
        assert_eq!(closest("iris-clasifier", names), Some("iris-classifier"));
        assert_eq!(closest("helo", names), Some("hello"));
        assert_eq!(
            closest("Hello", names),
            None,
            "the same name is no suggestion"
        );
        assert_eq!(closest("zzz", names), None);
        assert_eq!(did_you_mean("hellp", names), "; did you mean \"hello\"?");
        assert_eq!(did_you_mean("nothing-like-it", names), "");
    }
}
