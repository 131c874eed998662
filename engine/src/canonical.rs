//! RFC 8785 (JCS) canonical JSON and the SHA-256 content hashes built on it.
//!
//! Every content hash in the system goes through [`content_hash`]. `serde_json::to_string` is
//! not canonical (key order, number formatting), and any crate in the build could switch on
//! serde_json's `preserve_order`, so this module sorts keys itself and formats every number as
//! ECMAScript does (via `ryu-js`), exactly as RFC 8785 prescribes:
//!
//! - object members sorted by the UTF-16 code units of their names;
//! - strings with only `\"`, `\\`, `\b \f \n \r \t` and `\u00xx` (lower-case) escapes;
//! - numbers as IEEE doubles in the shortest round-trip form (`1.0` is `1`, `1e21` is `1e+21`);
//! - no insignificant white space.
//!
//! A differential property test checks this writer against the `serde_json_canonicalizer` crate.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A SHA-256 digest as 64 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash(String);

/// The text is not 64 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a content hash is 64 lower-case hex characters")]
pub struct BadHash;

impl ContentHash {
    pub fn parse(s: &str) -> Result<Self, BadHash> {
        let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok { Ok(Self(s.to_owned())) } else { Err(BadHash) }
    }

    /// SHA-256 of raw bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContentHash {
    type Error = BadHash;
    fn try_from(s: String) -> Result<Self, BadHash> {
        Self::parse(&s)
    }
}

impl From<ContentHash> for String {
    fn from(h: ContentHash) -> String {
        h.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value could not be turned into JSON (for example a map with non-string keys).
#[derive(Debug, thiserror::Error)]
#[error("cannot canonicalise value: {0}")]
pub struct CanonicalError(#[from] serde_json::Error);

/// The RFC 8785 canonical JSON text of `value`.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<String, CanonicalError> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_canonical(&mut out, &value);
    // Only valid UTF-8 is written: string contents are copied whole, everything else is ASCII.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// SHA-256 over the canonical JSON of `value`.
pub fn content_hash<T: Serialize>(value: &T) -> Result<ContentHash, CanonicalError> {
    Ok(value_hash(&serde_json::to_value(value)?))
}

/// SHA-256 over the canonical JSON of a JSON value (cannot fail).
pub fn value_hash(value: &Value) -> ContentHash {
    let mut out = Vec::with_capacity(256);
    write_canonical(&mut out, value);
    ContentHash::of_bytes(&out)
}

/// Bytes of the value as compact JSON, counted without building the text.
pub fn compact_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail: string keys only, finite numbers only.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Appends the canonical form of `value` to `out`.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // JSON numbers are doubles; a serde_json Number is always finite.
            let mut buffer = ryu_js::Buffer::new();
            out.extend_from_slice(buffer.format_finite(n.as_f64().unwrap_or(0.0)).as_bytes());
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, item);
            }
            out.push(b'}');
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn key_order_and_numbers_are_canonical() {
        // RFC 8785 section 3.2.2/3.2.3 examples: keys sorted by UTF-16 code units, shortest numbers.
        let v = json!({"b": 1.0, "a": [1e21, 0.000001, -0.0], "\u{20ac}": "x", "\r": 2});
        let text = canonical_json(&v).expect("canonical");
        assert_eq!(text, r#"{"\r":2,"a":[1e+21,0.000001,0],"b":1,"€":"x"}"#);
    }

    #[test]
    fn hash_ignores_insertion_order() {
        let a = json!({"x": 1, "y": {"p": true, "q": null}});
        let b: serde_json::Value = serde_json::from_str(r#"{"y":{"q":null,"p":true},"x":1}"#).expect("json");
        assert_eq!(content_hash(&a).expect("hash"), content_hash(&b).expect("hash"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            (-1e25f64..1e25).prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x7f\u{80}-\u{ffff}\u{10000}-\u{10ffff}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn matches_the_reference_implementation(value in arb_json()) {
            let ours = canonical_json(&value).expect("canonical");
            let reference = serde_json_canonicalizer::to_string(&value).expect("reference");
            prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn control_characters_and_astral_keys() {
        let v = json!({"\u{1f600}": 1, "\u{e000}": 2, "s": "\u{0}\u{1f}\u{7f}\u{2028}\"\\\u{8}\u{c}\n\r\t"});
        let ours = canonical_json(&v).expect("canonical");
        assert_eq!(ours, serde_json_canonicalizer::to_string(&v).expect("reference"));
        assert!(ours.starts_with("{\"s\""), "{ours}");
    }

    #[test]
    fn known_digest() {
        // sha256("{}")
        let h = content_hash(&json!({})).expect("hash");
        assert_eq!(h.as_str(), "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert!(ContentHash::parse(h.as_str()).is_ok());
        assert_eq!(ContentHash::parse("ABC"), Err(BadHash));
    }
}
