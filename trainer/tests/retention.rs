//! Checkpoints where the curve is: a toy run with `save_strategy = "pareto"` keeps the weights of
//! every evaluation on its (KL ↓, gold ↑) front and its periodic checkpoints, deletes the rest
//! through its sink, and a run stopped and resumed (or interrupted between writing a checkpoint
//! and deleting what it replaced) ends with exactly the checkpoints of an uninterrupted run.

use std::path::Path;

use serde_json::json;
use trainer::checkpoint;
use trainer::config::RunConfig;
use trainer::metrics::{MemorySink, MetricSink, Metrics};
use trainer::summary;

/// A small toy-tree run whose gold reward peaks at step 15 and falls while KL keeps growing; its
/// front (steps 0 … 15) outgrows a `save_pareto_limit` of 3.
fn config(cache: &Path) -> RunConfig {
    RunConfig::from_json_value(json!({
        "task": "toy-tree",
        "toy_num_prompts": 3, "toy_alphabet_size": 3, "toy_response_length": 3,
        "toy_hidden_size": 16, "toy_num_layers": 1, "toy_num_heads": 2, "toy_pairs_per_prompt": 4,
        "learning_rate": 1e-4, "max_steps": 120, "eval_steps": 5, "logging_steps": 5, "save_steps": 50,
        "save_pareto_limit": 3,
        "num_threads": 1, "toy_cache_dir": cache,
    }))
    .unwrap()
}

/// Asks to stop once `stop_at` steps are done.
struct StopAfter {
    inner: MemorySink,
    stop_at: u64,
    done: u64,
    deleted: Vec<u64>,
}

impl MetricSink for StopAfter {
    fn log(&mut self, step: u64, metrics: &Metrics) -> trainer::Result<()> {
        self.inner.log(step, metrics)
    }
    fn checkpoint_saved(&mut self, step: u64, dir: &Path) -> trainer::Result<()> {
        self.inner.checkpoint_saved(step, dir)
    }
    fn deleting_checkpoint(&mut self, step: u64) -> trainer::Result<()> {
        self.deleted.push(step);
        self.inner.deleting_checkpoint(step)
    }
    fn progress(&mut self, step: u64, _total: u64) {
        self.done = step;
    }
    fn should_stop(&mut self) -> bool {
        self.done >= self.stop_at
    }
}

fn sink(stop_at: u64) -> StopAfter {
    StopAfter { inner: MemorySink::default(), stop_at, done: 0, deleted: Vec::new() }
}

#[test]
fn a_pareto_run_keeps_its_front_and_periodic_checkpoints_and_nothing_dominated() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path());
    let out = tempfile::tempdir().unwrap();
    let mut s = sink(u64::MAX);
    trainer::train::train_with(&cfg, out.path(), false, &mut s).unwrap();
    let on_disk = checkpoint::steps(out.path()).unwrap();
    let recorded: Vec<u64> = s.inner.checkpoints.iter().map(|(step, _)| *step).collect();
    assert_eq!(recorded, on_disk, "the sink heard of every checkpoint kept and every one deleted");
    assert!(!s.deleted.is_empty(), "the front outgrew save_pareto_limit: {on_disk:?}");

    let points = summary::eval_points(&s.inner.steps);
    let front = summary::pareto_front(&points);
    let peak = points.iter().max_by(|a, b| a.gold.total_cmp(&b.gold)).unwrap();
    assert!(peak.step > 5 && peak.step < 100, "the run peaks inside it: {peak:?}");
    assert!(front.len() > 3, "a front longer than the limit: {front:?}");
    let mut pareto_kept = 0;
    for step in &on_disk {
        let periodic = (step % 50 == 0 && *step > 0) || *step == 120;
        let on_front = front.iter().any(|p| p.step == *step);
        assert!(periodic || on_front, "step {step} is neither periodic nor on the front");
        pareto_kept += usize::from(on_front);
    }
    assert_eq!(pareto_kept, 3, "save_pareto_limit: {on_disk:?}");
    assert!(on_disk.contains(&0) && on_disk.contains(&peak.step), "π_init and the peak: {on_disk:?}");
    // The peak's checkpoint holds the weights that were evaluated there.
    let state =
        std::fs::read_to_string(out.path().join(format!("checkpoint-{}/trainer_state.json", peak.step))).unwrap();
    assert!(state.contains(&format!("\"global_step\": {}", peak.step)));
}

#[test]
fn a_stopped_and_resumed_pareto_run_ends_with_the_checkpoints_of_an_uninterrupted_one() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path());
    let whole = tempfile::tempdir().unwrap();
    let mut uninterrupted = sink(u64::MAX);
    trainer::train::train_with(&cfg, whole.path(), false, &mut uninterrupted).unwrap();

    let split = tempfile::tempdir().unwrap();
    let mut first = sink(12);
    assert!(trainer::train::train_with(&cfg, split.path(), false, &mut first).unwrap().stopped_early);
    assert_eq!(checkpoint::latest(split.path()).unwrap(), Some(split.path().join("checkpoint-12")));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.path().join("checkpoint-12/trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["overopt"]["peak"]["step"], 10, "the detector's running peak travels in the checkpoint: {state}");
    // Interrupted between writing its checkpoint and deleting one it replaced: that directory
    // is still there. The resumed run finds it and removes it.
    let kept = checkpoint::steps(split.path()).unwrap();
    let stray = kept[0] + 1;
    copy_dir(&split.path().join(format!("checkpoint-{}", kept[0])), &split.path().join(format!("checkpoint-{stray}")));
    let mut second = sink(u64::MAX);
    trainer::train::train_with(&cfg, split.path(), true, &mut second).unwrap();
    assert!(second.deleted.contains(&stray), "the stray checkpoint-{stray} was deleted: {:?}", second.deleted);
    assert_eq!(checkpoint::steps(split.path()).unwrap(), checkpoint::steps(whole.path()).unwrap());
    let gold = |s: &StopAfter| {
        s.inner
            .series(trainer::metric_names::EVAL_GOLD_REWARD)
            .into_iter()
            .filter(|(step, _)| *step > 12)
            .collect::<Vec<_>>()
    };
    assert_eq!(gold(&second), gold(&uninterrupted), "the resumed run evaluated the same policies");
    // The overoptimization detector's state travelled in the checkpoint: the same peak after resuming.
    let peak = |s: &StopAfter| {
        s.inner
            .series(trainer::metric_names::OVEROPT_PEAK_STEP)
            .into_iter()
            .filter(|(step, _)| *step > 12)
            .collect::<Vec<_>>()
    };
    assert!(!peak(&second).is_empty());
    assert_eq!(peak(&second), peak(&uninterrupted), "the resumed run remembers its peak");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
