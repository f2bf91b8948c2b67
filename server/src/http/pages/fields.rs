//! The run form's side of the config fields, whose group, kind and help are the trainer's one
//! description ([`trainer::config::fields`]): a posted form back to a config object. Blank
//! inputs are left out, so the defaults (TRL's, or a toy task's own) apply exactly as they would
//! to a config file without the key.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};
use trainer::config::RunConfig;
use trainer::error::FieldError;

pub use trainer::config::fields::{field, Field, Group, Kind, FIELDS, YES_NO};
use Kind::{Bool, Choice, Dataset, Float, Int, Labels, Model, Text};

/// The paper's methods by name: each fills `loss_type`, `sync_ref_model`, α and τ. Soft updates
/// use TRL's (and the paper's) α = 0.6 every step; hard updates replace the reference every
/// τ = 512 steps.
pub const PRESETS: &[Preset] = &[
    Preset::new("dpo", "DPO", "sigmoid", None),
    Preset::new("tr-dpo-soft", "TR-DPO soft (α = 0.6, τ = 1)", "sigmoid", Some((0.6, 1))),
    Preset::new("tr-dpo-hard", "TR-DPO hard (α = 1, τ = 512)", "sigmoid", Some((1.0, 512))),
    Preset::new("ipo", "IPO", "ipo", None),
    Preset::new("tr-ipo-soft", "TR-IPO soft (α = 0.6, τ = 1)", "ipo", Some((0.6, 1))),
    Preset::new("tr-ipo-hard", "TR-IPO hard (α = 1, τ = 512)", "ipo", Some((1.0, 512))),
    Preset::new("kto", "KTO", "kto", None),
    Preset::new("tr-kto-soft", "TR-KTO soft (α = 0.6, τ = 1)", "kto", Some((0.6, 1))),
    Preset::new("tr-kto-hard", "TR-KTO hard (α = 1, τ = 512)", "kto", Some((1.0, 512))),
];

#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub id: &'static str,
    pub label: &'static str,
    loss_type: &'static str,
    /// (α, τ) for a trust-region method.
    trust_region: Option<(f64, u64)>,
}

impl Preset {
    const fn new(
        id: &'static str,
        label: &'static str,
        loss_type: &'static str,
        trust_region: Option<(f64, u64)>,
    ) -> Self {
        Self { id, label, loss_type, trust_region }
    }

    /// The form values it stands for.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("loss_type", self.loss_type.to_string())];
        match self.trust_region {
            None => out.push(("sync_ref_model", "false".into())),
            Some((alpha, tau)) => out.extend([
                ("sync_ref_model", "true".into()),
                ("ref_model_mixup_alpha", crate::charts::number(alpha)),
                ("ref_model_sync_steps", tau.to_string()),
            ]),
        }
        out
    }
}

/// A form posted with a `method` preset: the preset's values go into the fields the user left
/// blank, so hand-edited fields win (without JavaScript, the only way to combine them).
pub fn apply_preset(form: &mut Vec<(String, String)>) {
    let chosen = form.iter().rev().find(|(k, _)| k == "method").map(|(_, v)| v.clone());
    let Some(preset) = chosen.and_then(|id| PRESETS.iter().find(|p| p.id == id)) else { return };
    for (key, value) in preset.values() {
        let set = form.iter().any(|(k, v)| k == key && !v.trim().is_empty());
        // An unticked checkbox sends nothing: the preset decides sync_ref_model unless ticked.
        if !set {
            form.retain(|(k, _)| k != key);
            form.push((key.to_string(), value));
        }
    }
}

/// Posted form values (the last value of each key) to a config object. Blank inputs are left
/// out; numbers that do not parse are reported by field, keeping the user's text for the form.
pub fn config_from_form(form: &[(String, String)]) -> (Value, Vec<FieldError>) {
    let values: BTreeMap<&str, &str> = form.iter().map(|(k, v)| (k.as_str(), v.trim())).collect();
    let mut config = Map::new();
    let mut errors = Vec::new();
    for f in FIELDS {
        let Some(&raw) = values.get(f.name) else { continue };
        if raw.is_empty() {
            continue;
        }
        let value = match f.kind {
            Float => match raw.parse::<f64>() {
                Ok(v) if v.is_finite() => Number::from_f64(v).map(Value::Number),
                _ => {
                    errors.push(FieldError::new(f.name, "must be a number"));
                    None
                }
            },
            Int => match raw.parse::<u64>() {
                Ok(v) => Some(Value::from(v)),
                Err(_) => {
                    errors.push(FieldError::new(f.name, "must be a whole number ≥ 0"));
                    None
                }
            },
            Bool => Some(Value::Bool(matches!(raw, "true" | "on" | "1"))),
            // A yes/no choice is a boolean that may be left unset.
            Choice(YES_NO) => Some(Value::Bool(raw == "true")),
            Choice(_) | Model | Dataset | Text => Some(Value::String(raw.to_string())),
            Labels => match trainer::config::parse_labels(raw) {
                Ok(labels) => Some(Value::Object(labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect())),
                Err(message) => {
                    errors.push(FieldError::new(f.name, message));
                    None
                }
            },
        };
        if let Some(v) = value {
            config.insert(f.name.to_string(), v);
        }
    }
    (Value::Object(config), errors)
}

