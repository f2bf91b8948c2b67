//! Small real model directories and Anthropic-HH-style data made from scratch, for tests and
//! benchmarks that may download nothing: a byte-level BPE tokenizer trained on the data's own
//! text (as GPT-2, Llama 3 and Qwen tokenizers are built), a chat template, and a Llama
//! `config.json` for a random init.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

/// A ChatML template (Qwen's layout): `<|im_start|>role\ncontent<|im_end|>\n` per message.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
     message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' \
     }}{% endif %}";
const CHATML_TOKENS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];

/// The shape of a Llama written by [`write_model_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    /// At least the tokenizer's vocabulary; larger pads the embedding, as Pythia's does.
    pub min_vocab_size: usize,
}

impl LlamaShape {
    /// A model of a few thousand parameters, for tests.
    pub const TINY: Self = Self {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        max_position_embeddings: 1024,
        min_vocab_size: 0,
    };
}

/// A tiny reward model of one family (`llama`, `qwen2` or `gpt_neox`) written as transformers
/// lays out `*ForSequenceClassification`: the backbone's weights, a bias-free `score.weight`,
/// and the tokenizer files of `tokenizer_from` (whose pad id must be 0 and EOS id 2, as in the
/// TRL fixtures). Every tensor is random, norms and biases included, so a misplaced weight
/// cannot hide.
pub fn write_reward_model_dir(dir: &Path, model_type: &str, seed: u64, tokenizer_from: &Path) -> Result<()> {
    use crate::model::{param_specs, registry, ModelConfig};
    use candle_core::{Device, Tensor};

    let class = match model_type {
        "llama" => "LlamaForSequenceClassification",
        "qwen2" => "Qwen2ForSequenceClassification",
        _ => "GPTNeoXForSequenceClassification",
    };
    let config = json!({
        "model_type": model_type, "architectures": [class], "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 128, "tie_word_embeddings": false, "num_labels": 1, "torch_dtype": "float32",
        "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1,
    });
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write = |name: &str, contents: &[u8]| {
        std::fs::write(dir.join(name), contents).map_err(|e| Error::io(dir.join(name), e))
    };
    write("config.json", config.to_string().as_bytes())?;
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let from = tokenizer_from.join(file);
        std::fs::copy(&from, dir.join(file)).map_err(|e| Error::io(&from, e))?;
    }
    let cfg = ModelConfig::from_hf_json(&config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut random = |shape: Vec<usize>, scale: f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    };
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in param_specs(&cfg).into_iter().filter(|(name, _)| !registry::is_lm_head(name)) {
        tensors.insert(name, random(shape, 0.5)?);
    }
    tensors.insert("score.weight".to_string(), random(vec![1, 16], 1.0)?);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

/// Trains a byte-level BPE tokenizer of at most `vocab_size` tokens on `texts` and writes a
/// model directory: `tokenizer.json`, `tokenizer_config.json` (`<s>`, `</s>`, `<pad>`, and
/// `chat_template` when given) and a Llama `config.json`. Returns the vocabulary size.
pub fn write_model_dir(
    dir: &Path,
    texts: &[String],
    vocab_size: usize,
    shape: LlamaShape,
    chat_template: Option<&str>,
) -> Result<usize> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let specials: Vec<AddedToken> =
        [PAD, BOS, EOS].iter().chain(&CHATML_TOKENS).map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| Error::Tokenizer(format!("training a BPE tokenizer: {e}")))?;
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
    let id =
        |t: &str| tokenizer.token_to_id(t).ok_or_else(|| Error::Tokenizer(format!("{t} is not in the vocabulary")));
    let mut tokenizer_config = json!({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD});
    if let Some(t) = chat_template {
        tokenizer_config["chat_template"] = Value::String(t.to_string());
    }
    let vocab = tokenizer.get_vocab_size(true);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab.max(shape.min_vocab_size),
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "bos_token_id": id(BOS)?,
        "eos_token_id": id(EOS)?,
        "pad_token_id": id(PAD)?,
        "torch_dtype": "float32",
    });
    for (file, value) in [("tokenizer_config.json", tokenizer_config), ("config.json", config)] {
        let path = dir.join(file);
        let text = serde_json::to_string_pretty(&value).expect("JSON values serialize");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(vocab)
}

