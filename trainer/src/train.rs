//! THE training loop, readable top to bottom: one config in, metrics and checkpoints out.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};

use crate::checkpoint::{self, CheckpointContents, TrainerState};
use crate::config::{LossType, RunConfig};
use crate::data::{
    self, Batch, BatchSampler, DataCursor, Dataset, EvalSet, LoadOptions, PairedExample, TextTokenizer, UnpairedExample,
};
use crate::error::{Error, Result};
use crate::eval::{eval_prompts, HeldOutPairs, PolicySampleEvaluator};
use crate::logps::{sequence_logps, Checkpointed};
use crate::loss::{self, LossOutput, Pair};
use crate::memory::MemoryPlan;
use crate::metrics::{MetricSink, MetricWindow, Metrics};
use crate::model::{add_grads, CausalLm, ModelConfig, ParamSet};
use crate::optim::{clip_to_max_norm, global_grad_norm, AdamW, AdamWConfig, LrSchedule};
use crate::overopt::{self, Alarm};
use crate::retention::{self, Scored};
use crate::workers;

/// The examples in the shape the loss needs: KTO trains on unpaired examples (pairs are
/// split, each with a mismatched completion for its KL estimate); DPO and IPO need pairs.
pub fn dataset_for_loss(dataset: Dataset, cfg: &RunConfig) -> Result<Dataset> {
    match (cfg.loss_type, dataset) {
        (LossType::Kto, d) => {
            let mut examples = d.into_unpaired();
            data::assign_mismatched_completions(&mut examples, cfg.per_device_train_batch_size, cfg.max_length);
            Ok(Dataset::Unpaired(examples))
        }
        (_, Dataset::Paired(p)) => Ok(Dataset::Paired(p)),
        (other, Dataset::Unpaired(_)) => Err(Error::Config(vec![crate::error::FieldError::new(
            "loss_type",
            format!(
                "{:?} needs paired {{prompt, chosen, rejected}} data; the dataset is unpaired (use \"kto\")",
                other.as_str()
            ),
        )])),
    }
}

/// Everything loaded before the first step: the architecture, the initial policy, the data.
#[derive(Debug)]
pub struct Setup {
    pub model: CausalLm,
    pub initial: ParamSet,
    pub data: Dataset,
    /// Held-out prompts and their rows (`eval_split_ratio` or `eval_dataset_path`), never trained on.
    pub eval: Option<EvalSet>,
    pub pad_token_id: u32,
    /// Copied into every checkpoint (tokenizer files).
    pub side_files: Vec<PathBuf>,
}

impl Setup {
    /// An HF model directory and a JSONL dataset, as named by the config.
    /// A toy `task` builds its model, π_init and data in code instead (see [`crate::tasks`]).
    pub fn from_config(cfg: &RunConfig, device: &Device) -> Result<Self> {
        if cfg.task.is_toy() {
            return Ok(crate::tasks::build(cfg, device)?.setup);
        }
        cfg.validate().map_err(Error::Config)?;
        let dir = cfg.model_name_or_path.as_deref().expect("validated: model_name_or_path is set");
        let model_config = ModelConfig::from_file(&dir.join("config.json"))?;
        // The data first: a bad row fails the run before the weights are read.
        let tokenizer = TextTokenizer::from_dir(dir, model_config.eos_token_id, model_config.pad_token_id)?;
        let dataset_path = cfg.dataset_path.as_deref().expect("validated: dataset_path is set");
        let options = LoadOptions {
            max_length: cfg.max_length,
            max_prompt_length: cfg.max_prompt_length,
            unpaired: cfg.loss_type == LossType::Kto,
            eval_split_ratio: cfg.eval_split_ratio,
            seed: cfg.seed,
        };
        let loaded = data::load(dataset_path, cfg.eval_dataset_path.as_deref(), &tokenizer, &options)?;
        let data = dataset_for_loss(loaded.train, cfg)?;
        // Refuse before loading any weights: a run that cannot fit fails now, not at step 1.
        let memory = MemoryPlan::for_run(cfg, &model_config, &data)?;
        // The plan counts host memory; on a GPU the weights live in device memory, which candle
        // does not report, so there the plan is only printed.
        if device.is_cpu() {
            memory.check(crate::memory::available_bytes())?;
        }
        let initial = if cfg.random_init {
            ParamSet::random(&model_config, cfg.seed, cfg.initializer_range, device)?
        } else {
            ParamSet::load_hf_dir(dir, &model_config, device)?
        };
        let side_files = checkpoint::SIDE_FILES.iter().map(|f| dir.join(f)).filter(|p| p.is_file()).collect();
        Ok(Self {
            model: CausalLm::new(model_config, device).with_compute_dtype(cfg.compute_dtype()),
            initial,
            data,
            eval: loaded.eval,
            pad_token_id: tokenizer.pad_token_id,
            side_files,
        })
    }
}

