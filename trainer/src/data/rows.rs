//! Rows in TRL's dataset types, checked one by one: what each field must be, and what is wrong
//! with a row that is not one of them.
//!
//! - preference: `{prompt, chosen, rejected}`;
//! - preference with an implicit prompt: `{chosen, rejected}` (Anthropic-HH's raw transcripts),
//!   the prompt being their shared start, as TRL's `extract_prompt` finds it;
//! - unpaired preference (KTO): `{prompt, completion, label}`.
//!
//! Each is *standard* (strings) or *conversational* (lists of `{role, content}` messages).

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

/// A field's value: text, or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    /// Message objects, each with a string `role` and `content` (other keys pass through to the
    /// chat template).
    Messages(Vec<Value>),
}

impl Content {
    pub fn is_conversational(&self) -> bool {
        matches!(self, Self::Messages(_))
    }

    /// The prompt as a key for grouping rows by prompt.
    pub fn key(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Messages(m) => Value::Array(m.clone()).to_string(),
        }
    }
}

/// One preference row, with its prompt made explicit.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Paired { prompt: Content, chosen: Content, rejected: Content },
    Unpaired { prompt: Content, completion: Content, label: bool },
}

impl Row {
    pub fn prompt(&self) -> &Content {
        match self {
            Self::Paired { prompt, .. } | Self::Unpaired { prompt, .. } => prompt,
        }
    }
}

/// A row as read, with the template variables it asks for (`chat_template_kwargs`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRow {
    pub row: Row,
    pub template_kwargs: Map<String, Value>,
}

/// TRL's dataset types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowType {
    Preference,
    /// `{chosen, rejected}` whose shared start is the prompt.
    ImplicitPromptPreference,
    UnpairedPreference,
}

/// What a dataset holds: its type, and whether it is conversational.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DatasetKind {
    #[serde(rename = "type")]
    pub row_type: RowType,
    pub conversational: bool,
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let style = if self.conversational { "conversational" } else { "standard" };
        let kind = match self.row_type {
            RowType::Preference => "preference {prompt, chosen, rejected}",
            RowType::ImplicitPromptPreference => "preference with implicit prompt {chosen, rejected}",
            RowType::UnpairedPreference => "unpaired preference {prompt, completion, label}",
        };
        write!(f, "{style} {kind}")
    }
}

/// Checks one row and makes its prompt explicit. The error says what is wrong.
pub fn parse_row(value: &Value) -> Result<(DatasetKind, ParsedRow), String> {
    let Value::Object(obj) = value else { return Err("expected a JSON object".into()) };
    let has = |k: &str| obj.contains_key(k);
    let template_kwargs = match obj.get("chat_template_kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("`chat_template_kwargs` must be an object".into()),
    };
    let (row_type, row) = if has("chosen") || has("rejected") {
        if has("completion") {
            return Err("has both `chosen`/`rejected` (paired) and `completion` (unpaired): use one format".into());
        }
        let chosen = content(obj, "chosen")?;
        let rejected = content(obj, "rejected")?;
        match obj.get("prompt") {
            Some(_) => {
                let prompt = content(obj, "prompt")?;
                same_style(&[("prompt", &prompt), ("chosen", &chosen), ("rejected", &rejected)])?;
                (RowType::Preference, Row::Paired { prompt, chosen, rejected })
            }
            None => {
                same_style(&[("chosen", &chosen), ("rejected", &rejected)])?;
                let (prompt, chosen, rejected) = extract_prompt(chosen, rejected)?;
                (RowType::ImplicitPromptPreference, Row::Paired { prompt, chosen, rejected })
            }
        }
    } else if has("completion") {
        let prompt = content(obj, "prompt")?;
        let completion = content(obj, "completion")?;
        same_style(&[("prompt", &prompt), ("completion", &completion)])?;
        let label = match obj.get("label") {
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("`label` must be true or false, not {other}")),
            None => return Err("missing `label`: unpaired (KTO) rows need a boolean `label`".into()),
        };
        (RowType::UnpairedPreference, Row::Unpaired { prompt, completion, label })
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(format!(
            "expected {{prompt, chosen, rejected}}, {{chosen, rejected}} or {{prompt, completion, label}}; the row has {keys:?}"
        ));
    };
    let kind = DatasetKind { row_type, conversational: row.prompt().is_conversational() };
    Ok((kind, ParsedRow { row, template_kwargs }))
}

