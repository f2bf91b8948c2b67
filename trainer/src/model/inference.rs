//! Evaluation through candle-transformers' inference models (Llama and Qwen2): sampling with
//! their KV cache and fused inference kernels, tokens picked by its `LogitsProcessor`, and
//! scoring of the sampled answers under other weights through the very same forward passes.
//!
//! candle-transformers' models cut gradients (candle-nn's fused ops have no backward pass), so
//! the trainer keeps its own differentiable model; evaluation needs no gradient. The models are
//! built from the trainer's current weights in memory (`VarBuilder::from_tensors`: shared
//! float32 tensors, a cast in bf16/fp16; nothing goes to disk).
//!
//! One scoring path: the policy, π_init and the reference each run the same incremental
//! forward (prompt, then one sampled token at a time) and their log-probs of the policy's
//! tokens come from one log-softmax + gather. Equal weights give bit-identical log-probs, so a
//! KL estimate is exactly 0 at step 0 in every dtype. Prompts are grouped by length: the
//! models take one position offset per batch, so a batch needs no padding.
//! GPT-NeoX (which candle-transformers lacks) and configs it cannot express (linear rope
//! scaling, a Llama with attention or MLP biases, a `head_dim` other than hidden / heads) keep
//! the trainer's own sampler ([`supports`]).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{llama, qwen2};

use super::sampling::{Sample, SamplingConfig};
use super::{target_log_probs, Architecture, ModelConfig, ParamSet, RopeScaling};
use crate::error::{Error, Result};

/// Whether candle-transformers has a model for `cfg`.
pub fn supports(cfg: &ModelConfig) -> bool {
    let standard_heads = cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size;
    match cfg.architecture {
        Architecture::Llama => {
            standard_heads
                && !cfg.attention_bias
                && !cfg.mlp_bias
                && !matches!(cfg.rope_scaling, Some(RopeScaling::Linear { .. }))
        }
        Architecture::Qwen2 => standard_heads && cfg.rope_scaling.is_none() && !cfg.mlp_bias,
        Architecture::GptNeox => false,
    }
}

/// One candle-transformers model on one weight set, with its KV cache.
enum Net {
    Llama(Box<LlamaNet>),
    Qwen2 { model: qwen2::Model, head: candle_nn::Linear },
}

struct LlamaNet {
    model: llama::Llama,
    config: llama::Config,
    cache: llama::Cache,
}

struct InferenceLm {
    net: Net,
    dtype: DType,
    device: Device,
}

impl InferenceLm {
    fn new(cfg: &ModelConfig, params: &ParamSet, dtype: DType, device: &Device) -> Result<Self> {
        let tensors: HashMap<String, Tensor> =
            params.iter().map(|(name, var)| (name.to_string(), var.as_tensor().clone())).collect();
        let head_weight = match (cfg.tie_word_embeddings, tensors.get("lm_head.weight")) {
            (false, Some(w)) => w.clone(),
            _ => tensors
                .get("model.embed_tokens.weight")
                .ok_or_else(|| Error::model("missing weight `model.embed_tokens.weight`"))?
                .clone(),
        };
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let net = match cfg.architecture {
            Architecture::Llama => {
                let config = llama_config(cfg);
                let model = llama::Llama::load(vb, &config)?;
                let cache = llama::Cache::new(true, dtype, &config, device)?;
                Net::Llama(Box::new(LlamaNet { model, config, cache }))
            }
            Architecture::Qwen2 => {
                let model = qwen2::Model::new(&qwen2_config(cfg), vb)?;
                Net::Qwen2 { model, head: candle_nn::Linear::new(head_weight.to_dtype(dtype)?, None) }
            }
            Architecture::GptNeox => return Err(Error::model("candle-transformers has no GPT-NeoX model")),
        };
        Ok(Self { net, dtype, device: device.clone() })
    }

    /// Empties the KV cache for a new batch.
    fn reset(&mut self) -> Result<()> {
        match &mut self.net {
            Net::Llama(l) => l.cache = llama::Cache::new(true, self.dtype, &l.config, &self.device)?,
            Net::Qwen2 { model, .. } => model.clear_kv_cache(),
        }
        Ok(())
    }

    /// float32 logits `(rows, vocab)` at the last position of `ids (rows, len)`, which follow
    /// `past` cached positions.
    fn next_logits(&mut self, ids: &Tensor, past: usize) -> Result<Tensor> {
        let logits = match &mut self.net {
            Net::Llama(l) => {
                let LlamaNet { model, cache, .. } = &mut **l;
                model.forward(ids, past, cache)?
            }
            Net::Qwen2 { model, head } => {
                let hidden = model.forward(ids, past, None)?;
                let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?.squeeze(1)?;
                head.forward(&last)?
            }
        };
        Ok(logits.to_dtype(DType::F32)?)
    }
}