/// A stored config's values as form text (clone-with-edits), paths relative to their roots.
pub fn form_from_config(
    config: &Value,
    models_dir: &std::path::Path,
    datasets_dir: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = config.as_object() else { return out };
    for (key, v) in map {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => {
                let root = match key.as_str() {
                    "model_name_or_path" => Some(models_dir),
                    "dataset_path" => Some(datasets_dir),
                    _ => None,
                };
                let relative = root.and_then(|r| r.canonicalize().ok()).and_then(|r| {
                    std::path::Path::new(s).strip_prefix(r).ok().map(|p| p.to_string_lossy().into_owned())
                });
                relative.unwrap_or_else(|| s.clone())
            }
            Value::Bool(b) => b.to_string(),
            Value::Object(labels) if field(key).is_some_and(|f| f.kind == Labels) => {
                if labels.is_empty() {
                    continue;
                }
                let labels = labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()));
                trainer::config::labels_text(&labels.collect())
            }
            other => other.to_string(),
        };
        out.insert(key.clone(), text);
    }
    out
}

/// What a blank input means: TRL's default, and a toy task's own where it differs.
pub fn default_text(name: &str) -> String {
    fn text(v: Option<&Value>) -> String {
        match v {
            None | Some(Value::Null) => "unset".into(),
            Some(Value::Object(m)) if m.is_empty() => "none".into(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }
    let defaults = serde_json::to_value(RunConfig::default()).unwrap_or_default();
    let mut out = format!("default {}", text(defaults.get(name)));
    for task in ["toy-tree", "toy-length"] {
        let toy = RunConfig::from_json_value(serde_json::json!({ "task": task }))
            .ok()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_default();
        if toy.get(name) != defaults.get(name) && name != "task" {
            out.push_str(&format!("; {task}: {}", text(toy.get(name))));
        }
    }
    out
}

/// Directories under `root` that hold a `config.json`, and `*.jsonl` files under `root`
/// (one level down), as names relative to it.
pub fn choices(root: &std::path::Path, kind: Kind) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| match kind {
            Model => e.path().join("config.json").is_file(),
            Dataset => e.path().is_file() && e.path().extension().is_some_and(|x| x == "jsonl"),
            _ => false,
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_config_field_is_on_the_form() {
        let all = serde_json::to_value(RunConfig::default()).unwrap();
        for key in all.as_object().unwrap().keys() {
            assert!(field(key).is_some(), "{key} is missing from the form");
        }
        assert_eq!(FIELDS.len(), all.as_object().unwrap().len());
    }

    #[test]
    fn blank_inputs_are_left_out_and_bad_numbers_are_named() {
        let form: Vec<(String, String)> = [
            ("task", "toy-tree"),
            ("beta", " 0.2 "),
            ("learning_rate", ""),
            ("max_steps", "ten"),
            ("sync_ref_model", "true"),
            ("action", "launch"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (config, errors) = config_from_form(&form);
        assert_eq!(config, json!({"task": "toy-tree", "beta": 0.2, "sync_ref_model": true}));
        assert_eq!(errors, vec![FieldError::new("max_steps", "must be a whole number ≥ 0")]);
    }

    #[test]
    fn required_labels_are_typed_as_name_value_text_and_shown_back_the_same_way() {
        let form = vec![("requires".to_string(), "gpu=h100, zone=eu".to_string())];
        let (config, errors) = config_from_form(&form);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config, json!({"requires": {"gpu": "h100", "zone": "eu"}}));
        let back = form_from_config(&config, std::path::Path::new("/m"), std::path::Path::new("/d"));
        assert_eq!(back.get("requires").map(String::as_str), Some("gpu=h100,zone=eu"));
        let none = form_from_config(&json!({"requires": {}}), std::path::Path::new("/m"), std::path::Path::new("/d"));
        assert!(!none.contains_key("requires"), "no requirement leaves the input blank");

        let (_, errors) = config_from_form(&[("requires".to_string(), "gpu:h100".to_string())]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "requires");
        assert!(errors[0].message.contains("name=value"), "{errors:?}");
    }

    #[test]
    fn a_method_preset_fills_the_fields_left_blank_and_hand_edits_win() {
        let mut form: Vec<(String, String)> =
            [("method", "tr-ipo-hard"), ("ref_model_sync_steps", "64"), ("loss_type", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        apply_preset(&mut form);
        let (config, errors) = config_from_form(&form);
        assert!(errors.is_empty());
        assert_eq!(
            config,
            json!({"loss_type": "ipo", "sync_ref_model": true, "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 64})
        );
        assert_eq!(PRESETS.len(), 9, "DPO, IPO, KTO × vanilla, TR soft, TR hard");
    }

    #[test]
    fn defaults_name_the_toy_tasks_own() {
        assert_eq!(default_text("beta"), "default 0.1");
        assert!(default_text("learning_rate").contains("toy-tree: 0.00003"), "{}", default_text("learning_rate"));
    }
}
