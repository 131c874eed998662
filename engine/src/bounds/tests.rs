use super::*;
use serde_json::json;

const NOW: &str = "2026-12-04T12:00:00.000000Z";
const EXECUTION: &str = "0190f5a4-7d2c-7c3e-8a41-3f2b9c6d1e00";

fn result(outcome: Outcome) -> ResultMessage {
    ResultMessage {
        v: WIRE_VERSION,
        execution_id: EXECUTION.into(),
        node_id: "n".into(),
        attempt: 1,
        kind: TaskKind::Run,
        worker_id: "w1".into(),
        started_at: "2026-12-04T11:59:59.000000Z".into(),
        completed_at: "2026-12-04T12:00:00.000000Z".into(),
        duration_ms: 1000,
        deliveries: 1,
        outcome,
    }
}

fn succeeded(outputs: Value) -> ResultMessage {
    result(Outcome::Succeeded { outputs })
}

fn bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("json")
}

fn as_json(r: &ResultMessage) -> Value {
    serde_json::to_value(Message::Result(r.clone())).expect("json")
}

fn failure(r: &ResultMessage) -> (&str, &str, bool) {
    match &r.outcome {
        Outcome::Failed { error, retryable } => (error.error_type.as_str(), error.message.as_str(), *retryable),
        Outcome::Succeeded { .. } => panic!("expected a failure: {r:?}"),
    }
}

#[test]
fn a_well_formed_result_is_recorded_as_sent() {
    let sent = succeeded(json!({"total": 12.5}));
    let decoded = decode_result(&Message::Result(sent.clone()).to_bytes(), &Bounds::default(), NOW);
    assert_eq!(decoded, Ok(Decoded::AsSent(sent)));
}

#[test]
fn a_result_without_a_usable_address_is_unaddressable() {
    let cases = [
        ("execution_id", json!("not-a-uuid"), "not a UUID"),
        ("node_id", json!("x".repeat(129)), "node_id is 129 characters"),
        ("node_id", json!("a b"), "node_id contains"),
        ("attempt", json!(0), "attempt 0"),
        ("attempt", json!(u32::MAX), "attempt 4294967295"),
    ];
    for (field, value, expected) in cases {
        let mut message = as_json(&succeeded(json!({})));
        message[field] = value;
        let decoded = decode_result(&bytes(message), &Bounds::default(), NOW);
        assert!(matches!(&decoded, Err(Unaddressable(why)) if why.contains(expected)), "{field}: {decoded:?}");
    }
    for not_a_result in [b"\xff not json".to_vec(), bytes(json!({"type": "result"})), bytes(json!([1]))] {
        assert!(decode_result(&not_a_result, &Bounds::default(), NOW).is_err());
    }
    let cancel = Message::Cancel(crate::messages::CancelMessage {
        v: WIRE_VERSION,
        execution_id: EXECUTION.into(),
        node_id: "n".into(),
        attempt: 1,
    });
    let decoded = decode_result(&cancel.to_bytes(), &Bounds::default(), NOW);
    assert_eq!(decoded, Err(Unaddressable("a cancel message on the results queue".into())));
}

#[test]
fn an_addressable_result_that_cannot_be_applied_ends_its_attempt_as_invalid_result() {
    let cases = [
        ("started_at", json!("yesterday"), "started_at \"yesterday\" is not an RFC 3339 time"),
        ("completed_at", json!("2026-02-30T00:00:00Z"), "completed_at"),
        ("completed_at", json!("0001-01-01T00:00:00Z"), "completed_at"),
        ("worker_id", json!(""), "worker_id must be"),
        ("worker_id", json!("w".repeat(200)), "worker_id must be"),
        ("duration_ms", json!(u64::MAX), "duration_ms"),
        ("outcome", json!("exploded"), "undecodable message"),
        ("deliveries", json!(-1), "undecodable message"),
    ];
    for (field, value, expected) in cases {
        let mut message = as_json(&succeeded(json!({"x": 1})));
        message[field] = value;
        let Ok(Decoded::Invalid { result: decoded, .. }) = decode_result(&bytes(message), &Bounds::default(), NOW)
        else {
            panic!("{field}: not recorded as an invalid result");
        };
        let (error_type, text, retryable) = failure(&decoded);
        assert_eq!((error_type, retryable), ("invalid_result", false), "{field}");
        assert!(text.contains(expected), "{field}: {text}");
        assert_eq!((decoded.started_at.as_str(), decoded.completed_at.as_str()), (NOW, NOW), "{field}");
        assert_eq!((decoded.node_id.as_str(), decoded.attempt), ("n", 1));
    }
}

