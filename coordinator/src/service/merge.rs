//! The PUT semantics of a DAG update, as a pure function over JSON documents: given fields
//! replace, `nodes` merge per node (each node's given fields replace), and `null` deletes a field
//! or a node. What the runbook's "raise one node's timeout" relies on.

use serde_json::{Map, Value};

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The patch is malformed (the caller's mistake).
    #[error("{0}")]
    BadPatch(String),
    /// The stored definition is not the object we wrote.
    #[error("{0}")]
    CorruptStored(String),
}

/// Applies `patch` to the `stored` definition of DAG `dag_id`.
pub fn merge_update(stored: &Value, patch: &Value, dag_id: &str) -> Result<Value, MergeError> {
    let (Some(base), Some(changes)) = (stored.as_object(), patch.as_object()) else {
        return Err(MergeError::BadPatch("the body must be a JSON object".into()));
    };
    let mut doc = base.clone();
    for (key, value) in changes {
        match (key.as_str(), value) {
            ("dag_id", v) if v.as_str() != Some(dag_id) => {
                return Err(MergeError::BadPatch("dag_id cannot change; it must match the path".into()));
            }
            ("nodes", Value::Object(nodes)) => {
                let target = doc.entry("nodes").or_insert_with(|| Value::Object(Map::new()));
                let target = target
                    .as_object_mut()
                    .ok_or_else(|| MergeError::CorruptStored("stored nodes are not an object".into()))?;
                merge_nodes(target, nodes)?;
            }
            ("nodes", _) => return Err(MergeError::BadPatch("nodes must be an object".into())),
            (_, Value::Null) => {
                doc.remove(key);
            }
            (_, v) => {
                doc.insert(key.clone(), v.clone());
            }
        }
    }
    Ok(Value::Object(doc))
}

fn merge_nodes(target: &mut Map<String, Value>, nodes: &Map<String, Value>) -> Result<(), MergeError> {
    for (node_id, change) in nodes {
        match change {
            Value::Null => {
                target.remove(node_id);
            }
            Value::Object(fields) => {
                let node = target.entry(node_id.clone()).or_insert_with(|| Value::Object(Map::new()));
                let node = node
                    .as_object_mut()
                    .ok_or_else(|| MergeError::CorruptStored("a stored node is not an object".into()))?;
                for (field, v) in fields {
                    if v.is_null() {
                        node.remove(field);
                    } else {
                        node.insert(field.clone(), v.clone());
                    }
                }
            }
            _ => return Err(MergeError::BadPatch(format!("nodes.{node_id} must be an object or null"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored() -> Value {
        json!({"dag_id": "d", "name": "n", "description": "old", "nodes": {
            "a": {"agent_id": "x", "timeout_policy": {"timeout_seconds": 5}, "params": {"k": 1}},
            "b": {"agent_id": "y", "depends_on": ["a"]}}})
    }

    #[test]
    fn fields_replace_nodes_merge_and_null_deletes() {
        let patch = json!({"description": null, "name": "m",
                           "nodes": {"a": {"timeout_policy": {"timeout_seconds": 600}, "params": null},
                                     "b": null, "c": {"agent_id": "z"}}});
        let merged = merge_update(&stored(), &patch, "d").expect("applies");
        assert_eq!(
            merged,
            json!({"dag_id": "d", "name": "m", "nodes": {
                "a": {"agent_id": "x", "timeout_policy": {"timeout_seconds": 600}},
                "c": {"agent_id": "z"}}})
        );
    }

    #[test]
    fn a_malformed_patch_is_the_callers_mistake_and_a_malformed_store_is_not() {
        let bad = |patch: Value| merge_update(&stored(), &patch, "d").expect_err("refused");
        assert!(matches!(bad(json!([1])), MergeError::BadPatch(_)));
        assert!(matches!(bad(json!({"dag_id": "other"})), MergeError::BadPatch(_)));
        assert!(matches!(bad(json!({"nodes": [1]})), MergeError::BadPatch(_)));
        assert!(matches!(bad(json!({"nodes": {"a": 3}})), MergeError::BadPatch(_)));
        assert_eq!(merge_update(&stored(), &json!({"dag_id": "d"}), "d").expect("same id"), stored());
        let corrupt = json!({"nodes": {"a": "not an object"}});
        let err = merge_update(&corrupt, &json!({"nodes": {"a": {"x": 1}}}), "d").expect_err("refused");
        assert!(matches!(err, MergeError::CorruptStored(_)));
    }
}
