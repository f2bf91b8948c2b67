//! How the trainer reports: a [`MetricSink`] receives every logged step, checkpoint and
//! progress tick, and can ask the trainer to stop. The CLI writes `metrics.jsonl`; the server
//! writes SQLite. Neither changes a line of training code.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Metric name -> value for one logged step, in name order.
pub type Metrics = BTreeMap<String, f64>;

pub trait MetricSink {
    /// One logged step. Called at most once per step.
    fn log(&mut self, step: u64, metrics: &Metrics) -> Result<()>;

    /// A run resumed from `step`: anything recorded for later steps is about to be produced again.
    fn resumed_at(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }

    /// A checkpoint of `step` is about to be written: whatever was logged so far must be stored
    /// first, so that a run resumed from it finds every step up to it.
    fn saving_checkpoint(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }

    /// A checkpoint directory was completely written.
    fn checkpoint_saved(&mut self, _step: u64, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// The checkpoint of `step` is no longer kept (see [`crate::retention`]); its directory is
    /// removed right after this returns.
    fn deleting_checkpoint(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }

    /// One step of π_init's SFT (toy tasks, before training): `sft/loss` and, where it is exact,
    /// `sft/kl_behaviour`. Its own step axis, from 0; at most `max_steps` of them. A π_init from
    /// the cache reports the steps that built it.
    fn sft(&mut self, _step: u64, _max_steps: u64, _metrics: &Metrics) -> Result<()> {
        Ok(())
    }

    /// After every optimizer step.
    fn progress(&mut self, _step: u64, _total: u64) {}

    /// Before the first step of a model run: the memory it was estimated to need.
    fn memory_plan(&mut self, _plan: &crate::memory::MemoryPlan) {}

    /// Before the first step: something the user should know about the config, such as a key
    /// that TRL (and so this run) ignores for the chosen loss or schedule.
    fn warning(&mut self, _message: &str) {}

    /// Polled before every step: `true` makes the trainer checkpoint and return.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// Keeps everything in memory; for tests and for callers that post-process a run.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    pub steps: Vec<(u64, Metrics)>,
    /// The checkpoints kept (deleted ones are removed).
    pub checkpoints: Vec<(u64, PathBuf)>,
    pub warnings: Vec<String>,
    pub sft: Vec<(u64, Metrics)>,
}

impl MetricSink for MemorySink {
    fn log(&mut self, step: u64, metrics: &Metrics) -> Result<()> {
        self.steps.push((step, metrics.clone()));
        Ok(())
    }

    fn resumed_at(&mut self, step: u64) -> Result<()> {
        self.steps.retain(|(s, _)| *s <= step);
        Ok(())
    }

    fn checkpoint_saved(&mut self, step: u64, dir: &Path) -> Result<()> {
        self.checkpoints.retain(|(s, _)| *s != step);
        self.checkpoints.push((step, dir.to_path_buf()));
        Ok(())
    }

    fn warning(&mut self, message: &str) {
        self.warnings.push(message.to_string());
    }

    fn deleting_checkpoint(&mut self, step: u64) -> Result<()> {
        self.checkpoints.retain(|(s, _)| *s != step);
        Ok(())
    }

    fn sft(&mut self, step: u64, _max_steps: u64, metrics: &Metrics) -> Result<()> {
        self.sft.retain(|(s, _)| *s < step);
        self.sft.push((step, metrics.clone()));
        Ok(())
    }
}

impl MemorySink {
    /// The series of one metric as (step, value).
    pub fn series(&self, name: &str) -> Vec<(u64, f64)> {
        self.steps.iter().filter_map(|(s, m)| m.get(name).map(|v| (*s, *v))).collect()
    }
}

/// Appends `{"step": N, "loss": …, …}` lines to `metrics.jsonl`, flushed per line so a crash
/// loses at most the line being written.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: File,
}

impl JsonlSink {
    pub fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// A new, empty file at `path`.
    pub fn truncate(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Every line of a metrics file, parsed.
    pub fn read(path: &Path) -> Result<Vec<(u64, Metrics)>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| Error::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: StepRow =
                serde_json::from_str(&line).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
            out.push((row.step, row.metrics));
        }
        Ok(out)
    }
}

#[derive(Serialize, Deserialize)]
struct StepRow {
    step: u64,
    #[serde(flatten)]
    metrics: Metrics,
}

impl MetricSink for JsonlSink {
    fn log(&mut self, step: u64, metrics: &Metrics) -> Result<()> {
        let mut obj = Map::new();
        obj.insert("step".into(), Value::from(step));
        for (k, v) in metrics {
            // JSON has no NaN/inf; a non-finite value is written as null rather than corrupting the file.
            obj.insert(k.clone(), serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number));
        }
        let line = serde_json::to_string(&Value::Object(obj)).expect("a JSON object serializes");
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// Drops lines after `step`, so the resumed run's lines replace them and every step
    /// appears exactly once.
    fn resumed_at(&mut self, step: u64) -> Result<()> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }
}

/// Running means over the micro-batches since the last logged step, as TRL averages them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricWindow {
    sums: BTreeMap<String, f64>,
    counts: BTreeMap<String, u64>,
}

impl MetricWindow {
    pub fn add(&mut self, name: &str, value: f64) {
        *self.sums.entry(name.to_string()).or_default() += value;
        *self.counts.entry(name.to_string()).or_default() += 1;
    }

    /// The means, and an empty window.
    pub fn drain(&mut self) -> Metrics {
        let out = self.sums.iter().map(|(k, s)| (k.clone(), s / self.counts[k] as f64)).collect();
        self.sums.clear();
        self.counts.clear();
        out
    }
}
