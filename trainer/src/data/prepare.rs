//! From a dataset file to tokenized examples, as TRL 1.16's `DPOTrainer._prepare_dataset` and
//! `KTOTrainer._prepare_dataset` do it:
//!
//! 1. rows without `prompt` get theirs from `extract_prompt`;
//! 2. KTO unpairs paired rows: per 1000 rows (`datasets.map`'s batch), all chosen completions
//!    (desirable), then all rejected ones;
//! 3. text completions get the EOS token's text appended unless they end with it;
//! 4. text is tokenized with the tokenizer's special tokens; conversations are rendered with
//!    the chat template (the prompt alone with `add_generation_prompt=True`, prompt + completion
//!    without) and tokenized without them, the template having written its own;
//! 5. the prompt is the longest token prefix the tokenized prompt shares with every tokenized
//!    prompt + completion; each completion is the rest;
//! 6. with `max_length`, examples whose prompt alone fills it are dropped.
//!
//! Before any of that, every row is checked, and all bad rows are reported together. The held-out
//! evaluation split, when asked for, is made by prompt before tokenizing.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::chat_template::ChatTemplate;
use super::files::{for_each_row, FileFormat, Location, RowProblem};
use super::rows::{parse_row, Content, DatasetKind, ParsedRow, Row};
use super::tokenizer::TextTokenizer;
use super::{Dataset, PairedExample, Sequence, UnpairedExample};
use crate::error::{Error, Result};

/// `datasets.map(batched=True)`'s default batch size, which fixes the order of unpaired rows.
pub(crate) const UNPAIR_CHUNK: usize = 1000;

/// How a run wants its data.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub max_length: Option<usize>,
    pub max_prompt_length: Option<usize>,
    /// KTO: paired rows are split into desirable and undesirable examples.
    pub unpaired: bool,
    /// Fraction of distinct prompts held out for evaluation (0 holds out nothing).
    pub eval_split_ratio: f64,
    /// Chooses the held-out prompts.
    pub seed: u64,
}

/// A held-out prompt, ready for sampling: its text as the model sees it (the rendered chat
/// template for conversations) and its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalPrompt {
    pub text: String,
    pub ids: Vec<u32>,
}

/// The held-out part: distinct prompts in file order, and their rows as examples.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSet {
    pub prompts: Vec<EvalPrompt>,
    pub examples: Dataset,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadedData {
    pub kind: DatasetKind,
    pub train: Dataset,
    pub eval: Option<EvalSet>,
    /// Training examples dropped because their prompt alone fills `max_length` (as TRL drops them).
    pub dropped: usize,
}

/// What a dataset file holds and what is wrong with it, without tokenizing it.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetReport {
    pub format: Option<FileFormat>,
    pub kind: Option<DatasetKind>,
    pub rows: usize,
    pub problems: Vec<RowProblem>,
}

/// A good row and where it is.
type Located = (Location, ParsedRow);

/// Every row of a file, checked: the good rows, and a problem for each bad one.
struct ReadRows {
    kind: Option<DatasetKind>,
    rows: Vec<Located>,
    problems: Vec<RowProblem>,
}

fn read_rows(path: &Path) -> ReadRows {
    let mut out = ReadRows { kind: None, rows: Vec::new(), problems: Vec::new() };
    let mut check = RowCheck::default();
    let result = for_each_row(path, |location, value| {
        match check.row(location, value) {
            Ok(row) => out.rows.push((location, row)),
            Err(problem) => out.problems.push(problem),
        }
        ControlFlow::Continue(())
    });
    out.problems.extend(result.err());
    out.kind = check.kind;
    if out.rows.is_empty() && out.problems.is_empty() {
        out.problems.push(RowProblem::file("the dataset has no rows"));
    }
    out
}

/// Checks rows one after the other: each must parse, and be of the first good row's type.
#[derive(Default)]
struct RowCheck {
    kind: Option<DatasetKind>,
    first: Option<Location>,
}

impl RowCheck {
    fn row(
        &mut self,
        location: Location,
        value: std::result::Result<Value, String>,
    ) -> std::result::Result<ParsedRow, RowProblem> {
        let (kind, row) = value.and_then(|v| parse_row(&v)).map_err(|m| RowProblem::new(location, m))?;
        match (self.kind, self.first) {
            (Some(expected), Some(at)) if expected != kind => Err(RowProblem::new(
                location,
                format!("this row is {kind}, but the dataset ({at}) is {expected}: use one format in a file"),
            )),
            _ => {
                self.kind = Some(kind);
                self.first.get_or_insert(location);
                Ok(row)
            }
        }
    }
}

