//! `/api/openapi.json`, built from the types: every request and answer body schema comes from
//! the Rust type the handler takes or answers (`schemars`), and the run config's from the
//! trainer's one description of its keys ([`trainer::config::fields`]). `openapi.json` holds
//! only what no type says: each operation's summary, parameters, error statuses and links.

use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use schemars::{json_schema, JsonSchema, Schema};
use serde::Serialize;
use serde_json::{json, Map, Value};
use trainer::config::fields::{self, FIELDS};

use super::checkpoints::CheckpointList;
use super::datasets::{DatasetList, DatasetView};
use super::metrics::MetricsAnswer;
use super::models::ModelList;
use super::runs::{CancelAnswer, CloneAnswer, Created, RetryAnswer, RunDetail, RunList};
use super::sweeps::{SweepCreated, SweepView};
use super::workers::WorkerList;

/// The operations' summaries, parameters, error statuses and links.
const SKELETON: &str = include_str!("openapi.json");

/// An error answer: `{"error", "fields"}` (every error status).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    /// What went wrong, in words. A 5xx says only `internal error <id>`: the log has the details
    /// under that id.
    pub error: String,
    /// Every offending field (`(body)`, `(config)` or a config key); empty when no field is at fault.
    #[schemars(schema_with = "field_errors")]
    pub fields: Vec<trainer::error::FieldError>,
}

/// Each operation's JSON answer: (method, path, status, the schema of its body).
type Answer = (&'static str, &'static str, &'static str, fn(&mut SchemaGenerator) -> Schema);

const ANSWERS: &[Answer] = &[
    ("post", "/api/runs", "201", |g| g.subschema_for::<Created>()),
    ("get", "/api/runs", "200", |g| g.subschema_for::<RunList>()),
    ("get", "/api/runs/{id}", "200", |g| g.subschema_for::<RunDetail>()),
    ("post", "/api/runs/{id}/cancel", "200", |g| g.subschema_for::<CancelAnswer>()),
    ("post", "/api/runs/{id}/retry", "200", |g| g.subschema_for::<RetryAnswer>()),
    ("post", "/api/runs/{id}/retry", "201", |g| g.subschema_for::<RetryAnswer>()),
    ("post", "/api/runs/{id}/clone", "201", |g| g.subschema_for::<CloneAnswer>()),
    ("post", "/api/sweeps", "201", |g| g.subschema_for::<SweepCreated>()),
    ("get", "/api/sweeps/{id}", "200", |g| g.subschema_for::<SweepView>()),
    ("get", "/api/runs/{id}/metrics", "200", |g| g.subschema_for::<MetricsAnswer>()),
    ("get", "/api/runs/{id}/checkpoints", "200", |g| g.subschema_for::<CheckpointList>()),
    ("get", "/api/models", "200", |g| g.subschema_for::<ModelList>()),
    ("get", "/api/datasets", "200", |g| g.subschema_for::<DatasetList>()),
    ("get", "/api/workers", "200", |g| g.subschema_for::<WorkerList>()),
    ("post", "/api/datasets", "201", |g| g.subschema_for::<DatasetView>()),
];

/// The JSON request bodies: (method, path, the schema's component name).
const REQUESTS: &[(&str, &str, &str)] = &[
    ("post", "/api/runs", "RunConfig"),
    ("post", "/api/runs/{id}/clone", "RunConfig"),
    ("post", "/api/sweeps", "Sweep"),
    ("post", "/api/runs/{id}/retry", "Retry"),
];

/// The whole document. On a server with sign-in (`with_auth`: `--auth-token` or users) every
/// route but the document itself asks for a bearer token and may answer 401; without, none does.
pub fn document(with_auth: bool) -> Value {
    let mut doc: Value = serde_json::from_str(SKELETON).expect("openapi.json is JSON (a unit test parses it)");
    let mut generator = SchemaSettings::openapi3()
        .with(|s| {
            s.contract = Contract::Serialize;
        })
        .into_generator();
    let error = generator.subschema_for::<ErrorBody>();
    let answers: Vec<(&Answer, Schema)> = ANSWERS.iter().map(|a| (a, (a.3)(&mut generator))).collect();
    let mut schemas = generator.take_definitions(true);
    schemas.insert("RunConfig".into(), fields::schema());
    schemas.insert("Sweep".into(), sweep_schema());
    schemas.insert(
        "Retry".into(),
        json!({
            "type": "object",
            "properties": {"from": {"type": "string", "enum": ["checkpoint", "start"], "default": "checkpoint",
                "description": "checkpoint: resume this run from its last checkpoint; start: a new run with its config"}},
            "additionalProperties": false,
        }),
    );
    doc["components"]["schemas"] = Value::Object(schemas);
    if let Some(shared) = doc["components"]["responses"].as_object_mut() {
        for response in shared.values_mut() {
            response["content"] = json!({ "application/json": { "schema": error.clone() } });
        }
    }
    let paths = doc["paths"].as_object_mut().expect("openapi.json has paths");
    for ((method, path, status, _), schema) in answers {
        let response = &mut paths[*path][*method]["responses"][*status];
        response["content"]["application/json"] = json!({ "schema": schema });
    }
    for (method, path, name) in REQUESTS {
        let content = &mut paths[*path][*method]["requestBody"]["content"]["application/json"];
        content["schema"] = json!({ "$ref": format!("#/components/schemas/{name}") });
    }
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut().filter(|o| o.get("responses").is_some()) {
            if with_auth && path != "/api/openapi.json" {
                operation["security"] = json!([{ "bearer": [] }]);
                operation["responses"]["401"] = json!({ "$ref": "#/components/responses/Unauthorized" });
            }
        }
    }
    for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()) {
        let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { continue };
        for (status, response) in responses.iter_mut() {
            let is_error = status.starts_with('4') || status.starts_with('5');
            if is_error && response.get("$ref").is_none() {
                response["content"] = json!({ "application/json": { "schema": error.clone() } });
            }
        }
        if !with_auth {
            responses.remove("401");
            if let Some(op) = operation.as_object_mut() {
                op.remove("security");
            }
        }
    }
    doc
}

