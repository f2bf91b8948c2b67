//! `/sweeps/new`: a grid builder. Lists of values for loss, α, τ, β and seed over a base
//! config; runs with a fixed reference and trust-region runs are separate grids (α and τ mean
//! nothing without a moving reference). It shows "N runs" before launch and refuses grids over
//! the server's limit.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use trainer::error::FieldError;

use super::fields::{Field, Group, Kind, FIELDS};
use super::new_run::{groups, summary, GroupView};
use super::{fields, flag, page, pairs, see_other, value, values, PageError, PageResult};
use crate::http::auth::Identity;
use crate::http::error::Error;
use crate::http::security::CsrfToken;
use crate::http::AppState;
use trainer::config::fields::Sweep;

pub fn router() -> Router<AppState> {
    Router::new().route("/sweeps/new", get(show).post(submit)).route("/sweeps/new/count", post(count))
}

/// Base config fields the form shows (each field's [`Sweep::Base`]); anything else goes in the
/// TOML box.
fn base_fields() -> Vec<&'static str> {
    FIELDS.iter().filter(|f| f.sweep == Sweep::Base).map(|f| f.name).collect()
}

/// The config key offered as check boxes (the loss), its form name and its choices.
fn choice_field() -> Option<(&'static Field, &'static str)> {
    FIELDS.iter().find_map(|f| match f.sweep {
        Sweep::Choices { param } => Some((f, param)),
        _ => None,
    })
}

/// A list of grid values: the config key, and the input's name, label, first value and help.
struct List {
    field: &'static Field,
    param: &'static str,
    label: &'static str,
    default: &'static str,
    help: &'static str,
}

impl List {
    /// Trust-region keys mean nothing without a moving reference: they vary in trust-region
    /// runs only.
    fn trust_region_only(&self) -> bool {
        self.field.group == Group::TrustRegion
    }
}

/// The keys offered as lists of values (each field's [`Sweep::List`]): the trust region's first,
/// under the reference choice they depend on, then the others, each in form order.
fn lists() -> Vec<List> {
    let mut out: Vec<List> = FIELDS
        .iter()
        .filter_map(|field| match field.sweep {
            Sweep::List { param, label, default, help } => Some(List { field, param, label, default, help }),
            _ => None,
        })
        .collect();
    out.sort_by_key(|l| !l.trust_region_only());
    out
}

/// One list of grid values.
pub struct ListView {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub help: &'static str,
}

#[derive(Template)]
#[template(path = "sweep_new.html")]
struct NewSweepPage {
    base: Vec<GroupView>,
    base_toml: String,
    losses: Vec<(&'static str, &'static str, bool)>,
    fixed: bool,
    trust_region: bool,
    lists: Vec<ListView>,
    grid_errors: Vec<String>,
    summary: Vec<(String, String)>,
    /// "N runs", once counted.
    runs: Option<usize>,
    limit: usize,
    csrf: String,
}

/// The sweep a form describes: a base config and a union of grids.
struct Built {
    base: Value,
    grid: Value,
}

fn numbers(raw: &str, field: &str, whole: bool, errors: &mut Vec<FieldError>) -> Vec<Value> {
    let mut out = Vec::new();
    for item in raw.split([',', ' ', ';']).map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = if whole {
            item.parse::<u64>().ok().map(Value::from)
        } else {
            item.parse::<f64>().ok().filter(|v| v.is_finite()).and_then(serde_json::Number::from_f64).map(Value::Number)
        };
        match parsed {
            Some(v) => out.push(v),
            None => errors.push(FieldError::new(
                field,
                format!("{item:?} is not a {}", if whole { "whole number" } else { "number" }),
            )),
        }
    }
    out
}

