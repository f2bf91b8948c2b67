//! The runs table: one row per run with its derived overoptimization columns, filtered and
//! sorted on any column.

use std::cmp::Ordering;

use trainer::summary::RunSummary;

use super::{Eval, RunMeta};
use crate::db::runs::{Run, RunStatus};

#[derive(Debug, Clone)]
pub struct RunRow {
    pub meta: RunMeta,
    pub status: RunStatus,
    pub sweep_id: Option<i64>,
    pub step: i64,
    pub total_steps: Option<i64>,
    /// 0 … 1.
    pub progress: Option<f64>,
    /// Seconds until it ends: from its own pace while it runs; for a queued run, from the queue
    /// ahead of it and the pace of runs like it (see [`estimate`]).
    pub eta: Option<f64>,
    /// A queued run's place in the queue, 1 for the next to start.
    pub queue_position: Option<usize>,
    /// Seconds until a queued run starts, when the pace ahead of it is known.
    pub starts_in: Option<f64>,
    /// Seconds per optimizer step: measured while running, or over the whole finished run.
    pub pace: Option<f64>,
    pub summary: Option<RunSummary>,
    pub error: Option<String>,
    /// The overoptimization alarm, while the run is past its peak.
    pub past_peak: Option<super::PastPeak>,
    /// The user who launched it.
    pub launched_by: Option<String>,
}

impl RunRow {
    pub fn new(run: &Run, evals: &[Eval], checkpoint_steps: &[i64]) -> Self {
        let status = run.status();
        let progress = match run.total_steps.filter(|t| *t > 0) {
            Some(total) => Some((run.step as f64 / total as f64).clamp(0.0, 1.0)),
            None if status == RunStatus::Finished => Some(1.0),
            None => None,
        };
        let pace = match (status, run.started_at, run.heartbeat_at, run.finished_at, run.total_steps) {
            (RunStatus::Running, Some(started), Some(beat), _, _) if run.step > 0 && beat > started => {
                Some((beat - started) as f64 / 1000.0 / run.step as f64)
            }
            // Over the steps it took: `early_stopping` may end it before its total.
            (RunStatus::Finished, Some(started), _, Some(finished), Some(_)) if run.step > 0 && finished > started => {
                Some((finished - started) as f64 / 1000.0 / run.step as f64)
            }
            _ => None,
        };
        let eta = match (status, pace, run.total_steps) {
            (RunStatus::Running, Some(pace), Some(total)) => Some(pace * (total - run.step).max(0) as f64),
            _ => None,
        };
        Self {
            meta: RunMeta::new(run.id, &run.config_json()),
            status,
            sweep_id: run.sweep_id,
            step: run.step,
            total_steps: run.total_steps,
            progress,
            eta,
            queue_position: None,
            starts_in: None,
            pace,
            summary: super::summarize(evals, checkpoint_steps),
            error: run.error.clone(),
            past_peak: super::PastPeak::of(evals),
            launched_by: run.launched_by.clone(),
        }
    }

    /// Optimizer steps the run takes: known once it started, else its config's `max_steps`.
    fn planned_steps(&self) -> Option<i64> {
        self.total_steps.or_else(|| self.meta.config.max_steps.and_then(|m| i64::try_from(m).ok()))
    }

    pub fn id(&self) -> i64 {
        self.meta.id
    }

    /// The text a cell shows, or what a column sorts by.
    fn key(&self, column: Column) -> Key {
        let s = self.summary.as_ref();
        let num = |v: Option<f64>| v.map_or(Key::Missing, Key::Number);
        match column {
            Column::Id => Key::Number(self.meta.id as f64),
            Column::Status => Key::Text(self.status.as_str().to_string()),
            Column::Method => Key::Text(self.meta.method()),
            Column::Alpha => num(self.meta.alpha()),
            Column::Tau => num(self.meta.tau().map(|t| t as f64)),
            Column::Beta => Key::Number(self.meta.config.beta),
            Column::Seed => Key::Number(self.meta.config.task_seed as f64 * 1e9 + self.meta.config.seed as f64),
            Column::Progress => num(self.progress),
            Column::LaunchedBy => self.launched_by.clone().map_or(Key::Missing, Key::Text),
            // The run summary's own columns (`RunSummary::columns`), under the same keys.
            Column::StartGold | Column::PeakGold | Column::FinalGold | Column::PeakKl | Column::Drop => {
                num(s.and_then(|s| s.value(column.as_str())?.as_f64()))
            }
        }
    }
}