/// Measures the policy during training (`eval/*` metrics): at step 0 of a fresh run, every
/// `eval_steps`, and at the last step. Toy tasks compute exact or Monte Carlo KL to the
/// initial policy and the gold reward here.
pub trait Evaluator {
    fn evaluate(&mut self, step: u64, weights: EvalWeights<'_>) -> Result<Metrics>;
}

/// The three weight sets an evaluation may compare.
#[derive(Debug, Clone, Copy)]
pub struct EvalWeights<'a> {
    pub model: &'a CausalLm,
    pub policy: &'a ParamSet,
    /// The current reference (the initial policy itself when it never moves).
    pub reference: &'a ParamSet,
    pub initial: &'a ParamSet,
}

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

/// TRL's KTOTrainer warns when the data has more examples of one label than of the other and
/// neither weight is in the range Eq. (8) of the KTO paper recommends; so does this run.
fn kto_weights_warning(cfg: &RunConfig, data: &Dataset) -> Option<String> {
    let Dataset::Unpaired(rows) = data else { return None };
    let desirable = rows.iter().filter(|r| r.label).count().max(1) as f64;
    let undesirable = (rows.len() as f64 - desirable).max(1.0);
    if cfg.loss_type != LossType::Kto || desirable == undesirable {
        return None;
    }
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let (lambda_d, lambda_u) = (cfg.desirable_weight, cfg.undesirable_weight);
    let desirable_range = (round(undesirable * lambda_u / desirable), round(undesirable * lambda_u / desirable * 1.33));
    let undesirable_range =
        (round(desirable * lambda_d / undesirable / 1.33), round(desirable * lambda_d / undesirable));
    let within = |(lo, hi): (f64, f64), v: f64| lo <= v && v <= hi;
    (!within(desirable_range, lambda_d) && !within(undesirable_range, lambda_u)).then(|| {
        format!(
            "the data has {desirable} desirable and {undesirable} undesirable examples, and the weights are outside \
             the range the KTO paper recommends (Eq. 8): set EITHER desirable_weight in [{}, {}] or \
             undesirable_weight in [{}, {}] (but not both), as TRL's KTOTrainer also warns",
            desirable_range.0, desirable_range.1, undesirable_range.0, undesirable_range.1
        )
    })
}

/// Refuses data the configured loader cannot make one batch of, and larger sets than
/// torch's `randperm` shuffles the way reproduced here.
fn check_data_size(cfg: &RunConfig, examples: usize) -> Result<()> {
    use crate::config::SamplingStrategy;
    use crate::error::FieldError;
    let batch = cfg.per_device_train_batch_size;
    if data::batches_per_epoch(examples, batch, cfg.dataloader_drop_last) == 0 {
        let message = format!(
            "the dataset has {examples} training examples, fewer than one batch of {batch}: {}",
            if cfg.dataloader_drop_last { "dataloader_drop_last drops it" } else { "nothing to train on" }
        );
        let field = if cfg.dataloader_drop_last { "dataloader_drop_last" } else { "dataset_path" };
        return Err(Error::Config(vec![FieldError::new(field, message)]));
    }
    if cfg.sampling_strategy() == SamplingStrategy::Random && examples >= data::TORCH_RANDPERM_MAX {
        return Err(Error::Config(vec![FieldError::new(
            "train_sampling_strategy",
            format!(
                "{examples} examples is more than torch's randperm shuffles with the algorithm reproduced here \
                 (fewer than {}); use \"sequential\" on a pre-shuffled file",
                data::TORCH_RANDPERM_MAX
            ),
        )]));
    }
    Ok(())
}

