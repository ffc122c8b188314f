//! Fetching against real servers: s3s-fs for S3 (through a counting, optionally damaging proxy
//! where a test needs to see or spoil the traffic) and a small static server for HTTP.

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gyrus_remote::{FetchError, FetchOptions, Freshness, Progress, RemoteCache};
use support::*;

fn no_progress(_: &Progress) {}

/// Every test is bounded: a hang is a failure, not a stuck CI job.
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(40), fut)
        .await
        .expect("the test took more than 40 s")
}

fn cache() -> (tempfile::TempDir, RemoteCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = RemoteCache::new(dir.path().join("cache/remote"));
    (dir, cache)
}

async fn fetch(
    cache: &RemoteCache,
    url: &str,
    opts: &FetchOptions,
    freshness: Freshness,
) -> Result<gyrus_remote::Fetched, FetchError> {
    bounded(cache.fetch(url, opts, freshness, &no_progress)).await
}

/// Nothing but `.tmp/` (and that empty) under the cache root: no entry, no leftovers.
fn assert_nothing_cached(cache: &RemoteCache) {
    let files = tree(cache.root());
    assert!(
        files.is_empty() || files == [".tmp/"],
        "the cache holds {files:?}"
    );
}

#[tokio::test]
async fn s3_object_is_downloaded_once_then_served_from_cache_until_it_changes() {
    let s3 = S3Server::start(&["models"]);
    let v1 = data(300_000, 1);
    s3.put("models", "iris/model.onnx", &v1);
    let proxy = Proxy::start(s3.addr, Damage::None).await;
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&proxy.endpoint(), home.path());
    let (_dir, cache) = cache();
    let url = "s3://models/iris/model.onnx";

    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let record = {
        let reports = reports.clone();
        move |p: &Progress| reports.lock().unwrap().push(p.clone())
    };
    let first = bounded(cache.fetch(url, &opts, Freshness::CheckRemote, &record))
        .await
        .unwrap();
    assert!(!first.from_cache && !first.is_dir);
    assert_eq!(first.bytes, v1.len() as u64);
    assert_eq!(first.path.file_name().unwrap(), "model.onnx");
    assert!(first.path.starts_with(cache.root()));
    assert_eq!(std::fs::read(&first.path).unwrap(), v1);
    assert_eq!(proxy.object_gets(), 1);
    let last = reports.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.done, last.total),
        (v1.len() as u64, Some(v1.len() as u64))
    );
    assert_eq!(last.url, url);

    // Same ETag on the server: a HEAD, no GET.
    let second = fetch(&cache, url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(second.from_cache);
    assert_eq!(second.path, first.path);
    assert_eq!(proxy.object_gets(), 1, "{:?}", proxy.requests());
    assert_eq!(
        proxy.requests().last().map(|(m, _)| m.as_str()),
        Some("HEAD")
    );

    // Changed on the server: downloaded again, into a new entry; the old one stays for
    // replicas still reading it.
    let v2 = data(200_000, 2);
    s3.put("models", "iris/model.onnx", &v2);
    let third = fetch(&cache, url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!third.from_cache);
    assert_ne!(third.path, first.path);
    assert_eq!(std::fs::read(&third.path).unwrap(), v2);
    assert_eq!(std::fs::read(&first.path).unwrap(), v1);
    assert_eq!(proxy.object_gets(), 2);

    // PreferCached: the newest complete download, and no request at all.
    let before = proxy.requests().len();
    let fourth = fetch(&cache, url, &opts, Freshness::PreferCached)
        .await
        .unwrap();
    assert!(fourth.from_cache);
    assert_eq!(fourth.path, third.path);
    assert_eq!(fourth.bytes, v2.len() as u64);
    assert_eq!(proxy.requests().len(), before);
    assert!(tree(&cache.root().join(".tmp")).is_empty());
}