fn content(obj: &Map<String, Value>, field: &str) -> Result<Content, String> {
    match obj.get(field) {
        None => Err(format!("missing `{field}`")),
        Some(Value::String(s)) => Ok(Content::Text(s.clone())),
        Some(Value::Array(messages)) => {
            if messages.is_empty() {
                return Err(format!("`{field}` is an empty list of messages"));
            }
            for (i, m) in messages.iter().enumerate() {
                let ok = m.get("role").is_some_and(Value::is_string) && m.get("content").is_some_and(Value::is_string);
                if !ok {
                    return Err(format!(
                        "`{field}`[{i}] must be a message: an object with string `role` and `content`"
                    ));
                }
            }
            Ok(Content::Messages(messages.clone()))
        }
        Some(Value::Null) => Err(format!("`{field}` is null")),
        Some(_) => Err(format!("`{field}` must be a string or a list of {{role, content}} messages")),
    }
}

fn same_style(fields: &[(&str, &Content)]) -> Result<(), String> {
    let (first, head) = fields[0];
    for (name, c) in &fields[1..] {
        if c.is_conversational() != head.is_conversational() {
            let what = |c: &Content| if c.is_conversational() { "a list of messages" } else { "text" };
            return Err(format!("`{first}` is {} but `{name}` is {}: use one format in a row", what(head), what(c)));
        }
    }
    Ok(())
}

/// TRL's `extract_prompt`: the prompt is the longest shared start of `chosen` and `rejected`
/// (characters of text, or whole messages); when text diverges right after a space, the space
/// goes to the completions. Rows where nothing is shared are refused (TRL would train them on an
/// empty or garbled prompt).
pub fn extract_prompt(chosen: Content, rejected: Content) -> Result<(Content, Content, Content), String> {
    match (chosen, rejected) {
        (Content::Text(c), Content::Text(r)) => {
            let cs: Vec<char> = c.chars().collect();
            let rs: Vec<char> = r.chars().collect();
            let idx = split_index(&cs, &rs, |a, b| a == b, |prev| *prev == ' ')?;
            let text = |s: &[char]| Content::Text(s.iter().collect());
            Ok((text(&cs[..idx]), text(&cs[idx..]), text(&rs[idx..])))
        }
        (Content::Messages(c), Content::Messages(r)) => {
            let idx = split_index(&c, &r, |a, b| a == b, |_| false)?;
            if idx == 0 {
                return Err("`chosen` and `rejected` share no prompt: their first messages differ".into());
            }
            Ok((
                Content::Messages(c[..idx].to_vec()),
                Content::Messages(c[idx..].to_vec()),
                Content::Messages(r[idx..].to_vec()),
            ))
        }
        _ => Err("`chosen` and `rejected` must both be text or both be messages".into()),
    }
}

