//! `kind: TrafficSplitter` items that are valid: what they resolve to, beside the APIs.

use gyrus_spec::{SplitTarget, SplitterKind};

#[test]
fn a_splitter_resolves_beside_its_apis() {
    let text = "\
- name: iris-a
  predictor: {type: python, path: p.py}
- name: iris
  kind: TrafficSplitter
  apis:
    - name: iris-a
      weight: 80
    - name: iris-b  # deployed already
      weight: 20
    - name: iris-shadow
      weight: 50
      shadow: true
- name: canary
  kind: TrafficSplitter
  networking:
    endpoint: /v1/canary
  apis:
    - {name: iris-a, weight: 100}
";
    let parsed = gyrus_spec::load("cortex.yaml", text, None).expect("valid");
    assert_eq!(parsed.apis.len(), 1);
    let [iris, canary] = &parsed.splitters[..] else {
        panic!("two splitters: {:?}", parsed.splitters)
    };
    assert_eq!(iris.name, "iris");
    assert_eq!(iris.kind, SplitterKind::TrafficSplitter);
    assert_eq!(iris.endpoint, "/iris");
    let weights: Vec<(&str, u32)> = iris
        .answering()
        .map(|t| (t.name.as_str(), t.weight))
        .collect();
    assert_eq!(weights, [("iris-a", 80), ("iris-b", 20)]);
    assert_eq!(
        iris.shadow(),
        Some(&SplitTarget {
            name: "iris-shadow".into(),
            weight: 50,
            shadow: true
        })
    );
    assert_eq!(canary.endpoint, "/v1/canary");
    assert!(canary.shadow().is_none());
    // The JSON form reads back, with its kind.
    let json = serde_json::to_value(iris).expect("serializes");
    assert_eq!(json["kind"], "TrafficSplitter");
    let back: gyrus_spec::SplitterSpec = serde_json::from_value(json).expect("reads back");
    assert_eq!(&back, iris);
}

#[test]
fn a_splitter_endpoint_conflicts_with_an_api() {
    let text = "\
- name: a
  predictor: {type: python, path: p.py}
- name: split
  kind: TrafficSplitter
  endpoint: /a
  apis: [{name: a, weight: 100}]
- name: a
  kind: TrafficSplitter
  apis: [{name: split, weight: 100}]
";
    let err = gyrus_spec::load("cortex.yaml", text, None).expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("endpoint \"/a\" is already used by api \"a\""),
        "{text}"
    );
    assert!(text.contains("duplicate API name \"a\""), "{text}");
    assert!(
        text.contains("api \"split\" is a TrafficSplitter"),
        "{text}"
    );
}