/// Queue positions and when each run should end: the oldest queued run starts next, on the
/// first of `slots` trainers (the live workers') to free up. A run without its own pace takes the
/// median pace of finished or running runs of the same task (all runs, failing that); without
/// any, queued runs get their position but no times. So do all of them without a live trainer
/// (`slots` 0), and runs that require worker labels: only some workers may take those.
pub fn estimate(rows: &mut [RunRow], slots: usize) {
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let overall = median(rows.iter().filter_map(|r| r.pace).collect());
    let pace_of = |row: &RunRow, rows: &[RunRow]| -> Option<f64> {
        row.pace.or_else(|| {
            median(rows.iter().filter(|r| r.meta.config.task == row.meta.config.task).filter_map(|r| r.pace).collect())
                .or(overall)
        })
    };
    let running: Vec<f64> =
        rows.iter().filter(|r| r.status == RunStatus::Running).map(|r| r.eta.unwrap_or(0.0)).collect();
    let mut free_at: Vec<f64> = running.clone();
    free_at.resize(slots.max(running.len()).max(1), 0.0);
    let mut queued: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].status == RunStatus::Queued).collect();
    queued.sort_by_key(|&i| rows[i].meta.id);
    let mut known = slots > 0;
    for (position, i) in queued.into_iter().enumerate() {
        rows[i].queue_position = Some(position + 1);
        if !rows[i].meta.config.requires.is_empty() {
            continue;
        }
        let duration = match (pace_of(&rows[i], rows), rows[i].planned_steps()) {
            (Some(pace), Some(steps)) if known => pace * steps as f64,
            _ => {
                // Everything after a run of unknown length starts at an unknown time.
                known = false;
                continue;
            }
        };
        let slot = (0..free_at.len()).min_by(|&a, &b| free_at[a].total_cmp(&free_at[b])).expect("a slot");
        rows[i].starts_in = Some(free_at[slot]);
        free_at[slot] += duration;
        rows[i].eta = Some(free_at[slot]);
    }
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Number(f64),
    Text(String),
    /// Sorts last in either direction.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    Status,
    Method,
    Alpha,
    Tau,
    Beta,
    Seed,
    Progress,
    StartGold,
    PeakGold,
    FinalGold,
    PeakKl,
    Drop,
    LaunchedBy,
}

