//! Conversational, implicit-prompt (Anthropic-HH) and unpaired datasets become exactly the token
//! ids TRL 1.16's DPOTrainer and KTOTrainer train on, for four real chat templates, read from
//! JSON Lines and from Parquet written by HF `datasets`. The fixtures in
//! `tests/fixtures/trl-chat/` were made by TRL itself (`make_fixtures.py` there).

use std::path::PathBuf;

use serde_json::Value;
use trainer::data::{self, Dataset, LoadOptions, TextTokenizer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl-chat")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| u32::try_from(x.as_u64().expect("an id")).expect("u32")).collect()
}

/// Prompt ids, each completion's ids, and the KTO label.
type TokenizedRow = (Vec<u32>, Vec<Vec<u32>>, Option<bool>);

/// Every row of every case, as (prompt, completions…, label) token ids.
fn our_rows(dataset: &Dataset) -> Vec<TokenizedRow> {
    match dataset {
        Dataset::Paired(pairs) => pairs
            .iter()
            .map(|p| {
                assert_eq!(p.chosen.prompt, p.rejected.prompt, "one prompt per pair");
                (p.chosen.prompt.clone(), vec![p.chosen.completion.clone(), p.rejected.completion.clone()], None)
            })
            .collect(),
        Dataset::Unpaired(rows) => rows
            .iter()
            .map(|u| (u.sequence.prompt.clone(), vec![u.sequence.completion.clone()], Some(u.label)))
            .collect(),
    }
}

fn trl_rows(rows: &Value) -> Vec<TokenizedRow> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| match r.get("completion_ids") {
            Some(c) => (ids(&r["prompt_ids"]), vec![ids(c)], r["label"].as_bool()),
            None => (ids(&r["prompt_ids"]), vec![ids(&r["chosen_ids"]), ids(&r["rejected_ids"])], None),
        })
        .collect()
}

fn every_case_matches_trl(extension: &str) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json"))
            .expect("JSON");
    let cases = expected.as_object().expect("cases");
    assert!(cases.len() >= 12, "all fixture cases are present");
    for (case, spec) in cases {
        let template = spec["template"].as_str().unwrap();
        let tokenizer = TextTokenizer::from_dir(&fixtures().join(template), None, None).unwrap();
        let path = fixtures().join("data").join(format!("{}.{extension}", spec["dataset"].as_str().unwrap()));
        let options = LoadOptions {
            max_length: None,
            max_prompt_length: None,
            unpaired: spec["trainer"] == "kto",
            eval_split_ratio: 0.0,
            seed: 42,
        };
        let loaded = data::load(&path, None, &tokenizer, &options).unwrap_or_else(|e| panic!("{case}: {e}"));
        let ours = our_rows(&loaded.train);
        let theirs = trl_rows(&spec["rows"]);
        assert_eq!(ours.len(), theirs.len(), "{case}: row count");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(
                a,
                b,
                "{case} ({extension}) row {i}:\n ours  {:?}\n TRL's {:?}",
                tokenizer.decode(&[a.0.clone(), a.1.concat()].concat()),
                tokenizer.decode(&[b.0.clone(), b.1.concat()].concat())
            );
        }
    }
}

#[test]
fn conversational_hh_and_kto_jsonl_tokenize_exactly_as_trl_does() {
    every_case_matches_trl("jsonl");
}

#[test]
fn the_same_datasets_as_hf_parquet_tokenize_exactly_as_trl_does() {
    every_case_matches_trl("parquet");
}
