//! Every metric name the trainer logs and the server reads, in one place: TRL's names where TRL
//! logs the same quantity (`loss`, `rewards/chosen`, `logps/chosen`, …, and `eval/` before a
//! held-out one), Goodhart's own for the overoptimization measurements (SPEC §3). Code names a
//! metric through these constants only; `trainer/tests/metric_names.rs`
//! refuses a string literal such as `"eval/kl_init"` anywhere else in `trainer/src` or
//! `server/src`.

// Training steps (TRL's names).
pub const LOSS: &str = "loss";
pub const GRAD_NORM: &str = "grad_norm";
pub const LEARNING_RATE: &str = "learning_rate";
/// TRL logs it; Goodhart does not (its benchmarks write it, as a typical extra name).
pub const EPOCH: &str = "epoch";
/// KTO's batch estimate of KL(π ‖ reference) (TRL's `kl`).
pub const KL: &str = "kl";
pub const REWARDS_CHOSEN: &str = "rewards/chosen";
pub const REWARDS_REJECTED: &str = "rewards/rejected";
pub const REWARDS_ACCURACIES: &str = "rewards/accuracies";
pub const REWARDS_MARGINS: &str = "rewards/margins";
pub const LOGPS_CHOSEN: &str = "logps/chosen";
pub const LOGPS_REJECTED: &str = "logps/rejected";

/// Before every evaluation metric, as in TRL (`metric_for_best_model` may leave it out).
pub const EVAL_PREFIX: &str = "eval/";
/// The standard error of a Monte Carlo estimate `NAME` is logged as `NAME` + this.
pub const SE_SUFFIX: &str = "_se";

// Evaluations: the overoptimization measurements (SPEC §3).
/// KL(π ‖ π_init), nats: the x axis of every overoptimization curve.
pub const EVAL_KL_INIT: &str = "eval/kl_init";
pub const EVAL_KL_INIT_SE: &str = "eval/kl_init_se";
/// KL(π ‖ reference), nats (the reference moves under a trust region).
pub const EVAL_KL_REF: &str = "eval/kl_ref";
pub const EVAL_KL_REF_SE: &str = "eval/kl_ref_se";
pub const EVAL_GOLD_REWARD: &str = "eval/gold_reward";
pub const EVAL_GOLD_REWARD_SE: &str = "eval/gold_reward_se";
/// Probability mass on continuations outside the preference data's support (toy-tree).
pub const EVAL_OOD_MASS: &str = "eval/ood_mass";
pub const EVAL_ENTROPY: &str = "eval/entropy";
/// Probability mass on sequences that are not valid answers (toy-tree).
pub const EVAL_INVALID_MASS: &str = "eval/invalid_mass";
/// Mean sampled completion length, tokens.
pub const EVAL_LENGTH: &str = "eval/length";
pub const EVAL_LENGTH_SE: &str = "eval/length_se";
/// Fraction of sampled completions that ended with EOS.
pub const EVAL_EOS_RATE: &str = "eval/eos_rate";
/// The held-out implicit-reward margin and accuracy against π_init instead of the reference.
pub const EVAL_INIT_REWARDS_MARGINS: &str = "eval/init_rewards/margins";
pub const EVAL_INIT_REWARDS_ACCURACIES: &str = "eval/init_rewards/accuracies";

// Evaluations: the proxy, TRL's held-out preference metrics.
pub const EVAL_REWARDS_ACCURACIES: &str = "eval/rewards/accuracies";
pub const EVAL_REWARDS_ACCURACIES_SE: &str = "eval/rewards/accuracies_se";
pub const EVAL_REWARDS_MARGINS: &str = "eval/rewards/margins";
pub const EVAL_REWARDS_MARGINS_SE: &str = "eval/rewards/margins_se";
pub const EVAL_LOGPS_CHOSEN: &str = "eval/logps/chosen";
pub const EVAL_LOGPS_REJECTED: &str = "eval/logps/rejected";

// The overoptimization alarm's state, logged at each evaluation (`overopt.rs`).
/// 1 while the run is past its peak, else 0.
pub const OVEROPT_PAST_PEAK: &str = "overopt/past_peak";
/// The step of the running peak.
pub const OVEROPT_PEAK_STEP: &str = "overopt/peak_step";
/// KL to π_init at the running peak, in nats.
pub const OVEROPT_PEAK_KL: &str = "overopt/peak_kl";
/// The step at which the alarm fired (logged while the run is past its peak).
pub const OVEROPT_ALARM_STEP: &str = "overopt/alarm_step";

// π_init's SFT (toy tasks), on its own step axis.
/// Before every SFT metric; they are kept when a run resumes.
pub const SFT_PREFIX: &str = "sft/";
pub const SFT_LOSS: &str = "sft/loss";
/// KL(behaviour ‖ π) where it is exact, nats.
pub const SFT_KL_BEHAVIOUR: &str = "sft/kl_behaviour";

/// The prefixes of metric names: a string literal that starts with one of these followed by a
/// name is a metric name, and belongs in this module.
pub const PREFIXES: [&str; 7] = ["eval/", "sft/", "train/", "rewards/", "logps/", "logits/", "overopt/"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_follow_their_rules() {
        for (name, se) in [
            (EVAL_KL_INIT, EVAL_KL_INIT_SE),
            (EVAL_KL_REF, EVAL_KL_REF_SE),
            (EVAL_GOLD_REWARD, EVAL_GOLD_REWARD_SE),
            (EVAL_LENGTH, EVAL_LENGTH_SE),
            (EVAL_REWARDS_ACCURACIES, EVAL_REWARDS_ACCURACIES_SE),
            (EVAL_REWARDS_MARGINS, EVAL_REWARDS_MARGINS_SE),
        ] {
            assert_eq!(format!("{name}{SE_SUFFIX}"), se);
            assert!(name.starts_with(EVAL_PREFIX));
        }
        for (train, eval) in [(REWARDS_ACCURACIES, EVAL_REWARDS_ACCURACIES), (LOGPS_CHOSEN, EVAL_LOGPS_CHOSEN)] {
            assert_eq!(format!("{EVAL_PREFIX}{train}"), eval);
        }
        assert!(SFT_LOSS.starts_with(SFT_PREFIX) && SFT_KL_BEHAVIOUR.starts_with(SFT_PREFIX));
    }
}