impl Column {
    pub const ALL: [Column; 14] = [
        Self::Id,
        Self::Status,
        Self::Method,
        Self::Alpha,
        Self::Tau,
        Self::Beta,
        Self::Seed,
        Self::Progress,
        Self::StartGold,
        Self::PeakGold,
        Self::FinalGold,
        Self::PeakKl,
        Self::Drop,
        Self::LaunchedBy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Status => "status",
            Self::Method => "method",
            Self::Alpha => "alpha",
            Self::Tau => "tau",
            Self::Beta => "beta",
            Self::Seed => "seed",
            Self::Progress => "progress",
            Self::StartGold => "start_gold",
            Self::PeakGold => "peak_gold",
            Self::FinalGold => "final_gold",
            Self::PeakKl => "peak_kl",
            Self::Drop => "drop",
            Self::LaunchedBy => "launched_by",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Id => "Run",
            Self::Status => "Status",
            Self::Method => "Method",
            Self::Alpha => "α",
            Self::Tau => "τ",
            Self::Beta => "β",
            Self::Seed => "Seeds",
            Self::Progress => "Progress",
            Self::StartGold => "Start gold",
            Self::PeakGold => "Peak gold",
            Self::FinalGold => "Final gold",
            Self::PeakKl => "KL at peak (nats)",
            Self::Drop => "Drop",
            Self::LaunchedBy => "Launched by",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub status: Option<RunStatus>,
    /// A [`RunMeta::method`] label.
    pub method: Option<String>,
    pub sweep: Option<i64>,
    /// A user's name.
    pub launched_by: Option<String>,
}

impl Filter {
    pub fn keeps(&self, row: &RunRow) -> bool {
        self.status.is_none_or(|s| s == row.status)
            && self.method.as_ref().is_none_or(|m| *m == row.meta.method())
            && self.sweep.is_none_or(|s| Some(s) == row.sweep_id)
            && self.launched_by.as_ref().is_none_or(|u| Some(u) == row.launched_by.as_ref())
    }
}

/// Keeps the rows the filter allows, sorted by `column` (missing values last either way, then
/// newest first).
pub fn select(mut rows: Vec<RunRow>, filter: &Filter, column: Column, descending: bool) -> Vec<RunRow> {
    rows.retain(|r| filter.keeps(r));
    rows.sort_by(|a, b| {
        let (ka, kb) = (a.key(column), b.key(column));
        let by_column = match (&ka, &kb) {
            (Key::Missing, Key::Missing) => Ordering::Equal,
            (Key::Missing, _) => Ordering::Greater,
            (_, Key::Missing) => Ordering::Less,
            _ => {
                let o = ka.partial_cmp(&kb).unwrap_or(Ordering::Equal);
                if descending {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        by_column.then(b.meta.id.cmp(&a.meta.id))
    });
    rows
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(id: i64, status: &str, alpha: Option<f64>, peak: Option<f64>) -> RunRow {
        let config = match alpha {
            Some(a) => json!({"sync_ref_model": true, "ref_model_mixup_alpha": a}),
            None => json!({}),
        };
        let run = Run {
            sweep_id: (id % 2 == 0).then_some(1),
            config: config.to_string(),
            step: 5,
            total_steps: Some(10),
            started_at: Some(0),
            heartbeat_at: Some(5_000),
            ..Run::example(id, status)
        };
        let evals: Vec<Eval> = peak
            .map(|p| {
                vec![
                    Eval { step: 0, kl: Some(0.0), gold: Some(0.0), ..Eval::default() },
                    Eval { step: 5, kl: Some(1.0), gold: Some(p), ..Eval::default() },
                ]
            })
            .unwrap_or_default();
        RunRow::new(&run, &evals, &[])
    }

    fn ids(rows: &[RunRow]) -> Vec<i64> {
        rows.iter().map(RunRow::id).collect()
    }

    #[test]
    fn rows_sort_on_derived_columns_with_missing_values_last() {
        let rows = vec![
            row(1, "finished", None, Some(0.5)),
            row(2, "running", Some(0.1), None),
            row(3, "finished", Some(1.0), Some(2.0)),
        ];
        assert_eq!(ids(&select(rows.clone(), &Filter::default(), Column::PeakGold, true)), vec![3, 1, 2]);
        assert_eq!(ids(&select(rows.clone(), &Filter::default(), Column::PeakGold, false)), vec![1, 3, 2]);
        assert_eq!(ids(&select(rows.clone(), &Filter::default(), Column::Alpha, false)), vec![2, 3, 1]);
        assert_eq!(
            ids(&select(rows, &Filter::default(), Column::Method, false)),
            vec![1, 3, 2],
            "DPO, TR-DPO hard, soft"
        );
    }

    #[test]
    fn filters_keep_status_method_and_sweep() {
        let rows = vec![
            row(1, "finished", None, None),
            row(2, "running", Some(0.1), None),
            row(4, "finished", Some(0.1), None),
        ];
        let by = |f: Filter| ids(&select(rows.clone(), &f, Column::Id, false));
        assert_eq!(by(Filter { status: Some(RunStatus::Finished), ..Filter::default() }), vec![1, 4]);
        assert_eq!(by(Filter { method: Some("TR-DPO soft".into()), ..Filter::default() }), vec![2, 4]);
        assert_eq!(by(Filter { sweep: Some(1), ..Filter::default() }), vec![2, 4]);
    }

    #[test]
    fn a_running_run_has_an_eta_from_its_pace() {
        let r = row(2, "running", None, None);
        assert_eq!(r.progress, Some(0.5));
        assert_eq!(r.eta, Some(5.0), "5 steps in 5 s, 5 to go");
        assert_eq!(row(1, "finished", None, None).eta, None);
    }

    #[test]
    fn queued_runs_get_their_place_and_times_from_the_pace_of_runs_like_them() {
        // One running (5 s left at 1 s a step), three queued of 10 steps, two trainers.
        let mut rows = vec![row(1, "running", None, None), row(4, "queued", None, None), row(2, "queued", None, None)];
        rows.push(row(3, "queued", None, None));
        for r in rows.iter_mut().skip(1) {
            r.total_steps = None;
            r.meta.config.max_steps = Some(10);
        }
        estimate(&mut rows, 2);
        let by_id = |id: i64| rows.iter().find(|r| r.id() == id).unwrap();
        assert_eq!(by_id(2).queue_position, Some(1));
        assert_eq!((by_id(2).starts_in, by_id(2).eta), (Some(0.0), Some(10.0)), "the idle trainer takes it");
        assert_eq!((by_id(3).starts_in, by_id(3).eta), (Some(5.0), Some(15.0)), "after the running run");
        assert_eq!((by_id(4).queue_position, by_id(4).starts_in), (Some(3), Some(10.0)));
        // Without any pace, only the positions.
        let mut unknown = vec![row(5, "queued", None, None), row(6, "queued", None, None)];
        estimate(&mut unknown, 1);
        assert_eq!((unknown[1].queue_position, unknown[1].eta), (Some(2), None));
    }

    #[test]
    fn runs_that_require_labels_and_queues_without_a_live_trainer_get_a_position_but_no_times() {
        // As above: one running (5 s left), three queued of 10 steps, two trainers; the first
        // queued run requires a label.
        let mut rows = vec![row(1, "running", None, None)];
        rows.extend((2..=4).map(|id| row(id, "queued", None, None)));
        for r in rows.iter_mut().skip(1) {
            r.total_steps = None;
            r.meta.config.max_steps = Some(10);
        }
        rows[1].meta.config.requires = trainer::config::parse_labels("gpu=h100").unwrap();
        estimate(&mut rows, 2);
        assert_eq!((rows[1].queue_position, rows[1].starts_in), (Some(1), None), "only some workers may take it");
        assert_eq!((rows[2].starts_in, rows[3].starts_in), (Some(0.0), Some(5.0)), "the others keep their times");
        for r in &mut rows {
            (r.starts_in, r.queue_position) = (None, None);
        }
        estimate(&mut rows, 0);
        assert!(rows[1..].iter().all(|r| r.queue_position.is_some() && r.starts_in.is_none()), "nothing trains them");
    }
}
