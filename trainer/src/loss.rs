//! The preference losses (SPEC §1) as pure functions of sequence log-probs, with TRL's metrics.
//!
//! Inputs are `(B,)` tensors; the policy's carry gradients, the reference's do not. Outputs are
//! the scalar loss and the metrics TRL logs for the same batch.

use candle_core::Tensor;

use crate::error::Result;
use crate::metric_names::{
    KL, LOGPS_CHOSEN, LOGPS_REJECTED, LOSS, REWARDS_ACCURACIES, REWARDS_CHOSEN, REWARDS_MARGINS, REWARDS_REJECTED,
};

/// The loss of one micro-batch and TRL's metrics for it.
#[derive(Debug, Clone)]
pub struct LossOutput {
    pub loss: Tensor,
    pub metrics: Vec<(&'static str, f64)>,
}

fn mean(t: &Tensor) -> Result<f64> {
    Ok(t.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

fn mean_of(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Below this, `log σ(x) = x` to float precision.
const LOG_SIGMOID_LINEAR_BELOW: f32 = -30.0;

/// `log σ(x) = −log(1 + e^{−x})`, with a smooth gradient everywhere (σ(−x) exactly, also at
/// x = 0, where `min(x, 0) − log(1 + e^{−|x|})` would give 1 instead of ½) and no overflow:
/// below −30 it is `x` itself, and the unused branch never sees an input that overflows.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let safe = x.maximum(LOG_SIGMOID_LINEAR_BELOW)?;
    let smooth = (safe.neg()?.exp()? + 1.0)?.log()?.neg()?;
    Ok(x.lt(LOG_SIGMOID_LINEAR_BELOW)?.where_cond(x, &smooth)?)
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(log_sigmoid(x)?.exp()?)
}

/// The reward metrics shared by DPO and IPO: implicit rewards are `β (log π − log π_ref)`
/// relative to the current reference.
fn pair_metrics(
    chosen_rewards: &Tensor,
    rejected_rewards: &Tensor,
    policy_chosen_sums: &Tensor,
    policy_rejected_sums: &Tensor,
) -> Result<Vec<(&'static str, f64)>> {
    let c: Vec<f32> = chosen_rewards.to_vec1()?;
    let r: Vec<f32> = rejected_rewards.to_vec1()?;
    let accuracy = mean_of(&c.iter().zip(&r).map(|(a, b)| f64::from(u8::from(a > b))).collect::<Vec<_>>());
    Ok(vec![
        (REWARDS_CHOSEN, mean(chosen_rewards)?),
        (REWARDS_REJECTED, mean(rejected_rewards)?),
        (REWARDS_ACCURACIES, accuracy),
        (REWARDS_MARGINS, mean(&(chosen_rewards - rejected_rewards)?)?),
        (LOGPS_CHOSEN, mean(policy_chosen_sums)?),
        (LOGPS_REJECTED, mean(policy_rejected_sums)?),
    ])
}

/// A per-pair quantity `(B,)` for the chosen and the rejected completions: sequence
/// log-probs, or completion token counts.
#[derive(Debug, Clone)]
pub struct Pair {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

/// DPO (`loss_type = "sigmoid"`): `-log σ(βΔ)`, averaged over pairs. TRL 1.16's sigmoid loss
/// has no label smoothing (its `label_smoothing` serves the robust and EXO losses).
pub fn dpo_loss(policy: &Pair, reference: &Pair, beta: f64) -> Result<LossOutput> {
    let chosen_ratio = (&policy.chosen - &reference.chosen)?;
    let rejected_ratio = (&policy.rejected - &reference.rejected)?;
    let logits = ((&chosen_ratio - &rejected_ratio)? * beta)?;
    let loss = log_sigmoid(&logits)?.neg()?.mean_all()?;
    let mut metrics = vec![(LOSS, mean(&loss)?)];
    metrics.extend(pair_metrics(
        &(chosen_ratio.detach() * beta)?,
        &(rejected_ratio.detach() * beta)?,
        &policy.chosen.detach(),
        &policy.rejected.detach(),
    )?);
    Ok(LossOutput { loss, metrics })
}

/// IPO: `(Δ̄ − 1/(2β))²` where Δ̄ uses length-averaged log-probs (TRL's convention, "confirmed
/// with the IPO authors"). The metrics, as TRL logs them, use the sequence sums.
pub fn ipo_loss(policy: &Pair, reference: &Pair, token_counts: &Pair, beta: f64) -> Result<LossOutput> {
    let chosen_ratio = (&policy.chosen - &reference.chosen)?;
    let rejected_ratio = (&policy.rejected - &reference.rejected)?;
    let logits = ((&chosen_ratio / &token_counts.chosen)? - (&rejected_ratio / &token_counts.rejected)?)?;
    let loss = (logits - 1.0 / (2.0 * beta))?.sqr()?.mean_all()?;
    let mut metrics = vec![(LOSS, mean(&loss)?)];
    metrics.extend(pair_metrics(
        &(chosen_ratio.detach() * beta)?,
        &(rejected_ratio.detach() * beta)?,
        &policy.chosen.detach(),
        &policy.rejected.detach(),
    )?);
    Ok(LossOutput { loss, metrics })
}

/// KTO: desirable `λ_D (1 − σ(β (h − z₀)))`, undesirable `λ_U (1 − σ(β (z₀ − h)))`, averaged
/// over the examples. `z0` is the detached, clamped mismatched-pair KL estimate (see [`kto_z0`]).
pub fn kto_loss(
    policy: &Tensor,
    reference: &Tensor,
    labels: &[bool],
    z0: f64,
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> Result<LossOutput> {
    let ratio = (policy - reference)?;
    let sign: Vec<f32> = labels.iter().map(|&d| if d { 1.0 } else { -1.0 }).collect();
    let weight: Vec<f32> =
        labels.iter().map(|&d| if d { desirable_weight as f32 } else { undesirable_weight as f32 }).collect();
    let dev = policy.device();
    let sign = Tensor::new(sign, dev)?;
    let weight = Tensor::new(weight, dev)?;
    // desirable: β(h − z₀); undesirable: β(z₀ − h) = −β(h − z₀)
    let margin = (((&ratio - z0)? * beta)? * &sign)?;
    let losses = ((sigmoid(&margin)?.neg()? + 1.0)? * weight)?;
    let loss = losses.mean_all()?;

    let rewards: Vec<f32> = (ratio.detach() * beta)?.to_vec1()?;
    let logps: Vec<f32> = policy.detach().to_vec1()?;
    let pick = |values: &[f32], want: bool| -> Vec<f64> {
        values.iter().zip(labels).filter(|(_, &l)| l == want).map(|(&v, _)| f64::from(v)).collect()
    };
    let mut metrics = vec![(LOSS, mean(&loss)?), (KL, z0)];
    // TRL records a label's means only for a micro-batch that has rows of it, and the margin only
    // when it has both: the logged value averages the micro-batches that had them.
    let mut label_means = [None, None];
    for (want, [reward_name, logps_name], slot) in
        [(true, [REWARDS_CHOSEN, LOGPS_CHOSEN], 0), (false, [REWARDS_REJECTED, LOGPS_REJECTED], 1)]
    {
        if labels.contains(&want) {
            let reward = mean_of(&pick(&rewards, want));
            metrics.extend([(reward_name, reward), (logps_name, mean_of(&pick(&logps, want)))]);
            label_means[slot] = Some(reward);
        }
    }
    if let [Some(chosen), Some(rejected)] = label_means {
        metrics.push((REWARDS_MARGINS, chosen - rejected));
    }
    Ok(LossOutput { loss, metrics })
}

/// KTO's reference point z₀ = max(0, mean(log π − log π_ref)) over mismatched completions.
/// `log_ratios` are `log π − log π_ref` of each prompt with a mismatched completion.
pub fn kto_z0(log_ratios: &Tensor) -> Result<f64> {
    Ok(mean(log_ratios)?.max(0.0))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn metric(out: &LossOutput, name: &str) -> f64 {
        out.metrics.iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn dpo_at_equal_policy_and_reference_is_ln_2() {
        let p = Pair { chosen: t(&[-3.0, -5.0]), rejected: t(&[-4.0, -2.0]) };
        let out = dpo_loss(&p, &p, 0.1).unwrap();
        assert!((metric(&out, "loss") - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(metric(&out, "rewards/accuracies"), 0.0);
    }

    #[test]
    fn dpo_matches_the_formula_by_hand() {
        let policy = Pair { chosen: t(&[-1.0]), rejected: t(&[-3.0]) };
        let reference = Pair { chosen: t(&[-2.0]), rejected: t(&[-2.5]) };
        // Δ = (−1 + 2) − (−3 + 2.5) = 1.5; loss = −log σ(0.15)
        let out = dpo_loss(&policy, &reference, 0.1).unwrap();
        let expected = (1.0 + (-0.15f64).exp()).ln();
        assert!((metric(&out, "loss") - expected).abs() < 1e-6);
        assert!((metric(&out, "rewards/margins") - 0.15).abs() < 1e-6);
        assert_eq!(metric(&out, "rewards/accuracies"), 1.0);
    }

    #[test]
    fn log_sigmoid_has_the_true_gradient_at_zero() {
        let x = candle_core::Var::new(&[0f32, 2.0, -40.0], &Device::Cpu).unwrap();
        let grads = log_sigmoid(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        let sigma = |v: f32| 1.0 / (1.0 + v.exp());
        assert!((g[0] - 0.5).abs() < 1e-6, "d/dx log σ(0) = ½, got {}", g[0]);
        assert!((g[1] - sigma(2.0)).abs() < 1e-6);
        assert!((g[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn log_sigmoid_is_stable_for_large_inputs() {
        let v: Vec<f32> = log_sigmoid(&t(&[-200.0, 0.0, 200.0])).unwrap().to_vec1().unwrap();
        assert!((v[0] + 200.0).abs() < 1e-3 && (v[1] + std::f32::consts::LN_2).abs() < 1e-6 && v[2].abs() < 1e-6);
    }

    #[test]
    fn ipo_at_equal_policy_and_reference_is_one_over_two_beta_squared() {
        let p = Pair { chosen: t(&[-0.5]), rejected: t(&[-0.7]) };
        let counts = Pair { chosen: t(&[2.0]), rejected: t(&[3.0]) };
        let out = ipo_loss(&p, &p, &counts, 0.1).unwrap();
        assert!((metric(&out, "loss") - 25.0).abs() < 1e-4);
    }

    #[test]
    fn ipo_averages_the_log_ratios_over_completion_tokens() {
        let policy = Pair { chosen: t(&[-2.0]), rejected: t(&[-9.0]) };
        let reference = Pair { chosen: t(&[-4.0]), rejected: t(&[-6.0]) };
        let counts = Pair { chosen: t(&[2.0]), rejected: t(&[3.0]) };
        // Δ̄ = 2/2 − (−3)/3 = 2; loss = (2 − 5)²
        let out = ipo_loss(&policy, &reference, &counts, 0.1).unwrap();
        assert!((metric(&out, "loss") - 9.0).abs() < 1e-5);
        assert!((metric(&out, "rewards/chosen") - 0.2).abs() < 1e-6, "rewards use sequence sums");
    }

    #[test]
    fn kto_weights_desirable_and_undesirable_examples() {
        let policy = t(&[-1.0, -2.0]);
        let reference = t(&[-1.5, -1.0]);
        let out = kto_loss(&policy, &reference, &[true, false], 0.2, 0.1, 2.0, 1.0).unwrap();
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = (2.0 * (1.0 - s(0.1 * (0.5 - 0.2))) + (1.0 - s(0.1 * (0.2 + 1.0)))) / 2.0;
        assert!((metric(&out, "loss") - expected).abs() < 1e-6);
        assert!((metric(&out, "rewards/chosen") - 0.05).abs() < 1e-6);
        assert!((metric(&out, "rewards/rejected") + 0.1).abs() < 1e-6);
    }

    #[test]
    fn kto_logs_no_label_means_for_a_batch_without_that_label() {
        let out = kto_loss(&t(&[-1.0, -2.0]), &t(&[-1.5, -1.0]), &[true, true], 0.0, 0.1, 1.0, 1.0).unwrap();
        let names: Vec<&str> = out.metrics.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec!["loss", "kl", "rewards/chosen", "logps/chosen"]);
    }

    #[test]
    fn kto_z0_is_clamped_at_zero() {
        // log π − log π_ref: (−3) − (−1), then (−1) − (−2) and (−2) − (−2)
        assert_eq!(kto_z0(&t(&[-2.0])).unwrap(), 0.0);
        assert!((kto_z0(&t(&[1.0, 0.0])).unwrap() - 0.5).abs() < 1e-9);
    }
}