/// Loads what the config names and trains. With `resume`, continues from the latest
/// checkpoint in `output_dir` (or starts fresh if there is none).
/// A toy `task` brings its own evaluator (exact or Monte Carlo KL to π_init, gold reward).
pub fn train(cfg: &RunConfig, output_dir: &Path, resume: bool, sink: &mut dyn MetricSink) -> Result<TrainOutcome> {
    let device = cfg.candle_device()?;
    if cfg.task.is_toy() {
        let mut task = match crate::tasks::build_reporting(cfg, &device, sink) {
            Err(Error::StoppedBeforeTraining) => {
                // Where a resumed run still stands: its latest checkpoint, untouched.
                let last = if resume { checkpoint::steps(output_dir)?.last().copied() } else { None };
                let global_step = last.unwrap_or(0);
                return Ok(TrainOutcome {
                    global_step,
                    total_steps: cfg.max_steps.unwrap_or(global_step),
                    stopped_early: true,
                    last_checkpoint: last.map(|step| checkpoint::checkpoint_dir(output_dir, step)),
                    ..TrainOutcome::default()
                });
            }
            built => built?,
        };
        return train_with(cfg, &task.setup, output_dir, resume, sink, Some(task.evaluator.as_mut()));
    }
    let mut setup = Setup::from_config(cfg, &device)?;
    sink.memory_plan(&MemoryPlan::for_run(cfg, &setup.model.config, &setup.data)?);
    // The prompts the policy answers at each evaluation: the held-out ones when the config
    // holds some out (`eval_split_ratio`, `eval_dataset_path`), else the training prompts.
    let prompts = match &setup.eval {
        Some(held_out) => eval_prompts(held_out.prompts.iter().map(|p| p.ids.clone())),
        None => eval_prompts(setup.data.prompts()),
    };
    let held_out = match setup.eval.as_ref().map(|e| &e.examples) {
        Some(Dataset::Paired(pairs)) => HeldOutPairs::new(pairs.clone(), cfg.beta, setup.pad_token_id),
        _ => None,
    };
    let mut evaluator = PolicySampleEvaluator::for_run(cfg, &setup.model, prompts)?.map(|e| e.with_held_out(held_out));
    // A fresh vanilla run with precomputed reference log-probs and no evaluation reads the
    // initial weights only to score the reference once and to start the policy: they become
    // the policy rather than stay beside a copy of it, one set of weights fewer in memory.
    let starts_fresh = !resume || checkpoint::latest(output_dir)?.is_none();
    let initial_policy = (cfg.precompute_ref_log_probs && !cfg.sync_ref_model && evaluator.is_none() && starts_fresh)
        .then(|| std::mem::replace(&mut setup.initial, ParamSet::empty()));
    let evaluator = evaluator.as_mut().map(|e| e as &mut dyn Evaluator);
    train_loop(cfg, &setup, initial_policy, output_dir, resume, sink, evaluator)
}

/// The loop itself, on an already loaded [`Setup`].
pub fn train_with(
    cfg: &RunConfig,
    setup: &Setup,
    output_dir: &Path,
    resume: bool,
    sink: &mut dyn MetricSink,
    evaluator: Option<&mut dyn Evaluator>,
) -> Result<TrainOutcome> {
    train_loop(cfg, setup, None, output_dir, resume, sink, evaluator)
}

