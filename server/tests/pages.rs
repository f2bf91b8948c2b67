//! The web pages, rendered through the whole router with `oneshot`: empty, running, failed and
//! 100-run states; forms with inline errors; chart, CSV and checkpoint downloads.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{lab, lab_with, toy_config};
use serde_json::json;
use server::jobs::queue::Outcome;

/// The text of HTML-escaped content (askama escapes quotes and angle brackets numerically).
fn unescape(html: &str) -> String {
    html.replace("&#34;", "\"").replace("&#39;", "'").replace("&#60;", "<").replace("&#62;", ">").replace("&amp;", "&")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Whether the form holding the button `id` is shown (the page draws every action and hides
/// those the run's status does not allow; its script shows them as the status changes).
fn shown(body: &str, id: &str) -> bool {
    let at = body.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    let form = body[..at].rfind("<form").expect("a form around the button");
    let tag = &body[form..form + body[form..].find('>').unwrap()];
    !tag.contains(" hidden")
}

#[tokio::test]
async fn every_page_renders_on_an_empty_database() {
    let lab = lab().await;
    let (status, body) = lab.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("No runs yet") && body.contains("Launch demo sweep"), "{body}");
    assert!(body.contains("<link rel=\"stylesheet\" href=\"/static/app.css\">"));
    for (uri, needle) in [
        ("/runs/new", "ref_model_mixup_alpha"),
        ("/sweeps/new", "Count runs"),
        ("/compare", "Nothing to compare"),
        ("/compare?runs=", "Nothing to compare"),
    ] {
        let (status, body) = lab.get(uri).await;
        assert_eq!(status, 200, "{uri}");
        assert!(body.contains(needle), "{uri} lacks {needle:?}");
        assert!(body.starts_with("<!doctype html>"), "{uri}");
    }
    for uri in ["/runs/1", "/sweeps/1", "/runs/x", "/runs/1/charts/path.svg"] {
        let (status, body) = lab.get(uri).await;
        assert_eq!(status, 404, "{uri}");
        assert!(body.contains("404 Not Found") && body.contains("<html"), "{uri}: an HTML error page");
    }
    let (status, headers, css) = lab.request("GET", "/static/app.css", None).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "text/css"));
    assert!(css.contains(":focus-visible"));
    assert_eq!(lab.get("/static/app.js").await.0, 200);
}

