use super::test_server::{Behaviour, TestServer, ETAG};
use super::*;

pub(crate) fn quick() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        attempts: 4,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn data(n: usize) -> Vec<u8> {
    let mut x = 7u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn read_all(url: &str, opts: FetchOptions) -> Result<Vec<u8>, FetchError> {
    let mut d = Fetcher::new(opts).unwrap().open(url)?;
    let mut out = Vec::new();
    d.read_to_end(&mut out)
        .map_err(|e| into_fetch_error(url, e))?;
    Ok(out)
}

#[test]
fn a_whole_body_and_the_user_agent() {
    let s = TestServer::start();
    let body = data(300_000);
    s.route("/f", body.clone(), Behaviour::Serve);
    assert_eq!(read_all(&s.url("/f"), quick()).unwrap(), body);
    let r = s.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].user_agent.as_deref(),
        Some(concat!("basalt-agent/", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn drops_are_resumed_with_range_and_if_range_and_give_identical_bytes() {
    let s = TestServer::start();
    let body = data(1_000_000);
    s.route("/f", body.clone(), Behaviour::DropEvery(150_000));
    let got = read_all(&s.url("/f"), quick()).unwrap();
    assert!(got == body, "the resumed bytes differ");
    let r = s.requests();
    assert_eq!(r.len(), 7, "{r:?}");
    assert_eq!(r[0].range, None);
    // Each resume starts where the bytes stopped, guarded by the ETag.
    for (i, req) in r.iter().enumerate().skip(1) {
        assert_eq!(
            req.range.as_deref(),
            Some(&*format!("bytes={}-", i * 150_000))
        );
        assert_eq!(req.if_range.as_deref(), Some(ETAG));
    }
}

#[test]
fn resumes_that_bring_nothing_give_up_naming_the_url() {
    let s = TestServer::start();
    s.route("/f", data(100_000), Behaviour::CutAt(40_000));
    let url = s.url("/f");
    let e = read_all(&url, quick()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            FetchError::Exhausted {
                attempts: 4,
                offset: 40_000,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.starts_with(&url), "{msg}");
    assert!(
        msg.contains("gave up after 4 attempts at byte 40000"),
        "{msg}"
    );
    assert_eq!(s.requests().len(), 4);
}

#[test]
fn a_200_to_a_resume_is_an_error_not_a_silent_restart() {
    let s = TestServer::start();
    s.route("/f", data(100_000), Behaviour::DropThenIgnoreRange(30_000));
    let e = read_all(&s.url("/f"), quick()).unwrap_err();
    assert!(
        matches!(e, FetchError::Resume { offset: 30_000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("200 OK instead of 206"), "{e}");
    assert!(!e.is_transient());
}

#[test]
fn statuses_and_server_errors() {
    let s = TestServer::start();
    s.route("/gone", b"x".to_vec(), Behaviour::Status(404));
    s.route("/broken", b"x".to_vec(), Behaviour::Status(500));
    s.route("/flaky", b"hello".to_vec(), Behaviour::FailFirst(2));
    let f = Fetcher::new(quick()).unwrap();
    let e = f.open(&s.url("/gone")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: the server answered HTTP 404 Not Found", s.url("/gone"))
    );
    // Not worth asking again.
    assert_eq!(s.requests().len(), 1);
    let e = f.open(&s.url("/broken")).unwrap_err();
    assert!(
        e.to_string()
            .contains("HTTP 500 Internal Server Error (gave up after 4 attempts"),
        "{e}"
    );
    assert_eq!(f.get_bytes(&s.url("/flaky"), 100).unwrap(), b"hello");
    let e = f.get_bytes(&s.url("/flaky"), 2).unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { limit: 2, .. }), "{e}");
}

#[test]
fn timeouts_connection_refused_and_dns_are_named() {
    let s = TestServer::start();
    s.route(
        "/slow",
        b"x".to_vec(),
        Behaviour::Slow(Duration::from_secs(3)),
    );
    let opts = FetchOptions {
        read_timeout: Duration::from_millis(300),
        attempts: 1,
        ..quick()
    };
    let f = Fetcher::new(opts).unwrap();
    let e = f.open(&s.url("/slow")).unwrap_err();
    assert!(matches!(e, FetchError::Timeout { .. }), "{e}");
    assert!(
        e.to_string().contains("timed out waiting for the response"),
        "{e}"
    );

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = f.open(&format!("http://127.0.0.1:{port}/x")).unwrap_err();
    assert!(matches!(e, FetchError::Connect { .. }), "{e}");
    assert!(e.is_transient());

    let e = f.open("http://basalt-test.invalid/x").unwrap_err();
    assert!(matches!(e, FetchError::Dns { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("http://basalt-test.invalid/x: cannot resolve"),
        "{e}"
    );
}

#[test]
fn patience_outlasts_a_server_that_is_not_up_yet() {
    let s = TestServer::start();
    s.route("/c", b"#cloud-config\n".to_vec(), Behaviour::FailFirst(6));
    let f = Fetcher::new(quick()).unwrap();
    let got = f
        .get_bytes_patiently(&s.url("/c"), 1 << 20, Duration::from_secs(10))
        .unwrap();
    assert_eq!(got, b"#cloud-config\n");
    s.route("/missing", b"".to_vec(), Behaviour::Status(404));
    let started = Instant::now();
    let e = f
        .get_bytes_patiently(&s.url("/missing"), 1 << 20, Duration::from_secs(10))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a 404 is not retried"
    );
    assert!(e.to_string().contains("404"), "{e}");
}

#[test]
fn content_range_and_backoff() {
    assert_eq!(
        parse_content_range("bytes 10-99/100"),
        Some((10, Some(100)))
    );
    assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
    assert_eq!(parse_content_range("bytes 10-9/100"), None);
    assert_eq!(parse_content_range("items 1-2/3"), None);
    let o = FetchOptions::default();
    let waits: Vec<u64> = (2..10).map(|a| o.backoff_before(a).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
}