#[tokio::test]
async fn s3_prefix_is_downloaded_as_a_directory() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "resnet/model.onnx", b"graph");
    s3.put("models", "resnet/weights/a.bin", &data(70_000, 3));
    s3.put("models", "resnet/weights/deep/b.bin", b"bbb");
    s3.put("models", "resnet2/other.onnx", b"not part of resnet/");
    let proxy = Proxy::start(s3.addr, Damage::None).await;
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&proxy.endpoint(), home.path());
    let (_dir, cache) = cache();

    let fetched = fetch(&cache, "s3://models/resnet", &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(fetched.is_dir && !fetched.from_cache);
    assert_eq!(fetched.path.file_name().unwrap(), "resnet");
    assert_eq!(fetched.bytes, 5 + 70_000 + 3);
    assert_eq!(
        tree(&fetched.path),
        [
            "model.onnx",
            "weights/",
            "weights/a.bin",
            "weights/deep/",
            "weights/deep/b.bin"
        ]
    );
    assert_eq!(
        std::fs::read(fetched.path.join("weights/a.bin")).unwrap(),
        data(70_000, 3)
    );
    assert_eq!(
        std::fs::read(fetched.path.join("weights/deep/b.bin")).unwrap(),
        b"bbb"
    );
    assert_eq!(proxy.object_gets(), 3);

    let again = fetch(&cache, "s3://models/resnet", &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(again.from_cache && again.is_dir);
    assert_eq!(again.path, fetched.path);
    assert_eq!(proxy.object_gets(), 3);

    // A file added under the prefix is a new version of the directory.
    s3.put("models", "resnet/weights/c.bin", b"c");
    let changed = fetch(&cache, "s3://models/resnet/", &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!changed.from_cache);
    assert!(changed.path.join("weights/c.bin").is_file());
}

#[tokio::test]
async fn s3_wrong_secret_key_is_access_denied_naming_the_key() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "m.onnx", b"x");
    let home = tempfile::tempdir().unwrap();
    let mut opts = s3_env(&s3.endpoint(), home.path());
    opts.env
        .insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let (_dir, cache) = cache();

    let err = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::AccessDenied { .. }), "{err:?}");
    assert!(err.is_client_error());
    let msg = err.to_string();
    assert!(msg.contains("s3://models/m.onnx"), "{msg}");
    assert!(msg.contains("the secret key does not match"), "{msg}");
    assert!(msg.contains("SignatureDoesNotMatch"), "{msg}");
    assert!(msg.contains(AK), "{msg}");
    assert!(!msg.contains("not-the-secret"), "the secret leaked: {msg}");
    assert_nothing_cached(&cache);
}

#[tokio::test]
async fn s3_unknown_access_key_is_access_denied() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "m.onnx", b"x");
    let home = tempfile::tempdir().unwrap();
    let mut opts = s3_env(&s3.endpoint(), home.path());
    opts.env.insert("AWS_ACCESS_KEY_ID".into(), "nobody".into());
    let (_dir, cache) = cache();

    let err = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::AccessDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("\"nobody\""), "{err}");
}

#[tokio::test]
async fn s3_missing_key_and_missing_bucket_are_told_apart() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "present.onnx", b"x");
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&s3.endpoint(), home.path());
    let (_dir, cache) = cache();

    let err = fetch(
        &cache,
        "s3://models/absent.onnx",
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::NoSuchKey { .. }), "{err:?}");
    assert!(err.is_client_error());
    assert!(
        err.to_string()
            .starts_with("no such key \"absent.onnx\" in bucket \"models\""),
        "{err}"
    );

    let err = fetch(
        &cache,
        "s3://nobucket/m.onnx",
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::NoSuchBucket { .. }), "{err:?}");
    assert!(err.is_client_error());
    assert!(
        err.to_string()
            .starts_with(&format!("no such bucket \"nobucket\" at {}", s3.endpoint())),
        "{err}"
    );
    assert_nothing_cached(&cache);
}

