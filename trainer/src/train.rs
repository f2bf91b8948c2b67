//! THE training loop, readable top to bottom: one config in, metrics and checkpoints out.
//!
//! [`train_with`] loads what the config names ([`crate::setup`], or a toy task from
//! [`crate::tasks`]) and runs [`train_loop`]: each step sums the gradients of its micro-batches
//! ([`crate::data_parallel`]), clips them, takes an AdamW step and, with a trust region, moves the
//! reference; then it evaluates, logs and saves checkpoints. [`train`] is the same run, logging
//! to `metrics.jsonl` in the output directory.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, CheckpointContents, TrainerState};
use crate::config::RunConfig;
use crate::data::{self, BatchSampler, DataCursor};
use crate::data_parallel::{micro_batch_grads, MicroBatchGrads, ReferenceLogps, ReferenceSource};
use crate::error::{Error, FieldError, Result};
use crate::eval::{EvalWeights, Evaluator};
use crate::memory::MemoryPlan;
use crate::metric_names;
use crate::metrics::{JsonlSink, MetricSink, MetricWindow, Metrics};
use crate::model::{add_grads, ParamSet};
use crate::optim::{clip_to_max_norm, global_grad_norm, AdamW, AdamWConfig, LrSchedule};
use crate::overopt::{self, Alarm};
use crate::retention::{self, Scored};
use crate::setup::{self, check_data_size, kto_weights_warning, Setup};
use crate::tasks;
use crate::trust_region::TrustRegion;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainOutcome {
    pub global_step: u64,
    pub total_steps: u64,
    /// The sink asked to stop before the last step; a checkpoint was written.
    pub stopped_early: bool,
    pub last_checkpoint: Option<PathBuf>,
    /// The overoptimization alarm at the end: the run is past its peak (see [`crate::overopt`]).
    pub past_peak: Option<Alarm>,
    /// Why a run that finished before its last step did (`early_stopping`): "stopped: past its
    /// peak at step N …".
    pub finish_reason: Option<String>,
    /// `final-model/`, the best evaluation's weights (`load_best_model_at_end`).
    pub final_model: Option<PathBuf>,
}

/// Optimizer steps a run takes: `max_steps`, or `num_train_epochs` as transformers counts them
/// (the last step of an epoch takes the batches left, so updates per epoch round up).
pub fn total_steps(cfg: &RunConfig, examples: usize) -> u64 {
    cfg.max_steps.unwrap_or_else(|| {
        let batches = data::batches_per_epoch(examples, cfg.per_device_train_batch_size, cfg.dataloader_drop_last);
        let updates_per_epoch = data::updates_per_epoch(batches, cfg.gradient_accumulation_steps);
        (cfg.num_train_epochs * updates_per_epoch as f64).ceil() as u64
    })
}

/// Loads what the config names and trains it to the end, appending metrics to
/// `metrics.jsonl` in `output_dir`. With `resume`, continues from the latest checkpoint there
/// (or starts fresh if there is none).
pub fn train(cfg: &RunConfig, output_dir: &Path, resume: bool) -> Result<TrainOutcome> {
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
    train_with(cfg, output_dir, resume, &mut JsonlSink::create(&output_dir.join("metrics.jsonl"))?)
}