/// The type of a dataset from its first row alone (for listings), or what is wrong with that row.
pub fn first_row_kind(path: &Path) -> std::result::Result<DatasetKind, RowProblem> {
    let mut first = None;
    for_each_row(path, |location, value| {
        first = Some(value.and_then(|v| parse_row(&v)).map(|(kind, _)| kind).map_err(|m| RowProblem::new(location, m)));
        ControlFlow::Break(())
    })?;
    first.unwrap_or_else(|| Err(RowProblem::file("the dataset has no rows")))
}

/// Checks every row of a dataset file. With a model directory, conversational rows are also
/// rendered with its chat template, so a template that refuses a row (`raise_exception`) is
/// reported here too. Nothing is tokenized.
pub fn inspect(path: &Path, model_dir: Option<&Path>) -> DatasetReport {
    // Streamed: a multi-gigabyte upload is checked without holding its rows.
    let template = model_dir.map(ChatTemplate::of_model);
    let mut template_missing = None;
    let mut check = RowCheck::default();
    let mut problems = Vec::new();
    let mut rows = 0;
    let result = for_each_row(path, |location, value| {
        rows += 1;
        match check.row(location, value) {
            Err(problem) => problems.push(problem),
            Ok(parsed) if parsed.row.prompt().is_conversational() => match &template {
                Some(Ok(t)) => problems.extend(render_row(t, &parsed).err().map(|m| RowProblem::new(location, m))),
                Some(Err(message)) => template_missing = Some(message.clone()),
                None => {}
            },
            Ok(_) => {}
        }
        ControlFlow::Continue(())
    });
    problems.extend(result.err());
    if let Some(message) = template_missing {
        problems.push(RowProblem::file(format!("conversational data needs a chat template: {message}")));
    }
    if rows == 0 && problems.is_empty() {
        problems.push(RowProblem::file("the dataset has no rows"));
    }
    DatasetReport { format: FileFormat::of(path), kind: check.kind, rows, problems }
}

/// Renders a conversational row as training will, for its errors only.
fn render_row(template: &ChatTemplate, parsed: &ParsedRow) -> std::result::Result<(), String> {
    let (prompt, completions) = parts(&parsed.row);
    let Content::Messages(prompt) = prompt else { return Ok(()) };
    template.render(prompt, true, &parsed.template_kwargs)?;
    for completion in completions {
        if let Content::Messages(c) = completion {
            template.render(&[prompt.as_slice(), c].concat(), false, &parsed.template_kwargs)?;
        }
    }
    Ok(())
}

fn parts(row: &Row) -> (&Content, Vec<&Content>) {
    match row {
        Row::Paired { prompt, chosen, rejected } => (prompt, vec![chosen, rejected]),
        Row::Unpaired { prompt, completion, .. } => (prompt, vec![completion]),
    }
}

/// Reads, checks, splits and tokenizes a dataset. Every bad row of the file is reported at once.
/// `eval_path`, when given, is the evaluation set (and `eval_split_ratio` must be 0).
pub fn load(
    path: &Path,
    eval_path: Option<&Path>,
    tokenizer: &TextTokenizer,
    options: &LoadOptions,
) -> Result<LoadedData> {
    let read = read_rows(path);
    let bad = |path: &Path, problems: Vec<RowProblem>| Error::Dataset { path: PathBuf::from(path), problems };
    if !read.problems.is_empty() {
        return Err(bad(path, read.problems));
    }
    let kind = read.kind.expect("rows without problems have a kind");
    let (train_rows, eval_rows) = match eval_path {
        Some(eval_path) => {
            let eval = read_rows(eval_path);
            if !eval.problems.is_empty() {
                return Err(bad(eval_path, eval.problems));
            }
            (read.rows, eval.rows)
        }
        None if options.eval_split_ratio > 0.0 => split_by_prompt(read.rows, options.eval_split_ratio, options.seed)?,
        None => (read.rows, Vec::new()),
    };

    let mut problems = Vec::new();
    let (train, dropped) = tokenize_rows(&train_rows, tokenizer, options, &mut problems);
    if !problems.is_empty() {
        return Err(bad(path, problems));
    }
    let eval = if eval_rows.is_empty() {
        None
    } else {
        let (examples, _) = tokenize_rows(&eval_rows, tokenizer, options, &mut problems);
        let prompts = eval_prompts(&eval_rows, tokenizer, options.max_prompt_length, &mut problems);
        if !problems.is_empty() {
            return Err(bad(eval_path.unwrap_or(path), problems));
        }
        Some(EvalSet { prompts, examples })
    };
    if train.is_empty() {
        return Err(bad(
            path,
            vec![RowProblem::file(format!(
                "no training examples left: all {dropped} have a prompt of at least max_length tokens"
            ))],
        ));
    }
    Ok(LoadedData { kind, train, eval, dropped })
}