#[tokio::test]
async fn a_running_run_shows_progress_eta_live_charts_and_its_checkpoints() {
    let lab = lab().await;
    let id = lab
        .state
        .queue
        .enqueue(
            toy_config(json!({"sync_ref_model": true, "ref_model_mixup_alpha": 0.1, "ref_model_sync_steps": 1})),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(lab.train_next(500, 1000, 1.0, &[250, 500]).await, id);
    let (status, body) = lab.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 200);
    assert!(body.contains("TR-DPO α=0.1 τ=1"), "{body}");
    assert!(body.contains("data-live=\"1\"") && body.contains("data-total=\"1000\""));
    assert!(body.contains("value=\"50\""), "progress 500 of 1000");
    assert!(body.contains("step 500 of 1000"));
    assert!(shown(&body, "cancel") && !shown(&body, "retry") && !shown(&body, "start-over"));
    for chart in ["path", "gold", "kl", "loss", "rewards", "ood", "sft"] {
        assert!(body.contains(&format!("id=\"chart-{chart}\"")), "{chart}");
        assert!(body.contains(&format!("/runs/{id}/charts/{chart}.png")), "{chart} downloads as PNG");
    }
    assert!(count(&body, "<svg xmlns") >= 6, "charts are inline SVG");
    assert_eq!(count(&body, "class=\"fit-line\""), 2, "the path chart has both Gao fits");
    assert!(body.contains("<title>peak · run"), "and its peak");
    assert!(body.contains("RL fit (Gao et al.)") && body.contains("best-of-n fit (Gao et al.)"));
    assert!(body.contains("√nats") && body.contains("nats (d = "), "d and KL carry their units");
    // The run's own front over its evaluations, with the kept ones downloadable.
    let pareto = body.split("id=\"pareto\"").nth(1).unwrap().split("</table>").next().unwrap();
    assert!(pareto.contains("not kept") && pareto.contains("checkpoints/250/archive"), "{pareto}");
    // Checkpoints: step, KL and gold reward at that step, why kept, size, both downloads.
    assert!(body.contains(&format!("/api/runs/{id}/checkpoints/250/archive")));
    assert!(body.contains("every save_steps") || body.contains("Pareto front"));
    assert!(body.contains(&format!("/api/runs/{id}/checkpoints/500/files/model.safetensors")));
    assert!(body.contains("1.0 kB"));
    // A chart alone, as the live page fetches it.
    let (status, headers, svg) = lab.request("GET", &format!("/runs/{id}/charts/kl.svg"), None).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "image/svg+xml"));
    assert_eq!(count(&svg, "class=\"run-line\""), 2, "KL to π_init and to the reference");
    let (status, headers, _) = lab.request("GET", &format!("/runs/{id}/charts/loss.png"), None).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "image/png"));
    assert_eq!(lab.get(&format!("/runs/{id}/charts/nope.svg")).await.0, 404);

    // Cancel from the page.
    let (status, headers, _) = lab.request("POST", &format!("/runs/{id}/cancel"), Some("")).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, format!("/runs/{id}").as_str()));
    let (_, body) = lab.get(&format!("/runs/{id}")).await;
    assert!(body.contains("cancel requested"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_gold_reward_shows_proxies_labelled_as_such_and_says_why_it_has_no_alarm() {
    use server::jobs::sink::WriteMsg;
    let lab = lab().await;
    let mut config = common::config(100, 0);
    config["eval_split_ratio"] = json!(0.25);
    config["eval_steps"] = json!(25);
    let id = lab.state.queue.enqueue(config, None, None).await.unwrap();
    let claim = lab.state.queue.claim().await.unwrap().unwrap();
    for step in [0i64, 25, 50] {
        let x = step as f64 / 25.0;
        let values = vec![
            ("eval/kl_init".to_string(), Some(x)),
            ("eval/rewards/margins".to_string(), Some(x)),
            ("eval/rewards/accuracies".to_string(), Some(0.5 + 0.1 * x)),
            ("eval/logps/chosen".to_string(), Some(-10.0 - x)),
        ];
        lab.writer.send(WriteMsg::Metrics { lease: claim.lease(), step, values }).await.unwrap();
    }
    lab.writer.flush().await.unwrap();
    let (status, body) = lab.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 200);
    let body = unescape(&body);
    assert!(body.contains("No overoptimization alarm: this run has no gold reward"), "{body}");
    assert!(body.contains("chosen log-probability fell from -10 to -12 nats while the margin grew from 0 to 2"));
    assert!(body.contains("id=\"chart-proxies\"") && body.contains("Proxies, not the gold reward"));
    assert!(!body.contains("past-peak"), "no alarm without a gold reward");
    let (_, _, svg) = lab.request("GET", &format!("/runs/{id}/charts/proxies.svg"), None).await;
    assert_eq!(count(&svg, "class=\"run-line\""), 3, "margin, accuracy and chosen log-prob against KL");
}

#[tokio::test]
async fn a_failed_run_resumes_from_its_last_checkpoint_or_starts_over_as_a_new_run() {
    let lab = lab().await;
    let id = lab.state.queue.enqueue(toy_config(json!({})), None, None).await.unwrap();
    lab.train_next(75, 1000, 1.0, &[50]).await;
    lab.finish(id, Outcome::Failed("non-finite loss at step 80".into())).await;
    let (status, body) = lab.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 200);
    assert!(body.contains("status-failed") && body.contains("non-finite loss at step 80"));
    assert!(shown(&body, "retry") && shown(&body, "start-over") && !shown(&body, "cancel"));
    assert!(body.contains("Retry from step 50"), "the retry says where it resumes");
    assert!(!body.contains("data-live=\"1\""), "a failed run does not follow live");
    let (_, table) = lab.get("/").await;
    assert!(table.contains("title=\"non-finite loss at step 80\""), "the table shows why it failed");
    // Retry: the same run, back in the queue, to resume from its checkpoint at step 50.
    let (status, headers, _) = lab.request("POST", &format!("/runs/{id}/retry"), Some("from=checkpoint")).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, format!("/runs/{id}").as_str()));
    let (_, body) = lab.get(&format!("/runs/{id}")).await;
    assert!(body.contains("status-queued") && !body.contains("non-finite loss"));
    assert!(body.contains("next in the queue"), "a queued run shows its place");
    // A queued run cannot be retried: the page says why, with the API's status.
    let (status, _, body) = lab.request("POST", &format!("/runs/{id}/retry"), Some("")).await;
    assert_eq!(status, 409);
    assert!(body.contains("only failed or cancelled runs can be retried"));
    // Start over: a new run with the same config, naming this one.
    lab.train_next(25, 1000, 1.0, &[]).await;
    lab.finish(id, Outcome::Failed("again".into())).await;
    let (status, headers, _) = lab.request("POST", &format!("/runs/{id}/retry"), Some("from=start")).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, format!("/runs/{}", id + 1).as_str()));
    let (_, retried) = lab.get(&format!("/runs/{}", id + 1)).await;
    assert!(retried.contains(&format!("from <a href=\"/runs/{id}\">run {id}</a>")));
}

