//! Sweep grids: a base config plus one or more grids of values, expanded into run configs.
//! The one expander: the CLI (`goodhart sweep`) calls [`expand`], and the server
//! (`POST /api/sweeps`, `/sweeps/new`) calls [`count`] and [`points`] and then checks each point
//! against its own directories, dropping duplicates by the same rule.
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
//! A single `[grid]` table works too. The rules, for both callers:
//! - a value that is not an array is one value (a one-element list); an empty array is refused;
//! - grid points that come out as the same run config are run once (the duplicates are dropped).

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
    let combos = points(obj.get("grid").unwrap_or(&Value::Null), usize::MAX)?;

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

/// One grid (key -> values) and the name its errors use: `grid` for a single table, `grid[i]`
/// in a list.
type NamedGrid<'a> = (String, &'a Map<String, Value>);

/// A sweep's `grid`: absent (`null`: the base config alone), one table, or a list of them (a union).
fn grids(grid: &Value) -> Result<Vec<NamedGrid<'_>>, Vec<FieldError>> {
    let shape = || vec![FieldError::new("grid", "must be a table (object) of key -> values, or a list of them")];
    match grid {
        Value::Null => Ok(Vec::new()),
        Value::Object(g) => Ok(vec![("grid".to_string(), g)]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, g)| g.as_object().map(|g| (format!("grid[{i}]"), g)).ok_or_else(shape))
            .collect(),
        _ => Err(shape()),
    }
}

/// A grid key's values: an array, or a single value as a one-element list.
fn values_of(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        single => std::slice::from_ref(single),
    }
}

/// How many grid points `grid` expands to (before duplicates are dropped), or why it cannot.
pub fn count(grid: &Value) -> Result<usize, Vec<FieldError>> {
    let grids = grids(grid)?;
    if grids.is_empty() {
        return Ok(1);
    }
    let mut errors = Vec::new();
    let mut total: usize = 0;
    for (name, grid) in &grids {
        let mut product: usize = 1;
        for (key, values) in *grid {
            match values_of(values).len() {
                0 => errors.push(FieldError::new(format!("{name}.{key}"), "has no values")),
                n => product = product.saturating_mul(n),
            }
        }
        total = total.saturating_add(product);
    }
    if errors.is_empty() {
        Ok(total)
    } else {
        Err(errors)
    }
}

/// Every grid point (the grid keys and their values): each grid's combinations, in key order
/// with later keys varying fastest, grids one after the other; one empty point without a grid.
/// Refused before expanding when there would be more than `max_runs`.
pub fn points(grid: &Value, max_runs: usize) -> Result<Vec<BTreeMap<String, Value>>, Vec<FieldError>> {
    let total = count(grid)?;
    if total > max_runs {
        return Err(vec![FieldError::new(
            "grid",
            format!("{total} runs is more than this server's --max-sweep-runs ({max_runs})"),
        )]);
    }
    let grids = grids(grid)?;
    if grids.is_empty() {
        return Ok(vec![BTreeMap::new()]);
    }
    let mut all = Vec::with_capacity(total);
    for (_, grid) in grids {
        let mut partial = vec![BTreeMap::new()];
        for (key, values) in grid {
            partial = partial
                .into_iter()
                .flat_map(|prefix: BTreeMap<String, Value>| {
                    values_of(values).iter().map(move |v| {
                        let mut next = prefix.clone();
                        next.insert(key.clone(), v.clone());
                        next
                    })
                })
                .collect();
        }
        all.extend(partial);
    }
    Ok(all)
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
        assert_eq!(errors[0].field, "grid.beta");
        let errors = parse("[[grid]]\nbeta = [0.1]\n[[grid]]\nbeta = []\n", "toml").unwrap_err();
        assert_eq!(errors[0].field, "grid[1].beta");
        assert!(parse("[bases]\n", "toml").is_err());
    }

    #[test]
    fn single_values_are_one_element_lists_and_the_limit_counts_before_expanding() {
        let grid = serde_json::json!([{"sync_ref_model": false}, {"sync_ref_model": [true], "beta": [0.1, 0.2]}]);
        assert_eq!(count(&grid).unwrap(), 3);
        let all = points(&grid, 3).unwrap();
        assert_eq!(all[0]["sync_ref_model"], serde_json::json!(false));
        assert_eq!(all[2]["beta"], serde_json::json!(0.2));
        assert_eq!(points(&grid, 2).unwrap_err()[0].field, "grid", "the limit counts the union");
        assert_eq!(count(&Value::Null).unwrap(), 1, "no grid: the base config alone");
        assert_eq!(count(&serde_json::json!(3)).unwrap_err()[0].field, "grid");
    }

    #[test]
    fn identical_configs_run_once() {
        let runs = parse("[base]\ntask = \"toy-tree\"\nbeta = 0.1\n[grid]\nbeta = [0.1, 0.1, 0.2]\n", "toml").unwrap();
        assert_eq!(runs.len(), 2);
    }
}
