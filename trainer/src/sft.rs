//! The initial policy π_init: trained by cross-entropy on a task's behaviour distribution, and
//! cached on disk so that every run of a sweep starts from the identical weights.
//!
//! The cache key hashes everything that determines π_init (task, its parameters, model config,
//! seed, and [`SFT_VERSION`]). Concurrent runs take an exclusive file lock on the key: the first
//! builds, the others wait and then load. The weights are written to a temporary file and renamed
//! into place, so a reader never sees a half-written file.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use fs2::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::metric_names::{SFT_KL_BEHAVIOUR, SFT_LOSS};
use crate::model::{CausalLm, ParamSet, Weights};
use crate::optim::{AdamW, AdamWConfig};

/// Bump when SFT or task generation changes, so old caches are not reused.
pub const SFT_VERSION: u32 = 1;
/// Full-batch AdamW learning rate and step limit for SFT.
const SFT_LEARNING_RATE: f64 = 3e-3;

/// What SFT minimises: a differentiable loss and the divergence that decides when to stop.
pub trait SftTarget {
    /// `(loss, stopping criterion)` for the current weights: KL(behaviour ‖ π) where it is exact
    /// (toy-tree), else the loss itself.
    fn loss(&self, model: &CausalLm, weights: &Weights) -> Result<(Tensor, f64)>;

    /// Whether the criterion is KL(behaviour ‖ π) (logged as `sft/kl_behaviour`).
    fn criterion_is_kl(&self) -> bool {
        false
    }
}

/// One SFT step as it is reported: the loss, and KL(behaviour ‖ π) where it is exact.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SftStep {
    pub step: u64,
    pub loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_behaviour: Option<f64>,
}

impl SftStep {
    /// `sft/loss` and `sft/kl_behaviour`, as a sink logs them.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        let mut m = crate::metrics::Metrics::from([(SFT_LOSS.to_string(), self.loss)]);
        if let Some(kl) = self.kl_behaviour {
            m.insert(SFT_KL_BEHAVIOUR.to_string(), kl);
        }
        m
    }
}

/// How SFT went, stored beside the cached weights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftReport {
    pub steps: u64,
    /// The stopping criterion at the end: KL(behaviour ‖ π_init) for toy-tree; the per-token
    /// cross-entropy on behaviour samples for toy-length, which has no exact KL.
    pub kl_behaviour: f64,
    pub seconds: f64,
    /// Every step's loss (and KL), so that a π_init from the cache can report how it was built.
    #[serde(default)]
    pub history: Vec<SftStep>,
    /// The most steps SFT was allowed.
    #[serde(default)]
    pub max_steps: u64,
}

#[derive(Debug)]
pub struct CachedPolicy {
    pub params: ParamSet,
    pub report: SftReport,
    /// This call trained π_init (rather than loading it).
    pub built: bool,
    pub path: PathBuf,
}