/// A sweep of `n` finished runs over α, τ and seeds.
async fn sweep_of(lab: &common::Lab, n: usize) -> (i64, Vec<i64>) {
    let alphas = [0.01, 0.03, 0.1, 0.3, 0.6, 1.0];
    let taus = [1, 10, 100, 1000];
    let configs: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let tau = taus[i % taus.len()];
            toy_config(json!({
                "sync_ref_model": i % 7 != 0,
                "ref_model_mixup_alpha": alphas[i % alphas.len()],
                "ref_model_sync_steps": tau,
                "seed": i % 3,
                "loss_type": if i % 5 == 0 { "ipo" } else { "sigmoid" },
            }))
        })
        .collect();
    let (sweep, ids) = lab
        .state
        .queue
        .enqueue_sweep(json!({"task": "toy-tree"}), json!({"seed": [0, 1, 2]}), configs, None)
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(lab.train_next(1000, 1000, 0.5 + i as f64 * 0.05, &[500, 1000]).await, *id);
        lab.finish(*id, Outcome::Finished).await;
    }
    (sweep, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_runs_fill_the_table_and_the_sweep_chart_has_one_path_each() {
    let lab = lab().await;
    let (sweep, ids) = sweep_of(&lab, 100).await;
    let (status, body) = lab.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(count(&body, "<tr data-run="), 100);
    assert!(body.contains("100 of 100 runs"));
    let (status, page) = lab.get(&format!("/sweeps/{sweep}")).await;
    assert_eq!(status, 200);
    let overoptimization = page.split("id=\"best-live\"").next().unwrap();
    assert_eq!(count(overoptimization, "class=\"run-line\""), 100, "one path per run");
    assert!(!page.contains("class=\"colour-bar\""), "six α values: categorical colours, no bar");
    assert!(page.contains(">α = 0.03<"), "the α values are named in the legend");
    assert!(page.contains("IPO and TR-IPO") && page.contains("DPO and TR-DPO"), "a panel per loss");
    assert_eq!(count(&page, "data-toggle-key="), 100, "a legend toggle per run");
    assert!(page.contains("<table class=\"pareto\">") && page.contains("/checkpoints/500/archive"));
    assert!(page.contains("<table id=\"best\">") && page.contains("data-peak="), "each run's best policy");
    assert!(page.contains("<table id=\"paired\">"), "TR minus vanilla, paired on the same seeds");
    // Diff only: only the parameters that differ between the runs.
    assert!(page.contains("<code>ref_model_mixup_alpha</code>") && !page.contains("<code>adam_beta1</code>"));
    let (_, all_params) = lab.get(&format!("/sweeps/{sweep}?opts=1")).await;
    assert!(all_params.contains("<code>adam_beta1</code>"));
    // Aggregated seeds: fewer lines than runs, each with its band.
    let (_, aggregated) = lab.get(&format!("/sweeps/{sweep}?opts=1&agg=seeds")).await;
    let lines = count(aggregated.split("id=\"best-live\"").next().unwrap(), "class=\"run-line\"");
    assert!(lines < 100 && count(&aggregated, "class=\"band\"") > 0, "{lines} lines");
    // Hidden runs leave the chart, the tables and the downloads, and the links keep them hidden.
    let hide = format!("hide=run-{},run-{}", ids[0], ids[1]);
    let (_, fewer) = lab.get(&format!("/sweeps/{sweep}?{hide}")).await;
    assert_eq!(count(fewer.split("id=\"best-live\"").next().unwrap(), "class=\"run-line\""), 98);
    assert!(fewer.contains(&format!("/compare/summary.csv?sweep={sweep}&")) && fewer.contains(&hide));
    let (_, _, csv) = lab.request("GET", &format!("/compare/summary.csv?sweep={sweep}&{hide}"), None).await;
    assert_eq!(csv.lines().count(), 1 + 98);
    assert!(
        fewer.contains(&format!("download=\"sweep-{sweep}-overoptimization.svg\"")),
        "downloads carry the sweep id"
    );
    // Smoothed, against KL, log x: raw data stays faint underneath.
    let (_, smoothed) = lab.get(&format!("/sweeps/{sweep}?opts=1&smooth=0.8&x=kl&log_x=1")).await;
    assert!(count(&smoothed, "class=\"run-raw\"") >= 100);
    assert!(smoothed.contains("(log)"));

    let selection = format!("runs={},{},{}", ids[0], ids[1], ids[2]);
    let (_, compare) = lab.get(&format!("/compare?{selection}")).await;
    let chart = compare.split("id=\"best-live\"").next().unwrap();
    assert_eq!(count(chart, "class=\"run-line\""), 3);
    // Downloads: both chart formats, the table and every series as CSV.
    let (status, headers, _) =
        lab.request("GET", &format!("/compare/charts/overoptimization.png?{selection}"), None).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "image/png"));
    let (_, _, svg) = lab.request("GET", &format!("/compare/charts/overoptimization.svg?sweep={sweep}"), None).await;
    assert!(svg.len() < 1_000_000, "{} bytes", svg.len());
    let (_, headers, csv) = lab.request("GET", &format!("/compare/summary.csv?{selection}"), None).await;
    let stem = format!("runs-{}-{}-{}", ids[0], ids[1], ids[2]);
    assert!(headers["content-disposition"].to_str().unwrap().contains(&format!("{stem}-summary.csv")));
    assert_eq!(csv.lines().count(), 4);
    let (_, _, series) = lab.request("GET", &format!("/compare/series.csv?{selection}"), None).await;
    assert_eq!(series.lines().count(), 1 + 3 * 41 * 4, "every evaluation of every run, four metrics each");
    let (status, headers, _) = lab.request("GET", &format!("/compare/charts/forest.svg?sweep={sweep}"), None).await;
    assert_eq!(status, 200);
    assert!(headers["content-disposition"].to_str().unwrap().contains(&format!("sweep-{sweep}-forest.svg")));
}

