//! Whether an answer fits the schema the OpenAPI document gives it: the keywords the generated
//! schemas use (`type`, `properties`, `required`, `items`, `enum`, `const`, `anyOf`/`oneOf`), and
//! no key that the schema does not name. A small checker of our own, because the point is to
//! compare what a handler serves with what the document says, not to validate JSON Schema at large.

use serde_json::Value;

/// Panics with every mismatch if `value` does not fit `components.schemas[name]` of `doc`.
pub fn assert_fits(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "the document has a schema {name}");
    let mut problems = Vec::new();
    check(schema, value, "$", &mut problems);
    assert!(problems.is_empty(), "the answer does not fit {name}: {problems:#?}\n{value:#}");
}

fn check(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            problems.push(format!("{at}: nothing may be here"));
        }
        return;
    };
    if let Some(types) = schema.get("type")
        && !types_of(types).iter().any(|t| is_of_type(value, t))
    {
        problems.push(format!("{at}: {value} is not {types}"));
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        problems.push(format!("{at}: {value} is not {constant}"));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = schema.get(key)
            && !branches.iter().any(|b| fits(b, value, at))
        {
            problems.push(format!("{at}: {value} fits no branch of {key}"));
        }
    }
    if let Value::Object(fields) = value {
        check_object(schema, fields, at, problems);
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{at}[{i}]"), problems);
        }
    }
}

fn check_object(
    schema: &serde_json::Map<String, Value>,
    fields: &serde_json::Map<String, Value>,
    at: &str,
    problems: &mut Vec<String>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            problems.push(format!("{at}: required {name} is missing"));
        }
    }
    let extra = schema.get("additionalProperties");
    for (name, field) in fields {
        let here = format!("{at}.{name}");
        match (properties.and_then(|p| p.get(name)), extra) {
            (Some(property), _) => check(property, field, &here, problems),
            (None, Some(extra)) => check(extra, field, &here, problems),
            // A closed record: a key the schema does not name is a key the document hides.
            (None, None) if properties.is_some() => problems.push(format!("{here}: not in the schema")),
            (None, None) => {}
        }
    }
}

fn fits(schema: &Value, value: &Value, at: &str) -> bool {
    let mut problems = Vec::new();
    check(schema, value, at, &mut problems);
    problems.is_empty()
}

fn types_of(types: &Value) -> Vec<&str> {
    match types {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is_of_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(schema: Value, value: Value) -> Vec<String> {
        let mut found = Vec::new();
        check(&schema, &value, "$", &mut found);
        found
    }

    #[test]
    fn a_value_that_fits_has_no_problem_and_each_kind_of_misfit_is_named() {
        let schema = json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "integer"}, "b": {"type": ["string", "null"]},
            "c": {"type": "array", "items": {"enum": ["x", "y"]}}}});
        assert!(problems(schema.clone(), json!({"a": 1, "b": null, "c": ["x"]})).is_empty());
        let misfits = [
            (json!({"b": "s"}), "required a is missing"),
            (json!({"a": "1"}), "is not"),
            (json!({"a": 1, "c": ["z"]}), "is not one of"),
            (json!({"a": 1, "d": 0}), "not in the schema"),
        ];
        for (value, expected) in misfits {
            let found = problems(schema.clone(), value.clone());
            assert!(found.iter().any(|p| p.contains(expected)), "{value}: {found:?}");
        }
        assert!(problems(json!({"anyOf": [{"type": "string"}, {"type": "null"}]}), json!(3))[0].contains("no branch"));
    }
}
