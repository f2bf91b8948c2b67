//! `/runs/new`: every config field, grouped, with its default and help; errors inline next to
//! their fields with the user's input kept; a preview of the validated config as TOML and
//! JSON; `?from=<id>` clones a run with edits.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use trainer::error::FieldError;

use super::fields::{self, Group, Kind, FIELDS};
use super::{page, pairs, see_other, value, PageError, PageResult};
use crate::http::auth::Identity;
use crate::http::error::Error;
use crate::http::posted_config::prepare;
use crate::http::security::CsrfToken;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/runs/new", get(show).post(submit))
}

pub struct OptionView {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

pub struct FieldView {
    pub name: &'static str,
    /// `number`, `text`, `select` or `checkbox`.
    pub input: &'static str,
    pub value: String,
    pub checked: bool,
    pub placeholder: String,
    pub help: &'static str,
    pub error: String,
    pub options: Vec<OptionView>,
}

pub struct GroupView {
    pub id: &'static str,
    pub title: &'static str,
    pub fields: Vec<FieldView>,
}

pub struct Preview {
    pub toml: String,
    pub json: String,
}

#[derive(Template)]
#[template(path = "run_new.html")]
struct NewRunPage {
    /// The paper's methods: (id, label, selected, the values it fills as JSON for the script).
    presets: Vec<(&'static str, &'static str, bool, String)>,
    groups: Vec<GroupView>,
    parent: Option<i64>,
    /// Problems not tied to one field, and every field problem, for the summary at the top.
    summary: Vec<(String, String)>,
    preview: Option<Preview>,
    csrf: String,
}

/// The form's groups with `values` filled in and `errors` next to their fields.
pub fn groups(
    state: &AppState,
    values: &BTreeMap<String, String>,
    errors: &[FieldError],
    only: Option<&[&str]>,
) -> Vec<GroupView> {
    let settings = &state.settings;
    Group::ALL
        .into_iter()
        .map(|group| GroupView {
            id: group.id(),
            title: group.title(),
            fields: FIELDS
                .iter()
                .filter(|f| f.group == group && only.is_none_or(|names| names.contains(&f.name)))
                .map(|f| {
                    let value = values.get(f.name).cloned().unwrap_or_default();
                    let error = errors
                        .iter()
                        .filter(|e| e.field == f.name)
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ");
                    let default = fields::default_text(f.name);
                    let mut options = Vec::new();
                    let input = match f.kind {
                        Kind::Float | Kind::Int => "number",
                        Kind::Text | Kind::Labels => "text",
                        Kind::Bool => "checkbox",
                        Kind::Choice(choices) => {
                            options.push(OptionView {
                                value: String::new(),
                                label: format!("({default})"),
                                selected: value.is_empty(),
                            });
                            options.extend(choices.iter().map(|(v, label)| OptionView {
                                value: (*v).to_string(),
                                label: (*label).to_string(),
                                selected: value == *v,
                            }));
                            "select"
                        }
                        Kind::Model | Kind::Dataset => {
                            let root =
                                if f.kind == Kind::Model { &settings.models_dir } else { &settings.datasets_dir };
                            let mut names = fields::choices(root, f.kind);
                            if !value.is_empty() && !names.contains(&value) {
                                names.insert(0, value.clone());
                            }
                            options.push(OptionView {
                                value: String::new(),
                                label: "(none: toy task)".into(),
                                selected: value.is_empty(),
                            });
                            options.extend(names.into_iter().map(|n| OptionView {
                                selected: n == value,
                                label: n.clone(),
                                value: n,
                            }));
                            "select"
                        }
                    };
                    FieldView {
                        name: f.name,
                        input,
                        checked: f.kind == Kind::Bool && matches!(value.as_str(), "true" | "on" | "1"),
                        value,
                        placeholder: default,
                        help: f.help,
                        error,
                        options,
                    }
                })
                .collect(),
        })
        .filter(|g| !g.fields.is_empty())
        .collect()
}

/// The method menu: the one whose values the form holds is selected.
fn presets(values: &BTreeMap<String, String>) -> Vec<(&'static str, &'static str, bool, String)> {
    let chosen = values.get("method").cloned().unwrap_or_default();
    fields::PRESETS
        .iter()
        .map(|p| {
            let json: serde_json::Map<String, serde_json::Value> =
                p.values().into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
            (p.id, p.label, p.id == chosen, serde_json::Value::Object(json).to_string())
        })
        .collect()
}

/// Errors for the summary at the top of a form: (field id to link to, text).
pub fn summary(errors: &[FieldError]) -> Vec<(String, String)> {
    errors
        .iter()
        .map(|e| {
            let target = if fields::field(&e.field).is_some() { format!("f-{}", e.field) } else { String::new() };
            (target, e.to_string())
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct ShowQuery {
    from: Option<String>,
}

async fn show(State(state): State<AppState>, csrf: CsrfToken, Query(q): Query<ShowQuery>) -> PageResult {
    let (values, parent) = match q.from.as_deref().filter(|s| !s.is_empty()) {
        None => (BTreeMap::new(), None),
        Some(raw) => {
            let run = crate::http::runs::find(&state, raw).await?;
            let values =
                fields::form_from_config(&run.config_json(), &state.settings.models_dir, &state.settings.datasets_dir);
            (values, Some(run.id))
        }
    };
    let page_data = NewRunPage {
        presets: presets(&values),
        groups: groups(&state, &values, &[], None),
        parent,
        summary: Vec::new(),
        preview: None,
        csrf: csrf.0,
    };
    page(StatusCode::OK, &page_data)
}

async fn submit(State(state): State<AppState>, who: Identity, csrf: CsrfToken, body: String) -> PageResult {
    let mut form = pairs(&body);
    fields::apply_preset(&mut form);
    let values: BTreeMap<String, String> = form.iter().cloned().collect();
    let parent = value(&form, "parent").and_then(|p| p.parse::<i64>().ok());
    let render = |status: StatusCode, errors: Vec<FieldError>, preview: Option<Preview>| -> PageResult {
        let page_data = NewRunPage {
            presets: presets(&values),
            groups: groups(&state, &values, &errors, None),
            parent,
            summary: summary(&errors),
            preview,
            csrf: csrf.0.clone(),
        };
        page(status, &page_data)
    };
    let (config, errors) = fields::config_from_form(&form);
    if !errors.is_empty() {
        return render(StatusCode::UNPROCESSABLE_ENTITY, errors, None);
    }
    if value(&form, "action") == Some("preview") {
        return match prepare(config, &state.settings) {
            Ok((config, stored)) => {
                let preview = Preview {
                    toml: toml::to_string(&config).unwrap_or_else(|e| format!("# cannot show as TOML: {e}")),
                    json: serde_json::to_string_pretty(&stored).unwrap_or_default(),
                };
                render(StatusCode::OK, Vec::new(), Some(preview))
            }
            Err(errors) => render(StatusCode::UNPROCESSABLE_ENTITY, errors, None),
        };
    }
    match crate::http::runs::launch(&state, config, parent, &who).await {
        Ok(id) => Ok(see_other(&format!("/runs/{id}"))),
        Err(Error::Invalid(errors)) => render(StatusCode::UNPROCESSABLE_ENTITY, errors, None),
        Err(e) => Err(PageError(e)),
    }
}