#[tokio::test]
async fn s3_without_credentials_fails_at_once_naming_the_ways_to_give_them() {
    let home = tempfile::tempdir().unwrap();
    let mut opts = s3_env("http://127.0.0.1:9", home.path());
    opts.env.remove("AWS_ACCESS_KEY_ID");
    opts.env.remove("AWS_SECRET_ACCESS_KEY");
    let (_dir, cache) = cache();

    let started = Instant::now();
    let err = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap_err();
    println!("{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, FetchError::NoCredentials { .. }), "{err:?}");
    assert!(err.is_client_error());
    let msg = err.to_string();
    for needle in [
        "s3://models/m.onnx",
        "AWS_ACCESS_KEY_ID",
        "~/.aws/credentials",
        "AWS_SKIP_SIGNATURE=true",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }

    // A profile that AWS_PROFILE names but no file has is pointed out.
    opts.env.insert("AWS_PROFILE".into(), "work".into());
    let err = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap_err();
    println!("{err}");
    assert!(err.to_string().contains("profile \"work\""), "{err}");
}

#[tokio::test]
async fn s3_unreachable_endpoint_fails_quickly_saying_why() {
    let home = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let opts = s3_env(&endpoint, home.path());
    let (_dir, cache) = cache();

    let started = Instant::now();
    let err = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap_err();
    println!("{err} (after {:?})", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
    assert!(!err.is_client_error());
    assert_eq!(
        err.to_string(),
        format!("cannot reach {endpoint} to fetch s3://models/m.onnx: connection refused")
    );
    assert_nothing_cached(&cache);
}

#[tokio::test]
async fn s3_truncated_body_is_an_error_and_caches_nothing() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "big.onnx", &data(500_000, 4));
    let proxy = Proxy::start(s3.addr, Damage::Truncate).await;
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&proxy.endpoint(), home.path());
    let (_dir, cache) = cache();

    let err = fetch(
        &cache,
        "s3://models/big.onnx",
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::Incomplete { .. }), "{err:?}");
    assert!(!err.is_client_error());
    assert!(err.to_string().contains("s3://models/big.onnx"), "{err}");
    assert!(proxy.half_sent.load(std::sync::atomic::Ordering::SeqCst));
    assert_nothing_cached(&cache);

    // And nothing for a restart to pick up either.
    let err = fetch(
        &cache,
        "s3://models/big.onnx",
        &opts,
        Freshness::PreferCached,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Incomplete { .. }), "{err:?}");
}

#[tokio::test]
async fn s3_corrupted_body_is_a_checksum_mismatch_and_caches_nothing() {
    let s3 = S3Server::start(&["models"]);
    let bytes = data(100_000, 5);
    s3.put("models", "m.onnx", &bytes);
    let proxy = Proxy::start(s3.addr, Damage::FlipByte).await;
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&proxy.endpoint(), home.path());
    let (_dir, cache) = cache();

    let err = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap_err();
    println!("{err}");
    assert!(
        matches!(err, FetchError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(!err.is_client_error());
    let want = hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes));
    assert!(
        err.to_string().starts_with(&format!(
            "checksum mismatch for s3://models/m.onnx: expected md5 {want}, got "
        )),
        "{err}"
    );
    assert!(err
        .to_string()
        .ends_with("(the download was corrupted; try again)"));
    assert_nothing_cached(&cache);
}