/// `POST /api/sweeps`: a base config and a grid whose keys are config keys, each taking one
/// value or a non-empty list of values (the trainer's expander: [`trainer::sweep`]).
fn sweep_schema() -> Value {
    let grid_keys: Map<String, Value> = FIELDS
        .iter()
        .map(|f| {
            let one = f.schema();
            let many = json!({ "type": "array", "items": one, "minItems": 1 });
            (f.name.to_string(), json!({ "oneOf": [one, many] }))
        })
        .collect();
    let grid = json!({ "type": "object", "properties": grid_keys, "additionalProperties": false });
    json!({
        "type": "object",
        "description": "Every combination of each grid's values over the base config; a list of grids is the union of their combinations. A single value is a one-element list; grid points that give the same run config run once (the answer's duplicates_dropped counts them). Without a grid, the base config is the one run.",
        "properties": {
            "base": { "$ref": "#/components/schemas/RunConfig" },
            "grid": { "oneOf": [grid.clone(), { "type": "array", "items": grid }] },
        },
        "additionalProperties": false,
    })
}

/// `status`: one of the run states.
pub fn run_status(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["queued", "running", "finished", "failed", "cancelled"] })
}

/// A stored run config (the `RunConfig` component, from the trainer's description).
pub fn run_config(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "$ref": "#/components/schemas/RunConfig" })
}

pub fn model_kind(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["causal_lm", "sequence_classification"], "nullable": true })
}

pub fn dataset_format(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["jsonl", "parquet"], "nullable": true })
}

pub fn dataset_kind(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "properties": {
            "type": { "type": "string", "enum": ["preference", "implicit_prompt_preference", "unpaired_preference"] },
            "conversational": { "type": "boolean" },
        },
        "required": ["type", "conversational"],
    })
}

/// `{name: [[step, value], ...]}`: a value is `null` where it was not finite.
pub fn metric_series(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "array",
            "items": { "type": "array", "items": { "type": "number", "nullable": true }, "minItems": 2, "maxItems": 2 },
        },
    })
}

fn field_errors(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": { "field": { "type": "string" }, "message": { "type": "string" } },
            "required": ["field", "message"],
        },
    })
}
