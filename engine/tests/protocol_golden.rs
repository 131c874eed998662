//! The golden messages of `docs/protocol.md` (`docs/protocol/*.json`) are what this code reads and
//! writes: each decodes, encodes back to the same JSON, and a result is recorded exactly as sent;
//! each message of `docs/protocol/invalid/` gets the classification the document gives it.

use std::path::PathBuf;

use engine::bounds::{Bounds, Decoded, Unaddressable, decode_result};
use engine::messages::Message;
use engine::state::Outcome;
use serde_json::Value;

const NOW: &str = "2026-12-04T12:00:00.000000Z";

fn protocol_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol")
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_golden_message_round_trips_and_results_are_recorded_as_sent() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(protocol_dir()).expect("docs/protocol") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = read(&path);
        let message = Message::from_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let written: Value = serde_json::from_slice(&message.to_bytes()).expect("json");
        let golden: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(written, golden, "{} encodes back to itself", path.display());
        if let Message::Result(result) = &message {
            let recorded = decode_result(&bytes, &Bounds::default(), NOW);
            assert_eq!(recorded, Ok(Decoded::AsSent(result.clone())), "{} is recorded as sent", path.display());
        }
        seen.push(message.type_name());
    }
    seen.sort_unstable();
    assert_eq!(seen, ["cancel", "result", "result", "result", "task"], "the documented examples");
}

/// `docs/protocol.md`, "What the coordinator does with a result it cannot apply".
#[test]
fn every_invalid_golden_message_gets_its_documented_classification() {
    let expected = [
        ("attempt-zero.json", "unaddressable"),
        ("execution-not-a-uuid.json", "unaddressable"),
        ("bad-time.json", "invalid_result"),
        ("unknown-outcome.json", "invalid_result"),
        ("other-version.json", "invalid_result"),
    ];
    let dir = protocol_dir().join("invalid");
    let files = std::fs::read_dir(&dir).expect("docs/protocol/invalid").count();
    assert_eq!(files, expected.len(), "every invalid example has its expectation here");
    for (file, classification) in expected {
        let got = match decode_result(&read(&dir.join(file)), &Bounds::default(), NOW) {
            Err(Unaddressable(_)) => "unaddressable",
            Ok(Decoded::AsSent(r)) => panic!("{file}: recorded as sent: {r:?}"),
            Ok(Decoded::Invalid { result: r, .. }) => match r.outcome {
                Outcome::Failed { error, retryable: false } if error.error_type == "invalid_result" => "invalid_result",
                other => panic!("{file}: recorded as {other:?}"),
            },
        };
        assert_eq!(got, classification, "{file}");
    }
}