#[tokio::test]
async fn prefer_cached_serves_the_cache_when_the_endpoint_is_gone() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "m.onnx", b"cached bytes");
    let home = tempfile::tempdir().unwrap();
    let (_dir, cache) = cache();
    let url = "s3://models/m.onnx";
    let first = fetch(
        &cache,
        url,
        &s3_env(&s3.endpoint(), home.path()),
        Freshness::CheckRemote,
    )
    .await
    .unwrap();
    drop(s3);

    // A daemon restart: the endpoint is gone and the user's keys are not there.
    let gone = format!("http://127.0.0.1:{}", free_port());
    let restart = FetchOptions::default();
    let again = fetch(&cache, url, &restart, Freshness::PreferCached)
        .await
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(again.path, first.path);
    assert_eq!(std::fs::read(&again.path).unwrap(), b"cached bytes");

    // CheckRemote does ask, and says it cannot.
    let err = fetch(
        &cache,
        url,
        &s3_env(&gone, home.path()),
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
    // A URL never fetched has nothing to prefer.
    let err = fetch(
        &cache,
        "s3://models/other.onnx",
        &s3_env(&gone, home.path()),
        Freshness::PreferCached,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn s3_credentials_region_and_endpoint_from_a_profile() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "m.onnx", b"from a profile");
    let home = tempfile::tempdir().unwrap();
    let aws = home.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [lab]\naws_access_key_id = {AK}\naws_secret_access_key = {SK}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile lab]\nregion = eu-central-1\nendpoint_url = {}\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    let env = [
        ("HOME", home.path().to_str().unwrap()),
        ("AWS_PROFILE", "lab"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let opts = FetchOptions {
        env,
        ..FetchOptions::default()
    };
    let (_dir, cache) = cache();

    let fetched = fetch(&cache, "s3://models/m.onnx", &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), b"from a profile");

    // The environment wins over the profile: its (wrong) key is the one used.
    let mut env_wins = opts.clone();
    env_wins
        .env
        .insert("AWS_ACCESS_KEY_ID".into(), "env-key".into());
    env_wins
        .env
        .insert("AWS_SECRET_ACCESS_KEY".into(), "env-secret".into());
    let err = fetch(
        &cache,
        "s3://models/m.onnx",
        &env_wins,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("\"env-key\""), "{err}");

    // And the cortex.yaml endpoint wins over the profile's.
    let mut yaml_wins = opts.clone();
    let gone = format!("http://127.0.0.1:{}", free_port());
    yaml_wins.s3_endpoint_url = Some(gone.clone());
    let err = fetch(
        &cache,
        "s3://models/m.onnx",
        &yaml_wins,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("cannot reach {gone}")),
        "{err}"
    );
}

#[tokio::test]
async fn parallel_fetches_of_one_url_download_it_once() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "m.onnx", &data(400_000, 6));
    let proxy = Proxy::start(s3.addr, Damage::None).await;
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&proxy.endpoint(), home.path());
    let (_dir, cache) = cache();

    let (a, b) = bounded(async {
        tokio::join!(
            cache.fetch(
                "s3://models/m.onnx",
                &opts,
                Freshness::CheckRemote,
                &no_progress
            ),
            cache.fetch(
                "s3://models/m.onnx",
                &opts,
                Freshness::CheckRemote,
                &no_progress
            ),
        )
    })
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.path, b.path);
    assert!(a.from_cache != b.from_cache);
    assert_eq!(proxy.object_gets(), 1);
}

