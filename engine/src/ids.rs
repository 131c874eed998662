//! Identifiers that can only be constructed valid.
//!
//! Node, DAG, agent and queue ids share one alphabet, `^[A-Za-z0-9_.:-]{1,128}$` (the earlier
//! schema stores them in `VARCHAR(128)`). Keeping the alphabet narrow means an id is always safe in
//! a log line, a Redis key, a queue name, a URL path segment and a Mermaid label.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest id accepted, in bytes (the alphabet is ASCII, so bytes are characters).
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long; the limit is 128")]
    TooLong(usize),
    #[error("contains {0:?}; only letters, digits and _ . : - are allowed")]
    BadChar(char),
}

/// Checks `s` against the id alphabet.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(c) = s.chars().find(|c| !is_id_char(*c)) {
        return Err(IdError::BadChar(c));
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    Ok(())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses `s`, which must match the id alphabet.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a string already checked by [`check_id`], or one that is thrown away when
            /// the check that failed is reported.
            #[allow(dead_code)]
            pub(crate) fn trusted(s: String) -> Self {
                Self(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_id(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_newtype!(
    /// The id of a node within one DAG.
    NodeId
);
id_newtype!(
    /// The id of a stored DAG definition.
    DagId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet() {
        for ok in ["a", "A-1", "scope1_agent", "dag:x.y-z", &"x".repeat(128)] {
            assert!(NodeId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let cases = [
            ("", IdError::Empty),
            ("../etc", IdError::BadChar('/')),
            ("a b", IdError::BadChar(' ')),
            ("a\u{200b}", IdError::BadChar('\u{200b}')),
            ("a\u{202e}b", IdError::BadChar('\u{202e}')),
            ("a\0", IdError::BadChar('\0')),
            ("é", IdError::BadChar('é')),
        ];
        for (input, want) in cases {
            assert_eq!(NodeId::parse(input), Err(want), "{input:?}");
        }
        assert_eq!(NodeId::parse(&"x".repeat(129)), Err(IdError::TooLong(129)));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: NodeId = serde_json::from_str("\"load\"").expect("valid id");
        assert_eq!(id.as_str(), "load");
        assert!(serde_json::from_str::<NodeId>("\"a/b\"").is_err());
    }
}
