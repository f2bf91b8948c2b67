//! Live metrics over server-sent events, resumable with `Last-Event-ID`.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{config, spawn, TestServer};
use futures_util::StreamExt;

#[derive(Debug, Default, Clone)]
struct SseEvent {
    event: String,
    id: Option<i64>,
    data: String,
}

/// Reads events until `stop` says so or the stream ends; answers them and whether it ended.
async fn read_events(
    t: &TestServer,
    id: i64,
    last_event_id: Option<i64>,
    stop: impl Fn(&[SseEvent]) -> bool,
) -> (Vec<SseEvent>, bool) {
    let mut request = t.client.get(t.url(&format!("/api/runs/{id}/events")));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = SseEvent::default();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event.event = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    event.id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    event.data.push_str(v);
                }
            }
            if !event.event.is_empty() {
                events.push(event);
            }
            if stop(&events) {
                return (events, false);
            }
        }
    }
    (events, true)
}

fn metric_steps(events: &[SseEvent]) -> Vec<i64> {
    events.iter().filter(|e| e.event == "metrics").map(|e| e.id.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_stream_and_a_reconnect_with_last_event_id_resumes_without_gaps_or_repeats() {
    let t = spawn().await;
    let total = 600;
    let id = t.create_run(&config(total, 0)).await;

    // First connection: the run is not done yet, points arrive live; hang up after 20.
    let (first, ended) = read_events(&t, id, None, |ev| metric_steps(ev).len() >= 20).await;
    assert!(!ended);
    assert_eq!(first[0].event, "status");
    assert!(first[0].data.contains("queued") || first[0].data.contains("running"), "{:?}", first[0]);
    let seen = metric_steps(&first);
    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "every step once, in order");
    let values: serde_json::Value =
        serde_json::from_str(&first.iter().find(|e| e.event == "metrics").unwrap().data).unwrap();
    assert!(values["values"]["loss"].is_number(), "{values}");

    // Reconnect: everything after step 20 (stored meanwhile or live), then the final status.
    let (second, ended) = read_events(&t, id, Some(20), |_| false).await;
    assert!(ended, "the stream ends with the run");
    assert_eq!(metric_steps(&second), (21..=total as i64).collect::<Vec<_>>());
    let last = second.last().unwrap();
    assert_eq!(last.event, "status");
    assert!(last.data.contains("finished"), "{last:?}");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_a_finished_run_replays_its_points_and_ends() {
    let t = spawn().await;
    let id = t.create_run(&config(5, 0)).await;
    t.wait_for_status(id, "finished").await;
    let (events, ended) = read_events(&t, id, Some(2), |_| false).await;
    assert!(ended);
    assert_eq!(metric_steps(&events), vec![3, 4, 5]);
    t.server.stop().await.unwrap();
}
