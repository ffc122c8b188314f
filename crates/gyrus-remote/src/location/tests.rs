//! Tests of URL parsing, locations and connection options.
use super::*;

#[test]
fn parses_schemes_keys_and_names() {
    let t = parse("s3://bucket/models/iris.onnx").unwrap();
    assert_eq!(
        (t.scheme, t.bucket.as_str(), t.key.as_str()),
        (Scheme::S3, "bucket", "models/iris.onnx")
    );
    assert_eq!(t.name, "iris.onnx");
    assert!(!t.prefix_only);

    let t = parse("s3://bucket/models/resnet/").unwrap();
    assert_eq!(
        (t.key.as_str(), t.name.as_str(), t.prefix_only),
        ("models/resnet", "resnet", true)
    );

    let t = parse("s3://bucket").unwrap();
    assert_eq!(
        (t.key.as_str(), t.name.as_str(), t.prefix_only),
        ("", "bucket", true)
    );

    let t = parse("gs://b/a%20b.onnx").unwrap();
    assert_eq!(
        (t.scheme, t.key.as_str(), t.name.as_str()),
        (Scheme::Gcs, "a b.onnx", "a b.onnx")
    );

    let t = parse("az://container@acct.dfs.core.windows.net/m.onnx").unwrap();
    assert_eq!((t.scheme, t.bucket.as_str()), (Scheme::Azure, "container"));
    let opts = FetchOptions {
        env: [(
            "AZURE_STORAGE_ACCOUNT_KEY".to_string(),
            "aGVsbG8=".to_string(),
        )]
        .into(),
        ..FetchOptions::default()
    };
    let remote = connect(&t, &opts).unwrap();
    assert_eq!(remote.endpoint, "https://acct.blob.core.windows.net");
    let e = connect(&parse("az://container/m.onnx").unwrap(), &opts).unwrap_err();
    assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT_NAME"), "{e}");

    let t = parse("https://example.com/files/model%201.onnx?sig=abc#frag").unwrap();
    assert_eq!(t.scheme, Scheme::Http);
    assert_eq!(t.url, "https://example.com/files/model%201.onnx?sig=abc");
    assert_eq!(t.name, "model 1.onnx");
    assert_eq!(parse("https://example.com/").unwrap().name, "example.com");
}

#[test]
fn rejects_what_it_cannot_fetch() {
    let e = parse("ftp://host/file").unwrap_err().to_string();
    assert!(e.contains("unsupported scheme \"ftp\""), "{e}");
    assert!(e.contains(&gyrus_spec::model_url_schemes_text()), "{e}");
    assert!(parse("not a url").is_err());
    assert!(parse("s3:///key").is_err());
}

#[test]
fn every_scheme_the_spec_accepts_is_fetched() {
    for scheme in gyrus_spec::MODEL_URL_SCHEMES {
        let url = format!("{scheme}://container/m.onnx");
        assert!(parse(&url).is_ok(), "{url}");
    }
}

fn options(env: &[(&str, &str)]) -> FetchOptions {
    FetchOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..FetchOptions::default()
    }
}

#[test]
fn locations_name_the_place_and_never_a_credential() {
    let s3 = parse("s3://models/iris.onnx").unwrap();
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDSECRETID"),
        ("AWS_SECRET_ACCESS_KEY", "verysecret"),
    ];
    let at = |endpoint: &str| {
        let mut env = keys.to_vec();
        env.push(("AWS_ENDPOINT_URL", endpoint));
        location(&s3, &options(&env))
    };
    let a = at("http://minio-a:9000");
    let b = at("http://minio-b:9000/");
    assert_ne!(a.key, b.key);
    assert!(a.certain && b.certain);
    assert_eq!(b.shown, "http://minio-b:9000");
    // The config's endpoint wins over the environment, and suffices without it.
    let spec = FetchOptions {
        s3_endpoint_url: Some("http://minio-a:9000".into()),
        ..FetchOptions::default()
    };
    let from_spec = location(&s3, &spec);
    assert_eq!(from_spec.key, a.key);
    assert!(from_spec.certain);
    // user:password in an endpoint stays out.
    let with_user = at("http://user:pw@minio-a:9000");
    assert_eq!(with_user.key, a.key);
    for l in [&a, &b, &with_user] {
        for secret in ["AKIDSECRETID", "verysecret", "pw"] {
            assert!(
                !l.key.contains(secret) && !l.shown.contains(secret),
                "{l:?}"
            );
        }
    }
    // AWS itself: the partition, not the region, which may be missing after a restart.
    let east = location(&s3, &options(&[("AWS_REGION", "us-east-1")]));
    let west = location(&s3, &options(&[("AWS_REGION", "eu-west-1")]));
    let china = location(&s3, &options(&[("AWS_REGION", "cn-north-1")]));
    assert_eq!(east.key, west.key);
    assert_ne!(east.key, china.key);
    assert_ne!(east.key, a.key);
    let restart = location(&s3, &FetchOptions::default());
    assert_eq!(restart.key, east.key);
    assert!(!restart.certain);
    // Another bucket is another place.
    let other = location(&parse("s3://other/iris.onnx").unwrap(), &options(&keys));
    assert_ne!(other.key, east.key);

    // Azure: the account, from the URL or the environment.
    let az = parse("az://container/m.onnx").unwrap();
    let acct = |name: &str| {
        location(
            &az,
            &options(&[
                ("AZURE_STORAGE_ACCOUNT_NAME", name),
                ("AZURE_STORAGE_ACCOUNT_KEY", "aGVsbG8="),
            ]),
        )
    };
    assert_ne!(acct("one").key, acct("two").key);
    assert!(!acct("one").key.contains("aGVsbG8="));
    let in_url = parse("abfss://container@one.dfs.core.windows.net/m.onnx").unwrap();
    assert_eq!(
        location(&in_url, &options(&[("AZURE_STORAGE_ACCOUNT_KEY", "k")])).key,
        acct("one").key
    );

    // GCS: the custom endpoint, when there is one.
    let gs = parse("gs://b/m.onnx").unwrap();
    let google = location(&gs, &options(&[("GOOGLE_SKIP_SIGNATURE", "true")]));
    let fake = location(
        &gs,
        &options(&[("GOOGLE_BASE_URL", "http://127.0.0.1:4443")]),
    );
    assert_ne!(google.key, fake.key);
    assert_eq!(google.shown, "https://storage.googleapis.com");

    // HTTP(S): the URL says it all.
    let http = parse("https://example.com/m.onnx?sig=x").unwrap();
    let l = location(&http, &FetchOptions::default());
    assert!(l.certain);
    assert!(!l.key.contains("sig=x"));
}
