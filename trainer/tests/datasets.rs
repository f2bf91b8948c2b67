//! Real dataset files, end to end: a tiny random Llama with a BPE tokenizer trained here and a
//! chat template trains on every dataset type TRL knows, from JSON Lines and from Parquet; the
//! held-out split is by prompt and fixed by the seed; and every malformed dataset fails with
//! the row and the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use serde_json::{json, Value};
use trainer::config::RunConfig;
use trainer::data::synthetic::{self, LlamaShape, CHATML_TEMPLATE};
use trainer::data::{Dataset, Location, RowProblem};
use trainer::metrics::MemorySink;
use trainer::setup::Setup;
use trainer::train::train_with;
use trainer::Error;

/// HF-made Parquet files (`datasets.Dataset.to_parquet`) and their JSONL twins.
fn hf_data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl-chat/data").join(file)
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

fn standard_rows() -> Vec<Value> {
    (0..12)
        .map(
            |i| json!({"prompt": format!("Question {i}: is water wet?"), "chosen": " Yes, it is.", "rejected": " No."}),
        )
        .collect()
}

fn conversational_rows() -> Vec<Value> {
    (0..12)
        .map(|i| {
            json!({
                "prompt": [user(&format!("Tell me about cats, part {i}."))],
                "chosen": [assistant("Cats are small and kind.")],
                "rejected": [assistant("No.")],
            })
        })
        .collect()
}

fn kto_rows() -> Vec<Value> {
    (0..12)
        .map(
            |i| json!({"prompt": format!("Say something {i}:"), "completion": " Something nice.", "label": i % 3 != 0}),
        )
        .collect()
}