/// `toy_cache_dir`, else `$GOODHART_CACHE_DIR`, else `<temp dir>/goodhart-cache`.
pub fn cache_dir(cfg: &RunConfig) -> PathBuf {
    cfg.toy_cache_dir
        .clone()
        .or_else(|| std::env::var_os("GOODHART_CACHE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| std::env::temp_dir().join("goodhart-cache"))
}

/// Loads π_init for `key` from `dir`, or builds it with `build` (once, even under concurrency).
/// `progress` hears every SFT step: as it trains, or, from the cache, the steps that built it.
pub fn cached_initial_policy(
    dir: &Path,
    key: &impl Serialize,
    model: &CausalLm,
    progress: SftProgress<'_>,
    build: impl FnOnce(SftProgress<'_>) -> Result<(ParamSet, SftReport)>,
) -> Result<CachedPolicy> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let material =
        serde_json::to_string(&(SFT_VERSION, key)).map_err(|source| Error::Json { path: dir.to_path_buf(), source })?;
    let hash: String = Sha256::digest(material.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let weights = dir.join(format!("pi_init-{hash}.safetensors"));
    let report_path = dir.join(format!("pi_init-{hash}.json"));
    let lock_path = dir.join(format!("pi_init-{hash}.lock"));

    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    lock.lock_exclusive().map_err(|e| Error::io(&lock_path, e))?;
    // The lock is released when `lock` drops, on every path out of this function.
    if weights.is_file() && report_path.is_file() {
        let params = ParamSet::load_safetensors(&weights, &model.config, model.device())?;
        let text = std::fs::read_to_string(&report_path).map_err(|e| Error::io(&report_path, e))?;
        let report: SftReport =
            serde_json::from_str(&text).map_err(|source| Error::Json { path: report_path.clone(), source })?;
        drop(lock);
        for step in &report.history {
            progress(step, report.max_steps)?;
        }
        return Ok(CachedPolicy { params, report, built: false, path: weights });
    }
    let (params, report) = build(progress)?;
    let tmp = dir.join(format!("pi_init-{hash}.safetensors.tmp-{}", std::process::id()));
    params.save_safetensors(&tmp)?;
    write_atomically(&report_path, &serde_json::to_vec_pretty(&report).expect("a report serializes"))?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
    drop(lock);
    Ok(CachedPolicy { params, report, built: true, path: weights })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Where SFT reports each step (a run's [`crate::metrics::MetricSink::sft`]).
pub type SftProgress<'a> = &'a mut dyn FnMut(&SftStep, u64) -> Result<()>;

/// Full-batch AdamW from a seeded random init until the criterion is ≤ `target` or after
/// `max_steps` (the report says where it stopped), reporting every step to `progress`.
pub fn train_initial_policy(
    model: &CausalLm,
    objective: &dyn SftTarget,
    seed: u64,
    initializer_range: f64,
    target: f64,
    max_steps: u64,
    progress: SftProgress<'_>,
) -> Result<(ParamSet, SftReport)> {
    let start = std::time::Instant::now();
    let params = ParamSet::random(&model.config, seed, initializer_range, model.device())?;
    let mut adam = AdamW::new(&params, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let mut steps = 0;
    let mut kl = f64::INFINITY;
    let mut history = Vec::new();
    while steps < max_steps {
        let (loss, now) = objective.loss(model, &params.trainable())?;
        kl = now;
        if !kl.is_finite() {
            return Err(Error::NonFinite { step: steps, what: "SFT loss".into() });
        }
        let reported = SftStep {
            step: steps,
            loss: f64::from(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?),
            kl_behaviour: objective.criterion_is_kl().then_some(kl),
        };
        progress(&reported, max_steps)?;
        history.push(reported);
        if kl <= target {
            break;
        }
        let grads = params.dense_grads(params.grads_from(&loss.backward()?))?;
        adam.step(params.vars(), &grads, SFT_LEARNING_RATE)?;
        steps += 1;
    }
    Ok((params, SftReport { steps, kl_behaviour: kl, seconds: start.elapsed().as_secs_f64(), history, max_steps }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    use candle_core::Device;

    use super::*;
    use crate::model::ModelConfig;

    fn tiny_model() -> CausalLm {
        let cfg = ModelConfig::from_hf_json(&serde_json::json!({
            "model_type": "llama", "vocab_size": 5, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2,
        }))
        .unwrap();
        CausalLm::new(cfg, &Device::Cpu)
    }

    #[test]
    fn concurrent_runs_build_the_initial_policy_once_and_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model();
        let builds = AtomicUsize::new(0);
        let start = Barrier::new(6);
        let results: Vec<CachedPolicy> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        cached_initial_policy(dir.path(), &("task", 1), &model, &mut |_, _| Ok(()), |_| {
                            builds.fetch_add(1, Ordering::SeqCst);
                            // Slow enough that the other threads arrive while it builds.
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            let params = ParamSet::random(&model.config, 9, 0.02, model.device())?;
                            Ok((
                                params,
                                SftReport { steps: 1, kl_behaviour: 0.0, seconds: 0.0, ..SftReport::default() },
                            ))
                        })
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(results.iter().filter(|r| r.built).count(), 1);
        for r in &results {
            assert_eq!(r.params.max_abs_diff(&results[0].params).unwrap(), 0.0);
        }
        // No temporary file is left behind; a different key builds its own.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
        let other = cached_initial_policy(dir.path(), &("task", 2), &model, &mut |_, _| Ok(()), |_| {
            Ok((
                ParamSet::random(&model.config, 10, 0.02, model.device())?,
                SftReport { steps: 1, kl_behaviour: 0.0, seconds: 0.0, ..SftReport::default() },
            ))
        })
        .unwrap();
        assert!(other.built);
    }
}
