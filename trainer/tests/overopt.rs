//! The overoptimization alarm on the default toy-tree DPO run, whose gold reward peaks at step
//! 200 of 2,000 (EXPERIMENTS.md): with `early_stopping = true` the run stops within
//! `early_stopping_patience` evaluations of its observed peak, as finished, with its final
//! checkpoint written, and `load_best_model_at_end` exports the peak's weights. A run too short
//! to peak raises no alarm. π_init comes from the default toy cache, shared with other tests.

use serde_json::json;
use trainer::config::RunConfig;
use trainer::metrics::MemorySink;
use trainer::{checkpoint, metric_names, summary};

#[test]
fn the_default_toy_run_stops_within_patience_evaluations_of_its_peak_and_keeps_the_peaks_weights() {
    let cfg = RunConfig::from_json_value(json!({
        "task": "toy-tree", "loss_type": "sigmoid",
        "early_stopping": true, "load_best_model_at_end": true,
    }))
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    let outcome = trainer::train::train_with(&cfg, out.path(), false, &mut sink).unwrap();

    let points = summary::eval_points(&sink.steps);
    let peak = points.iter().max_by(|a, b| a.gold.total_cmp(&b.gold)).unwrap();
    let alarm = outcome.past_peak.expect("the alarm fired");
    assert_eq!(alarm.peak_step, peak.step, "the alarm's peak is the observed one");
    assert!((175..=250).contains(&peak.step), "the default run peaks near step 200: {peak:?}");
    assert_eq!(alarm.peak_kl, peak.kl);
    let eval_steps = cfg.eval_steps.unwrap();
    assert!(alarm.step > peak.step && alarm.step <= peak.step + cfg.early_stopping_patience * eval_steps, "{alarm:?}");

    // Stopped there, as finished, with its final checkpoint written.
    assert!(!outcome.stopped_early);
    assert_eq!(outcome.global_step, alarm.step);
    assert_eq!(outcome.total_steps, 2000);
    let reason = outcome.finish_reason.as_deref().unwrap();
    assert!(reason.starts_with(&format!("stopped: past its peak at step {}", alarm.step)), "{reason}");
    assert_eq!(outcome.last_checkpoint, Some(checkpoint::checkpoint_dir(out.path(), alarm.step)));
    assert_eq!(points.last().unwrap().step, alarm.step, "no evaluation after the stop");

    // The logged alarm: 0 until it fired, then 1, naming the peak.
    for (step, past) in sink.series(metric_names::OVEROPT_PAST_PEAK) {
        assert_eq!(past, f64::from(u8::from(step >= alarm.step)), "overopt/past_peak at step {step}");
    }
    let last = &sink.steps.last().unwrap().1;
    assert_eq!(last[metric_names::OVEROPT_PEAK_STEP], peak.step as f64);
    assert_eq!(last[metric_names::OVEROPT_ALARM_STEP], alarm.step as f64);

    // The exported final model is the peak's, whose checkpoint the Pareto retention kept.
    let final_model = outcome.final_model.expect("load_best_model_at_end exports a final model");
    let peak_dir = checkpoint::checkpoint_dir(out.path(), peak.step);
    let weights = |dir: &std::path::Path| std::fs::read(dir.join(checkpoint::MODEL_FILE)).unwrap();
    assert!(weights(&final_model) == weights(&peak_dir), "final-model/ holds the peak's weights");
    assert!(weights(&final_model) != weights(&checkpoint::checkpoint_dir(out.path(), alarm.step)));
    assert!(final_model.join("config.json").is_file() && !final_model.join("trainer_state.json").exists());
}

#[test]
fn a_run_too_short_to_peak_raises_no_alarm() {
    let cfg = RunConfig::from_json_value(json!({
        "task": "toy-tree", "loss_type": "sigmoid", "max_steps": 100, "early_stopping": true,
    }))
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    let outcome = trainer::train::train_with(&cfg, out.path(), false, &mut sink).unwrap();
    assert_eq!((outcome.global_step, outcome.past_peak, outcome.finish_reason), (100, None, None));
    let past = sink.series(metric_names::OVEROPT_PAST_PEAK);
    assert_eq!(past.len(), 5, "logged at every evaluation: {past:?}");
    assert!(past.iter().all(|(_, p)| *p == 0.0), "{past:?}");
}