#[test]
fn a_result_deeper_than_the_decoder_accepts_still_ends_its_attempt() {
    let mut outputs = json!(1);
    for _ in 0..200 {
        outputs = json!([outputs]);
    }
    let text = format!(
        r#"{{"type":"result","v":1,"execution_id":"{EXECUTION}","node_id":"n","attempt":3,"kind":"run","worker_id":"w9","outcome":"succeeded","outputs":{}}}"#,
        outputs
    );
    let Ok(Decoded::Invalid { result: decoded, .. }) = decode_result(text.as_bytes(), &Bounds::default(), NOW) else {
        panic!("not recorded as an invalid result");
    };
    assert_eq!(failure(&decoded).0, "invalid_result");
    assert_eq!((decoded.attempt, decoded.worker_id.as_str()), (3, "w9"));
}

#[test]
fn outputs_over_a_limit_fail_the_attempt_naming_the_limit() {
    let bounds = Bounds { max_output_bytes: 100, max_json_depth: 3 };
    let exactly = json!({"s": "x".repeat(100 - r#"{"s":""}"#.len())});
    assert_eq!(compact_len(&exactly), 100);
    assert_eq!(bounded(succeeded(exactly.clone()), &bounds), succeeded(exactly));
    let over = bounded(succeeded(json!({"s": "x".repeat(100)})), &bounds);
    let (error_type, text, retryable) = failure(&over);
    assert_eq!((error_type, retryable), ("output_too_large", false));
    assert!(text.contains("108 bytes; the limit is 100 (GL_ORCHESTRATOR_MAX_NODE_OUTPUT_BYTES)"), "{text}");
    let deep = bounded(succeeded(json!({"a": {"b": {"c": [1]}}})), &bounds);
    assert!(failure(&deep).1.contains("nest 4 levels deep; the limit is 3 (GL_ORCHESTRATOR_MAX_JSON_DEPTH)"));
    let at_depth = succeeded(json!({"a": {"b": [1]}}));
    assert_eq!(bounded(at_depth.clone(), &bounds), at_depth);
    let nul = bounded(succeeded(json!({"k": "a\u{0}b"})), &Bounds::default());
    assert_eq!(failure(&nul).0, "invalid_output");
}

#[test]
fn error_texts_are_cut_and_lose_nul_characters() {
    let long = "é".repeat(MAX_ERROR_TEXT_BYTES);
    let sent = result(Outcome::Failed { error: NodeError::new("Bad\u{0}Type", long), retryable: true });
    let kept = bounded(sent, &Bounds::default());
    let (error_type, text, retryable) = failure(&kept);
    assert_eq!((error_type, retryable), ("BadType", true));
    assert!(text.len() <= MAX_ERROR_TEXT_BYTES && text.len() > MAX_ERROR_TEXT_BYTES - 2, "{}", text.len());
}

#[test]
fn depth_counts_containers() {
    assert_eq!(shape(&json!(1)).depth, 0);
    assert_eq!(shape(&json!({})).depth, 1);
    assert_eq!(shape(&json!([[1], {"a": {"b": []}}])), Shape { depth: 4, has_nul: false });
    assert!(shape(&json!([{"k\u{0}": 1}])).has_nul && shape(&json!(["a\u{0}"])).has_nul);
}