#[tokio::test]
async fn the_runs_table_sorts_and_filters_on_any_column() {
    let lab = lab().await;
    let (sweep, ids) = sweep_of(&lab, 6).await;
    let lone = lab.state.queue.enqueue(toy_config(json!({"loss_type": "kto"})), None, None).await.unwrap();
    let order = |body: &str| -> Vec<i64> {
        body.split("<tr data-run=\"").skip(1).map(|s| s[..s.find('"').unwrap()].parse().unwrap()).collect()
    };
    let (_, body) = lab.get("/").await;
    assert_eq!(order(&body)[0], lone, "newest first");
    let (_, body) = lab.get("/?sort=id&dir=asc").await;
    assert_eq!(order(&body)[0], ids[0]);
    let (_, body) = lab.get(&format!("/?sweep={sweep}")).await;
    assert_eq!(order(&body).len(), 6);
    let (_, body) = lab.get("/?status=queued").await;
    assert_eq!(order(&body), vec![lone]);
    let (_, body) = lab.get("/?method=KTO").await;
    assert_eq!(order(&body), vec![lone]);
    let (_, body) = lab.get("/?sort=peak_gold&dir=desc").await;
    let ranked = order(&body);
    assert_eq!(*ranked.last().unwrap(), lone, "a run without evaluations sorts last");
    assert!(body.contains("aria-sort=\"descending\""));
    let (_, body) = lab.get("/?status=failed").await;
    assert!(body.contains("No run matches these filters"));
}

