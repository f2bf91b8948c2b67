//! Slow or greedy clients cannot hold the server: hyper's header-read timeout, the connection
//! cap, and the upload limits. Waits are generous; nothing here asserts a speed.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::spawn_with;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GENEROUS: Duration = Duration::from_secs(60);

/// Sends a request head one header line at a time, a line every 200 ms, and answers whether
/// the server closed the connection before `give_up`.
async fn dribble_headers(addr: SocketAddr, give_up: Duration) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if stream.write_all(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.is_err() {
        return true;
    }
    let deadline = Instant::now() + give_up;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            return true;
        }
        // End of stream or an error: the server closed it. A timeout: still open.
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_slow_header_connections_neither_block_a_normal_client_nor_stay_open() {
    let t = spawn_with(|c| c.header_read_timeout = Duration::from_secs(2)).await;
    let addr = t.server.addr;
    let slow: Vec<_> = (0..64).map(|_| tokio::spawn(dribble_headers(addr, GENEROUS))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::time::timeout(GENEROUS, t.client.get(t.url("/api/runs")).send()).await;
    assert_eq!(answer.expect("answered while 64 clients dribble headers").unwrap().status(), 200);
    for connection in slow {
        assert!(connection.await.unwrap(), "a slow-header connection was never closed");
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_client_waits_for_a_free_slot() {
    let t = spawn_with(|c| {
        c.max_connections = 2;
        c.header_read_timeout = Duration::from_secs(120);
    })
    .await;
    let first = TcpStream::connect(t.server.addr).await.unwrap();
    let _second = TcpStream::connect(t.server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = t.client.clone();
    let url = t.url("/api/runs");
    let third = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "a third connection is served while two hold the only slots");
    drop(first);
    let status = tokio::time::timeout(GENEROUS, third).await.expect("served once a slot frees").unwrap();
    assert_eq!(status.unwrap(), 200);
    t.server.stop().await.unwrap();
}

/// Writes `request` and reads one response: (status, body).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let read = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok());
                if n == 0 || length.is_some_and(|len| body.len() >= len) {
                    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                    return (status, body.to_string());
                }
            }
            assert!(n > 0, "the connection closed without a response: {text:?}");
        }
    };
    tokio::time::timeout(GENEROUS, read).await.expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_declared_too_large_is_refused_before_its_body_and_a_stalled_one_times_out() {
    let t = spawn_with(|c| {
        c.max_upload_bytes = 1 << 20;
        c.upload_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let head = |length: u64| {
        format!(
            "POST /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };
    // A gigabyte declared, nothing sent: the answer comes at once, not after the body.
    let (status, body) = exchange(t.server.addr, head(1 << 30).as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("1048576 bytes (--max-upload-bytes)"), "{body}");

    // The start of a file, then nothing.
    let part = "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{\"prompt\"";
    let request = format!("{}{part}", head(1000));
    let (status, body) = exchange(t.server.addr, request.as_bytes()).await;
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("--upload-idle-timeout"), "{body}");
    assert!(body["fields"].is_array());
    let listed = t.get("/api/datasets").await.1;
    assert!(!listed.to_string().contains("a.jsonl"), "nothing is stored: {listed}");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_time_limit_answers_408_with_the_json_error() {
    use axum::routing::get;
    use tower::ServiceExt;
    let lab = common::lab_with(|s| s.request_timeout = Duration::from_millis(50)).await;
    // The server's own layers around a handler slower than the limit.
    let app = axum::Router::new()
        .route("/api/slow", get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            lab.state.settings.request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(lab.state.clone(), server::http::error::uniform))
        .with_state(lab.state.clone());
    let request = axum::http::Request::get("/api/slow").body(axum::body::Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 408);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(body["error"].as_str().unwrap().contains("--request-timeout-secs"), "{body}");
}