/// [`train`], reporting to `sink` instead: every metric, checkpoint and warning goes to it, and
/// the run checkpoints and stops early when it answers [`MetricSink::should_stop`] (a cancel).
/// A toy `task` brings its own evaluator (exact or Monte Carlo KL to π_init, gold reward).
pub fn train_with(cfg: &RunConfig, output_dir: &Path, resume: bool, sink: &mut dyn MetricSink) -> Result<TrainOutcome> {
    let device = cfg.candle_device()?;
    if cfg.task.is_toy() {
        let mut task = match tasks::build_reporting(cfg, &device, sink) {
            Err(Error::StoppedBeforeTraining) => return stopped_before_training(cfg, output_dir, resume),
            built => built?,
        };
        let run = Run { cfg, setup: &task.setup, output_dir, resume, initial_policy: None };
        return train_loop(run, sink, Some(task.evaluator.as_mut()));
    }
    let mut setup = Setup::from_dataset(cfg, &device)?;
    sink.memory_plan(&MemoryPlan::for_run(&cfg.memory_shape(), &setup.model.config, &setup.data)?);
    let mut evaluator = setup::dataset_evaluator(cfg, &setup)?;
    // A fresh vanilla run with precomputed reference log-probs and no evaluation reads the
    // initial weights only to score the reference once and to start the policy: they become
    // the policy rather than stay beside a copy of it, one set of weights fewer in memory.
    let starts_fresh = !resume || checkpoint::latest(output_dir)?.is_none();
    let initial_policy = (cfg.precompute_ref_log_probs && !cfg.sync_ref_model && evaluator.is_none() && starts_fresh)
        .then(|| std::mem::replace(&mut setup.initial, ParamSet::empty()));
    let run = Run { cfg, setup: &setup, output_dir, resume, initial_policy };
    train_loop(run, sink, evaluator.as_mut().map(|e| e as &mut dyn Evaluator))
}

/// A toy run asked to stop while π_init was being fitted: where a resumed run still stands (its
/// latest checkpoint, untouched), or nothing.
fn stopped_before_training(cfg: &RunConfig, output_dir: &Path, resume: bool) -> Result<TrainOutcome> {
    let last = if resume { checkpoint::steps(output_dir)?.last().copied() } else { None };
    let global_step = last.unwrap_or(0);
    Ok(TrainOutcome {
        global_step,
        total_steps: cfg.max_steps.unwrap_or(global_step),
        stopped_early: true,
        last_checkpoint: last.map(|step| checkpoint::checkpoint_dir(output_dir, step)),
        ..TrainOutcome::default()
    })
}

/// What the loop trains: a loaded run, where its checkpoints go, and whether it resumes.
struct Run<'a> {
    cfg: &'a RunConfig,
    setup: &'a Setup,
    output_dir: &'a Path,
    resume: bool,
    /// The initial weights `setup.initial` gave up (see [`train_with`]): a fresh run starts from
    /// them instead of a copy.
    initial_policy: Option<ParamSet>,
}

/// The loop: evaluate the starting point, then step, evaluate, log and checkpoint until the
/// last step, an early stop past the peak (`early_stopping`) or the sink's stop request.
fn train_loop(
    run: Run<'_>,
    sink: &mut dyn MetricSink,
    mut evaluator: Option<&mut dyn Evaluator>,
) -> Result<TrainOutcome> {
    let plan = Plan::new(&run, sink)?;
    let mut t = Training::start(run, &plan, sink)?;
    if t.state.global_step == 0 {
        plan.evaluate_start(&mut t, sink, evaluator.as_deref_mut())?;
    }
    while t.state.global_step < plan.total {
        if sink.should_stop() {
            return plan.stop_here(t, sink);
        }
        let step = t.state.global_step + 1;
        let update = plan.optimizer_step(&mut t, step)?;
        sink.progress(step, plan.total);

        let reference = t.moving_reference.as_ref().unwrap_or(&plan.setup.initial);
        let eval_metrics = plan.evaluate(&mut t.state, evaluator.as_deref_mut(), step, &t.policy, reference)?;
        // `early_stopping`: the run ends at the evaluation that finds it past its peak.
        let stop = plan.cfg.early_stopping && eval_metrics.is_some() && t.state.overopt.alarm.is_some();
        let keep_weights = eval_metrics.as_ref().is_some_and(|m| plan.worth_keeping(&mut t.state, step, m));
        plan.log(&mut t, sink, step, update, eval_metrics)?;
        let periodic = (plan.cfg.save_steps > 0 && step % plan.cfg.save_steps == 0) || step == plan.total || stop;
        if periodic || keep_weights {
            t.last_checkpoint =
                Some(plan.save(&mut t.state, &t.policy, t.moving_reference.as_ref(), &t.optimizer, sink, periodic)?);
        }
        if stop {
            break;
        }
    }
    plan.finish(t)
}