#[tokio::test]
async fn an_invalid_run_form_shows_errors_inline_and_keeps_the_input() {
    let lab = lab().await;
    let form = "task=toy-tree&beta=-1&max_steps=ten&ref_model_mixup_alpha=0.5&learning_rate=&action=launch";
    let (status, _, body) = lab.request("POST", "/runs/new", Some(form)).await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"e-max_steps\">must be a whole number ≥ 0"), "{body}");
    assert!(body.contains("value=\"ten\"") && body.contains("value=\"-1\"") && body.contains("value=\"0.5\""));
    assert!(body.contains("<option value=\"toy-tree\" selected>"));
    // Once the number parses, the trainer's own validation speaks, next to its field.
    let (status, _, body) =
        lab.request("POST", "/runs/new", Some("task=toy-tree&beta=-1&ref_model_mixup_alpha=2&action=launch")).await;
    assert_eq!(status, 422);
    assert!(unescape(&body).contains("id=\"e-beta\">must be > 0"), "{body}");
    assert!(body.contains("id=\"e-ref_model_mixup_alpha\">must be in [0, 1]"));
    assert!(body.contains("aria-invalid=\"true\"") && body.contains("2 problems to fix"));
    assert!(body.contains("href=\"#f-beta\""), "the summary links to the field");
    assert!(!server::db::runs::any(&lab.state.pool).await.unwrap(), "nothing was queued");
    // A dataset run without paths.
    let (status, _, body) = lab.request("POST", "/runs/new", Some("action=launch")).await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"e-model_name_or_path\">is required"));
}

#[tokio::test]
async fn a_valid_run_form_previews_then_launches_and_clones_with_edits() {
    let lab = lab().await;
    let (status, _, body) = lab.request("POST", "/runs/new", Some("task=toy-tree&max_steps=40&action=preview")).await;
    assert_eq!(status, 200);
    let body = unescape(&body);
    assert!(body.contains("task = \"toy-tree\"") && body.contains("max_steps = 40"), "TOML preview: {body}");
    assert!(body.contains("\"learning_rate\": 0.00003"), "JSON preview with the toy default");
    let (status, headers, _) =
        lab.request("POST", "/runs/new", Some("task=toy-tree&max_steps=40&sync_ref_model=true&action=launch")).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/runs/1"));
    let run = server::db::runs::get(&lab.state.pool, 1).await.unwrap().unwrap();
    assert_eq!(run.config_json()["sync_ref_model"], json!(true));

    // Clone: the form comes filled in with the run's config, and the new run names its parent.
    let (status, body) = lab.get("/runs/new?from=1").await;
    assert_eq!(status, 200);
    assert!(body.contains("Clone run 1 with edits") && body.contains("name=\"parent\" value=\"1\""));
    assert!(body.contains("id=\"f-max_steps\" name=\"max_steps\" value=\"40\""));
    assert!(body.contains("id=\"f-sync_ref_model\" name=\"sync_ref_model\" value=\"true\" checked"));
    let (status, headers, _) =
        lab.request("POST", "/runs/new", Some("parent=1&task=toy-tree&max_steps=80&action=launch")).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/runs/2"));
    let clone = server::db::runs::get(&lab.state.pool, 2).await.unwrap().unwrap();
    assert_eq!((clone.parent_id, clone.config_json()["max_steps"].as_u64()), (Some(1), Some(80)));
    // The model and dataset pickers list what the server's directories hold.
    let (_, body) = lab.get("/runs/new").await;
    assert!(
        body.contains("<option value=\"tiny-llama\">") && body.contains("<option value=\"pairs.jsonl\">"),
        "{body}"
    );
}

