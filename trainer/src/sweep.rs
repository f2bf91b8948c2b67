//! Sweep grids: a base config plus one or more grids of values, expanded into run configs.
//! A library function, so the CLI (`goodhart sweep`) and the server expand sweeps alike.
//!
//! ```toml
//! [base]                       # any run config keys, shared by every run
//! task = "toy-tree"
//!
//! [[grid]]                     # each grid is a cartesian product; the sweep is their union
//! sync_ref_model = [false]
//!
//! [[grid]]
//! sync_ref_model = [true]
//! ref_model_sync_steps = [1]
//! ref_model_mixup_alpha = [0.01, 0.1, 0.6]
//! ```
//!
//! A single `[grid]` table works too. A value that is not an array is one value.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::RunConfig;
use crate::error::FieldError;

/// One run of an expanded sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    /// Unique and file-name safe: the index and the grid values.
    pub name: String,
    /// The grid keys and this run's values (the base config's keys are not repeated).
    pub params: BTreeMap<String, Value>,
    pub config: RunConfig,
}

/// Parses sweep TOML or JSON (`format`: the file extension) and expands it.
pub fn parse(text: &str, format: &str) -> Result<Vec<SweepRun>, Vec<FieldError>> {
    let value: Value = match format {
        "json" => {
            serde_json::from_str(text).map_err(|e| vec![FieldError::new("(sweep)", format!("malformed JSON: {e}"))])?
        }
        "toml" => {
            let table: toml::Table = toml::from_str(text)
                .map_err(|e| vec![FieldError::new("(sweep)", format!("malformed TOML: {}", e.message()))])?;
            serde_json::to_value(table).map_err(|e| vec![FieldError::new("(sweep)", e.to_string())])?
        }
        other => return Err(vec![FieldError::new("(sweep)", format!("unknown format {other:?}: use .toml or .json"))]),
    };
    expand(&value)
}

/// Expands `{base: {...}, grid: {...} | [{...}, ...]}` into validated run configs, in grid order
/// (later keys vary fastest). Configs that come out identical are run once.
pub fn expand(spec: &Value) -> Result<Vec<SweepRun>, Vec<FieldError>> {
    let obj = spec.as_object().ok_or_else(|| vec![FieldError::new("(sweep)", "must be a table")])?;
    if let Some(key) = obj.keys().find(|k| *k != "base" && *k != "grid") {
        return Err(vec![FieldError::new(key.clone(), "unknown sweep key: use [base] and [grid] / [[grid]]")]);
    }
    let base = match obj.get("base") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(vec![FieldError::new("base", "must be a table of run config keys")]),
    };
    let grids: Vec<&Map<String, Value>> = match obj.get("grid") {
        None => Vec::new(),
        Some(Value::Object(g)) => vec![g],
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_object().ok_or_else(|| vec![FieldError::new("grid", "each [[grid]] must be a table")]))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(vec![FieldError::new("grid", "must be a table or an array of tables")]),
    };
    let mut combos: Vec<BTreeMap<String, Value>> = Vec::new();
    if grids.is_empty() {
        combos.push(BTreeMap::new());
    }
    for (gi, grid) in grids.iter().enumerate() {
        let mut partial: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (key, values) in *grid {
            let values: Vec<Value> = match values {
                Value::Array(v) if v.is_empty() => {
                    return Err(vec![FieldError::new(format!("grid[{gi}].{key}"), "has no values")]);
                }
                Value::Array(v) => v.clone(),
                single => vec![single.clone()],
            };
            partial = partial
                .into_iter()
                .flat_map(|prefix| {
                    values.iter().map(move |v| {
                        let mut next = prefix.clone();
                        next.push((key.clone(), v.clone()));
                        next
                    })
                })
                .collect();
        }
        combos.extend(partial.into_iter().map(|kv| kv.into_iter().collect::<BTreeMap<_, _>>()));
    }

    let mut runs: Vec<SweepRun> = Vec::new();
    let mut errors = Vec::new();
    for params in combos {
        let mut merged = base.clone();
        merged.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        match RunConfig::from_json_value(Value::Object(merged)) {
            Ok(config) if runs.iter().any(|r| r.config == config) => {}
            Ok(config) => {
                let name = run_name(runs.len(), &params);
                runs.push(SweepRun { name, params, config });
            }
            Err(errs) => {
                let label = label(&params);
                errors
                    .extend(errs.into_iter().map(|e| FieldError::new(e.field, format!("{} (run {label})", e.message))));
            }
        }
    }
    if runs.is_empty() && errors.is_empty() {
        errors.push(FieldError::new("grid", "expands to no runs"));
    }
    if errors.is_empty() {
        Ok(runs)
    } else {
        errors.dedup();
        Err(errors)
    }
}

fn label(params: &BTreeMap<String, Value>) -> String {
    let parts: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
    if parts.is_empty() {
        "base".into()
    } else {
        parts.join(",")
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn run_name(index: usize, params: &BTreeMap<String, Value>) -> String {
    let safe: String = label(params)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '=' | ',') { c } else { '_' })
        .collect();
    format!("{index:03}-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
        [base]
        task = "toy-tree"
        max_steps = 10

        [[grid]]
        sync_ref_model = false

        [[grid]]
        sync_ref_model = true
        ref_model_sync_steps = 1
        ref_model_mixup_alpha = [0.01, 0.1, 0.6]

        [[grid]]
        sync_ref_model = true
        ref_model_mixup_alpha = 1.0
        ref_model_sync_steps = [10, 100, 1000]
        seed = [1, 2]
    "#;

    #[test]
    fn a_union_of_grids_expands_to_their_products() {
        let runs = parse(DEMO, "toml").unwrap();
        assert_eq!(runs.len(), 1 + 3 + 3 * 2);
        assert!(runs.iter().all(|r| r.config.max_steps == Some(10) && r.config.task.is_toy()));
        assert!(!runs[0].config.sync_ref_model);
        let alphas: Vec<f64> = runs[1..4].iter().map(|r| r.config.ref_model_mixup_alpha).collect();
        assert_eq!(alphas, vec![0.01, 0.1, 0.6]);
        let hard: Vec<(u64, u64)> = runs[4..].iter().map(|r| (r.config.ref_model_sync_steps, r.config.seed)).collect();
        assert_eq!(hard, vec![(10, 1), (10, 2), (100, 1), (100, 2), (1000, 1), (1000, 2)]);
        let names: std::collections::HashSet<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), runs.len());
        assert!(runs.iter().all(|r| !r.name.contains('/') && !r.name.contains(' ')));
    }

    #[test]
    fn a_bad_value_is_reported_with_its_field_and_run() {
        let errors =
            parse("[base]\ntask = \"toy-tree\"\n[grid]\nref_model_mixup_alpha = [0.5, 2.0]\n", "toml").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "ref_model_mixup_alpha");
        assert!(errors[0].message.contains("ref_model_mixup_alpha=2.0"), "{}", errors[0].message);
        let errors = parse("[base]\ntask = \"toy-tree\"\n[grid]\nbetaa = [1]\n", "toml").unwrap_err();
        assert_eq!(errors[0].field, "betaa");
        let errors = parse("[grid]\nbeta = []\n", "toml").unwrap_err();
        assert_eq!(errors[0].field, "grid[0].beta");
        assert!(parse("[bases]\n", "toml").is_err());
    }

    #[test]
    fn identical_configs_run_once() {
        let runs = parse("[base]\ntask = \"toy-tree\"\nbeta = 0.1\n[grid]\nbeta = [0.1, 0.1, 0.2]\n", "toml").unwrap();
        assert_eq!(runs.len(), 2);
    }
}