fn build(form: &[(String, String)]) -> (Built, Vec<FieldError>) {
    let mut errors = Vec::new();
    let base_form: Vec<(String, String)> =
        form.iter().filter(|(k, _)| base_fields().contains(&k.as_str())).cloned().collect();
    let (base, mut base_errors) = fields::config_from_form(&base_form);
    errors.append(&mut base_errors);
    let mut base = match base {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let extra = value(form, "base_toml").unwrap_or("").trim();
    if !extra.is_empty() {
        match toml::from_str::<toml::Table>(extra) {
            Ok(table) => {
                for (k, v) in table {
                    if let Ok(v) = serde_json::to_value(v) {
                        base.entry(k).or_insert(v);
                    }
                }
            }
            Err(e) => errors.push(FieldError::new("base_toml", format!("malformed TOML: {}", e.message()))),
        }
    }
    let mut common = Map::new();
    if let Some((field, param)) = choice_field() {
        let chosen: Vec<Value> = values(form, param).into_iter().map(Value::String).collect();
        if !chosen.is_empty() {
            common.insert(field.name.into(), Value::Array(chosen));
        }
    }
    let mut trust_region = Map::new();
    for list in lists() {
        let vals =
            numbers(value(form, list.param).unwrap_or(""), list.param, list.field.kind == Kind::Int, &mut errors);
        if !vals.is_empty() {
            let grid = if list.trust_region_only() { &mut trust_region } else { &mut common };
            grid.insert(list.field.name.into(), Value::Array(vals));
        }
    }
    let mut grids = Vec::new();
    if flag(form, "fixed") {
        let mut g = common.clone();
        g.insert("sync_ref_model".into(), json!([false]));
        grids.push(Value::Object(g));
    }
    if flag(form, "trust_region") {
        let mut g = common;
        g.insert("sync_ref_model".into(), json!([true]));
        g.extend(trust_region);
        grids.push(Value::Object(g));
    }
    if grids.is_empty() {
        errors.push(FieldError::new("grid", "choose runs with a fixed reference, trust-region runs, or both"));
    }
    (Built { base: Value::Object(base), grid: Value::Array(grids) }, errors)
}

fn render(
    state: &AppState,
    csrf: &CsrfToken,
    form: &[(String, String)],
    errors: &[FieldError],
    runs: Option<usize>,
    status: StatusCode,
) -> PageResult {
    let fresh = form.is_empty();
    let mut filled: BTreeMap<String, String> = form.iter().cloned().collect();
    if fresh {
        filled.insert("task".into(), "toy-tree".into());
    }
    let lists: Vec<ListView> = lists()
        .into_iter()
        .map(|l| ListView {
            name: l.param,
            label: l.label,
            value: if fresh { l.default.to_string() } else { value(form, l.param).unwrap_or("").to_string() },
            help: l.help,
        })
        .collect();
    let (losses, chosen) = match choice_field() {
        Some((field, param)) => (field.choices(), values(form, param)),
        None => (&[][..], Vec::new()),
    };
    let grid_errors = errors
        .iter()
        .filter(|e| e.field.starts_with("grid") || lists.iter().any(|l| l.name == e.field) || e.field == "base_toml")
        .map(ToString::to_string)
        .collect();
    let page_data = NewSweepPage {
        base: groups(state, &filled, errors, Some(&base_fields())),
        base_toml: value(form, "base_toml").unwrap_or("").to_string(),
        // A fresh form ticks the first choice (TRL's default loss).
        losses: losses
            .iter()
            .enumerate()
            .map(|(i, &(v, l))| (v, l, if fresh { i == 0 } else { chosen.iter().any(|c| c == v) }))
            .collect(),
        fixed: fresh || flag(form, "fixed"),
        trust_region: fresh || flag(form, "trust_region"),
        lists,
        grid_errors,
        summary: summary(errors),
        runs,
        limit: state.settings.max_sweep_runs,
        csrf: csrf.0.clone(),
    };
    page(status, &page_data)
}

async fn show(State(state): State<AppState>, csrf: CsrfToken) -> PageResult {
    render(&state, &csrf, &[], &[], None, StatusCode::OK)
}

async fn submit(State(state): State<AppState>, who: Identity, csrf: CsrfToken, body: String) -> PageResult {
    let form = pairs(&body);
    let (built, errors) = build(&form);
    if !errors.is_empty() {
        return render(&state, &csrf, &form, &errors, None, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let runs = crate::http::sweeps::count(&built.grid).ok();
    if value(&form, "action") == Some("count") {
        return match crate::http::sweeps::validate(&state, &built.base, &built.grid) {
            Ok((configs, _)) => render(&state, &csrf, &form, &[], Some(configs.len()), StatusCode::OK),
            Err(errors) => render(&state, &csrf, &form, &errors, runs, StatusCode::UNPROCESSABLE_ENTITY),
        };
    }
    match crate::http::sweeps::launch(&state, built.base, built.grid, &who).await {
        Ok(launched) => Ok(see_other(&format!("/sweeps/{}", launched.id))),
        Err(Error::Invalid(errors)) => render(&state, &csrf, &form, &errors, runs, StatusCode::UNPROCESSABLE_ENTITY),
        Err(e) => Err(PageError(e)),
    }
}

/// The answer of `/sweeps/new/count`.
#[derive(Debug, serde::Serialize)]
struct RunCount {
    /// Grid points, before duplicates are dropped.
    runs: usize,
    /// The server's `--max-sweep-runs`.
    limit: usize,
    errors: Vec<FieldError>,
}

/// The live "N runs" of the form as the user types.
async fn count(State(state): State<AppState>, body: String) -> Response {
    let form = pairs(&body);
    let (built, mut errors) = build(&form);
    let runs = crate::http::sweeps::count(&built.grid).unwrap_or_else(|e| {
        errors.extend(e);
        0
    });
    if runs > state.settings.max_sweep_runs {
        errors.push(FieldError::new(
            "grid",
            format!("{runs} runs is more than this server's limit ({})", state.settings.max_sweep_runs),
        ));
    }
    Json(RunCount { runs, limit: state.settings.max_sweep_runs, errors }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn fixed_reference_and_trust_region_runs_are_separate_grids() {
        let (built, errors) = build(&form(&[
            ("task", "toy-tree"),
            ("loss", "sigmoid"),
            ("loss", "ipo"),
            ("fixed", "on"),
            ("trust_region", "on"),
            ("alphas", "0.01, 0.1 0.6"),
            ("taus", "1,10"),
            ("seeds", "1 2"),
        ]));
        assert!(errors.is_empty(), "{errors:?}");
        // 2 losses × 2 seeds × (1 + 3 α × 2 τ)
        assert_eq!(crate::http::sweeps::count(&built.grid).unwrap(), 2 * 2 * (1 + 6));
        assert_eq!(built.base, json!({"task": "toy-tree"}));
    }

    #[test]
    fn bad_list_values_and_an_empty_choice_are_named() {
        let (_, errors) = build(&form(&[("alphas", "0.1, lots"), ("taus", "1.5")]));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["alphas", "taus", "grid"]);
    }
}
