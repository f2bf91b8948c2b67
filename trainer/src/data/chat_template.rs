//! A model's chat template (`tokenizer_config.json` or `chat_template.jinja`), rendered the way
//! transformers' `apply_chat_template` renders it: Jinja with `trim_blocks` and `lstrip_blocks`,
//! Python string and dict methods, `raise_exception`, `strftime_now`, Python's `tojson`, the
//! special tokens (`bos_token`, `eos_token`, …) as variables, and `{% generation %}` blocks
//! rendered as plain content.

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde_json::{Map, Value as Json};

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES`: what `special_tokens_map` passes to the template.
const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// Template instructions one rendering may execute: generous for any real conversation, but a
/// template that loops forever fails instead of hanging a worker.
const FUEL: u64 = 50_000_000;

/// A compiled chat template with the special-token variables it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Map<String, Json>,
}

impl ChatTemplate {
    /// `source` is the Jinja text; `special_tokens` maps names like `bos_token` to their text.
    pub fn new(source: &str, special_tokens: Map<String, Json>) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| format!("chat template syntax: {e}"))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat_template", without_generation_tags(source))
            .map_err(|e| format!("the chat template does not compile: {}", describe(&e)))?;
        let special_tokens = special_tokens
            .into_iter()
            .filter(|(k, v)| SPECIAL_TOKEN_NAMES.contains(&k.as_str()) && v.is_string())
            .collect();
        Ok(Self { env, special_tokens })
    }

    /// The template of a model directory: `chat_template.jinja` when present (transformers ≥ 4.50
    /// saves it there), else `chat_template` in `tokenizer_config.json` (a string, or a list of
    /// named templates of which `default` is used). `None` when the model has none.
    pub fn from_dir(dir: &Path, special_tokens: Map<String, Json>) -> Result<Option<Self>, String> {
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source =
                std::fs::read_to_string(&jinja).map_err(|e| format!("cannot read {}: {e}", jinja.display()))?;
            return Self::new(&source, special_tokens).map(Some);
        }
        let config = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&config) else { return Ok(None) };
        let value: Json =
            serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", config.display()))?;
        match value.get("chat_template") {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(source)) => Self::new(source, special_tokens).map(Some),
            Some(Json::Array(named)) => {
                let default = named.iter().find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
                match default.and_then(|t| t.get("template")).and_then(Json::as_str) {
                    Some(source) => Self::new(source, special_tokens).map(Some),
                    None => Err(format!("{}: `chat_template` lists no template named \"default\"", config.display())),
                }
            }
            Some(_) => Err(format!("{}: `chat_template` must be a string", config.display())),
        }
    }

    /// The template of the model in `dir`, with its special tokens; an error says why there is
    /// none usable.
    pub fn of_model(dir: &Path) -> Result<Self, String> {
        Self::from_dir(dir, read_special_tokens(dir))?.ok_or_else(|| no_template(dir))
    }

    /// Renders `messages` (JSON objects with at least `role` and `content`) as
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does. Keys whose
    /// value is null are dropped from each message first, as transformers does. `extra` holds
    /// further template variables (a row's `chat_template_kwargs`); they win over the special tokens.
    pub fn render(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String, String> {
        let messages: Vec<Json> = messages
            .iter()
            .map(|m| match m {
                Json::Object(o) => {
                    Json::Object(o.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                other => other.clone(),
            })
            .collect();
        let mut context = self.special_tokens.clone();
        context.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        context.insert("messages".into(), Json::Array(messages));
        context.insert("tools".into(), Json::Null);
        context.insert("documents".into(), Json::Null);
        context.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        let template = self.env.get_template("chat_template").map_err(|e| describe(&e))?;
        template.render(Value::from(minijinja::value::Serde(&context))).map_err(|e| describe(&e))
    }
}

/// The message a user can act on: `raise_exception`'s own text, else minijinja's with its line.
fn describe(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) if detail.starts_with(RAISED) => {
            format!("the chat template refused it: {}", &detail[RAISED.len()..])
        }
        _ => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let _ = write!(s, ": {inner}");
                source = inner.source();
            }
            format!("chat template error: {s}")
        }
    }
}

const RAISED: &str = "raise_exception: ";

fn raise_exception(message: &str) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

/// `{% generation %}…{% endgeneration %}` marks assistant spans for transformers' token masks;
/// rendered text is unchanged by it, so it becomes an always-true `if` (keeping any `-`
/// whitespace control on the tags).
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => write!(out, "{{%{open} if true {close}%}}").expect("writing to a String"),
            "endgeneration" => write!(out, "{{%{open} endif {close}%}}").expect("writing to a String"),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `datetime.now().strftime(format)`, in UTC, for the codes chat templates use.
fn strftime_now(format: &str) -> Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    strftime(secs, format).map(Value::from)
}

fn strftime(unix_secs: u64, format: &str) -> Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month_name = MONTHS[(month - 1) as usize];
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('B') => write!(out, "{month_name}"),
            Some('b') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{:02}", secs_of_day / 3600),
            Some('M') => write!(out, "{:02}", secs_of_day / 60 % 60),
            Some('S') => write!(out, "{:02}", secs_of_day % 60),
            Some('%') => write!(out, "%"),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported format code %{}", other.map(String::from).unwrap_or_default()),
                ))
            }
        };
    }
    Ok(out)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// transformers replaces Jinja's `tojson` (which HTML-escapes) with `json.dumps(x,
/// ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
#[allow(clippy::needless_pass_by_value)] // minijinja passes keyword arguments by value
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or_default().to_string()),
        },
    };
    let options =
        JsonOptions { indent, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, value, &options, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOptions {
    indent: Option<String>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(out: &mut String, value: &Value, o: &JsonOptions, depth: usize) -> Result<(), minijinja::Error> {
    let not_serializable = |what: &str| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {what} is not JSON serializable"))
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let f = f64::try_from(value.clone()).map_err(|_| not_serializable("a number"))?;
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, depth, |out, i| write_json(out, &items[i], o, depth + 1))?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(ToString::to_string);
            }
            write_container(out, '{', '}', keys.len(), o, depth, |out, i| {
                let key = &keys[i];
                write_json_string(out, &key.to_string(), o.ensure_ascii);
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, o, depth + 1)
            })?;
        }
        ValueKind::Undefined => return Err(not_serializable("an undefined value")),
        other => return Err(not_serializable(&format!("a value of kind {other}"))),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    o: &JsonOptions,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), minijinja::Error>,
) -> Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        match &o.indent {
            Some(indent) => {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(out, i)?;
    }
    if let Some(indent) = &o.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    let escaped = serde_json::to_string(s).expect("a string serializes");
    if !ensure_ascii {
        out.push_str(&escaped);
        return;
    }
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents in [-4, 16).
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sci = format!("{f:e}"); // shortest digits, e.g. "1.5e-7"
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Special tokens (`eos_token`, `bos_token`, …) as text: `tokenizer_config.json`'s, completed by
/// `special_tokens_map.json`'s. Values may be plain strings or `{content}` objects.
pub(super) fn read_special_tokens(dir: &Path) -> Map<String, Json> {
    let read = |file: &str| -> Map<String, Json> {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else { return Map::new() };
        let Ok(Json::Object(map)) = serde_json::from_str::<Json>(&text) else { return Map::new() };
        map.into_iter()
            .filter_map(|(k, v)| {
                let s = match v {
                    Json::String(s) => s,
                    Json::Object(o) => o.get("content")?.as_str()?.to_string(),
                    _ => return None,
                };
                Some((k, Json::String(s)))
            })
            .collect()
    };
    let mut tokens = read("tokenizer_config.json");
    for (k, v) in read("special_tokens_map.json") {
        tokens.entry(k).or_insert(v);
    }
    tokens
}

pub(super) fn no_template(dir: &Path) -> String {
    format!(
        "the model has no chat template (no `chat_template` in {}/tokenizer_config.json and no chat_template.jinja)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tokens() -> Map<String, Json> {
        json!({"bos_token": "<s>", "eos_token": "</s>"}).as_object().unwrap().clone()
    }

    fn render(source: &str, messages: &Json, add_generation_prompt: bool) -> Result<String, String> {
        let t = ChatTemplate::new(source, tokens())?;
        t.render(messages.as_array().unwrap(), add_generation_prompt, &Map::new())
    }

    #[test]
    fn special_tokens_python_methods_and_the_generation_prompt_are_available() {
        let source =
            "{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}: {{ m.content.strip() }}\n{% endfor %}\
                      {% if add_generation_prompt %}ASSISTANT:{% else %}{{ eos_token }}{% endif %}";
        let messages = json!([{"role": "user", "content": "  hi  "}]);
        assert_eq!(render(source, &messages, true).unwrap(), "<s>USER: hi\nASSISTANT:");
        assert_eq!(render(source, &messages, false).unwrap(), "<s>USER: hi\n</s>");
    }

    #[test]
    fn raise_exception_becomes_an_error_with_the_templates_message() {
        let source =
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}";
        let err = render(source, &json!([{"role": "system", "content": "x"}]), false).unwrap_err();
        assert_eq!(err, "the chat template refused it: System role not supported");
    }

    #[test]
    fn blocks_are_trimmed_like_transformers_and_the_final_newline_is_dropped() {
        let source = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}\n";
        assert_eq!(render(source, &json!([{"role": "user", "content": "a"}]), false).unwrap(), "    a\n");
    }

    #[test]
    fn generation_blocks_render_their_content() {
        let source = "{% for m in messages %}{%- generation -%} [{{ m.content }}] {%- endgeneration %}{% endfor %}";
        assert_eq!(render(source, &json!([{"role": "assistant", "content": "x"}]), false).unwrap(), "[x]");
    }

    #[test]
    fn null_message_keys_are_dropped_as_transformers_does() {
        let source = "{% for m in messages %}{{ 'tools' if m.tool_calls is defined else 'plain' }}{% endfor %}";
        assert_eq!(
            render(source, &json!([{"role": "assistant", "content": "x", "tool_calls": null}]), false).unwrap(),
            "plain"
        );
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let source = "{{ messages[0].content | tojson }}|{{ messages[0].data | tojson }}|{{ messages[0].data | tojson(indent=2) }}";
        // Objects reach the template with sorted keys (serde_json's map); Python keeps file order.
        let messages =
            json!([{"role": "user", "content": "<é\"\n>", "data": {"a": {}, "b": [1, 2.5, 1e-7, 1e16, true, null]}}]);
        assert_eq!(
            render(source, &messages, false).unwrap(),
            "\"<é\\\"\\n>\"|{\"a\": {}, \"b\": [1, 2.5, 1e-07, 1e+16, true, null]}|\
             {\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    1e-07,\n    1e+16,\n    true,\n    null\n  ]\n}"
        );
    }

    #[test]
    fn strftime_formats_a_known_instant() {
        // 2024-07-26 13:25:09 UTC, a Friday.
        assert_eq!(
            strftime(1_722_000_309, "%d %b %Y %H:%M:%S %A %B %y %m %%").unwrap(),
            "26 Jul 2024 13:25:09 Friday July 24 07 %"
        );
    }

    #[test]
    fn a_template_that_does_not_compile_is_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", tokens()).unwrap_err();
        assert!(err.starts_with("the chat template does not compile"), "{err}");
    }
}