/// The index `extract_prompt`'s loop ends at: the first position where the two differ (moved
/// back one when the item before it is a space), or the last position both have when one is a
/// prefix of the other (Python's loop variable after a loop that never breaks).
fn split_index<T>(
    a: &[T],
    b: &[T],
    eq: impl Fn(&T, &T) -> bool,
    is_space: impl Fn(&T) -> bool,
) -> Result<usize, String> {
    let n = a.len().min(b.len());
    if n == 0 {
        return Err("`chosen` or `rejected` is empty, so no prompt can be extracted".into());
    }
    match (0..n).find(|&i| !eq(&a[i], &b[i])) {
        Some(0) => Err("`chosen` and `rejected` share no prompt: they differ from the first character".into()),
        Some(i) if is_space(&a[i - 1]) && i > 1 => Ok(i - 1),
        Some(i) if is_space(&a[i - 1]) => Err("`chosen` and `rejected` share no prompt: only a leading space".into()),
        Some(i) => Ok(i),
        None => Ok(n - 1),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn text(s: &str) -> Content {
        Content::Text(s.into())
    }

    #[test]
    fn the_hh_prompt_ends_before_the_space_that_starts_the_answers() {
        let (p, c, r) = extract_prompt(
            text("\n\nHuman: Hi?\n\nAssistant: Hello there."),
            text("\n\nHuman: Hi?\n\nAssistant: Go away."),
        )
        .unwrap();
        assert_eq!(p, text("\n\nHuman: Hi?\n\nAssistant:"));
        assert_eq!(c, text(" Hello there."));
        assert_eq!(r, text(" Go away."));
    }

    #[test]
    fn extract_prompt_follows_trl_when_one_is_a_prefix_of_the_other() {
        // Python's loop ends with idx = len - 1 when it never breaks.
        let (p, c, r) = extract_prompt(text("abc"), text("abcd")).unwrap();
        assert_eq!((p, c, r), (text("ab"), text("c"), text("cd")));
        let (p, c, r) = extract_prompt(text("é x"), text("é y")).unwrap();
        assert_eq!((p, c, r), (text("é"), text(" x"), text(" y")), "characters, not bytes");
    }

    #[test]
    fn conversations_share_whole_messages() {
        let user = json!({"role": "user", "content": "Hi"});
        let a = json!({"role": "assistant", "content": "Hello"});
        let b = json!({"role": "assistant", "content": "Go away"});
        let (p, c, r) = extract_prompt(
            Content::Messages(vec![user.clone(), a.clone()]),
            Content::Messages(vec![user.clone(), b.clone()]),
        )
        .unwrap();
        assert_eq!(p, Content::Messages(vec![user]));
        assert_eq!(c, Content::Messages(vec![a]));
        assert_eq!(r, Content::Messages(vec![b]));
    }

    #[test]
    fn rows_sharing_nothing_are_refused() {
        assert!(extract_prompt(text("a"), text("b")).unwrap_err().contains("share no prompt"));
        assert!(extract_prompt(text(""), text("b")).unwrap_err().contains("empty"));
    }

    #[test]
    fn each_bad_row_says_what_is_wrong() {
        for (row, needle) in [
            (json!([1]), "expected a JSON object"),
            (json!({"prompt": "p", "chosen": "c"}), "missing `rejected`"),
            (json!({"prompt": 3, "chosen": "c", "rejected": "r"}), "`prompt` must be a string or a list"),
            (json!({"prompt": "p", "chosen": null, "rejected": "r"}), "`chosen` is null"),
            (json!({"prompt": "p", "completion": "c"}), "missing `label`"),
            (json!({"prompt": "p", "completion": "c", "label": 1}), "`label` must be true or false"),
            (json!({"prompt": "p", "completion": "c", "chosen": "c", "rejected": "r"}), "use one format"),
            (json!({"question": "p"}), "the row has [\"question\"]"),
            (json!({"prompt": [], "chosen": [], "rejected": []}), "empty list of messages"),
            (json!({"chosen": [{"role": "user"}], "rejected": [], "prompt": []}), "`chosen`[0] must be a message"),
            (
                json!({"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "r"}]}),
                "`prompt` is text but `chosen` is a list of messages",
            ),
            (json!({"prompt": "p", "chosen": "c", "rejected": "r", "chat_template_kwargs": 1}), "must be an object"),
        ] {
            let err = parse_row(&row).unwrap_err();
            assert!(err.contains(needle), "{row}: {err}");
        }
    }

    #[test]
    fn good_rows_are_typed() {
        let (kind, _) = parse_row(&json!({"prompt": "p", "chosen": "c", "rejected": "r"})).unwrap();
        assert_eq!(kind, DatasetKind { row_type: RowType::Preference, conversational: false });
        let (kind, parsed) = parse_row(&json!({
            "prompt": [{"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
            "label": false,
        }))
        .unwrap();
        assert_eq!(kind, DatasetKind { row_type: RowType::UnpairedPreference, conversational: true });
        assert!(matches!(parsed.row, Row::Unpaired { label: false, .. }));
    }
}