fn llama_config(cfg: &ModelConfig) -> llama::Config {
    let rope_scaling = match &cfg.rope_scaling {
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            Some(llama::Llama3RopeConfig {
                factor: *factor as f32,
                low_freq_factor: *low_freq_factor as f32,
                high_freq_factor: *high_freq_factor as f32,
                original_max_position_embeddings: *original_max_position_embeddings,
                rope_type: llama::Llama3RopeType::Llama3,
            })
        }
        _ => None,
    };
    llama::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: cfg.norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: cfg.bos_token_id,
        eos_token_id: cfg.eos_token_id.map(llama::LlamaEosToks::Single),
        rope_scaling,
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: cfg.tie_word_embeddings,
    }
}

fn qwen2_config(cfg: &ModelConfig) -> qwen2::Config {
    qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        // No sliding window: wider than any sequence.
        sliding_window: 1 << 30,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    }
}

/// `sampling` as candle-transformers' sampling strategy.
fn strategy(sampling: &SamplingConfig) -> Sampling {
    match (sampling.temperature, sampling.top_k) {
        (t, _) if t <= 0.0 => Sampling::ArgMax,
        (temperature, Some(k)) if k > 0 => Sampling::TopK { k, temperature },
        (temperature, _) => Sampling::All { temperature },
    }
}

/// What [`sample_and_score`] returns.
#[derive(Debug, Clone)]
pub struct Scored {
    /// One answer per prompt, in order; `logprobs` are the policy's, from the scoring path.
    pub samples: Vec<Sample>,
    /// `other_logps[row][i]`: the answer's summed log-prob under `others[i]`.
    pub other_logps: Vec<Vec<f64>>,
}