#[tokio::test]
async fn http_url_is_fetched_and_cached_by_its_validators() {
    let server = StaticServer::start().await;
    let date = "Wed, 21 Oct 2026 07:28:00 GMT";
    server.set(
        "/files/model.onnx",
        Resource::new(b"http model v1", Some("\"v1\""), Some(date)),
    );
    server.set("/bare.onnx", Resource::new(b"no validators", None, None));
    server.set("/dated.onnx", Resource::new(b"dated", None, Some(date)));
    let (_dir, cache) = cache();
    let opts = FetchOptions::default();
    let url = server.url("/files/model.onnx");

    let first = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.path.file_name().unwrap(), "model.onnx");
    assert_eq!(std::fs::read(&first.path).unwrap(), b"http model v1");
    let second = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(second.from_cache);
    assert_eq!(server.gets(), 1);

    server.set(
        "/files/model.onnx",
        Resource::new(
            b"http model v2!",
            Some("\"v2\""),
            Some("Wed, 21 Oct 2026 08:00:00 GMT"),
        ),
    );
    let third = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!third.from_cache);
    assert_eq!(std::fs::read(&third.path).unwrap(), b"http model v2!");
    assert_eq!(server.gets(), 2);

    // Last-Modified alone is a validator too.
    let dated = server.url("/dated.onnx");
    fetch(&cache, &dated, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(
        fetch(&cache, &dated, &opts, Freshness::CheckRemote)
            .await
            .unwrap()
            .from_cache
    );
    assert_eq!(server.gets(), 3);

    // Without either, every CheckRemote downloads, and equal bytes land in one entry.
    let bare = server.url("/bare.onnx");
    let a = fetch(&cache, &bare, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    let b = fetch(&cache, &bare, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!a.from_cache && !b.from_cache);
    assert_eq!(a.path, b.path);
    assert_eq!(server.gets(), 5);
    assert!(
        fetch(&cache, &bare, &opts, Freshness::PreferCached)
            .await
            .unwrap()
            .from_cache
    );

    let err = fetch(
        &cache,
        &server.url("/missing.onnx"),
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err:?}");
    assert!(err.is_client_error());
    assert!(tree(&cache.root().join(".tmp")).is_empty());
}

/// With SSE-KMS, S3's ETag is not the MD5 of the bytes: the response header that says so turns
/// the MD5 check off (and only that header does). A static server stands in for S3 here
/// because s3s-fs does not encrypt.
#[tokio::test]
async fn s3_kms_encrypted_objects_are_not_md5_checked() {
    let server = StaticServer::start().await;
    let not_the_md5 = "\"0123456789abcdef0123456789abcdef\"";
    let mut kms = Resource::new(b"encrypted at rest", Some(not_the_md5), None);
    kms.headers
        .push(("x-amz-server-side-encryption", "aws:kms"));
    server.set("/models/kms.onnx", kms);
    server.set(
        "/models/plain.onnx",
        Resource::new(b"plain", Some(not_the_md5), None),
    );
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&format!("http://{}", server.addr), home.path());
    let (_dir, cache) = cache();

    let fetched = fetch(
        &cache,
        "s3://models/kms.onnx",
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), b"encrypted at rest");
    let err = fetch(
        &cache,
        "s3://models/plain.onnx",
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::ChecksumMismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unsupported_scheme_is_a_clear_client_error() {
    let (_dir, cache) = cache();
    let err = fetch(
        &cache,
        "ftp://host/m.onnx",
        &FetchOptions::default(),
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert!(err.is_client_error());
    assert!(err.to_string().contains("supported are s3://"), "{err}");
}

/// The process doing the download is SIGKILLed half-way: no entry appears, `clean_tmp` removes
/// the leftovers, and the next fetch downloads afresh. The download runs in a child process:
/// this test binary again, running only `sigkill_child` below.
#[tokio::test]
async fn a_download_killed_half_way_leaves_no_entry() {
    let s3 = S3Server::start(&["models"]);
    let bytes = data(4 << 20, 7);
    s3.put("models", "big.onnx", &bytes);
    let proxy = Proxy::start(s3.addr, Damage::Stall).await;
    let (_dir, cache) = cache();

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GYRUS_REMOTE_SIGKILL_CHILD", cache.root())
        .env("GYRUS_REMOTE_SIGKILL_ENDPOINT", proxy.endpoint())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until half the body is in the child's partial file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let partial = loop {
        let files: Vec<_> = tree(&cache.root().join(".tmp"))
            .into_iter()
            .filter(|f| f.ends_with("big.onnx"))
            .collect();
        let size = files
            .first()
            .and_then(|f| std::fs::metadata(cache.root().join(".tmp").join(f)).ok())
            .map_or(0, |m| m.len());
        if proxy.half_sent.load(std::sync::atomic::Ordering::SeqCst) && size > 0 {
            break size;
        }
        assert!(Instant::now() < deadline, "the child never got half-way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(partial < bytes.len() as u64);
    child.kill().unwrap();
    child.wait().unwrap();

    let left = tree(cache.root());
    assert!(
        left.iter().all(|f| f.starts_with(".tmp/")),
        "something besides .tmp/: {left:?}"
    );
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env(&s3.endpoint(), home.path());
    let err = fetch(
        &cache,
        "s3://models/big.onnx",
        &FetchOptions::default(),
        Freshness::PreferCached,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::NoCredentials { .. }), "{err:?}");

    cache.clean_tmp(Duration::ZERO);
    assert_nothing_cached(&cache);
    let fetched = fetch(
        &cache,
        "s3://models/big.onnx",
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap();
    assert!(!fetched.from_cache);
    assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
}

/// Only does something as the child of `a_download_killed_half_way_leaves_no_entry`: fetches
/// through the stalling proxy until it is killed.
#[tokio::test]
async fn sigkill_child() {
    let (Some(root), Some(endpoint)) = (
        std::env::var_os("GYRUS_REMOTE_SIGKILL_CHILD"),
        std::env::var("GYRUS_REMOTE_SIGKILL_ENDPOINT").ok(),
    ) else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let cache = RemoteCache::new(root);
    let _ = cache
        .fetch(
            "s3://models/big.onnx",
            &s3_env(&endpoint, home.path()),
            Freshness::CheckRemote,
            &no_progress,
        )
        .await;
    panic!("the fetch through a stalled proxy ended before the parent killed this process");
}

/// The same `s3://bucket/key` at two endpoints is two objects: two cache entries, and
/// PreferCached (a daemon restart) gives each endpoint its own, whichever was fetched last.
#[tokio::test]
async fn same_url_at_two_endpoints_has_two_cache_entries() {
    let a = S3Server::start(&["models"]);
    let b = S3Server::start(&["models"]);
    a.put("models", "iris.onnx", b"the model at endpoint A");
    b.put("models", "iris.onnx", b"endpoint B's model, another one");
    let home = tempfile::tempdir().unwrap();
    let opts_a = s3_env(&a.endpoint(), home.path());
    let opts_b = s3_env(&b.endpoint(), home.path());
    let (_dir, cache) = cache();
    let url = "s3://models/iris.onnx";

    let got_a = fetch(&cache, url, &opts_a, Freshness::CheckRemote)
        .await
        .unwrap();
    let got_b = fetch(&cache, url, &opts_b, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!got_a.from_cache && !got_b.from_cache);
    assert_ne!(got_a.path, got_b.path);
    assert_eq!(
        std::fs::read(&got_a.path).unwrap(),
        b"the model at endpoint A"
    );
    assert_eq!(
        std::fs::read(&got_b.path).unwrap(),
        b"endpoint B's model, another one"
    );
    let url_dirs: Vec<String> = tree(cache.root())
        .into_iter()
        .filter(|p| p.ends_with('/') && p.matches('/').count() == 1 && p != ".tmp/")
        .collect();
    assert_eq!(url_dirs.len(), 2, "{:?}", tree(cache.root()));
    // The record names the endpoint, never a key.
    let records: String = url_dirs
        .iter()
        .map(|d| std::fs::read_to_string(cache.root().join(d).join("current")).unwrap())
        .collect();
    assert!(records.contains(&a.endpoint()) && records.contains(&b.endpoint()));
    assert!(!records.contains(SK) && !records.contains(AK), "{records}");
    drop(a);
    drop(b);

    // B was fetched last; A still gets A's bytes, without a request (both servers are gone).
    for (opts, want) in [(&opts_a, &got_a), (&opts_b, &got_b)] {
        let again = fetch(&cache, url, opts, Freshness::PreferCached)
            .await
            .unwrap();
        assert!(again.from_cache);
        assert_eq!(&again.path, &want.path);
    }
    // After a restart the config's endpoint is all there is, and it is enough.
    let spec_a = FetchOptions {
        s3_endpoint_url: Some(format!("{}/", opts_a.env["AWS_ENDPOINT_URL"])),
        ..FetchOptions::default()
    };
    let again = fetch(&cache, url, &spec_a, Freshness::PreferCached)
        .await
        .unwrap();
    assert_eq!(again.path, got_a.path);
    // With nothing to tell the two apart, no guess: an error naming both endpoints.
    let err = fetch(
        &cache,
        url,
        &FetchOptions::default(),
        Freshness::PreferCached,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::BadConfig { .. }), "{err:?}");
    assert!(
        text.contains(&opts_a.env["AWS_ENDPOINT_URL"])
            && text.contains(&opts_b.env["AWS_ENDPOINT_URL"])
            && text.contains("deploy the API again"),
        "{text}"
    );
}

/// The same endpoint reached by two names is two locations too (nothing can tell they are one
/// server); each name gets its own entry, with the right bytes.
#[tokio::test]
async fn endpoint_names_are_part_of_the_location() {
    let s3 = S3Server::start(&["models"]);
    s3.put("models", "m.onnx", b"first bytes");
    let home = tempfile::tempdir().unwrap();
    let by_ip = s3_env(&s3.endpoint(), home.path());
    let by_name = s3_env(&format!("http://localhost:{}", s3.addr.port()), home.path());
    let (_dir, cache) = cache();
    let url = "s3://models/m.onnx";
    let first = fetch(&cache, url, &by_ip, Freshness::CheckRemote)
        .await
        .unwrap();
    s3.put("models", "m.onnx", b"second bytes!");
    let second = fetch(&cache, url, &by_name, Freshness::CheckRemote)
        .await
        .unwrap();
    assert_ne!(first.path, second.path);
    let cached = fetch(&cache, url, &by_ip, Freshness::PreferCached)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), b"first bytes");
    let cached = fetch(&cache, url, &by_name, Freshness::PreferCached)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), b"second bytes!");
}

