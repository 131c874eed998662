//! Authenticated results: a worker signs each result's exact body bytes with HMAC-SHA256 (RFC
//! 2104) under a key id, in the message header [`MAC_HEADER`] (`<key id>:<hex>`); a coordinator
//! accepts a result only if the MAC verifies under one of the ids it holds. Several ids are held at
//! once so that keys rotate without downtime: add the new key everywhere, move the workers' signing
//! key to it (the first listed), then drop the old one.
//!
//! The keys (`GL_ORCHESTRATOR_RESULT_KEYS`, `id:secret,...`) are the workers' role: whoever holds
//! one can sign results, so a party that can only publish to the broker cannot. Tasks and cancels
//! are not signed in this version (a worker that verified them with a shared key could also forge
//! them); the broker's per-role permissions keep workers from publishing those.
//!
//! Pure: HMAC is written out over the core's SHA-256, compared in constant time.

use sha2::{Digest, Sha256};

/// The message header that carries a result's MAC.
pub const MAC_HEADER: &str = "gl-mac";

/// Shortest secret accepted, in bytes (HMAC-SHA256's own output length).
pub const MIN_SECRET_BYTES: usize = 32;

/// The result keys a process holds: the first signs, every one verifies.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish_non_exhaustive()
    }
}

/// Why a result's MAC was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the result carries no {MAC_HEADER} header")]
    Unsigned,
    #[error("the {MAC_HEADER} header is not <key id>:<hex>")]
    Malformed,
    #[error("key id {0:?} is not one this coordinator accepts")]
    UnknownKey(String),
    #[error("the MAC does not match the body")]
    Mismatch,
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Malformed | Refusal::Mismatch => "bad_mac",
            Refusal::UnknownKey(_) => "unknown_key",
        }
    }
}

impl Keyring {
    /// Parses `id:secret,id:secret` (ids in the id alphabet, secrets of at least
    /// [`MIN_SECRET_BYTES`] bytes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, secret) = entry.split_once(':').ok_or("each key is <id>:<secret>")?;
            crate::ids::check_id(id).map_err(|e| format!("key id {e}"))?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!("the secret of key {id} is shorter than {MIN_SECRET_BYTES} bytes"));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(format!("key id {id} is listed twice"));
            }
            keys.push((id.to_owned(), secret.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            return Err("no key listed".to_owned());
        }
        Ok(Self { keys })
    }

    /// The header value for `body`, signed with the first key.
    pub fn sign(&self, body: &[u8]) -> String {
        let (id, secret) = &self.keys[0];
        format!("{id}:{}", hex::encode(hmac_sha256(secret, body)))
    }

    /// Whether `header` (the [`MAC_HEADER`] value, if any) authenticates `body`.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> Result<(), Refusal> {
        let (id, mac) = header.ok_or(Refusal::Unsigned)?.split_once(':').ok_or(Refusal::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| Refusal::Malformed)?;
        let (_, secret) =
            self.keys.iter().find(|(known, _)| known == id).ok_or_else(|| Refusal::UnknownKey(id.to_owned()))?;
        let expected = hmac_sha256(secret, body);
        // Every byte is compared, so the time taken does not say how much of a guess was right.
        let differ =
            mac.len() != expected.len() || mac.iter().zip(expected.iter()).fold(0u8, |d, (a, b)| d | (a ^ b)) != 0;
        if differ { Err(Refusal::Mismatch) } else { Ok(()) }
    }
}

/// HMAC-SHA256 (RFC 2104 with SHA-256's 64-byte block).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 1 and 6 (a key longer than the block).
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(hex::encode(mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    const OLD: &str = "k1:0123456789abcdef0123456789abcdef";
    const NEW: &str = "k2:fedcba9876543210fedcba9876543210";

    #[test]
    fn a_result_verifies_under_any_held_key_and_nothing_else_passes() {
        let worker = Keyring::parse(NEW).expect("keys");
        let coordinator = Keyring::parse(&format!("{OLD},{NEW}")).expect("keys");
        let body = br#"{"type":"result"}"#;
        let header = worker.sign(body);
        assert!(header.starts_with("k2:"));
        assert_eq!(coordinator.verify(body, Some(&header)), Ok(()), "rotation: the new key is accepted beside the old");
        assert_eq!(coordinator.verify(b"{\"type\":\"result\",\"x\":1}", Some(&header)), Err(Refusal::Mismatch));
        assert_eq!(coordinator.verify(body, None), Err(Refusal::Unsigned));
        assert_eq!(coordinator.verify(body, Some("k2")), Err(Refusal::Malformed));
        assert_eq!(coordinator.verify(body, Some("k2:zz")), Err(Refusal::Malformed));
        assert_eq!(coordinator.verify(body, Some(&format!("{header}00"))), Err(Refusal::Mismatch));
        let stranger = Keyring::parse("k9:0123456789abcdef0123456789abcdef").expect("keys").sign(body);
        assert_eq!(coordinator.verify(body, Some(&stranger)), Err(Refusal::UnknownKey("k9".into())));
        let forged = Keyring::parse("k2:a-different-secret-of-32-bytes!!").expect("keys").sign(body);
        assert_eq!(coordinator.verify(body, Some(&forged)), Err(Refusal::Mismatch), "the right id, the wrong secret");
    }

    #[test]
    fn keyrings_are_validated_and_never_print_secrets() {
        for bad in ["", "k1", "k1:short", "bad id:0123456789abcdef0123456789abcdef", &format!("{OLD},{OLD}")] {
            assert!(Keyring::parse(bad).is_err(), "{bad:?}");
        }
        let shown = format!("{:?}", Keyring::parse(OLD).expect("keys"));
        assert!(shown.contains("k1") && !shown.contains("0123456789abcdef"), "{shown}");
    }
}