const WORDS: &[&str] = &[
    "the", "a", "to", "and", "of", "you", "I", "it", "is", "that", "what", "how", "can", "do", "my", "for", "in", "be",
    "have", "not", "with", "your", "me", "this", "are", "would", "like", "about", "some", "should", "there", "people",
    "think", "good", "know", "make", "help", "time", "way", "want", "need", "really", "best", "if", "just", "more",
    "when", "get", "could", "them", "bread", "water", "garden", "dog", "cat", "recipe", "money", "car", "friend",
    "work", "school", "music", "book", "weather", "health", "sleep", "coffee", "travel", "movie", "game", "computer",
    "phone", "history", "science", "question", "answer", "idea", "problem", "story", "place", "city", "family", "food",
    "morning", "night", "year", "week", "today", "maybe", "sure", "sorry", "thanks", "please", "why", "where", "which",
    "who", "because", "also", "very", "much", "many", "few", "first", "last", "new", "old", "great", "small", "big",
    "easy", "hard", "safe", "quick", "slow", "cheap", "kind", "rude", "honest", "helpful",
];

/// One utterance of about `words` words, ending with punctuation.
fn sentence(rng: &mut ChaCha8Rng, words: usize) -> String {
    let mut out = String::new();
    for i in 0..words.max(1) {
        if i > 0 {
            out.push(if rng.random_range(0..12) == 0 { ',' } else { ' ' });
            if out.ends_with(',') {
                out.push(' ');
            }
        }
        let w = WORDS[rng.random_range(0..WORDS.len())];
        if i == 0 {
            let mut c = w.chars();
            out.extend(c.next().map(|f| f.to_ascii_uppercase()));
            out.extend(c);
        } else {
            out.push_str(w);
        }
    }
    out.push(if rng.random_range(0..3) == 0 { '?' } else { '.' });
    out
}

/// Rows in Anthropic-HH's raw format, `{chosen, rejected}` transcripts of `"\n\nHuman: …"` and
/// `"\n\nAssistant: …"` turns that share everything but the last answer. Each transcript has
/// about `words` words, three quarters of them in the shared dialogue.
pub fn hh_rows(rows: usize, words: usize, seed: u64) -> Vec<Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prompt_words = words * 3 / 4;
    (0..rows)
        .map(|_| {
            let turns = rng.random_range(1..=3usize);
            let per_turn = (prompt_words / (2 * turns - 1)).max(1);
            let mut dialogue = String::new();
            for t in 0..turns {
                dialogue.push_str(&format!("\n\nHuman: {}", sentence(&mut rng, per_turn)));
                if t + 1 < turns {
                    dialogue.push_str(&format!("\n\nAssistant: {}", sentence(&mut rng, per_turn)));
                }
            }
            let answer = words - prompt_words;
            let chosen = sentence(&mut rng, answer);
            // Answers that start alike would move the extracted prompt into them.
            let rejected = loop {
                let r = sentence(&mut rng, answer);
                if r.chars().next() != chosen.chars().next() {
                    break r;
                }
            };
            json!({
                "chosen": format!("{dialogue}\n\nAssistant: {chosen}"),
                "rejected": format!("{dialogue}\n\nAssistant: {rejected}"),
            })
        })
        .collect()
}

/// Every string inside `rows` (the text a tokenizer for them is trained on).
pub fn texts_of(rows: &[Value]) -> Vec<String> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            Value::Object(o) => o.values().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    rows.iter().for_each(|r| collect(r, &mut out));
    out
}

/// Writes rows as JSON Lines.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{extract_prompt, Content, TextTokenizer};

    #[test]
    fn a_written_model_directory_tokenizes_and_renders_conversations() {
        let dir = tempfile::tempdir().unwrap();
        let rows = hh_rows(20, 40, 1);
        let vocab =
            write_model_dir(dir.path(), &texts_of(&rows), 400, LlamaShape::TINY, Some(CHATML_TEMPLATE)).unwrap();
        assert!(vocab > 260 && vocab <= 400, "{vocab}");
        let tok = TextTokenizer::from_dir(dir.path(), None, None).unwrap();
        let ids = tok.encode("Human: what is the best bread?").unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), "Human: what is the best bread?");
        assert_eq!(
            tok.encode_with("<|im_start|>user\n", false).unwrap()[0],
            tok.encode_with("<|im_start|>", false).unwrap()[0]
        );
        let rendered =
            tok.chat_template().unwrap().render(&[json!({"role": "user", "content": "hi"})], true, &Default::default());
        assert_eq!(rendered.unwrap(), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn hh_rows_share_the_dialogue_and_differ_in_the_last_answer() {
        for row in hh_rows(10, 60, 2) {
            let text = |k: &str| Content::Text(row[k].as_str().unwrap().to_string());
            let (Content::Text(prompt), Content::Text(chosen), _) =
                extract_prompt(text("chosen"), text("rejected")).unwrap()
            else {
                panic!("text rows")
            };
            assert!(prompt.starts_with("\n\nHuman: ") && prompt.ends_with("\n\nAssistant:"), "{prompt:?}");
            assert!(chosen.starts_with(' '), "{chosen:?}");
        }
    }
}
