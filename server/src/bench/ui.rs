//! `goodhart bench ui`: how long the server takes to render a sweep's compare page (database
//! reads, summaries, both figures as SVG, the HTML) for 48 runs × 2,000 evaluation points, cold
//! (a server that has not shown these runs yet) and warm (ended runs' series in memory), and how
//! large the overoptimization chart's SVG is. The runs' metrics are synthetic curves of the
//! overoptimization shape (Gao et al.'s RL form plus noise), written through the server's own
//! metric writer: rendering cost depends on the number of points, not on where they came from.

use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use tower::ServiceExt;

use trainer::metric_names as names;

use crate::http::AppState;
use crate::jobs::queue::Outcome;
use crate::jobs::sink::{MetricWriter, WriteMsg};
use crate::lifecycle::ServeConfig;

#[derive(Debug, clap::Args)]
pub struct UiBenchArgs {
    #[arg(long, default_value_t = 48)]
    pub runs: usize,
    /// Evaluations per run.
    #[arg(long, default_value_t = 2000)]
    pub points: usize,
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
}

/// A deterministic xorshift stream in [-0.5, 0.5).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// Fills a sweep of `runs` finished runs with `points` evaluations each; answers the sweep id.
async fn fill(state: &AppState, writer: &MetricWriter, runs: usize, points: usize) -> anyhow::Result<i64> {
    let alphas = [0.01, 0.03, 0.1, 0.3, 0.6, 1.0];
    let taus = [1u64, 10, 100, 1000];
    let configs = (0..runs)
        .map(|i| {
            let loss = if i % 2 == 0 { "sigmoid" } else { "ipo" };
            let (alpha, tau) = (alphas[i % alphas.len()], taus[(i / 2) % taus.len()]);
            let v = json!({
                "task": "toy-tree",
                "loss_type": loss,
                "sync_ref_model": i % 8 != 0,
                "ref_model_mixup_alpha": alpha,
                "ref_model_sync_steps": tau,
                "seed": i % 3,
                "max_steps": points * 10,
                "eval_steps": 10,
            });
            let config = trainer::config::RunConfig::from_json_value(v)
                .map_err(|e| anyhow::anyhow!("{}", trainer::error::FieldError::join(&e)))?;
            Ok(serde_json::to_value(config)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (sweep, ids) =
        state.queue.enqueue_sweep(json!({"task": "toy-tree"}), json!({"seed": [0, 1, 2]}), configs, None).await?;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for (i, _) in ids.iter().enumerate() {
        let claim = state.queue.claim().await?.ok_or_else(|| anyhow::anyhow!("no queued run"))?;
        let rate = 0.002 + 0.004 * (i as f64 / runs as f64);
        for p in 0..points {
            let step = (p as i64 + 1) * 10;
            let kl = rate * step as f64 * (1.0 + 0.05 * noise.next());
            let d = kl.sqrt();
            let gold = 1.5 + d * (0.6 - 0.45 * d.ln()) + 0.03 * noise.next();
            let values = vec![
                (names::EVAL_KL_INIT.to_string(), Some(kl)),
                (names::EVAL_KL_REF.to_string(), Some(kl * 0.4)),
                (names::EVAL_GOLD_REWARD.to_string(), Some(gold)),
                (names::EVAL_OOD_MASS.to_string(), Some(0.2 + 0.3 * (1.0 - (-kl / 20.0).exp()))),
            ];
            writer.send(WriteMsg::Metrics { lease: claim.lease(), step, values }).await.map_err(anyhow::Error::msg)?;
        }
        writer.flush().await.map_err(anyhow::Error::msg)?;
        state.queue.finish(claim.run_id, Outcome::Finished).await?;
    }
    Ok(sweep)
}

async fn get(state: &AppState, uri: &str) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let response = crate::app(state.clone()).oneshot(Request::get(uri).body(Body::empty())?).await?;
    anyhow::ensure!(response.status().is_success(), "{uri}: {}", response.status());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    Ok((started.elapsed().as_secs_f64() * 1000.0, String::from_utf8(body.to_vec())?))
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    format!("median {median:.1} ms (min {:.1}, max {:.1}, n = {})", ms[0], ms[ms.len() - 1], ms.len())
}

pub fn run(args: &UiBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.repeats >= 1 && args.runs >= 1 && args.points >= 2,
        "--repeats, --runs, --points must be positive"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let config = ServeConfig::for_dir(dir.path());
        let pool = crate::db::connect(&config.database_url).await?;
        let state = AppState::new(pool.clone(), config.settings(), "bench".into());
        let (writer, writer_task) = MetricWriter::spawn(pool, state.events.clone());
        let filling = Instant::now();
        let sweep = fill(&state, &writer, args.runs, args.points).await?;
        drop(writer);
        writer_task.await?;
        println!(
            "goodhart bench ui: sweep of {} runs × {} evaluations ({} metric rows) stored in {:.1} s",
            args.runs,
            args.points,
            args.runs * args.points * 4,
            filling.elapsed().as_secs_f64()
        );
        let page = format!("/sweeps/{sweep}");
        let chart = format!("/compare/charts/overoptimization.svg?sweep={sweep}");
        for _ in 0..args.warmup {
            get(&state, &page).await?;
        }
        // Cold: a server that has not shown these runs yet reads every series from SQLite.
        // Warm: ended runs' series come from the server's memory (http::cache).
        let (mut cold_ms, mut page_ms, mut chart_ms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut page_bytes, mut svg) = (0, String::new());
        for _ in 0..args.repeats {
            let fresh = AppState::new(state.pool.clone(), config.settings(), "bench".into());
            cold_ms.push(get(&fresh, &page).await?.0);
            let (ms, body) = get(&state, &page).await?;
            page_ms.push(ms);
            page_bytes = body.len();
            let (ms, body) = get(&state, &chart).await?;
            chart_ms.push(ms);
            svg = body;
        }
        // Where the page's time goes, phase by phase.
        let selection = crate::http::pages::compare::Selection::Sweep(sweep);
        let options = crate::report::compare::Options::default();
        let (mut load_ms, mut build_ms, mut svg_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeats {
            let t = Instant::now();
            let runs = crate::http::pages::compare::load(&state, &selection).await?;
            load_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let comparison = crate::report::compare::Comparison::new(runs, options.clone());
            let figures = [comparison.overoptimization(), comparison.ood_mass()];
            build_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let bytes: usize = figures.iter().map(|f| f.to_svg().len()).sum();
            svg_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(bytes > 0);
        }
        let paths = svg.matches("class=\"run-line\"").count();
        println!("GET {page} (the whole compare page), cold: {}; {page_bytes} bytes of HTML", summary(cold_ms));
        println!("GET {page}, warm: {}", summary(page_ms));
        println!(
            "GET /compare/charts/overoptimization.svg (the chart alone), warm: {}; {} bytes of SVG, {paths} run paths",
            summary(chart_ms),
            svg.len()
        );
        println!("  warm, reading the runs, their evaluations and checkpoints: {}", summary(load_ms));
        println!("  summaries, smoothing, downsampling into both figures: {}", summary(build_ms));
        println!("  drawing both figures as SVG: {}", summary(svg_ms));
        Ok(())
    })
}