#[tokio::test]
async fn the_sweep_form_counts_runs_refuses_grids_over_the_limit_and_launches() {
    let lab = lab_with(|s| s.max_sweep_runs = 10).await;
    let grid = "task=toy-tree&max_steps=20&loss=sigmoid&fixed=on&trust_region=on&alphas=0.01,0.1,0.6&taus=1,10&betas=0.1&seeds=1";
    let (status, _, body) = lab.request("POST", "/sweeps/new", Some(&format!("{grid}&action=count"))).await;
    assert_eq!(status, 200);
    assert!(body.contains("7 runs"), "1 fixed + 3 α × 2 τ");
    let (status, _, json) = lab.request("POST", "/sweeps/new/count", Some(&format!("{grid}&seeds=1,2"))).await;
    assert_eq!(status, 200);
    assert!(json.contains("\"runs\":14") && json.contains("more than this server's limit (10)"), "{json}");
    let over = format!("{grid}&seeds=1,2&action=launch");
    let (status, _, body) = lab.request("POST", "/sweeps/new", Some(&over)).await;
    assert_eq!(status, 422);
    assert!(unescape(&body).contains("14 runs is more than this server's --max-sweep-runs (10)"), "{body}");
    assert!(body.contains("value=\"0.01,0.1,0.6\""), "the input is kept");
    assert!(!server::db::runs::any(&lab.state.pool).await.unwrap());
    let (status, _, body) =
        lab.request("POST", "/sweeps/new", Some(&format!("{grid}&alphas=0.1,7&action=launch"))).await;
    assert_eq!(status, 422);
    assert!(body.contains("grid.ref_model_mixup_alpha=7.0"), "the bad grid value is named: {body}");
    let (status, headers, _) = lab.request("POST", "/sweeps/new", Some(&format!("{grid}&action=launch"))).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/sweeps/1"));
    let (_, page) = lab.get("/sweeps/1").await;
    assert!(page.contains("7 queued"), "{page}");
}