/// [`train_with`], where `initial_policy`, when given, holds the initial weights that
/// `setup.initial` gave up (see [`train`]): a fresh run starts from it instead of a copy.
fn train_loop(
    cfg: &RunConfig,
    setup: &Setup,
    initial_policy: Option<ParamSet>,
    output_dir: &Path,
    resume: bool,
    sink: &mut dyn MetricSink,
    mut evaluator: Option<&mut dyn Evaluator>,
) -> Result<TrainOutcome> {
    let device = setup.model.device().clone();
    let adam = AdamWConfig {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    };
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
    let trust_region = cfg.trust_region();
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;

    // Fresh start, or everything a checkpoint holds. The reference is the initial policy itself
    // for as long as the two are equal: always without trust-region updates, and until the first
    // update with them. Only then does it get its own copy.
    let resume_from = if resume { checkpoint::latest(output_dir)? } else { None };
    let resumed = resume_from.is_some();
    let (policy, mut moving_reference, mut optimizer, mut state) = match resume_from {
        Some(dir) => {
            let r = checkpoint::load(&dir, &setup.model.config, adam, &device)?;
            let consistent = match (trust_region, r.reference.is_some()) {
                (None, has_copy) => !has_copy,
                (Some(tr), false) => r.state.global_step < tr.sync_steps,
                // Before the first update the copy equals the initial policy (older versions wrote it).
                (Some(_), true) => true,
            };
            if !consistent {
                return Err(Error::Checkpoint {
                    path: dir,
                    message: "sync_ref_model or ref_model_sync_steps differs from the run that wrote this checkpoint"
                        .into(),
                });
            }
            sink.resumed_at(r.state.global_step)?;
            (r.policy, r.reference, r.optimizer, r.state)
        }
        None => {
            let policy = match initial_policy {
                Some(weights) => weights,
                None => setup.initial.deep_clone()?,
            };
            let optimizer = AdamW::new(&policy, adam)?;
            let state = TrainerState {
                global_step: 0,
                data_cursor: DataCursor::default(),
                seed: cfg.seed,
                metric_window: MetricWindow::default(),
                has_reference: false,
                loss_scaler: None,
                skipped_steps: 0,
                retention: retention::Retention::default(),
                overopt: overopt::Detector::default(),
            };
            (policy, None, optimizer, state)
        }
    };
    let keeping = retention::Policy::from_config(cfg);
    if resumed {
        forget_strays(output_dir, &mut state, sink)?;
    }
    // float16 needs loss scaling (a checkpoint brings its scale back); float32 and bf16 do not.
    state.loss_scaler = if cfg.fp16 { Some(state.loss_scaler.unwrap_or_default()) } else { None };
    // Vanilla runs may score the reference once, before the first step (TRL's option).
    let precomputed = if cfg.precompute_ref_log_probs {
        if trust_region.is_some() {
            return Err(Error::Config(vec![crate::error::FieldError::new(
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
    let mut sampler = BatchSampler::for_run(cfg, setup.data.len(), state.data_cursor);
    let mut last_checkpoint = None;
    // `periodic`: by save_steps or at the last step. Otherwise an evaluation that retention keeps,
    // or the point a stop request resumes from, kept while it is the newest. Checkpoints that
    // retention no longer keeps go once this one is written.
    let save = |state: &mut TrainerState,
                policy: &ParamSet,
                reference: Option<&ParamSet>,
                optimizer: &AdamW,
                sink: &mut dyn MetricSink,
                periodic: bool|
     -> Result<PathBuf> {
        state.has_reference = reference.is_some();
        let doomed = state.retention.saved(&keeping, state.global_step, periodic);
        sink.saving_checkpoint(state.global_step)?;
        let dir = checkpoint::save(
            output_dir,
            &CheckpointContents {
                model_config: &setup.model.config,
                policy,
                reference,
                optimizer,
                state,
                side_files: &setup.side_files,
                export_dtype: cfg.export_dtype,
            },
        )?;
        sink.checkpoint_saved(state.global_step, &dir)?;
        for step in doomed {
            sink.deleting_checkpoint(step)?;
            checkpoint::remove(output_dir, step)?;
        }
        Ok(dir)
    };
    // Whether an evaluation's weights are worth keeping (`save_strategy` best or pareto).
    let best_metric = cfg.best_metric();
    let worth_keeping = |state: &mut TrainerState, step: u64, metrics: &Metrics| -> bool {
        let Some((name, greater)) = &best_metric else { return false };
        let (Some(&kl), Some(&value)) = (metrics.get(crate::summary::KL_INIT), metrics.get(name)) else {
            return false;
        };
        state.retention.evaluated(&keeping, Scored { step, kl, metric: if *greater { value } else { -value } })
    };

    // The evaluation's metrics, with the overoptimization alarm's (`overopt/*`) added.
    let watch = overopt::Watch::from_config(cfg);
    let mut evaluate =
        |state: &mut TrainerState, step: u64, policy: &ParamSet, reference: &ParamSet| -> Result<Option<Metrics>> {
            let due = step == 0 || step == total || cfg.eval_steps.is_some_and(|e| step.is_multiple_of(e));
            let Some(ev) = evaluator.as_deref_mut().filter(|_| due) else { return Ok(None) };
            let mut metrics =
                ev.evaluate(step, EvalWeights { model: &setup.model, policy, reference, initial: &setup.initial })?;
            if let Some(watch) = &watch {
                watch.evaluated(&mut state.overopt, step, &mut metrics);
            }
            Ok(Some(metrics))
        };
    if state.global_step == 0 {
        if let Some(metrics) = evaluate(&mut state, 0, &policy, &setup.initial)? {
            sink.log(0, &metrics)?;
            if worth_keeping(&mut state, 0, &metrics) {
                last_checkpoint = Some(save(&mut state, &policy, None, &optimizer, sink, false)?);
            }
        }
    }

    while state.global_step < total {
        if sink.should_stop() {
            state.data_cursor = sampler.cursor();
            let dir = save(&mut state, &policy, moving_reference.as_ref(), &optimizer, sink, false)?;
            return Ok(TrainOutcome {
                global_step: state.global_step,
                total_steps: total,
                stopped_early: true,
                last_checkpoint: Some(dir),
                past_peak: state.overopt.alarm,
                ..TrainOutcome::default()
            });
        }
        let step = state.global_step + 1;
        let reference = moving_reference.as_ref().unwrap_or(&setup.initial);
        let reference_logps = match &precomputed {
            Some(table) => ReferenceSource::Precomputed(table),
            None => ReferenceSource::Weights(reference),
        };

        // Forward and backward over the step's micro-batches, gradients summed; each loss is
        // divided by their number (fewer than gradient_accumulation_steps at an epoch's end).
        let loss_scale = state.loss_scaler.map_or(1.0, |s| s.scale);
        let mut grads: Vec<Option<Tensor>> = vec![None; policy.vars().len()];
        let micro_batches = sampler.next_step(cfg.gradient_accumulation_steps);
        // transformers logs the loss as a mean over steps of each step's mean; TRL's other
        // metrics are means over micro-batches.
        let mut step_loss = 0.0;
        for indices in &micro_batches {
            let scale = loss_scale / micro_batches.len() as f64;
            let MicroBatchGrads { metrics, grads: micro_grads } =
                micro_batch_grads(cfg, setup, &policy, reference_logps, indices, scale)?;
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
                if name == "loss" {
                    step_loss += value / micro_batches.len() as f64;
                } else {
                    state.metric_window.add(name, value);
                }
            }
            add_grads(&mut grads, micro_grads)?;
        }
        state.metric_window.add("loss", step_loss);
        let mut grads = policy.dense_grads(grads)?;
        // A float16 step whose gradients overflowed is skipped (no norm), as torch's GradScaler
        // skips it; the schedule then does not advance either (transformers steps it only when
        // not `optimizer_step_was_skipped`), so it counts the optimizer's steps, not global_step.
        let grad_norm = match state.loss_scaler.as_mut() {
            Some(scaler) => scaler.unscale(&mut grads)?,
            None => Some(global_grad_norm(&grads)?),
        };
        let learning_rate = schedule.lr_at(optimizer.steps_taken());
        if let Some(norm) = grad_norm {
            if !norm.is_finite() {
                return Err(Error::NonFinite { step, what: "grad_norm".into() });
            }
            clip_to_max_norm(&mut grads, norm, cfg.max_grad_norm)?;
            // Optimizer step, then the trust-region reference update (TRL's callback order).
            optimizer.step(policy.vars(), &grads, learning_rate)?;
        } else {
            state.skipped_steps += 1;
        }
        state.global_step = step;
        state.data_cursor = sampler.cursor();
        if let Some(tr) = trust_region.filter(|tr| tr.is_due(step)) {
            if moving_reference.is_none() {
                moving_reference = Some(setup.initial.deep_clone()?);
            }
            tr.maybe_update(step, &policy, moving_reference.as_ref().expect("just set"))?;
        }
        sink.progress(step, total);

        let reference = moving_reference.as_ref().unwrap_or(&setup.initial);
        let eval_metrics = evaluate(&mut state, step, &policy, reference)?;
        // `early_stopping`: the run ends at the evaluation that finds it past its peak.
        let stop = cfg.early_stopping && eval_metrics.is_some() && state.overopt.alarm.is_some();
        let keep_weights = eval_metrics.as_ref().is_some_and(|m| worth_keeping(&mut state, step, m));
        if step % cfg.logging_steps == 0 || step == total {
            let mut metrics: Metrics = state.metric_window.drain();
            metrics.extend(eval_metrics.unwrap_or_default());
            if let Some(norm) = grad_norm {
                metrics.insert("grad_norm".into(), norm);
            }
            if let Some(scaler) = state.loss_scaler {
                metrics.insert("loss_scale".into(), scaler.scale);
            }
            // transformers logs the rate this step used (read before the scheduler steps).
            metrics.insert("learning_rate".into(), learning_rate);
            metrics.insert("epoch".into(), sampler.fractional_epoch());
            sink.log(step, &metrics)?;
        } else if let Some(metrics) = eval_metrics {
            sink.log(step, &metrics)?;
        }
        let periodic = (cfg.save_steps > 0 && step % cfg.save_steps == 0) || step == total || stop;
        if periodic || keep_weights {
            last_checkpoint = Some(save(&mut state, &policy, moving_reference.as_ref(), &optimizer, sink, periodic)?);
        }
        if stop {
            break;
        }
    }
    let finish_reason = (state.global_step < total).then(|| state.overopt.alarm.map(|a| a.stop_reason())).flatten();
    let final_model = match state.retention.best.filter(|_| cfg.load_best_model_at_end) {
        Some(best) => Some(checkpoint::export_model(output_dir, best.step)?),
        None => None,
    };
    Ok(TrainOutcome {
        global_step: state.global_step,
        total_steps: total,
        stopped_early: false,
        last_checkpoint: last_checkpoint.or(checkpoint::latest(output_dir)?),
        past_peak: state.overopt.alarm,
        finish_reason,
        final_model,
    })
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

/// Loss metrics and summed gradients of one micro-batch. The model work is split across
/// worker threads by examples (data parallelism: no synchronisation inside the small matrix
/// ops), while the loss is computed once on the whole micro-batch, exactly as without threads:
///
/// 1. each shard's sequence log-probs, in parallel (the policy's keep their graphs);
/// 2. the loss on leaf copies of all of them, and its gradient with respect to each;
/// 3. each shard pushes its part of that gradient back through its graph, in parallel.
///
/// `scale` multiplies the loss (1 / gradient_accumulation_steps).
pub fn micro_batch_grads(
    cfg: &RunConfig,
    setup: &Setup,
    policy: &ParamSet,
    reference: ReferenceSource<'_>,
    indices: &[usize],
    scale: f64,
) -> Result<MicroBatchGrads> {
    let shards = shards(cfg, setup, indices);
    let parts = workers::in_parallel(&shards, |shard| {
        shard_forward(setup, policy, reference, shard, cfg.gradient_checkpointing)
    })?;

    let leaves: Vec<Var> =
        parts.iter().map(|p| Var::from_tensor(&p.policy.detach())).collect::<candle_core::Result<_>>()?;
    let out = batch_loss(cfg, &parts, &leaves)?;
    let upstream = (out.loss.clone() * scale)?.backward()?;

    let shard_ids: Vec<usize> = (0..parts.len()).collect();
    let shard_grads = workers::in_parallel(&shard_ids, |&k| {
        let Some(d) = upstream.get(leaves[k].as_tensor()) else { return Ok(vec![None; policy.vars().len()]) };
        match &parts[k].checkpointed {
            Some((forward, rows)) => forward.backward(&setup.model, policy, rows, d),
            None => Ok(policy.grads_from(&(&parts[k].policy * d)?.sum_all()?.backward()?)),
        }
    })?;
    let mut grads: Vec<Option<Tensor>> = vec![None; policy.vars().len()];
    for shard in shard_grads {
        add_grads(&mut grads, shard)?;
    }
    Ok(MicroBatchGrads { metrics: out.metrics, grads })
}

/// A micro-batch split into one shard per worker thread, each collated (padded) on its own.
fn shards<'a>(cfg: &RunConfig, setup: &Setup, indices: &'a [usize]) -> Vec<&'a [usize]> {
    // A GPU parallelises inside each op; splitting the batch would only shrink its kernels.
    let threads = if setup.model.device().is_cpu() { workers::worker_threads(cfg.num_threads) } else { 1 };
    let threads = threads.min(indices.len()).max(1);
    indices.chunks(indices.len().div_ceil(threads).max(1)).collect()
}

/// What one micro-batch contributes to an optimizer step.
#[derive(Debug)]
pub struct MicroBatchGrads {
    /// TRL's metrics for the micro-batch.
    pub metrics: Vec<(&'static str, f64)>,
    /// One entry per policy parameter, `None` where no gradient reached it.
    pub grads: Vec<Option<Tensor>>,
}

/// One shard's sequence log-probs. Paired rows are `[chosen…, rejected…]`; unpaired rows are
/// in order, with their labels and, for KTO's z₀, the mismatched completions' log-ratios.
struct ShardForward {
    /// With a graph, unless `checkpointed` holds what rebuilds it layer by layer.
    policy: Tensor,
    checkpointed: Option<(Checkpointed, crate::data::Collated)>,
    reference: Tensor,
    token_counts: Vec<f32>,
    labels: Vec<bool>,
    kl_log_ratios: Option<Tensor>,
}

fn shard_forward(
    setup: &Setup,
    policy: &ParamSet,
    reference: ReferenceSource<'_>,
    indices: &[usize],
    gradient_checkpointing: bool,
) -> Result<ShardForward> {
    let model = &setup.model;
    let (rows, labels, kl_rows) = collate(setup, indices);
    // z₀ is detached in TRL: the mismatched pairs go through the policy without gradients.
    let kl_log_ratios = match &kl_rows {
        Some(kl) => {
            let reference_kl = match reference {
                ReferenceSource::Weights(w) => sequence_logps(model, &w.frozen(), kl)?.sums,
                ReferenceSource::Precomputed(table) => table.gather(indices, 1, model.device())?,
            };
            Some((sequence_logps(model, &policy.frozen(), kl)?.sums - reference_kl)?)
        }
        None => None,
    };
    let reference = match reference {
        ReferenceSource::Weights(w) => sequence_logps(model, &w.frozen(), &rows)?.sums,
        ReferenceSource::Precomputed(table) => match &setup.data {
            // Rows are [chosen…, rejected…].
            Dataset::Paired(_) => {
                Tensor::cat(&[table.gather(indices, 0, model.device())?, table.gather(indices, 1, model.device())?], 0)?
            }
            Dataset::Unpaired(_) => table.gather(indices, 0, model.device())?,
        },
    };
    let token_counts = rows.completion_token_counts();
    let (policy, checkpointed) = if gradient_checkpointing {
        let forward = Checkpointed::forward(model, policy, &rows)?;
        (forward.sums.clone(), Some((forward, rows)))
    } else {
        (sequence_logps(model, &policy.trainable(), &rows)?.sums, None)
    };
    Ok(ShardForward { policy, checkpointed, reference, token_counts, labels, kl_log_ratios })
}

/// The rows of some examples as the loss needs them: paired `[chosen…, rejected…]`, or
/// unpaired rows with their labels and KTO's mismatched rows.
fn collate(setup: &Setup, indices: &[usize]) -> (crate::data::Collated, Vec<bool>, Option<crate::data::Collated>) {
    let pad = setup.pad_token_id;
    match &setup.data {
        Dataset::Paired(examples) => {
            let picked: Vec<&PairedExample> = indices.iter().map(|&i| &examples[i]).collect();
            let Batch::Paired(rows) = data::collate_paired(&picked, pad) else { unreachable!("paired collation") };
            (rows, Vec::new(), None)
        }
        Dataset::Unpaired(examples) => {
            let picked: Vec<&UnpairedExample> = indices.iter().map(|&i| &examples[i]).collect();
            let Batch::Unpaired { rows, labels, kl_rows } = data::collate_unpaired(&picked, pad) else {
                unreachable!("unpaired collation")
            };
            (rows, labels, Some(kl_rows))
        }
    }
}

/// Where a step's reference log-probs come from.
#[derive(Debug, Clone, Copy)]
pub enum ReferenceSource<'a> {
    /// A forward pass of these weights on every micro-batch.
    Weights(&'a ParamSet),
    /// Looked up in a table computed before the first step.
    Precomputed(&'a ReferenceLogps),
}

/// Every example's reference log-probs, computed once (TRL's `precompute_ref_log_probs`): for
/// paired data `[chosen, rejected]`, for unpaired `[completion, mismatched completion]` (KTO's z₀).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceLogps {
    per_example: Vec<[f32; 2]>,
}

impl ReferenceLogps {
    /// In dataset order, `per_device_train_batch_size` examples at a time (TRL's batches), each
    /// split and padded as a training micro-batch is: read in order, the table then holds exactly
    /// what a reference forward pass per step would compute.
    pub fn compute(cfg: &RunConfig, setup: &Setup, reference: &ParamSet) -> Result<Self> {
        let all: Vec<usize> = (0..setup.data.len()).collect();
        let frozen = reference.frozen();
        let mut per_example = Vec::with_capacity(all.len());
        for batch in all.chunks(cfg.per_device_train_batch_size).flat_map(|b| shards(cfg, setup, b)) {
            let (rows, _, kl_rows) = collate(setup, batch);
            let sums: Vec<f32> = sequence_logps(&setup.model, &frozen, &rows)?.sums.to_vec1()?;
            let second: Vec<f32> = match &kl_rows {
                Some(kl) => sequence_logps(&setup.model, &frozen, kl)?.sums.to_vec1()?,
                None => sums[batch.len()..].to_vec(),
            };
            per_example.extend(sums.iter().zip(&second).take(batch.len()).map(|(&a, &b)| [a, b]));
        }
        Ok(Self { per_example })
    }

    /// Column `which` of the given examples, as a `(indices.len(),)` tensor.
    fn gather(&self, indices: &[usize], which: usize, device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = indices.iter().map(|&i| self.per_example[i][which]).collect();
        Ok(Tensor::new(values, device)?)
    }
}

/// The configured loss on the whole micro-batch, reassembled from the shards in order.
fn batch_loss(cfg: &RunConfig, parts: &[ShardForward], leaves: &[Var]) -> Result<LossOutput> {
    let dev = leaves[0].device().clone();
    match cfg.loss_type {
        LossType::Sigmoid | LossType::Ipo => {
            // Each shard is [chosen…, rejected…]; the loss wants all chosen, then all rejected.
            let halves = |t: &Tensor, second: bool| -> Result<Tensor> {
                let n = t.dim(0)? / 2;
                Ok(t.narrow(0, if second { n } else { 0 }, n)?)
            };
            let pair = |ts: &[Tensor]| -> Result<Pair> {
                let chosen = ts.iter().map(|t| halves(t, false)).collect::<Result<Vec<_>>>()?;
                let rejected = ts.iter().map(|t| halves(t, true)).collect::<Result<Vec<_>>>()?;
                Ok(Pair { chosen: Tensor::cat(&chosen, 0)?, rejected: Tensor::cat(&rejected, 0)? })
            };
            let pol = pair(&leaves.iter().map(|l| l.as_tensor().clone()).collect::<Vec<_>>())?;
            let refl = pair(&parts.iter().map(|p| p.reference.clone()).collect::<Vec<_>>())?;
            if cfg.loss_type == LossType::Ipo {
                let counts: Vec<Tensor> = parts
                    .iter()
                    .map(|p| Tensor::new(p.token_counts.as_slice(), &dev))
                    .collect::<candle_core::Result<_>>()?;
                loss::ipo_loss(&pol, &refl, &pair(&counts)?, cfg.beta)
            } else {
                loss::dpo_loss(&pol, &refl, cfg.beta)
            }
        }
        LossType::Kto => {
            let cat = |ts: Vec<Tensor>| -> Result<Tensor> { Ok(Tensor::cat(&ts, 0)?) };
            let pol = cat(leaves.iter().map(|l| l.as_tensor().clone()).collect())?;
            let refl = cat(parts.iter().map(|p| p.reference.clone()).collect())?;
            let kl = cat(parts.iter().filter_map(|p| p.kl_log_ratios.clone()).collect())?;
            let labels: Vec<bool> = parts.iter().flat_map(|p| p.labels.iter().copied()).collect();
            let z0 = loss::kto_z0(&kl)?;
            loss::kto_loss(&pol, &refl, &labels, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        }
    }
}
