//! The shared table of invalid configs (`tests/invalid-configs/<case>/` at the workspace root):
//! each case's `cortex.yaml`, loaded with the case directory as the project directory, must
//! fail with exactly the text of its `expected.txt`. The same table drives the end-to-end test
//! of `gyrus validate`.
//!
//! `GYRUS_BLESS=1 cargo test -p gyrus-spec --test invalid_configs` rewrites the expected files
//! from the current output (review the diff before committing).

use std::fs;
use std::path::{Path, PathBuf};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/invalid-configs")
}

#[test]
fn every_invalid_config_fails_with_its_expected_output() {
    let bless = std::env::var_os("GYRUS_BLESS").is_some();
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("tests/invalid-configs exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.join("cortex.yaml").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 25, "only {} cases", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        let text = fs::read_to_string(case.join("cortex.yaml")).expect("readable cortex.yaml");
        let actual = match gyrus_spec::load("cortex.yaml", &text, Some(case)) {
            Ok(parsed) => format!("unexpectedly valid: {parsed:?}"),
            Err(err) => err.to_string(),
        };
        let expected_path = case.join("expected.txt");
        if bless {
            fs::write(&expected_path, format!("{actual}\n")).expect("writable expected.txt");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end_matches('\n') != actual {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{actual}\n",
                case.display(),
                expected.trim_end_matches('\n')
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