/// Holds out `ratio` of the distinct prompts (at least one, and never all), chosen by `seed`;
/// every row goes where its prompt went. Both parts keep file order.
fn split_by_prompt(rows: Vec<Located>, ratio: f64, seed: u64) -> Result<(Vec<Located>, Vec<Located>)> {
    let mut prompts: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (_, r) in &rows {
        let key = r.row.prompt().key();
        if seen.insert(key.clone()) {
            prompts.push(key);
        }
    }
    if prompts.len() < 2 {
        return Err(Error::Config(vec![crate::error::FieldError::new(
            "eval_split_ratio",
            format!("needs at least 2 distinct prompts to hold some out; the dataset has {}", prompts.len()),
        )]));
    }
    let held = ((ratio * prompts.len() as f64).round() as usize).clamp(1, prompts.len() - 1);
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_E7A1_5B11_7000));
    let eval: HashSet<&str> = order[..held].iter().map(|&i| prompts[i].as_str()).collect();
    let (mut train, mut held_out) = (Vec::new(), Vec::new());
    for (location, r) in rows {
        if eval.contains(r.row.prompt().key().as_str()) {
            held_out.push((location, r));
        } else {
            train.push((location, r));
        }
    }
    Ok((train, held_out))
}

/// Tokenized examples, and how many were dropped for a prompt that fills `max_length`.
fn tokenize_rows(
    rows: &[Located],
    tokenizer: &TextTokenizer,
    options: &LoadOptions,
    problems: &mut Vec<RowProblem>,
) -> (Dataset, usize) {
    let fits = |s: &Sequence| {
        let prompt = options.max_prompt_length.map_or(s.prompt.len(), |m| s.prompt.len().min(m));
        options.max_length.is_none_or(|m| prompt < m)
    };
    let finish = |s: Sequence| s.truncated(options.max_length, options.max_prompt_length);
    let mut dropped = 0;
    let paired_rows = rows.first().is_some_and(|(_, r)| matches!(r.row, Row::Paired { .. }));
    if paired_rows && !options.unpaired {
        let mut out = Vec::new();
        for (location, r) in rows {
            let Row::Paired { prompt, chosen, rejected } = &r.row else { continue };
            match tokenize(tokenizer, prompt, &[chosen, rejected], &r.template_kwargs) {
                Err(message) => problems.push(RowProblem::new(*location, message)),
                Ok((prompt, mut completions)) => {
                    let rejected = completions.pop().expect("two completions");
                    let chosen = completions.pop().expect("two completions");
                    let chosen = Sequence { prompt: prompt.clone(), completion: chosen };
                    if fits(&chosen) {
                        let rejected = Sequence { prompt, completion: rejected };
                        out.push(PairedExample { chosen: finish(chosen), rejected: finish(rejected) });
                    } else {
                        dropped += 1;
                    }
                }
            }
        }
        return (Dataset::Paired(out), dropped);
    }
    // Unpaired rows as TRL orders them: per chunk of paired rows, the chosen, then the rejected.
    struct Unpaired<'a> {
        location: Location,
        prompt: &'a Content,
        completion: &'a Content,
        label: bool,
        kwargs: &'a Map<String, Value>,
    }
    let mut unpaired = Vec::new();
    for chunk in rows.chunks(UNPAIR_CHUNK) {
        for pass in [true, false] {
            for (location, r) in chunk {
                match &r.row {
                    Row::Paired { prompt, chosen, rejected } => {
                        let completion = if pass { chosen } else { rejected };
                        let kwargs = &r.template_kwargs;
                        unpaired.push(Unpaired { location: *location, prompt, completion, label: pass, kwargs });
                    }
                    Row::Unpaired { prompt, completion, label } if pass => {
                        let kwargs = &r.template_kwargs;
                        unpaired.push(Unpaired { location: *location, prompt, completion, label: *label, kwargs });
                    }
                    Row::Unpaired { .. } => {}
                }
            }
        }
    }
    let mut out = Vec::new();
    for Unpaired { location, prompt, completion, label, kwargs } in unpaired {
        match tokenize(tokenizer, prompt, &[completion], kwargs) {
            Err(message) => problems.push(RowProblem::new(location, message)),
            Ok((prompt, mut completions)) => {
                let sequence = Sequence { prompt, completion: completions.pop().expect("one completion") };
                if fits(&sequence) {
                    let whole = sequence.completion.clone();
                    let sequence = finish(sequence);
                    let full_completion = (sequence.completion.len() < whole.len()).then_some(whole);
                    out.push(UnpairedExample { sequence, label, kl_completion: Vec::new(), full_completion });
                } else {
                    dropped += 1;
                }
            }
        }
    }
    (Dataset::Unpaired(out), dropped)
}