/// Servers that refuse HEAD (405 here; a presigned GET URL answers 403) are asked with a GET:
/// a one-byte range when they honour ranges, else the whole body, which is then the download.
#[tokio::test]
async fn http_server_refusing_head_is_asked_with_a_get() {
    let server = StaticServer::start().await;
    server.refuse_head(hyper::StatusCode::METHOD_NOT_ALLOWED);
    server.set(
        "/m.onnx",
        Resource::new(b"served without HEAD", Some("\"e1\""), None),
    );
    let (_dir, cache) = cache();
    let opts = FetchOptions::default();
    let url = server.url("/m.onnx");

    // No range support: the answer to the ranged GET (a 200) is dropped at its headers, and the
    // plain GET after it is the download.
    let first = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!first.from_cache);
    assert_eq!(std::fs::read(&first.path).unwrap(), b"served without HEAD");
    assert_eq!(server.gets(), 2);
    // Its ETag is the validator: the next look asks with GETs too, but caches nothing new.
    let second = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(second.from_cache);
    assert_eq!(second.path, first.path);
    assert_eq!(server.gets(), 4);

    // A real 404 stays "not found".
    let err = fetch(
        &cache,
        &server.url("/gone.onnx"),
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err:?}");

    // With ranges (and a 403 to HEAD, as a presigned URL): a one-byte GET, then the download.
    server.refuse_head(hyper::StatusCode::FORBIDDEN);
    server.honour_ranges(true);
    server.set(
        "/m.onnx",
        Resource::new(b"version two, ranged", Some("\"e2\""), None),
    );
    let third = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(!third.from_cache);
    assert_eq!(third.bytes, 19);
    assert_eq!(std::fs::read(&third.path).unwrap(), b"version two, ranged");
    assert_eq!(server.gets(), 6, "a ranged GET, then the whole body");
    let fourth = fetch(&cache, &url, &opts, Freshness::CheckRemote)
        .await
        .unwrap();
    assert!(fourth.from_cache);
    assert_eq!(fourth.path, third.path);
    assert_eq!(server.gets(), 7, "the one-byte GET only");

    // An empty file has no byte 0 (416): the plain GET it is.
    server.set("/empty.onnx", Resource::new(b"", Some("\"e0\""), None));
    let empty = fetch(
        &cache,
        &server.url("/empty.onnx"),
        &opts,
        Freshness::CheckRemote,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&empty.path).unwrap(), b"");
    assert!(tree(&cache.root().join(".tmp")).is_empty());
}

#[test]
fn fetch_options_debug_shows_no_secrets() {
    let home = tempfile::tempdir().unwrap();
    let opts = s3_env("http://127.0.0.1:9", home.path());
    let shown = format!("{opts:?}");
    assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
    assert!(!shown.contains(SK) && !shown.contains(AK), "{shown}");
    assert!(!shown.contains("127.0.0.1"), "{shown}");
}
