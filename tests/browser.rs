//! The pages in a real browser: Debian's headless Chromium driven over WebDriver
//! (`chromium-driver`) with fantoccini. Opens `/`, launches the demo sweep from its button (by
//! keyboard), watches the runs table follow the queue (a new run, status changes) and a run
//! page's chart update live without a reload, selects runs and opens Compare: one path per run,
//! a clearly different colour for each of the demo's four α values, the paired TR-minus-vanilla
//! table, a toggle that takes a run out of the chart's axes and survives a reload, and each run's
//! peak policy downloaded from the compare page. Then cancels a run from its page (the buttons
//! follow without a reload) and retries it from its checkpoint, fills the New run form from a
//! method preset and previews it next to its button, submits an invalid form and reads the
//! inline errors, downloads a checkpoint archive, and checks that nothing overflows a phone-width
//! screen. On a server with `--auth-token` and a user, signs in (after a wrong password),
//! launches a run from the form and downloads its checkpoint with the session cookie alone.
//! `.ci/run` installs `chromium` and `chromium-driver`; without them this test fails.

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

/// The overoptimization alarm, as a user watching a run sees it: a run page opened while the run
/// waits in the queue shows no badge; as the run trains, "past peak since step N (KL x)" appears
/// without a reload, and `early_stopping` finishes the run there, saying why. The runs table shows
/// the badge, and the compare page marks where the alarm fired and counts the run as past its peak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_past_peak_badge_appears_live_and_the_compare_page_marks_the_alarm() {
    let scratch = tempfile::tempdir().unwrap();
    let t = common::spawn_with(|c| c.max_concurrent_runs = 1).await;
    let driver = start_driver().await;
    let client = browser(&driver, &scratch.path().join("downloads"), &scratch.path().join("profile")).await;
    let outcome = std::panic::AssertUnwindSafe(alarm_journey(&t, &client)).catch_unwind().await;
    let _ = client.close().await;
    t.server.stop().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn alarm_journey(t: &common::TestServer, client: &Client) {
    // A run that holds the only trainer until it is cancelled, so the next one waits its turn.
    let blocker = t.create_run(&common::tiny_toy(json!({"max_steps": 1_000_000, "eval_steps": 100_000}))).await;
    // A small toy tree whose gold reward peaks within its first 100 steps, then falls.
    let peaking = t
        .create_run(&json!({
            "task": "toy-tree", "max_steps": 400, "eval_steps": 5, "logging_steps": 5, "save_steps": 0,
            "learning_rate": 1e-4, "toy_num_prompts": 3, "toy_alphabet_size": 3, "toy_response_length": 3,
            "toy_hidden_size": 16, "toy_num_layers": 1, "toy_num_heads": 2, "toy_pairs_per_prompt": 4,
            "num_threads": 1, "early_stopping": true, "early_stopping_patience": 3,
        }))
        .await;
    client.goto(&t.url(&format!("/runs/{peaking}"))).await.unwrap();
    let (_, run) = t.get(&format!("/api/runs/{peaking}")).await;
    assert_eq!(run["status"], "queued", "the page opened before the run started: {run}");
    js(client, "window.__sameDocument = 'yes'; return null;").await;
    let badge = "const b = document.querySelector('#run-overopt .past-peak'); return b ? b.textContent : null;";
    assert_eq!(js(client, badge).await, Value::Null, "no badge before the run trains");
    let note = js(client, "return document.querySelector('#run-overopt .overopt-note').textContent;").await;
    assert!(note.as_str().unwrap().contains("watches the gold reward"), "{note}");
    let (status, _) = t.post(&format!("/api/runs/{blocker}/cancel"), &json!({})).await;
    assert_eq!(status, 200);

    let text =
        eventually("the past-peak badge", 300, || async { js(client, badge).await.as_str().map(String::from) }).await;
    assert!(text.starts_with("past peak since step ") && text.contains("(KL "), "{text}");
    assert_eq!(js(client, "return window.__sameDocument || null;").await, json!("yes"), "shown without a reload");

    // early_stopping finished it there, and the page says why.
    let run = t.wait_for_status(peaking, "finished").await;
    let reason = run["status_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.starts_with("stopped: past its peak at step "), "{run}");
    assert!(run["step"].as_i64().unwrap() < 400, "{run}");
    let shown = eventually("the stop reason on the run page", 60, || async {
        js(client, "const r = document.querySelector('#run-overopt .status-reason'); return r ? r.textContent : null;")
            .await
            .as_str()
            .map(String::from)
    })
    .await;
    assert_eq!(shown, reason);
    screenshot(client, "run-past-peak.png").await;

    // The runs table carries the same badge.
    client.goto(&t.url("/")).await.unwrap();
    let row = js(
        client,
        &format!("const b = document.querySelector('tr[data-run=\"{peaking}\"] .past-peak'); return b ? b.textContent : null;"),
    )
    .await;
    assert_eq!(row.as_str(), Some(text.as_str()));
    screenshot(client, "runs-past-peak.png").await;

    // The compare page marks where the alarm fired and counts the run as past its peak.
    client.goto(&t.url(&format!("/compare?runs={blocker},{peaking}"))).await.unwrap();
    let marker = js(
        client,
        "return Array.from(document.querySelectorAll('#overoptimization-live svg .marker > title'))\
           .map((t) => t.textContent).filter((t) => t.startsWith('alarm')).join('\\n');",
    )
    .await;
    let marker = marker.as_str().unwrap();
    assert!(marker.contains(&format!("run {peaking}")) && marker.contains("past its peak at step"), "{marker}");
    let counts = js(client, "return document.querySelector('#past-peak tbody').textContent;").await;
    assert!(counts.as_str().unwrap().contains("1 of 2"), "both DPO runs, one past its peak: {counts}");
    screenshot(client, "compare-alarm.png").await;
    js(client, "document.getElementById('past-peak').scrollIntoView(); return null;").await;
    screenshot(client, "compare-past-peak-table.png").await;
}

/// Sign-in for the team, in a browser, on a server with `--auth-token` and a user: a page sends
/// the signed-out browser to the sign-in form, a wrong password says so, the right one goes back
/// where it was going; the user launches a run from the New run form, the run page names them,
/// and the run's checkpoint downloads with the session cookie alone; signing out ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_launches_a_run_and_downloads_its_checkpoint_from_the_store_on_a_token_protected_server() {
    let scratch = tempfile::tempdir().unwrap();
    // Checkpoints go to an object store (moto's S3 in CI), not the data dir.
    let store = common::test_store(scratch.path()).await;
    let t = common::spawn_with(|c| {
        c.auth_token = Some("team-s3cret".into());
        c.max_concurrent_runs = 1;
        c.store = Some(store);
    })
    .await;
    let hash = server::accounts::hash_password("correct horse").unwrap();
    server::db::users::add(&t.server.state.pool, "alice", &hash).await.unwrap().expect("a new user");
    let driver = start_driver().await;
    let downloads = scratch.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let client = browser(&driver, &downloads, &scratch.path().join("profile")).await;
    let outcome = std::panic::AssertUnwindSafe(sign_in_journey(&t, &client, &downloads)).catch_unwind().await;
    let _ = client.close().await;
    t.server.stop().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn sign_in_journey(t: &common::TestServer, client: &Client, downloads: &Path) {
    client.goto(&t.url("/runs/new")).await.unwrap();
    let url = client.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/login", Some("next=%2Fruns%2Fnew")), "signed out: to the sign-in form");
    client.find(Locator::Css("#user")).await.unwrap().send_keys("alice").await.unwrap();
    client.find(Locator::Css("#password")).await.unwrap().send_keys("wrong horse").await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
    let error = client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#login-error")).await.unwrap();
    assert!(error.text().await.unwrap().contains("Wrong user name or password"));
    // The name is kept; the password is typed again.
    client.find(Locator::Css("#password")).await.unwrap().send_keys("correct horse").await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#f-task")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/runs/new", "back where it was going");
    let who = client.find(Locator::Css("#signed-in-as")).await.unwrap().text().await.unwrap();
    assert_eq!(who, "alice");

    // Launch a small toy run from the form.
    client.find(Locator::Css("#f-task")).await.unwrap().select_by_value("toy-tree").await.unwrap();
    for (key, value) in [
        ("max_steps", "20"),
        ("eval_steps", "5"),
        ("logging_steps", "5"),
        ("save_steps", "10"),
        ("toy_num_prompts", "3"),
        ("toy_alphabet_size", "3"),
        ("toy_response_length", "3"),
        ("toy_hidden_size", "16"),
        ("toy_num_layers", "1"),
        ("toy_num_heads", "2"),
        ("toy_pairs_per_prompt", "4"),
        ("num_threads", "1"),
    ] {
        let field = client.find(Locator::Css(&format!("#f-{key}"))).await.unwrap_or_else(|_| panic!("#f-{key}"));
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }
    client.find(Locator::Css("button[value=launch]")).await.unwrap().click().await.unwrap();
    let id: i64 = eventually("the new run's page", 30, || async {
        let url = client.current_url().await.ok()?;
        url.path().strip_prefix("/runs/")?.parse().ok()
    })
    .await;
    let launcher = client.find(Locator::Css("#launched-by")).await.unwrap().text().await.unwrap();
    assert_eq!(launcher, "alice", "the run page names who launched it");

    // The API, for scripts, takes the token; the run finishes with its checkpoints.
    let api = reqwest::Client::builder()
        .default_headers(
            [("authorization".parse().unwrap(), "Bearer team-s3cret".parse().unwrap())].into_iter().collect(),
        )
        .build()
        .unwrap();
    let run = common::wait_for(&api, &t.base, id, "finished", |r| r["status"] == "finished").await;
    assert_eq!(run["launched_by"], "alice");
    // The download streams from the store: the local scratch copies are gone.
    std::fs::remove_dir_all(t.dir.path().join("data").join("runs").join(id.to_string())).unwrap();
    client.goto(&t.url(&format!("/runs/{id}"))).await.unwrap();
    let link = client.find(Locator::Css("a[data-archive]")).await.expect("a checkpoint to download");
    let step = link.attr("data-archive").await.unwrap().unwrap();
    link.click().await.unwrap();
    let names = downloaded_tar(downloads, &format!("run-{id}-checkpoint-{step}.tar")).await;
    assert!(names.contains(&format!("checkpoint-{step}/model.safetensors")), "{names:?}");

    // A session that ends while a page is open (it expired, or was removed): the live runs
    // table sends the browser to sign in, rather than drawing the sign-in form inside the table.
    client.goto(&t.url("/")).await.unwrap();
    client.find(Locator::Css("#runs-live[data-src]")).await.expect("the live runs table");
    sqlx::query("delete from sessions").execute(&t.server.state.pool).await.unwrap();
    eventually("the sign-in page", 30, || async { client.current_url().await.ok().filter(|u| u.path() == "/login") })
        .await;
    client.find(Locator::Css("#user")).await.unwrap().send_keys("alice").await.unwrap();
    client.find(Locator::Css("#password")).await.unwrap().send_keys("correct horse").await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#sign-out")).await.unwrap();

    // Signing out ends the session: the next page asks to sign in again.
    client.find(Locator::Css("#sign-out")).await.unwrap().click().await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#sign-in")).await.unwrap();
    client.goto(&t.url("/")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/login");
}

/// Saves what the browser shows into `$GOODHART_SCREENSHOTS`, when it is set.
async fn screenshot(client: &Client, name: &str) {
    let Some(dir) = std::env::var_os("GOODHART_SCREENSHOTS") else { return };
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(Path::new(&dir).join(name), png).expect("the screenshot is written");
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

    let (_, sweep) = t.get("/api/sweeps/1").await;
    let ids: Vec<i64> = sweep["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 7);

    // The runs table follows the queue without a reload: a run added meanwhile appears, and
    // statuses and progress change as the sweep trains.
    client.goto(&t.url("/")).await.unwrap();
    js(&client, "window.__sameDocument = 'yes'; return null;").await;
    // As the demo's runs (so it reuses their π_init), but long enough to cancel half way.
    let mut long = t.server.state.settings.demo_sweep["base"].clone();
    long["max_steps"] = json!(100_000);
    long["save_steps"] = json!(0);
    let extra = t.create_run(&long).await;
    eventually("the new run's row to appear", 30, || async {
        let n = js(&client, &format!("return document.querySelectorAll('tr[data-run=\"{extra}\"]').length;")).await;
        (n == json!(1)).then_some(())
    })
    .await;
    let queued =
        js(&client, &format!("return document.querySelector('tr[data-run=\"{extra}\"] .progress-text').textContent;"))
            .await;
    assert!(queued.as_str().unwrap().contains("in the queue"), "a queued run shows its place: {queued}");
    let first = ids[0];
    eventually("the first run's status to change in the table", 120, || async {
        let s =
            js(&client, &format!("return document.querySelector('tr[data-run=\"{first}\"]').dataset.status;")).await;
        (s != json!("queued")).then_some(())
    })
    .await;
    assert_eq!(js(&client, "return window.__sameDocument || null;").await, json!("yes"), "updated without a reload");

    // The last run of the sweep is still queued: open its page and watch its charts fill in.
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
    let cancel_hidden = js(&client, "return document.getElementById('cancel').closest('form').hidden;").await;
    assert_eq!(cancel_hidden, json!(true), "a live finish hides the Cancel button");
    let text = js(&client, "return document.getElementById('progress-text').textContent;").await;
    assert!(!text.as_str().unwrap().contains("ETA"), "and the ETA: {text}");
    eventually("the checkpoints table to fill in without a reload", 30, || async {
        let n = js(&client, "return document.querySelectorAll('#checkpoints tbody tr').length;").await;
        (n.as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    for id in &ids {
        t.wait_for_status(*id, "finished").await;
    }

    // Select every run of the sweep in the table and compare them: one path per run.
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
    // Four α values (0.01, 0.1, 0.6 and the hard updates' 1): four clearly different colours,
    // named in the chart's legend, no colour bar.
    let strokes = js(
        &client,
        &format!(
            "return Array.from(document.querySelectorAll('#chart-overoptimization svg .run-line'))\
             .filter(e => e.dataset.key !== 'run-{}').map(e => e.getAttribute('stroke'));",
            ids[0]
        ),
    )
    .await;
    let strokes: std::collections::BTreeSet<String> = serde_json::from_value(strokes).unwrap();
    assert_eq!(strokes.len(), 4, "one colour per α: {strokes:?}");
    let svg_text = js(&client, "return document.querySelector('#chart-overoptimization svg').textContent;").await;
    for alpha in ["α = 0.01", "α = 0.1", "α = 0.6", "α = 1"] {
        assert!(svg_text.as_str().unwrap().contains(alpha), "the legend names {alpha}");
    }
    let bar = js(&client, "return document.querySelectorAll('#chart-overoptimization svg .colour-bar').length;").await;
    assert_eq!(bar, json!(0), "categorical colours need no colour bar");
    // The paired analysis: every TR variant against vanilla on the same seeds.
    let paired = js(&client, "return document.querySelectorAll('#paired tbody tr').length;").await;
    assert_eq!(paired, json!(6), "six TR variants, each paired with the vanilla run");
    assert!(
        js(&client, "return document.querySelectorAll('#chart-forest svg .marker').length;").await.as_u64().unwrap()
            >= 6
    );
    // Every run's peak policy is downloadable from here.
    for id in &ids {
        let n = js(&client, &format!("return document.querySelectorAll('#best a[data-peak=\"{id}\"]').length;")).await;
        assert_eq!(n, json!(1), "run {id}'s peak has its weights");
    }
    let href = js(
        &client,
        &format!("return document.querySelector('#best a[data-peak=\"{}\"]').getAttribute('href');", ids[0]),
    )
    .await;
    let step: i64 =
        href.as_str().unwrap().split("/checkpoints/").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    let gold = common::full_series(&t.client, &t.base, ids[0], "eval/gold_reward").await;
    let at = gold.iter().position(|p| p.0 == step).expect("an evaluated step");
    let peak = gold.iter().enumerate().fold(0, |b, (i, p)| if p.1 > gold[b].1 { i } else { b });
    assert!(at.abs_diff(peak) <= 1, "the download is within one evaluation of the peak (step {step})");
    client.find(Locator::Css(&format!("#best a[data-peak='{}']", ids[0]))).await.unwrap().click().await.unwrap();
    let names = downloaded_tar(downloads, &format!("run-{}-checkpoint-{step}.tar", ids[0])).await;
    assert!(names.contains(&format!("checkpoint-{step}/model.safetensors")), "{names:?}");
    // Toggling a run off takes it out of the chart (its axes too), the tables and the
    // downloads; the URL remembers it across a reload.
    client
        .find(Locator::Css(&format!("input[data-toggle-key='run-{}']", ids[0])))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let gone = format!(
        "return document.querySelectorAll('#chart-overoptimization svg .run-line[data-key=\"run-{}\"]').length;",
        ids[0]
    );
    eventually("the hidden run to leave the chart", 30, || async {
        (js(&client, &gone).await == json!(0)).then_some(())
    })
    .await;
    let row = format!("return document.querySelectorAll('#summary-table tr[data-key=\"run-{}\"]').length;", ids[0]);
    assert_eq!(js(&client, &row).await, json!(0), "and the summary table");
    let url = client.current_url().await.unwrap();
    assert!(url.query().unwrap_or("").contains(&format!("hide=run-{}", ids[0])), "{url}");
    let svg_link =
        js(&client, "return document.querySelector('#chart-overoptimization figcaption a').getAttribute('href');")
            .await;
    assert!(svg_link.as_str().unwrap().contains(&format!("hide=run-{}", ids[0])), "downloads follow: {svg_link}");
    client.refresh().await.unwrap();
    assert_eq!(js(&client, &gone).await, json!(0), "still hidden after a reload");
    let unticked =
        js(&client, &format!("return document.querySelector(\"input[data-toggle-key='run-{}']\").checked;", ids[0]))
            .await;
    assert_eq!(unticked, json!(false));
    // The page fits a phone-width screen: wide tables scroll inside their box.
    client.set_window_size(390, 844).await.unwrap();
    assert_fits_phone(&client, "the compare page").await;
    client.set_window_size(1280, 1000).await.unwrap();

    // Cancel the long run from its page: the buttons follow without a reload. Retry resumes it
    // from the checkpoint it wrote when it stopped, keeping the steps before it.
    client.goto(&t.url(&format!("/runs/{extra}"))).await.unwrap();
    t.wait_for(extra, "steps", |r| r["status"] == "running" && r["step"].as_i64().unwrap_or(0) >= 30).await;
    client.find(Locator::Css("#cancel")).await.unwrap().click().await.unwrap();
    eventually("Retry to show on the cancelled run's page", 60, || async {
        let status = js(&client, "return document.getElementById('run-status').textContent;").await;
        let hidden = js(&client, "return document.getElementById('retry').closest('form').hidden;").await;
        (status == json!("cancelled") && hidden == json!(false)).then_some(())
    })
    .await;
    let stopped_at = t.get(&format!("/api/runs/{extra}")).await.1["step"].as_i64().unwrap();
    client.find(Locator::Css("#retry")).await.unwrap().click().await.unwrap();
    t.wait_for(extra, "resumed past its checkpoint", |r| r["step"].as_i64().unwrap_or(0) > stopped_at + 10).await;
    let loss = common::full_series(&t.client, &t.base, extra, "loss").await;
    assert_eq!(loss[0].0, 10, "the steps before the checkpoint are kept");
    assert!(loss.windows(2).all(|w| w[1].0 == w[0].0 + 10), "each logged step once");
    assert_eq!(client.current_url().await.unwrap().path(), format!("/runs/{extra}"), "the same run");
    t.post(&format!("/api/runs/{extra}/cancel"), &json!({})).await;
    t.wait_for_status(extra, "cancelled").await;

    // The New run form: a method fills its fields, a hand edit makes it custom, the preview
    // shows next to its button, and nothing scrolls sideways at phone width.
    client.goto(&t.url("/runs/new")).await.unwrap();
    client.find(Locator::Css("#f-method")).await.unwrap().select_by_value("tr-ipo-hard").await.unwrap();
    let filled = js(
        &client,
        "return [document.getElementById('f-loss_type').value, document.getElementById('f-sync_ref_model').checked,\
         document.getElementById('f-ref_model_mixup_alpha').value, document.getElementById('f-ref_model_sync_steps').value];",
    )
    .await;
    assert_eq!(filled, json!(["ipo", true, "1", "512"]));
    client.find(Locator::Css("#f-task")).await.unwrap().select_by_value("toy-tree").await.unwrap();
    client.find(Locator::Css("#preview-button")).await.unwrap().click().await.unwrap();
    let preview = client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#preview")).await.unwrap();
    assert!(preview.text().await.unwrap().contains("loss_type = \"ipo\""));
    let gap = js(
        &client,
        "return document.getElementById('preview').getBoundingClientRect().top - \
         document.getElementById('preview-button').getBoundingClientRect().bottom;",
    )
    .await;
    assert!(gap.as_f64().unwrap() < 80.0, "the preview is next to its button: {gap}px below it");
    let tau = client.find(Locator::Css("#f-ref_model_sync_steps")).await.unwrap();
    tau.clear().await.unwrap();
    tau.send_keys("64").await.unwrap();
    js(&client, "document.getElementById('f-ref_model_sync_steps').dispatchEvent(new Event('change')); return null;")
        .await;
    assert_eq!(js(&client, "return document.getElementById('f-method').value;").await, json!(""), "now custom");
    client.set_window_size(390, 844).await.unwrap();
    assert_fits_phone(&client, "the New run form").await;
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
    let names = downloaded_tar(downloads, &format!("run-{last}-checkpoint-300.tar")).await;
    assert!(names.contains(&"checkpoint-300/model.safetensors".to_string()), "{names:?}");
}

/// Nothing on the page reaches past the window's width (wide tables scroll inside their box);
/// otherwise names the elements that do.
async fn assert_fits_phone(client: &Client, what: &str) {
    let overflow =
        js(client, "return document.documentElement.scrollWidth - document.documentElement.clientWidth;").await;
    if overflow.as_i64().unwrap() <= 0 {
        return;
    }
    let culprits = js(
        client,
        "const w = document.documentElement.clientWidth; return Array.from(document.querySelectorAll('body *'))\
         .filter(e => e.getBoundingClientRect().right > w + 0.5 && !e.closest('.table-wrap, pre')).slice(0, 8)\
         .map(e => e.tagName + '#' + e.id + '.' + (typeof e.className === 'string' ? e.className : '') + ' ' \
         + Math.round(e.getBoundingClientRect().right));",
    )
    .await;
    panic!("{what} scrolls sideways at phone width by {overflow}px: {culprits}");
}

/// Waits for `name` to finish downloading into `downloads`; answers the paths in the tar.
async fn downloaded_tar(downloads: &Path, name: &str) -> Vec<String> {
    let path = downloads.join(name);
    let bytes = eventually(&format!("{name} to download"), 60, || async {
        let bytes = std::fs::read(&path).ok()?;
        tar::Archive::new(&bytes[..]).entries().ok()?.count().gt(&0).then_some(bytes)
    })
    .await;
    tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}