/// What stays fixed for the whole run, decided before its first step.
struct Plan<'a> {
    cfg: &'a RunConfig,
    setup: &'a Setup,
    output_dir: &'a Path,
    total: u64,
    schedule: LrSchedule,
    trust_region: Option<TrustRegion>,
    keeping: retention::Policy,
    /// What `save_strategy` best or pareto ranks by, and whether greater is better.
    best_metric: Option<(String, bool)>,
    /// The overoptimization alarm's rule (`overopt/*` metrics).
    watch: Option<overopt::Watch>,
}

/// What changes from step to step: what a checkpoint holds, and where the data stands.
struct Training {
    policy: ParamSet,
    /// The reference, once trust-region updates have moved it off the initial policy. Until then
    /// (and always without them) the reference is the initial policy itself.
    moving_reference: Option<ParamSet>,
    optimizer: AdamW,
    state: TrainerState,
    sampler: BatchSampler,
    /// Every example's reference log-probs, scored once before the first step (TRL's
    /// `precompute_ref_log_probs`).
    precomputed: Option<ReferenceLogps>,
    last_checkpoint: Option<PathBuf>,
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy)]
struct Update {
    /// `None` for a float16 step skipped because its gradients overflowed.
    grad_norm: Option<f64>,
    learning_rate: f64,
}

impl<'a> Plan<'a> {
    /// Refuses data the run cannot use, reports the config's warnings and makes the output directory.
    fn new(run: &Run<'a>, sink: &mut dyn MetricSink) -> Result<Self> {
        let Run { cfg, setup, output_dir, .. } = *run;
        check_data_size(cfg, setup.data.len())?;
        for warning in cfg.warnings().into_iter().chain(kto_weights_warning(cfg, &setup.data)) {
            sink.warning(&warning);
        }
        let total = total_steps(cfg, setup.data.len());
        let schedule = LrSchedule {
            kind: cfg.lr_scheduler_type,
            base_lr: cfg.learning_rate,
            warmup_steps: cfg.warmup_steps_for(total),
            total_steps: total,
        };
        std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
        Ok(Self {
            cfg,
            setup,
            output_dir,
            total,
            schedule,
            trust_region: cfg.trust_region(),
            keeping: retention::Policy::from_config(cfg),
            best_metric: cfg.best_metric(),
            watch: overopt::Watch::from_config(cfg),
        })
    }

