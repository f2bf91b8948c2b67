//! The demo's peak policy is kept, and it is what the run measured: the default toy-tree DPO run
//! (the demo sweep's vanilla run, the first 400 of its 2,000 steps, which hold its peak at step
//! 200) keeps the checkpoint of its best evaluation under the default `save_strategy = "pareto"`;
//! that checkpoint loads in HF `transformers`, and the exact gold reward computed there from its
//! logits equals the `eval/gold_reward` the run logged at that step.
//!
//! Needs a Python with torch and transformers, named by `GOODHART_PYTHON`; without one the test
//! is reported as ignored. `.ci/run` runs it when the variable is set.

mod common;

use common::run_in_transformers;
use serde_json::json;
use trainer::config::RunConfig;
use trainer::metrics::MemorySink;
use trainer::summary;
use trainer::tasks::toy_tree::{ToyTree, ToyTreeParams};

/// Every response's probability from the checkpoint's logits, summed as the trainer sums them:
/// a response holding a prompt token ends there and earns the prompt's lowest gold reward.
const EXACT_GOLD: &str = r#"
from transformers import AutoModelForCausalLM
ckpt, task = sys.argv[1], json.load(open(sys.argv[2]))
A, L, P = task["alphabet_size"], task["response_length"], task["num_prompts"]
gold = torch.tensor(task["gold"], dtype=torch.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
M = A ** (L - 1)
ids = [[A + x] + [(c // A ** (L - 2 - t)) % A for t in range(L - 1)] for x in range(P) for c in range(M)]
with torch.no_grad():
    logp = torch.log_softmax(model(input_ids=torch.tensor(ids)).logits.double(), -1)
total = 0.0
for x in range(P):
    prefix, invalid = torch.zeros(1, dtype=torch.float64), 0.0
    for t in range(L):
        rows = [x * M + c * A ** (L - 1 - t) for c in range(A ** t)]
        lp = logp[rows, t, :]
        invalid += (prefix.exp()[:, None] * lp[:, A:].exp()).sum().item()
        prefix = (prefix[:, None] + lp[:, :A]).reshape(-1)
    total += (prefix.exp() * gold[x]).sum().item() + invalid * gold[x].min().item()
print(json.dumps({"gold": total / P, "warnings": [str(w.message) for w in caught] + logged}))
"#;

#[test]
#[ignore = "needs GOODHART_PYTHON: a Python with torch + transformers (see ../shared/bench/peer)"]
fn the_default_runs_peak_checkpoint_loads_in_transformers_and_scores_the_logged_gold_reward() {
    let cfg =
        RunConfig::from_json_value(json!({"task": "toy-tree", "loss_type": "sigmoid", "max_steps": 400})).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    trainer::train::train_with(&cfg, out.path(), false, &mut sink).unwrap();
    let points = summary::eval_points(&sink.steps);
    let peak = points.iter().max_by(|a, b| a.gold.total_cmp(&b.gold)).unwrap();
    assert_eq!(peak.step, 200, "the default run peaks at step 200 (EXPERIMENTS.md)");
    let kept: Vec<u64> = sink.checkpoints.iter().map(|(s, _)| *s).collect();
    assert!(kept.contains(&peak.step), "the peak's weights are kept: {kept:?}");

    let tree = ToyTree::new(ToyTreeParams::from_config(&cfg));
    let task = json!({
        "alphabet_size": tree.params.alphabet_size,
        "response_length": tree.params.response_length,
        "num_prompts": tree.num_prompts(),
        "gold": (0..tree.num_prompts()).map(|x| tree.gold(x).to_vec()).collect::<Vec<_>>(),
    });
    let task_file = out.path().join("task.json");
    std::fs::write(&task_file, task.to_string()).unwrap();
    let ckpt = out.path().join(format!("checkpoint-{}", peak.step));
    let theirs = run_in_transformers(EXACT_GOLD, &[ckpt.to_str().unwrap(), task_file.to_str().unwrap()], "the peak");
    let gold = theirs["gold"].as_f64().unwrap();
    assert!((gold - peak.gold).abs() < 1e-4, "transformers scores {gold}, the run logged {}", peak.gold);
}
