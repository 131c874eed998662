//! Request bodies as types: what each operation accepts, read by serde, unknown fields refused
//! (`deny_unknown_fields`) instead of checked by hand. A body that does not fit answers 400 with
//! serde's own words (which field, which type).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ApiResult;
use crate::problem::ApiError;

/// `POST /dags/{dag_id}/execute`. An empty body is the same as `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecuteRequest {
    /// The execution's input: a JSON object (checked after reading, to name the field).
    #[serde(default = "empty_object")]
    pub input_data: Value,
    /// Kept as given (it is part of the idempotency hash); `priority` and `clock` are read from
    /// it, anything else is stored for the record.
    #[serde(default = "empty_object")]
    pub execution_options: Value,
}

impl Default for ExecuteRequest {
    fn default() -> Self {
        Self { input_data: empty_object(), execution_options: empty_object() }
    }
}

/// `POST /dags/import`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportRequest {
    /// The DAG as YAML.
    pub yaml_content: String,
}

fn empty_object() -> Value {
    json!({})
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
}
