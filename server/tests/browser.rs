//! The pages in a real browser: Debian's headless Chromium driven over WebDriver
//! (`chromium-driver`) with fantoccini. Opens `/`, launches the demo sweep from its button (by
//! keyboard), watches a run page's chart update live without a reload, selects runs and opens
//! Compare, checks one path per run and a colour bar, submits an invalid form and reads the
//! inline errors, downloads a checkpoint archive, and checks that nothing overflows a
//! phone-width screen. `.ci/run` installs `chromium` and `chromium-driver`; without them this test fails.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{json, Value};

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file()).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).flat_map(|dir| candidates.iter().map(move |c| dir.join(c))).find(|p| p.is_file())
    })
}

async fn start_driver() -> Driver {
    let driver = find_program(&["/usr/bin/chromedriver", "chromedriver"])
        .expect("chromedriver not found: install Debian's chromium and chromium-driver (`.ci/run` does)");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not answer on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { child, url }
}

async fn browser(driver: &Driver, downloads: &Path, profile: &Path) -> Client {
    let chromium =
        find_program(&["/usr/bin/chromium", "chromium"]).expect("chromium not found: install Debian's chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "safebrowsing.enabled": false,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Polls `check` until it answers `Some`, for at most `seconds`.
async fn eventually<T, F, Fut>(what: &str, seconds: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn press(client: &Client, key: Key) {
    let key: char = key.into();
    let actions =
        KeyActions::new("keyboard".into()).then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
    client.perform_actions(actions).await.expect("key press");
}

async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, Vec::new()).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_launches_the_demo_watches_it_live_compares_fixes_a_form_and_downloads_a_checkpoint() {
    let scratch = tempfile::tempdir().unwrap();
    let t = common::spawn_with(|c| {
        c.demo_sweep = common::fast_demo();
        c.max_concurrent_runs = 1;
    })
    .await;
    let driver = start_driver().await;
    let downloads = scratch.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let client = browser(&driver, &downloads, &scratch.path().join("profile")).await;
    // Whatever happens, end the browser session: chromedriver's own exit leaves Chromium running.
    let outcome = std::panic::AssertUnwindSafe(user_journey(&t, &client, &downloads)).catch_unwind().await;
    let _ = client.close().await;
    t.server.stop().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn user_journey(t: &common::TestServer, client: &Client, downloads: &Path) {
    let client = client.clone();
    // The runs table, empty; the demo button launches the sweep and lands on its page.
    client.goto(&t.url("/")).await.unwrap();
    assert!(client.source().await.unwrap().contains("No runs yet"));
    // By keyboard: the first Tab lands on the skip link, and Tabs reach the demo button.
    press(&client, Key::Tab).await;
    assert_eq!(js(&client, "return document.activeElement.className;").await, json!("skip"));
    let mut tabs = 1;
    while js(&client, "return document.activeElement.id;").await != json!("launch-demo") {
        press(&client, Key::Tab).await;
        tabs += 1;
        assert!(tabs < 15, "the demo button is not reachable with Tab");
    }
    press(&client, Key::Enter).await;
    eventually("the sweep page", 30, || async { client.current_url().await.ok().filter(|u| u.path() == "/sweeps/1") })
        .await;
    let heading = client.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(heading, "Sweep 1");

    // The last run of the sweep is still queued: open its page and watch its charts fill in.
    let (_, sweep) = t.get("/api/sweeps/1").await;
    let ids: Vec<i64> = sweep["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 7);
    let last = *ids.last().unwrap();
    client.goto(&t.url(&format!("/runs/{last}"))).await.unwrap();
    let (_, run) = t.get(&format!("/api/runs/{last}")).await;
    assert_eq!(run["status"], "queued", "the run must not have started before its page was open: {run}");
    js(&client, "window.__sameDocument = 'yes'; return null;").await;
    let lines = "return document.querySelectorAll('#chart-path svg .run-line').length;";
    assert_eq!(js(&client, lines).await, json!(0), "no evaluations yet");
    let grown = eventually("the run page's charts to update live", 240, || async {
        let n = js(&client, lines).await.as_u64().unwrap_or(0);
        let refreshed =
            js(&client, "return Number(document.getElementById('chart-path').dataset.refreshed || 0);").await;
        (n == 1 && refreshed.as_u64().unwrap_or(0) >= 1).then_some(n)
    })
    .await;
    assert_eq!(grown, 1);
    assert_eq!(js(&client, "return window.__sameDocument || null;").await, json!("yes"), "updated without a reload");
    eventually("the progress bar to move", 60, || async {
        let value = js(&client, "return document.getElementById('run-progress').value;").await;
        (value.as_f64().unwrap_or(0.0) > 0.0).then_some(())
    })
    .await;
    eventually("the status to reach finished on the page", 120, || async {
        let s = js(&client, "return document.getElementById('run-status').textContent;").await;
        (s == json!("finished")).then_some(())
    })
    .await;
    for id in &ids {
        t.wait_for_status(*id, "finished").await;
    }

    // Select every run in the table and compare them: one path per run, and a colour bar.
    client.goto(&t.url("/")).await.unwrap();
    for id in &ids {
        client.find(Locator::Css(&format!("#select-{id}"))).await.unwrap().click().await.unwrap();
    }
    client.find(Locator::Css("#compare-selected")).await.unwrap().click().await.unwrap();
    eventually("the compare page", 30, || async { client.current_url().await.ok().filter(|u| u.path() == "/compare") })
        .await;
    let keys = js(
        &client,
        "return Array.from(document.querySelectorAll('#chart-overoptimization svg .run-line')).map(e => e.dataset.key);",
    )
    .await;
    let mut keys: Vec<String> = serde_json::from_value(keys).unwrap();
    keys.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| format!("run-{id}")).collect();
    expected.sort();
    assert_eq!(keys, expected, "one path per run");
    let bar = js(&client, "return document.querySelectorAll('#chart-overoptimization svg .colour-bar').length;").await;
    assert!(bar.as_u64().unwrap() > 10, "a colour bar: {bar}");
    // Legend toggling hides a run's path.
    client
        .find(Locator::Css(&format!("input[data-toggle-key='run-{}']", ids[0])))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let hidden = js(&client, &format!("return getComputedStyle(document.querySelector('#chart-overoptimization svg .run-line[data-key=\"run-{}\"]')).display;", ids[0])).await;
    assert_eq!(hidden, json!("none"));
    // The page fits a phone-width screen: wide tables scroll inside their box.
    client.set_window_size(390, 844).await.unwrap();
    let overflow =
        js(&client, "return document.documentElement.scrollWidth - document.documentElement.clientWidth;").await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways at phone width by {overflow}px");
    client.set_window_size(1280, 1000).await.unwrap();

    // An invalid run form: the errors appear next to their fields and the input stays.
    client.goto(&t.url("/runs/new")).await.unwrap();
    client.find(Locator::Css("#f-task")).await.unwrap().select_by_value("toy-tree").await.unwrap();
    client.find(Locator::Css("#f-beta")).await.unwrap().send_keys("-1").await.unwrap();
    client.find(Locator::Css("#f-max_steps")).await.unwrap().send_keys("ten").await.unwrap();
    client.find(Locator::Css("button[value=launch]")).await.unwrap().click().await.unwrap();
    let error = client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#e-max_steps")).await.unwrap();
    assert_eq!(error.text().await.unwrap(), "must be a whole number ≥ 0");
    let kept = client.find(Locator::Css("#f-max_steps")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("ten"));
    assert_eq!(client.find(Locator::Css("#f-beta")).await.unwrap().prop("value").await.unwrap().as_deref(), Some("-1"));
    // Fixed, the number reaches the trainer's validation, whose message shows next to β.
    let steps = client.find(Locator::Css("#f-max_steps")).await.unwrap();
    steps.clear().await.unwrap();
    steps.send_keys("20").await.unwrap();
    client.find(Locator::Css("button[value=launch]")).await.unwrap().click().await.unwrap();
    let beta = client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#e-beta")).await.unwrap();
    assert_eq!(beta.text().await.unwrap(), "must be > 0");
    assert!(client.find(Locator::Css("#e-max_steps")).await.is_err());

    // Download a checkpoint archive from the run page.
    client.goto(&t.url(&format!("/runs/{last}"))).await.unwrap();
    client.find(Locator::Css("a[data-archive='300']")).await.unwrap().click().await.unwrap();
    let archive = eventually("the archive to download", 60, || async {
        let done: Vec<PathBuf> = std::fs::read_dir(downloads)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        done.into_iter().next()
    })
    .await;
    assert_eq!(archive.file_name().unwrap().to_str().unwrap(), format!("run-{last}-checkpoint-300.tar"));
    let bytes = eventually("the download to complete", 30, || async {
        let bytes = std::fs::read(&archive).ok()?;
        tar::Archive::new(&bytes[..]).entries().ok()?.count().gt(&0).then_some(bytes)
    })
    .await;
    let names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"checkpoint-300/model.safetensors".to_string()), "{names:?}");
}