#[tokio::test]
async fn the_demo_button_queues_dpo_against_tr_dpo_on_toy_tree() {
    let lab = lab().await;
    let (status, headers, _) = lab.request("POST", "/sweeps/demo", Some("")).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/sweeps/1"));
    let runs = server::db::runs::list(&lab.state.pool, None, Some(1), server::db::runs::Sort::Oldest).await.unwrap();
    let methods: Vec<String> =
        runs.iter().map(|r| server::report::RunMeta::new(r.id, &r.config_json()).short_label()).collect();
    assert_eq!(
        methods,
        [
            "DPO",
            "TR-DPO α=0.01 τ=1",
            "TR-DPO α=0.1 τ=1",
            "TR-DPO α=0.6 τ=1",
            "TR-DPO α=1 τ=10",
            "TR-DPO α=1 τ=100",
            "TR-DPO α=1 τ=1000"
        ]
    );
    let (status, page) = lab.get("/sweeps/1").await;
    assert_eq!(status, 200);
    assert!(page.contains("Sweep 1") && page.contains("data-live=\"1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_queues_the_demo_sweep_into_an_empty_database_only() {
    let scratch = tempfile::tempdir().unwrap();
    let mut config = common::serve_config(scratch.path()).await;
    config.demo_sweep = common::fast_demo();
    config.demo_if_empty = true;
    let first = server::lifecycle::start(config.clone()).await.unwrap();
    let runs = server::db::runs::list(&first.state.pool, None, None, server::db::runs::Sort::Oldest).await.unwrap();
    assert_eq!(runs.len(), 7);
    assert!(runs.iter().all(|r| r.sweep_id == Some(1)));
    first.stop().await.unwrap();
    let again = server::lifecycle::start(config).await.unwrap();
    let runs = server::db::runs::list(&again.state.pool, None, None, server::db::runs::Sort::Oldest).await.unwrap();
    assert_eq!(runs.len(), 7, "a database with runs gets no second demo sweep");
    again.stop().await.unwrap();
}

#[tokio::test]
async fn a_lab_with_hundreds_of_runs_pages_the_table_and_every_link_keeps_the_filters() {
    let lab = lab().await;
    let configs: Vec<serde_json::Value> = (0..450).map(|seed| toy_config(json!({"seed": seed}))).collect();
    let (sweep, ids) = lab.state.queue.enqueue_sweep(json!({}), json!({}), configs, None).await.unwrap();
    let lone = lab.state.queue.enqueue(toy_config(json!({})), None, None).await.unwrap();
    let shown = |body: &str| -> Vec<i64> {
        body.split("<tr data-run=\"").skip(1).map(|s| s[..s.find('"').unwrap()].parse().unwrap()).collect()
    };
    let (status, first) = lab.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(shown(&first).len(), 200, "one page of the newest runs");
    assert_eq!(shown(&first)[0], lone);
    assert!(first.contains("1–200 of 451 runs") && first.contains("page 1 of 3"), "where the page is");
    assert!(first.contains("href=\"/?sort=id&#38;dir=desc&#38;page=2\" rel=\"next\""), "a link to the next page");
    assert!(first.contains("data-src=\"/runs/table?sort=id&#38;dir=desc&#38;page=1\""), "the live table stays on it");

    // Filtered, the pages are the matching runs'; sort links start again at page 1.
    let (_, last) = lab.get(&format!("/?sweep={sweep}&page=3")).await;
    assert_eq!(shown(&last), ids[..50].iter().rev().copied().collect::<Vec<_>>(), "the oldest 50 of the sweep");
    assert!(last.contains("401–450 of 450 matching (451 runs in all)"), "counted among the matching runs");
    assert!(last.contains(&format!("href=\"/?sweep={sweep}&#38;sort=id&#38;dir=desc&#38;page=2\" rel=\"prev\"")));
    assert!(last.contains(&format!("href=\"/?sweep={sweep}&#38;sort=status&#38;dir=asc\"")), "sorting: page 1");
    let (_, beyond) = lab.get("/?page=99").await;
    assert!(beyond.contains("page 3 of 3"), "a page past the end shows the last");
    let (_, few) = lab.get(&format!("/runs/table?status=queued&sweep={}", sweep + 1)).await;
    assert!(few.contains("0 of 451 runs") && !few.contains("class=\"pager\""), "one page needs no pager");
}

#[tokio::test]
async fn the_runs_api_pages_on_request_and_counts_every_matching_run() {
    let lab = lab().await;
    let mut ids = Vec::new();
    for seed in 0..5 {
        ids.push(lab.state.queue.enqueue(toy_config(json!({"seed": seed})), None, None).await.unwrap());
    }
    let answer = |path: &str| {
        let lab = &lab;
        let path = path.to_string();
        async move {
            let (status, body) = lab.get(&path).await;
            (status, serde_json::from_str::<serde_json::Value>(&body).unwrap())
        }
    };
    let ids_of = |v: &serde_json::Value| -> Vec<i64> {
        v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let (_, all) = answer("/api/runs").await;
    assert_eq!((ids_of(&all).len(), all["total"].as_i64()), (5, Some(5)), "without a limit: every run");
    let (_, first) = answer("/api/runs?limit=2").await;
    assert_eq!((ids_of(&first), first["total"].as_i64()), (vec![ids[4], ids[3]], Some(5)), "the newest two");
    let (_, last) = answer("/api/runs?limit=2&offset=4").await;
    assert_eq!(ids_of(&last), vec![ids[0]]);
    let (_, oldest) = answer("/api/runs?sort=id&offset=3").await;
    assert_eq!((ids_of(&oldest), oldest["total"].as_i64()), (vec![ids[3], ids[4]], Some(5)), "an offset alone");
    for (query, field) in
        [("limit=0", "limit"), ("limit=10001", "limit"), ("limit=two", "limit"), ("offset=-1", "offset")]
    {
        let (status, body) = answer(&format!("/api/runs?{query}")).await;
        assert_eq!((status, body["fields"][0]["field"].as_str()), (422, Some(field)), "{query}: {body}");
    }
}