/// One answer per prompt from `policy` (computing in `dtype`), each scored under every weight
/// set in `others` in lock-step: every model takes the same tokens in the same batches.
#[allow(clippy::too_many_arguments)]
pub fn sample_and_score(
    cfg: &ModelConfig,
    dtype: DType,
    device: &Device,
    policy: &ParamSet,
    others: &[&ParamSet],
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    seed: u64,
) -> Result<Scored> {
    if !supports(cfg) {
        return Err(Error::model(format!(
            "candle-transformers has no model for this {} config",
            cfg.model_type_name()
        )));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(Error::model("cannot sample from an empty prompt"));
    }
    let mut nets = std::iter::once(policy)
        .chain(others.iter().copied())
        .map(|p| InferenceLm::new(cfg, p, dtype, device))
        .collect::<Result<Vec<_>>>()?;
    let mut picker = LogitsProcessor::from_sampling(seed, strategy(sampling));
    let mut samples = vec![Sample { tokens: Vec::new(), logprobs: Vec::new(), finished: false }; prompts.len()];
    let mut other_logps = vec![vec![0f64; others.len()]; prompts.len()];
    let mut by_length: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_length.entry(p.len()).or_default().push(i);
    }
    for (len, rows) in by_length {
        let ids: Vec<u32> = rows.iter().flat_map(|&r| prompts[r].iter().copied()).collect();
        let mut input = Tensor::from_vec(ids, (rows.len(), len), device)?;
        let mut past = 0;
        for net in &mut nets {
            net.reset()?;
        }
        for step in 0..sampling.max_new_tokens {
            let logits = nets.iter_mut().map(|n| n.next_logits(&input, past)).collect::<Result<Vec<_>>>()?;
            past += input.dim(1)?;
            // The policy picks each live row's token; a finished row takes padding.
            let host = logits[0].to_device(&Device::Cpu)?;
            let mut tokens = Vec::with_capacity(rows.len());
            for (i, &r) in rows.iter().enumerate() {
                tokens.push(if samples[r].finished { sampling.pad_token_id } else { picker.sample(&host.get(i)?)? });
            }
            let chosen = Tensor::new(tokens.as_slice(), device)?;
            for (m, lg) in logits.iter().enumerate() {
                let lps: Vec<f32> = target_log_probs(lg, &chosen)?.to_vec1()?;
                for ((&r, &lp), &t) in rows.iter().zip(&lps).zip(&tokens) {
                    let s = &mut samples[r];
                    if s.finished {
                        continue;
                    }
                    if m == 0 {
                        s.tokens.push(t);
                        s.logprobs.push(f64::from(lp));
                    } else {
                        other_logps[r][m - 1] += f64::from(lp);
                    }
                }
            }
            for &r in &rows {
                let s = &mut samples[r];
                if !s.finished && sampling.eos_token_id.is_some() && s.tokens.last().copied() == sampling.eos_token_id {
                    s.finished = true;
                }
            }
            if step + 1 == sampling.max_new_tokens || rows.iter().all(|&r| samples[r].finished) {
                break;
            }
            input = chosen.unsqueeze(1)?;
        }
    }
    Ok(Scored { samples, other_logps })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::{Collated, Sequence};
    use crate::logps::token_logps;
    use crate::model::CausalLm;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/trl-parity").join(name)
    }

    fn sampling(max_new_tokens: usize) -> SamplingConfig {
        SamplingConfig { max_new_tokens, temperature: 1.0, top_k: None, eos_token_id: Some(2), pad_token_id: 0 }
    }

    /// Prompts of three lengths, two of one length (one batch), to exercise the grouping.
    fn prompts() -> Vec<Vec<u32>> {
        vec![vec![39, 57, 54], vec![30, 41, 51, 52, 3], vec![8], vec![11, 12, 13]]
    }

    #[test]
    fn candle_transformers_log_probs_equal_the_training_path_for_llama_and_qwen2() {
        for (arch, dtype, tolerance) in [
            ("tiny-llama", DType::F32, 1e-4),
            ("tiny-qwen2", DType::F32, 1e-4),
            ("tiny-llama", DType::BF16, 5e-2),
            ("tiny-qwen2", DType::BF16, 5e-2),
        ] {
            let (model, params) = CausalLm::from_hf_dir(&fixture(arch), &Device::Cpu).unwrap();
            assert!(supports(&model.config), "{arch}");
            let model = model.with_compute_dtype(dtype);
            let prompts = prompts();
            let scored =
                sample_and_score(&model.config, dtype, &Device::Cpu, &params, &[], &prompts, &sampling(12), 5).unwrap();
            let seqs: Vec<Sequence> = prompts
                .iter()
                .zip(&scored.samples)
                .map(|(p, s)| Sequence { prompt: p.clone(), completion: s.tokens.clone() })
                .collect();
            let trained: Vec<Vec<f32>> =
                token_logps(&model, &params.frozen(), &Collated::from_sequences(&seqs, 0)).unwrap().to_vec2().unwrap();
            let mut worst = 0f64;
            for ((p, s), row) in prompts.iter().zip(&scored.samples).zip(&trained) {
                assert!(!s.tokens.is_empty());
                for (i, lp) in s.logprobs.iter().enumerate() {
                    worst = worst.max((lp - f64::from(row[p.len() - 1 + i])).abs());
                }
            }
            eprintln!("{arch} {dtype:?}: largest difference from the training path {worst:e}");
            assert!(worst <= tolerance, "{arch} {dtype:?}: log-probs {worst:e} from the training path");
        }
    }

    #[test]
    fn the_kl_to_an_identical_initial_policy_is_exactly_zero_in_every_dtype() {
        for arch in ["tiny-llama", "tiny-qwen2"] {
            let (model, params) = CausalLm::from_hf_dir(&fixture(arch), &Device::Cpu).unwrap();
            let initial = params.deep_clone().unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let scored = sample_and_score(
                    &model.config,
                    dtype,
                    &Device::Cpu,
                    &params,
                    &[&initial, &initial],
                    &prompts(),
                    &sampling(16),
                    9,
                )
                .unwrap();
                for (s, others) in scored.samples.iter().zip(&scored.other_logps) {
                    let own: f64 = s.logprobs.iter().sum();
                    assert!(own < 0.0);
                    assert_eq!(others, &vec![own, own], "{arch} {dtype:?}: log π_θ − log π_init is not exactly 0");
                }
            }
        }
    }

    #[test]
    fn eos_ends_a_row_and_greedy_sampling_is_deterministic() {
        let (model, params) = CausalLm::from_hf_dir(&fixture("tiny-llama"), &Device::Cpu).unwrap();
        let greedy = SamplingConfig::greedy(6, None);
        let run = |seed, s: &SamplingConfig| {
            sample_and_score(&model.config, DType::F32, &Device::Cpu, &params, &[], &prompts(), s, seed)
                .unwrap()
                .samples
        };
        let (a, b) = (run(1, &greedy), run(2, &greedy));
        assert_eq!(a, b);
        assert!(a.iter().all(|s| s.tokens.len() == 6 && !s.finished));
        // The first greedy token as EOS: that row stops right after it.
        let eos = a[0].tokens[0];
        let stopped = run(1, &SamplingConfig::greedy(6, Some(eos)));
        assert_eq!(stopped[0].tokens, vec![eos]);
        assert!(stopped[0].finished);
    }

    #[test]
    fn gpt_neox_is_left_to_the_trainers_own_sampler() {
        let (model, _) = CausalLm::from_hf_dir(&fixture("tiny-gpt-neox"), &Device::Cpu).unwrap();
        assert!(!supports(&model.config));
    }
}