/// Steps 3–5 above for one prompt and its completions: the shared prompt tokens and each
/// completion's own.
fn tokenize(
    tokenizer: &TextTokenizer,
    prompt: &Content,
    completions: &[&Content],
    kwargs: &Map<String, Value>,
) -> std::result::Result<(Vec<u32>, Vec<Vec<u32>>), String> {
    let encode = |text: &str, special: bool| tokenizer.encode_with(text, special).map_err(|e| e.to_string());
    let (prompt_ids, full): (Vec<u32>, Vec<Vec<u32>>) = match prompt {
        Content::Text(p) => {
            let mut full = Vec::new();
            for c in completions {
                let Content::Text(c) = c else { return Err("the prompt is text but a completion is not".into()) };
                let eos = if c.ends_with(&tokenizer.eos_token) { "" } else { tokenizer.eos_token.as_str() };
                full.push(encode(&format!("{p}{c}{eos}"), true)?);
            }
            (encode(p, true)?, full)
        }
        Content::Messages(p) => {
            let template =
                tokenizer.chat_template().map_err(|e| format!("conversational data needs a chat template: {e}"))?;
            let mut full = Vec::new();
            for c in completions {
                let Content::Messages(c) = c else {
                    return Err("the prompt is a conversation but a completion is not".into());
                };
                full.push(encode(&template.render(&[p.as_slice(), c].concat(), false, kwargs)?, false)?);
            }
            (encode(&template.render(p, true, kwargs)?, false)?, full)
        }
    };
    let shared = full.iter().map(|f| common_prefix_length(&prompt_ids, f)).min().unwrap_or(0);
    let prompt = full.first().map_or(prompt_ids, |f| f[..shared].to_vec());
    Ok((prompt, full.into_iter().map(|f| f[shared..].to_vec()).collect()))
}

fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The distinct prompts of `rows`, in order, as a sampler would feed them to the model.
fn eval_prompts(
    rows: &[Located],
    tokenizer: &TextTokenizer,
    max_prompt_length: Option<usize>,
    problems: &mut Vec<RowProblem>,
) -> Vec<EvalPrompt> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (location, r) in rows {
        let prompt = r.row.prompt();
        if !seen.insert(prompt.key()) {
            continue;
        }
        let rendered = match prompt {
            Content::Text(p) => tokenizer.encode(p).map(|ids| (p.clone(), ids)).map_err(|e| e.to_string()),
            Content::Messages(p) => tokenizer
                .chat_template()
                .map_err(str::to_string)
                .and_then(|t| t.render(p, true, &r.template_kwargs))
                .and_then(|text| tokenizer.encode_with(&text, false).map(|ids| (text, ids)).map_err(|e| e.to_string())),
        };
        match rendered {
            Ok((text, mut ids)) => {
                if let Some(m) = max_prompt_length {
                    ids.drain(..ids.len().saturating_sub(m));
                }
                out.push(EvalPrompt { text, ids });
            }
            Err(message) => problems.push(RowProblem::new(*location, message)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::data::synthetic::{self, LlamaShape};

    #[test]
    fn kto_unpairs_paired_rows_as_trl_does_per_thousand_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Value> =
            (0..1003).map(|i| json!({"prompt": format!("q{i}"), "chosen": " good", "rejected": " bad"})).collect();
        synthetic::write_model_dir(
            &dir.path().join("m"),
            &synthetic::texts_of(&rows[..20]),
            300,
            LlamaShape::TINY,
            None,
        )
        .unwrap();
        let path = dir.path().join("pairs.jsonl");
        synthetic::write_jsonl(&path, &rows).unwrap();
        let tokenizer = TextTokenizer::from_dir(&dir.path().join("m"), None, None).unwrap();
        let options =
            LoadOptions { max_length: None, max_prompt_length: None, unpaired: true, eval_split_ratio: 0.0, seed: 0 };
        let Dataset::Unpaired(examples) = load(&path, None, &tokenizer, &options).unwrap().train else {
            panic!("KTO data is unpaired")
        };
        let labels: Vec<bool> = examples.iter().map(|e| e.label).collect();
        let expected: Vec<bool> = [vec![true; 1000], vec![false; 1000], vec![true; 3], vec![false; 3]].concat();
        assert_eq!(labels, expected);
        let prompt = |i: usize| tokenizer.decode(&examples[i].sequence.prompt).unwrap();
        assert_eq!(
            (prompt(0), prompt(1000), prompt(2000), prompt(2003)),
            ("q0".into(), "q0".into(), "q1000".into(), "q1000".into())
        );
    }
}
