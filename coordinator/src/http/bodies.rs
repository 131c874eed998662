//! Request bodies as types: what each operation accepts, read by serde, unknown fields refused
//! (`deny_unknown_fields`) instead of checked by hand. A body that does not fit answers 400 with
//! serde's own words (which field, which type). The OpenAPI document's schemas of these bodies
//! are generated from the same types ([`body_schema`]), so the two cannot disagree.

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::ApiResult;
use crate::problem::ApiError;

/// `POST /dags/{dag_id}/execute`. An empty body is the same as `{}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecuteRequest {
    /// The execution's input: a JSON object (checked after reading, to name the field).
    #[serde(default = "empty_object")]
    #[schemars(with = "Map<String, Value>")]
    pub input_data: Value,
    /// Kept as given (part of the idempotency hash): `priority` (integer) and `clock` (RFC 3339,
    /// the execution's logical time) are read from it, anything else is stored for the record.
    #[serde(default = "empty_object")]
    #[schemars(with = "ExecutionOptions")]
    pub execution_options: Value,
}

/// What `execution_options` may say (other fields are kept, not read). Only its schema is used:
/// the options are stored as given.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ExecutionOptions {
    /// Higher first among waiting executions.
    #[serde(default)]
    priority: i32,
    /// The execution's logical clock, handed to agents instead of the wall clock (default: now).
    #[serde(default)]
    #[schemars(extend("format" = "date-time"))]
    clock: String,
}

impl Default for ExecuteRequest {
    fn default() -> Self {
        Self { input_data: empty_object(), execution_options: empty_object() }
    }
}

/// `POST /dags/import`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportRequest {
    /// The DAG as YAML.
    pub yaml_content: String,
}

fn empty_object() -> Value {
    json!({})
}

/// The JSON Schema (2020-12, the dialect of OpenAPI 3.1) of a request or response body type.
/// Subschemas are inlined: a `$ref` into the body's own `$defs` would not resolve once the schema
/// sits under `components.schemas`.
pub(super) fn body_schema<T: JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true);
    let mut schema = settings.into_generator().into_root_schema_for::<T>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
}

/// Reads a JSON body as `T`; what is not JSON, and what does not fit `T`, are told apart.
pub(super) fn read<T: DeserializeOwned>(text: &str, what: &str) -> ApiResult<T> {
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::BadRequest(format!("invalid JSON: {e}"))
        }
        _ => ApiError::BadRequest(format!("{what}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_wrong_types_are_refused_with_their_name() {
        let unknown = read::<ExecuteRequest>(r#"{"inputs": {}}"#, "the execute request").expect_err("unknown");
        assert!(matches!(&unknown, ApiError::BadRequest(m) if m.contains("unknown field `inputs`")), "{unknown:?}");
        let missing = read::<ImportRequest>("{}", "the import request").expect_err("missing");
        assert!(matches!(&missing, ApiError::BadRequest(m) if m.contains("missing field `yaml_content`")));
        let syntax = read::<ImportRequest>("{", "the import request").expect_err("syntax");
        assert!(matches!(&syntax, ApiError::BadRequest(m) if m.starts_with("invalid JSON")));
        let given: ExecuteRequest = read(r#"{"input_data": {"a": 1}}"#, "the execute request").expect("fits");
        assert_eq!((given.input_data, given.execution_options), (json!({"a": 1}), json!({})));
    }

    #[test]
    fn the_schemas_say_what_serde_reads() {
        let execute = body_schema::<ExecuteRequest>();
        assert_eq!(execute["additionalProperties"], false, "{execute}");
        assert_eq!(execute["properties"]["input_data"]["type"], "object", "{execute}");
        let clock = &execute["properties"]["execution_options"]["properties"]["clock"];
        assert_eq!(
            (clock["type"].clone(), clock["format"].clone()),
            (json!("string"), json!("date-time")),
            "{execute}"
        );
        assert!(execute.get("required").is_none(), "both fields have defaults: {execute}");
        let import = body_schema::<ImportRequest>();
        assert_eq!(
            (import["required"].clone(), import["additionalProperties"].clone()),
            (json!(["yaml_content"]), json!(false))
        );
        for schema in [&execute, &import] {
            assert!(!schema.to_string().contains("$ref") && schema.get("$schema").is_none(), "{schema}");
        }
    }
}