    /// The step-0 evaluation of a fresh run (or of one resumed before its first step).
    fn evaluate_start(
        &self,
        t: &mut Training,
        sink: &mut dyn MetricSink,
        evaluator: Option<&mut (dyn Evaluator + '_)>,
    ) -> Result<()> {
        if let Some(metrics) = self.evaluate(&mut t.state, evaluator, 0, &t.policy, &self.setup.initial)? {
            sink.log(0, &metrics)?;
            if self.worth_keeping(&mut t.state, 0, &metrics) {
                t.last_checkpoint = Some(self.save(&mut t.state, &t.policy, None, &t.optimizer, sink, false)?);
            }
        }
        Ok(())
    }

    /// Forward and backward over the step's micro-batches, gradients summed; then clipping, the
    /// AdamW step and the trust-region reference update (TRL's callback order).
    fn optimizer_step(&self, t: &mut Training, step: u64) -> Result<Update> {
        let mut grads = self.gradients(t, step)?;
        // A float16 step whose gradients overflowed is skipped (no norm), as torch's GradScaler
        // skips it; the schedule then does not advance either (transformers steps it only when
        // not `optimizer_step_was_skipped`), so it counts the optimizer's steps, not global_step.
        let grad_norm = match t.state.loss_scaler.as_mut() {
            Some(scaler) => scaler.unscale(&mut grads)?,
            None => Some(global_grad_norm(&grads)?),
        };
        let learning_rate = self.schedule.lr_at(t.optimizer.steps_taken());
        if let Some(norm) = grad_norm {
            if !norm.is_finite() {
                return Err(Error::NonFinite { step, what: metric_names::GRAD_NORM.into() });
            }
            clip_to_max_norm(&mut grads, norm, self.cfg.max_grad_norm)?;
            t.optimizer.step(t.policy.vars(), &grads, learning_rate)?;
        } else {
            t.state.skipped_steps += 1;
        }
        t.state.global_step = step;
        t.state.data_cursor = t.sampler.cursor();
        if let Some(tr) = self.trust_region.filter(|tr| tr.is_due(step)) {
            if t.moving_reference.is_none() {
                t.moving_reference = Some(self.setup.initial.deep_clone()?);
            }
            tr.maybe_update(step, &t.policy, t.moving_reference.as_ref().expect("just set"))?;
        }
        Ok(Update { grad_norm, learning_rate })
    }

    /// The step's gradients, one per policy parameter, summed over its micro-batches; each loss
    /// is divided by their number (fewer than gradient_accumulation_steps at an epoch's end).
    /// TRL's metrics go to the metric window.
    fn gradients(&self, t: &mut Training, step: u64) -> Result<Vec<candle_core::Tensor>> {
        let cfg = self.cfg;
        let reference = t.moving_reference.as_ref().unwrap_or(&self.setup.initial);
        let reference_logps = match &t.precomputed {
            Some(table) => ReferenceSource::Precomputed(table),
            None => ReferenceSource::Weights(reference),
        };
        let loss_scale = t.state.loss_scaler.map_or(1.0, |s| s.scale);
        let mut grads = vec![None; t.policy.vars().len()];
        let micro_batches = t.sampler.next_step(cfg.gradient_accumulation_steps);
        // transformers logs the loss as a mean over steps of each step's mean; TRL's other
        // metrics are means over micro-batches.
        let mut step_loss = 0.0;
        for indices in &micro_batches {
            let scale = loss_scale / micro_batches.len() as f64;
            let MicroBatchGrads { metrics, grads: micro_grads } =
                micro_batch_grads(cfg, self.setup, &t.policy, reference_logps, indices, scale)?;
            for (name, value) in metrics {
                if !value.is_finite() {
                    // Loss scaling only protects the backward pass; nothing rescues a forward overflow.
                    let what = if cfg.fp16 {
                        format!("{name} (float16 overflowed in the forward pass; bf16 has float32's range)")
                    } else {
                        name.to_string()
                    };
                    return Err(Error::NonFinite { step, what });
                }
                if name == metric_names::LOSS {
                    step_loss += value / micro_batches.len() as f64;
                } else {
                    t.state.metric_window.add(name, value);
                }
            }
            add_grads(&mut grads, micro_grads)?;
        }
        t.state.metric_window.add(metric_names::LOSS, step_loss);
        t.policy.dense_grads(grads)
    }

    /// The evaluation's metrics when one is due, with the overoptimization alarm's (`overopt/*`) added.
    fn evaluate(
        &self,
        state: &mut TrainerState,
        evaluator: Option<&mut (dyn Evaluator + '_)>,
        step: u64,
        policy: &ParamSet,
        reference: &ParamSet,
    ) -> Result<Option<Metrics>> {
        let due = step == 0 || step == self.total || self.cfg.eval_steps.is_some_and(|e| step.is_multiple_of(e));
        let Some(ev) = evaluator.filter(|_| due) else { return Ok(None) };
        let initial = &self.setup.initial;
        let mut metrics = ev.evaluate(step, EvalWeights { model: &self.setup.model, policy, reference, initial })?;
        if let Some(watch) = &self.watch {
            watch.evaluated(&mut state.overopt, step, &mut metrics);
        }
        Ok(Some(metrics))
    }

    /// Whether an evaluation's weights are worth keeping (`save_strategy` best or pareto).
    fn worth_keeping(&self, state: &mut TrainerState, step: u64, metrics: &Metrics) -> bool {
        let Some((name, greater)) = &self.best_metric else { return false };
        let (Some(&kl), Some(&value)) = (metrics.get(crate::metric_names::EVAL_KL_INIT), metrics.get(name)) else {
            return false;
        };
        state.retention.evaluated(&self.keeping, Scored { step, kl, metric: if *greater { value } else { -value } })
    }

    /// The window's means every `logging_steps` and at the last step, with the evaluation's
    /// metrics; between them, an evaluation's alone.
    fn log(
        &self,
        t: &mut Training,
        sink: &mut dyn MetricSink,
        step: u64,
        update: Update,
        eval: Option<Metrics>,
    ) -> Result<()> {
        if step.is_multiple_of(self.cfg.logging_steps) || step == self.total {
            let mut metrics: Metrics = t.state.metric_window.drain();
            metrics.extend(eval.unwrap_or_default());
            if let Some(norm) = update.grad_norm {
                metrics.insert(metric_names::GRAD_NORM.into(), norm);
            }
            if let Some(scaler) = t.state.loss_scaler {
                metrics.insert("loss_scale".into(), scaler.scale);
            }
            // transformers logs the rate this step used (read before the scheduler steps).
            metrics.insert(metric_names::LEARNING_RATE.into(), update.learning_rate);
            metrics.insert("epoch".into(), t.sampler.fractional_epoch());
            sink.log(step, &metrics)?;
        } else if let Some(metrics) = eval {
            sink.log(step, &metrics)?;
        }
        Ok(())
    }

    /// A checkpoint of the current step. `periodic`: by save_steps or at the last step.
    /// Otherwise an evaluation that retention keeps, or the point a stop request resumes from,
    /// kept while it is the newest. Checkpoints that retention no longer keeps go once this one
    /// is written.
    fn save(
        &self,
        state: &mut TrainerState,
        policy: &ParamSet,
        reference: Option<&ParamSet>,
        optimizer: &AdamW,
        sink: &mut dyn MetricSink,
        periodic: bool,
    ) -> Result<PathBuf> {
        state.has_reference = reference.is_some();
        let doomed = state.retention.saved(&self.keeping, state.global_step, periodic);
        sink.saving_checkpoint(state.global_step)?;
        let contents = CheckpointContents {
            model_config: &self.setup.model.config,
            policy,
            reference,
            optimizer,
            state,
            side_files: &self.setup.side_files,
            export_dtype: self.cfg.export_dtype,
        };
        let dir = checkpoint::save(self.output_dir, &contents)?;
        sink.checkpoint_saved(state.global_step, &dir)?;
        for step in doomed {
            sink.deleting_checkpoint(step)?;
            checkpoint::remove(self.output_dir, step)?;
        }
        Ok(dir)
    }

    /// The sink asked to stop: a checkpoint to resume from, and the run ends here.
    fn stop_here(&self, mut t: Training, sink: &mut dyn MetricSink) -> Result<TrainOutcome> {
        t.state.data_cursor = t.sampler.cursor();
        let dir = self.save(&mut t.state, &t.policy, t.moving_reference.as_ref(), &t.optimizer, sink, false)?;
        Ok(TrainOutcome {
            global_step: t.state.global_step,
            total_steps: self.total,
            stopped_early: true,
            last_checkpoint: Some(dir),
            past_peak: t.state.overopt.alarm,
            ..TrainOutcome::default()
        })
    }

    /// The outcome of a run that ran to its last step or stopped past its peak; with
    /// `load_best_model_at_end`, the best evaluation's weights exported as `final-model/`.
    fn finish(&self, t: Training) -> Result<TrainOutcome> {
        let state = t.state;
        let finish_reason =
            (state.global_step < self.total).then(|| state.overopt.alarm.map(|a| a.stop_reason())).flatten();
        let final_model = match state.retention.best.filter(|_| self.cfg.load_best_model_at_end) {
            Some(best) => Some(checkpoint::export_model(self.output_dir, best.step)?),
            None => None,
        };
        Ok(TrainOutcome {
            global_step: state.global_step,
            total_steps: self.total,
            stopped_early: false,
            last_checkpoint: t.last_checkpoint.or(checkpoint::latest(self.output_dir)?),
            past_peak: state.overopt.alarm,
            finish_reason,
            final_model,
        })
    }
}

impl Training {
    /// A fresh start, or everything the latest checkpoint holds. The reference is the initial
    /// policy itself for as long as the two are equal: always without trust-region updates, and
    /// until the first update with them. Only then does it get its own copy.
    fn start(run: Run<'_>, plan: &Plan<'_>, sink: &mut dyn MetricSink) -> Result<Self> {
        let Plan { cfg, setup, output_dir, .. } = *plan;
        let adam = AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay,
        };
        let resume_from = if run.resume { checkpoint::latest(output_dir)? } else { None };
        let resumed = resume_from.is_some();
        let (policy, moving_reference, optimizer, mut state) = match resume_from {
            Some(dir) => {
                let r = checkpoint::load(&dir, &setup.model.config, adam, setup.model.device())?;
                let consistent = match (plan.trust_region, r.reference.is_some()) {
                    (None, has_copy) => !has_copy,
                    (Some(tr), false) => r.state.global_step < tr.sync_steps,
                    // Before the first update the copy equals the initial policy (older versions wrote it).
                    (Some(_), true) => true,
                };
                if !consistent {
                    return Err(Error::Checkpoint {
                        path: dir,
                        message:
                            "sync_ref_model or ref_model_sync_steps differs from the run that wrote this checkpoint"
                                .into(),
                    });
                }
                sink.resumed_at(r.state.global_step)?;
                (r.policy, r.reference, r.optimizer, r.state)
            }
            None => {
                let policy = match run.initial_policy {
                    Some(weights) => weights,
                    None => setup.initial.deep_clone()?,
                };
                let optimizer = AdamW::new(&policy, adam)?;
                (policy, None, optimizer, fresh_state(cfg))
            }
        };
        if resumed {
            forget_strays(output_dir, &mut state, sink)?;
        }
        // float16 needs loss scaling (a checkpoint brings its scale back); float32 and bf16 do not.
        state.loss_scaler = if cfg.fp16 { Some(state.loss_scaler.unwrap_or_default()) } else { None };
        // Vanilla runs may score the reference once, before the first step (TRL's option).
        let precomputed = if cfg.precompute_ref_log_probs {
            if plan.trust_region.is_some() {
                return Err(Error::Config(vec![FieldError::new(
                    "precompute_ref_log_probs",
                    "cannot be used with sync_ref_model: the reference moves during training",
                )]));
            }
            // Before the first step the policy holds the initial weights, wherever they live.
            let initial = if state.global_step == 0 { &policy } else { &setup.initial };
            Some(ReferenceLogps::compute(cfg, setup, initial)?)
        } else {
            None
        };
        let sampler = BatchSampler::for_run(cfg, setup.data.len(), state.data_cursor);
        Ok(Self { policy, moving_reference, optimizer, state, sampler, precomputed, last_checkpoint: None })
    }
}

/// A run's state before its first step.
fn fresh_state(cfg: &RunConfig) -> TrainerState {
    TrainerState {
        global_step: 0,
        data_cursor: DataCursor::default(),
        seed: cfg.seed,
        metric_window: MetricWindow::default(),
        has_reference: false,
        loss_scaler: None,
        skipped_steps: 0,
        retention: retention::Retention::default(),
        overopt: overopt::Detector::default(),
    }
}

/// A resumed run removes the checkpoint directories its restored state does not keep: ones it
/// was deleting when it stopped. A state from before retention was recorded keeps them all.
fn forget_strays(output_dir: &Path, state: &mut TrainerState, sink: &mut dyn MetricSink) -> Result<()> {
    let on_disk = checkpoint::steps(output_dir)?;
    if state.retention.checkpoints.is_empty() {
        state.retention.checkpoints =
            on_disk.into_iter().map(|step| retention::Kept { step, periodic: true }).collect();
        return Ok(());
    }
    for step in state.retention.strays(&on_disk).into_iter().filter(|s| *s < state.global_step) {
        sink.deleting_checkpoint(step)?;
        checkpoint::remove(output_dir, step)?;
    }
    Ok(())
}