/// A temporary directory with a tiny model whose tokenizer was trained on all the test data.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        Self::with_template(Some(CHATML_TEMPLATE))
    }

    fn with_template(template: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = [standard_rows(), conversational_rows(), kto_rows(), synthetic::hh_rows(12, 30, 5)].concat();
        for file in ["conv_pairs.jsonl", "hh_raw.jsonl", "conv_kto.jsonl"] {
            let text = std::fs::read_to_string(hf_data(file)).unwrap();
            rows.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
        }
        synthetic::write_model_dir(
            &dir.path().join("model"),
            &synthetic::texts_of(&rows),
            500,
            LlamaShape::TINY,
            template,
        )
        .unwrap();
        Self { dir }
    }

    fn model(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    fn write(&self, name: &str, rows: &[Value]) -> PathBuf {
        let path = self.dir.path().join(name);
        synthetic::write_jsonl(&path, rows).unwrap();
        path
    }

    fn write_text(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn config(&self, dataset: &Path, overrides: Value) -> RunConfig {
        let mut v = json!({
            "model_name_or_path": self.model(),
            "random_init": true,
            "dataset_path": dataset,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 4,
            "max_steps": 3,
            "save_steps": 0,
            "num_threads": 1,
        });
        let Value::Object(overrides) = overrides else { panic!("overrides are a JSON object") };
        for (k, val) in overrides {
            v[k] = val;
        }
        RunConfig::from_json_value(v).unwrap()
    }

    /// Trains and answers the logged losses, one per step.
    fn train(&self, dataset: &Path, overrides: Value) -> Vec<f64> {
        let cfg = self.config(dataset, overrides);
        let out = self.dir.path().join("run");
        let mut sink = MemorySink::default();
        let outcome = train_with(&cfg, &out, false, &mut sink).unwrap_or_else(|e| panic!("{}: {e}", dataset.display()));
        assert_eq!(outcome.global_step, 3);
        let losses: Vec<f64> = sink.steps.iter().filter_map(|(_, m)| m.get("loss").copied()).collect();
        assert_eq!(losses.len(), 3, "a loss per step");
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        losses
    }

    /// The problems a run on `dataset` fails with.
    fn problems(&self, dataset: &Path, overrides: Value) -> Vec<RowProblem> {
        let cfg = self.config(dataset, overrides);
        match train_with(&cfg, &self.dir.path().join("run"), false, &mut MemorySink::default()) {
            Err(Error::Dataset { path, problems }) => {
                assert_eq!(path, dataset);
                problems
            }
            Err(other) => panic!("expected dataset problems, got: {other}"),
            Ok(_) => panic!("{} trained", dataset.display()),
        }
    }
}

fn assert_problems(problems: &[RowProblem], expected: &[(Location, &str)]) {
    let got: Vec<(Location, &str)> = problems.iter().map(|p| (p.location, p.message.as_str())).collect();
    assert_eq!(problems.len(), expected.len(), "{got:?}");
    for (p, (location, needle)) in problems.iter().zip(expected) {
        assert_eq!(p.location, *location, "{got:?}");
        assert!(p.message.contains(needle), "{}: expected {needle:?} in {:?}", p.location, p.message);
    }
}

// --- training on every dataset type -------------------------------------------------------

#[test]
fn a_standard_jsonl_dataset_trains() {
    let lab = Lab::new();
    lab.train(&lab.write("standard.jsonl", &standard_rows()), json!({}));
}

#[test]
fn a_conversational_dataset_trains_with_the_models_chat_template() {
    let lab = Lab::new();
    let path = lab.write("chat.jsonl", &conversational_rows());
    lab.train(&path, json!({"sync_ref_model": true, "ref_model_sync_steps": 1}));
    // The rows were rendered with the template: prompts end with the generation header.
    let setup = Setup::from_dataset(&lab.config(&path, json!({})), &Device::Cpu).unwrap();
    let trainer::data::Dataset::Paired(pairs) = &setup.data else { panic!("paired") };
    let tokenizer = trainer::data::TextTokenizer::from_dir(&lab.model(), None, None).unwrap();
    let prompt = tokenizer.decode(&pairs[0].chosen.prompt).unwrap();
    assert!(prompt.starts_with("<|im_start|>user\n") && prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    assert_eq!(tokenizer.decode(&pairs[0].chosen.completion).unwrap(), "Cats are small and kind.<|im_end|>\n");
}

#[test]
fn an_hh_raw_dataset_trains_on_its_extracted_prompts() {
    let lab = Lab::new();
    let path = lab.write("hh.jsonl", &synthetic::hh_rows(12, 30, 5));
    lab.train(&path, json!({}));
    let setup = Setup::from_dataset(&lab.config(&path, json!({})), &Device::Cpu).unwrap();
    let trainer::data::Dataset::Paired(pairs) = &setup.data else { panic!("paired") };
    let tokenizer = trainer::data::TextTokenizer::from_dir(&lab.model(), None, None).unwrap();
    let prompt = tokenizer.decode(&pairs[0].chosen.prompt).unwrap();
    assert!(prompt.starts_with("\n\nHuman: ") && prompt.ends_with("\n\nAssistant:"), "{prompt:?}");
    assert!(tokenizer.decode(&pairs[0].chosen.completion).unwrap().ends_with("</s>"), "TRL appends EOS to text");
}

#[test]
fn a_kto_dataset_trains() {
    let lab = Lab::new();
    lab.train(&lab.write("kto.jsonl", &kto_rows()), json!({"loss_type": "kto"}));
}

#[test]
fn parquet_datasets_written_by_hf_datasets_train() {
    let lab = Lab::new();
    lab.train(&hf_data("conv_pairs.parquet"), json!({}));
    lab.train(&hf_data("hh_raw.parquet"), json!({"loss_type": "ipo"}));
    lab.train(&hf_data("conv_kto.parquet"), json!({"loss_type": "kto"}));
    lab.train(&hf_data("conv_implicit.parquet"), json!({"loss_type": "kto"}));
}

// --- the held-out split ---------------------------------------------------------------------

/// 20 prompts, two rows each.
fn repeated_prompt_rows() -> Vec<Value> {
    (0..40)
        .map(
            |i| json!({"prompt": format!("Question {}: is water wet?", i % 20), "chosen": " Yes.", "rejected": " No."}),
        )
        .collect()
}

fn prompt_ids(dataset: &Dataset) -> Vec<Vec<u32>> {
    match dataset {
        Dataset::Paired(p) => p.iter().map(|e| e.chosen.prompt.clone()).collect(),
        Dataset::Unpaired(u) => u.iter().map(|e| e.sequence.prompt.clone()).collect(),
    }
}

#[test]
fn held_out_prompts_are_never_trained_on_and_are_chosen_by_the_seed() {
    let lab = Lab::new();
    let path = lab.write("repeated.jsonl", &repeated_prompt_rows());
    let setup = |seed: u64| {
        Setup::from_dataset(&lab.config(&path, json!({"eval_split_ratio": 0.25, "seed": seed})), &Device::Cpu).unwrap()
    };
    let a = setup(1);
    let eval = a.eval.as_ref().expect("an eval split");
    assert_eq!(eval.prompts.len(), 5, "a quarter of 20 distinct prompts");
    assert_eq!(eval.examples.len(), 10, "both rows of each held-out prompt");
    assert_eq!(a.data.len(), 30);
    let trained: Vec<Vec<u32>> = match &a.data {
        trainer::data::Dataset::Paired(p) => p.iter().map(|e| e.chosen.prompt.clone()).collect(),
        trainer::data::Dataset::Unpaired(_) => panic!("paired"),
    };
    for p in &eval.prompts {
        assert!(p.text.starts_with("Question "), "{:?}", p.text);
        assert!(!trained.contains(&p.ids), "{:?} is held out but trained on", p.text);
    }
    assert_eq!(prompt_ids(&eval.examples).iter().filter(|ids| trained.contains(ids)).count(), 0);
    // The same seed holds out the same prompts; another seed others.
    assert_eq!(setup(1).eval, a.eval);
    assert_ne!(setup(2).eval.unwrap().prompts, eval.prompts);
}

#[test]
fn conversational_held_out_prompts_end_with_the_generation_prompt() {
    let lab = Lab::new();
    let path = lab.write("chat.jsonl", &conversational_rows());
    let setup = Setup::from_dataset(&lab.config(&path, json!({"eval_split_ratio": 0.5})), &Device::Cpu).unwrap();
    let eval = setup.eval.unwrap();
    assert_eq!(eval.prompts.len(), 6);
    let tokenizer = trainer::data::TextTokenizer::from_dir(&lab.model(), None, None).unwrap();
    for p in &eval.prompts {
        assert!(p.text.ends_with("<|im_end|>\n<|im_start|>assistant\n"), "{:?}", p.text);
        assert_eq!(tokenizer.decode(&p.ids).unwrap(), p.text);
    }
}

#[test]
fn an_eval_dataset_file_holds_the_evaluation_prompts() {
    let lab = Lab::new();
    let train_path = lab.write("train.jsonl", &standard_rows());
    let eval_path = lab.write("eval.jsonl", &repeated_prompt_rows());
    let cfg = lab.config(&train_path, json!({"eval_dataset_path": eval_path}));
    let setup = Setup::from_dataset(&cfg, &Device::Cpu).unwrap();
    assert_eq!(setup.data.len(), 12, "the whole training file");
    let eval = setup.eval.unwrap();
    assert_eq!((eval.prompts.len(), eval.examples.len()), (20, 40));
    assert_eq!(eval.prompts[3].text, "Question 3: is water wet?");
}

#[test]
fn a_split_needs_two_distinct_prompts() {
    let lab = Lab::new();
    let rows: Vec<Value> = (0..4).map(|_| json!({"prompt": "Same?", "chosen": " Yes.", "rejected": " No."})).collect();
    let cfg = lab.config(&lab.write("same.jsonl", &rows), json!({"eval_split_ratio": 0.5}));
    let err = train_with(&cfg, &lab.dir.path().join("run"), false, &mut MemorySink::default()).unwrap_err();
    assert!(matches!(&err, Error::Config(f) if f[0].field == "eval_split_ratio"), "{err}");
}

// --- every malformed dataset, with its row and reason ----------------------------------------

const GOOD: &str = r#"{"prompt": "Is water wet?", "chosen": " Yes.", "rejected": " No."}"#;

#[test]
fn a_malformed_json_line_is_named_by_its_line_number() {
    let lab = Lab::new();
    let path = lab.write_text("bad.jsonl", format!("{GOOD}\n\n{{\"prompt\": \"x\", \n{GOOD}\n").as_bytes());
    assert_problems(&lab.problems(&path, json!({})), &[(Location::Line(3), "malformed JSON")]);
}

#[test]
fn every_bad_line_is_reported_not_only_the_first() {
    let lab = Lab::new();
    let lines = [
        GOOD,
        r#"{"prompt": "p", "chosen": " c"}"#,
        GOOD,
        r#"{"prompt": 7, "chosen": " c", "rejected": " r"}"#,
        r#"[1, 2]"#,
        GOOD,
        r#"{"prompt": "p", "chosen": null, "rejected": " r"}"#,
    ];
    let path = lab.write_text("bad.jsonl", lines.join("\n").as_bytes());
    assert_problems(
        &lab.problems(&path, json!({})),
        &[
            (Location::Line(2), "missing `rejected`"),
            (Location::Line(4), "`prompt` must be a string or a list"),
            (Location::Line(5), "expected a JSON object"),
            (Location::Line(7), "`chosen` is null"),
        ],
    );
}

#[test]
fn a_kto_row_without_a_label_is_reported() {
    let lab = Lab::new();
    let path = lab.write_text(
        "kto.jsonl",
        b"{\"prompt\": \"p\", \"completion\": \" c\", \"label\": true}\n{\"prompt\": \"p\", \"completion\": \" c\"}\n\
          {\"prompt\": \"p\", \"completion\": \" c\", \"label\": \"yes\"}\n",
    );
    assert_problems(
        &lab.problems(&path, json!({"loss_type": "kto"})),
        &[(Location::Line(2), "missing `label`"), (Location::Line(3), "`label` must be true or false")],
    );
}

#[test]
fn rows_of_different_types_in_one_file_are_reported() {
    let lab = Lab::new();
    let chat = json!({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]});
    let path = lab.write_text(
        "mixed.jsonl",
        format!("{GOOD}\n{chat}\n{{\"chosen\": \" a\", \"rejected\": \" b\"}}\n").as_bytes(),
    );
    assert_problems(
        &lab.problems(&path, json!({})),
        &[
            (
                Location::Line(2),
                "conversational preference {prompt, chosen, rejected}, but the dataset (line 1) is standard",
            ),
            (Location::Line(3), "share no prompt"),
        ],
    );
}

#[test]
fn a_row_mixing_text_and_messages_is_reported() {
    let lab = Lab::new();
    let row = json!({"prompt": "q", "chosen": [assistant("a")], "rejected": [assistant("b")]});
    let path = lab.write("mixed.jsonl", &[row]);
    assert_problems(
        &lab.problems(&path, json!({})),
        &[(Location::Line(1), "`prompt` is text but `chosen` is a list of messages")],
    );
}

#[test]
fn malformed_messages_are_reported() {
    let lab = Lab::new();
    let rows = [
        json!({"prompt": [], "chosen": [assistant("a")], "rejected": [assistant("b")]}),
        json!({"prompt": [{"role": "user"}], "chosen": [assistant("a")], "rejected": [assistant("b")]}),
        json!({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [{"content": "b"}]}),
    ];
    let path = lab.write("messages.jsonl", &rows);
    assert_problems(
        &lab.problems(&path, json!({})),
        &[
            (Location::Line(1), "`prompt` is an empty list of messages"),
            (Location::Line(2), "`prompt`[0] must be a message"),
            (Location::Line(3), "`rejected`[0] must be a message"),
        ],
    );
}

#[test]
fn an_hh_row_whose_transcripts_share_no_prompt_is_reported() {
    let lab = Lab::new();
    let path = lab.write(
        "hh.jsonl",
        &[json!({"chosen": "Human: hi", "rejected": "Robot: hi"}), json!({"chosen": "", "rejected": "x"})],
    );
    assert_problems(
        &lab.problems(&path, json!({})),
        &[(Location::Line(1), "share no prompt"), (Location::Line(2), "is empty")],
    );
}

#[test]
fn an_empty_file_is_reported() {
    let lab = Lab::new();
    let path = lab.write_text("empty.jsonl", b"\n\n");
    assert_problems(&lab.problems(&path, json!({})), &[(Location::File, "no rows")]);
}

#[test]
fn a_json_array_file_is_reported_as_not_json_lines() {
    let lab = Lab::new();
    let path = lab.write_text("array.json", format!("[{GOOD}]").as_bytes());
    assert_problems(&lab.problems(&path, json!({})), &[(Location::File, "JSON array")]);
}

#[test]
fn an_unsupported_extension_is_reported() {
    let lab = Lab::new();
    let path = lab.write_text("data.csv", b"prompt,chosen,rejected\n");
    assert_problems(&lab.problems(&path, json!({})), &[(Location::File, "unsupported file extension")]);
}

#[test]
fn a_line_that_is_not_utf8_is_reported() {
    let lab = Lab::new();
    let mut bytes = format!("{GOOD}\n").into_bytes();
    bytes.extend(b"{\"prompt\": \"\xff\xfe\", \"chosen\": \" a\", \"rejected\": \" b\"}\n");
    bytes.extend(format!("{GOOD}\n").into_bytes());
    let path = lab.write_text("latin1.jsonl", &bytes);
    assert_problems(&lab.problems(&path, json!({})), &[(Location::Line(2), "not valid UTF-8")]);
}

#[test]
fn conversational_data_for_a_model_without_a_chat_template_is_reported() {
    let lab = Lab::with_template(None);
    let path = lab.write("chat.jsonl", &conversational_rows()[..2]);
    let problems = lab.problems(&path, json!({}));
    assert_eq!(problems.len(), 2);
    assert!(problems
        .iter()
        .all(|p| p.message.contains("needs a chat template") && p.message.contains("no chat template")));
}

#[test]
fn a_row_the_chat_template_refuses_is_reported_with_the_templates_message() {
    let template =
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
                    {% for m in messages %}{{ m['content'] }}{% endfor %}";
    let lab = Lab::with_template(Some(template));
    let system = json!({"role": "system", "content": "Be terse."});
    let rows = [
        json!({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}),
        json!({"prompt": [system, user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}),
    ];
    let path = lab.write("chat.jsonl", &rows);
    assert_problems(
        &lab.problems(&path, json!({})),
        &[(Location::Line(2), "the chat template refused it: System role not supported")],
    );
}

#[test]
fn a_corrupt_parquet_file_is_reported() {
    let lab = Lab::new();
    let bytes = std::fs::read(hf_data("hh_raw.parquet")).unwrap();
    let path = lab.write_text("cut.parquet", &bytes[..bytes.len() / 2]);
    assert_problems(&lab.problems(&path, json!({})), &[(Location::File, "not a readable Parquet file")]);
}

#[test]
fn a_parquet_file_with_other_columns_is_reported_row_by_row() {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let lab = Lab::new();
    let path = lab.dir.path().join("qa.parquet");
    let schema =
        parse_message_type("message schema { REQUIRED BINARY question (UTF8); REQUIRED BINARY answer (UTF8); }")
            .unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, Arc::new(schema), Arc::new(WriterProperties::builder().build())).unwrap();
    let mut group = writer.next_row_group().unwrap();
    while let Some(mut column) = group.next_column().unwrap() {
        let values: Vec<ByteArray> = ["a", "b"].iter().map(|s| ByteArray::from(*s)).collect();
        column.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
    let expected = "expected {prompt, chosen, rejected}, {chosen, rejected} or {prompt, completion, label}";
    assert_problems(&lab.problems(&path, json!({})), &[(Location::Row(0), expected), (Location::Row(1), expected)]);
}

#[test]
fn a_dataset_whose_prompts_all_fill_max_length_is_reported() {
    let lab = Lab::new();
    let path = lab.write("standard.jsonl", &standard_rows());
    assert_problems(&lab.problems(&path, json!({"max_length": 4})), &[(Location::File, "no training examples left")]);
}
