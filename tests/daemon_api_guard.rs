//! The local API refuses what a web page could send it: a foreign `Host`
//! (DNS rebinding) on any endpoint, an `Origin` on the write, a bundle posted
//! with a content type a form can produce; and it bounds requests in flight.
//! Every request here is written by hand over a raw TCP stream, so its headers
//! are exactly the ones a browser or an attacker would send. After each refusal
//! the node's policy is unchanged; a well-formed request still works.

#[path = "daemon_support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `head` (request line and headers, without the blank line) and `body`;
/// answer (status, body text).
async fn raw(api: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(api).await.expect("connect to the API");
    let mut req = head.replace('\n', "\r\n");
    if !req.ends_with("\r\n") {
        req.push_str("\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the API answered within 20 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The policy heads, read through the well-behaved client.
async fn heads(f: &Fleet) -> Value {
    f.get(0, "/v1/policy").await.expect("GET /v1/policy")["heads"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_foreign_host_origin_and_form_content_types() {
    let mut f = Fleet::new(1, 171);
    f.start(0);
    f.ready(&[0]).await;
    let api = f.nodes[0].api.clone();
    let port = api.rsplit_once(':').unwrap().1.to_string();
    let change = f.sign(vec![
        f.enrol(0),
        Fleet::set_fleet("log.level", "debug".into()),
    ]);
    let head = Fleet::head(&change);
    let bundle = f.bundle(vec![change]);
    let before = heads(&f).await;
    assert_eq!(
        before,
        serde_json::json!([]),
        "a fresh node holds no policy"
    );

    // DNS rebinding: the browser sends the attacker's name as Host.
    let refused: [(&str, String); 9] = [
        (
            "GET, foreign Host with port",
            format!("GET /v1/policy HTTP/1.1\nHost: attacker.example:{port}"),
        ),
        (
            "GET, foreign Host",
            "GET /v1/node HTTP/1.1\nHost: attacker.example".into(),
        ),
        (
            "GET snapshot, foreign Host",
            format!("GET /v1/policy/snapshot HTTP/1.1\nHost: attacker.example:{port}"),
        ),
        (
            "GET metrics, foreign Host",
            format!("GET /metrics HTTP/1.1\nHost: attacker.example:{port}"),
        ),
        (
            "GET, a name that merely starts like localhost",
            format!("GET /v1/policy HTTP/1.1\nHost: localhost.attacker.example:{port}"),
        ),
        (
            "GET, absolute-form target naming a foreign host",
            format!("GET http://attacker.example:{port}/v1/policy HTTP/1.1\nHost: {api}"),
        ),
        (
            "GET, unknown path, foreign Host",
            "GET /nope HTTP/1.1\nHost: attacker.example".into(),
        ),
        (
            "POST, foreign Host",
            format!(
                "POST /v1/bundles HTTP/1.1\nHost: attacker.example:{port}\nContent-Type: application/octet-stream"
            ),
        ),
        (
            "POST, foreign Host and Origin",
            format!(
                "POST /v1/bundles HTTP/1.1\nHost: attacker.example:{port}\nOrigin: http://attacker.example\nContent-Type: application/octet-stream"
            ),
        ),
    ];
    for (what, req) in &refused {
        let (status, body) = raw(&api, req, &bundle).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert!(
            !body.contains("heads") && !body.contains("dcloud_"),
            "{what}: the refusal leaks data: {body}"
        );
        assert!(
            body.contains("Host"),
            "{what}: the refusal says why: {body}"
        );
    }
    assert_eq!(
        heads(&f).await,
        before,
        "a foreign-Host POST changed the policy"
    );

    // Cross-site: a page posts to the right host, the browser adds Origin.
    for origin in ["http://attacker.example", "null", &format!("http://{api}")] {
        let (status, body) = raw(
            &api,
            &format!(
                "POST /v1/bundles HTTP/1.1\nHost: {api}\nOrigin: {origin}\nContent-Type: application/octet-stream"
            ),
            &bundle,
        )
        .await;
        assert_eq!(status, 403, "Origin {origin}: {body}");
        assert!(body.contains("Origin"), "{body}");
    }
    assert_eq!(
        heads(&f).await,
        before,
        "a POST with Origin changed the policy"
    );

    // Content types a form (or a "simple" fetch) can send, and none at all.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/octet-streamx"),
        None,
    ] {
        let ct_line = ct
            .map(|c| format!("\nContent-Type: {c}"))
            .unwrap_or_default();
        let (status, body) = raw(
            &api,
            &format!("POST /v1/bundles HTTP/1.1\nHost: {api}{ct_line}"),
            &bundle,
        )
        .await;
        assert_eq!(status, 415, "Content-Type {ct:?}: {body}");
        assert!(body.contains("application/octet-stream"), "{body}");
    }
    assert_eq!(
        heads(&f).await,
        before,
        "a text/plain POST changed the policy"
    );

    // No Host at all: HTTP/1.1 requires one.
    let (status, body) = raw(&api, "GET /v1/policy HTTP/1.1", b"").await;
    assert_eq!(status, 400, "no Host: {body}");
    let (status, body) = raw(&api, "GET /v1/policy HTTP/1.0", b"").await;
    assert_eq!(status, 400, "HTTP/1.0 without Host: {body}");
    let (status, body) = raw(
        &api,
        &format!("GET /v1/policy HTTP/1.1\nHost: {api}\nHost: attacker.example"),
        b"",
    )
    .await;
    assert_eq!(status, 400, "two Hosts: {body}");

    // Loopback names and the bound address are served, with or without port.
    for host in [
        api.clone(),
        "localhost".into(),
        format!("localhost:{port}"),
        "LocalHost:9999".into(),
        "127.0.0.1".into(),
        format!("127.0.0.1:{port}"),
        "[::1]".into(),
        format!("[::1]:{port}"),
    ] {
        let (status, body) =
            raw(&api, &format!("GET /v1/policy HTTP/1.1\nHost: {host}"), b"").await;
        assert_eq!(status, 200, "Host {host}: {body}");
        assert!(body.contains("heads"), "Host {host}: {body}");
    }

    // A well-formed publish (the headers `dcloud publish` sends) still works,
    // with a content-type parameter and through a loopback name.
    let (status, body) = raw(
        &api,
        &format!(
            "POST /v1/bundles HTTP/1.1\nHost: localhost:{port}\nContent-Type: Application/Octet-Stream; x=y"
        ),
        &bundle,
    )
    .await;
    assert_eq!(status, 200, "well-formed publish: {body}");
    assert_eq!(heads(&f).await, serde_json::json!([head]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bounds_requests_in_flight() {
    let mut f = Fleet::new(1, 172);
    f.start(0);
    f.ready(&[0]).await;
    let api = f.nodes[0].api.clone();

    // Requests whose bodies never arrive hold their slots; the bound is 64.
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(&api).await.unwrap();
        s.write_all(
            format!(
                "POST /v1/bundles HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nxx"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    // Let the server take every one of them in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let (status, body) = raw(&api, &format!("GET /v1/node HTTP/1.1\nHost: {api}"), b"").await;
    let waited = t0.elapsed();
    assert_eq!(status, 503, "request 65 in flight: {body}");
    assert!(body.contains("in flight"), "{body}");
    assert!(waited < Duration::from_secs(5), "refused after {waited:?}");

    // Once they go, the API answers again.
    drop(stalled);
    f.wait(
        "the API answers after the stalled requests went",
        Duration::from_secs(10),
        async |f| f.get(0, "/v1/node").await.is_some(),
    )
    .await;
    assert!(f.nodes[0].running());
}
