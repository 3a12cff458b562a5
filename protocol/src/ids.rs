//! Ids of the standard families' entities: 32 lowercase hex digits (a UUIDv7 without
//! hyphens, the shape MLflow gives run ids), checked when decoded.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an id: ids are 32 lowercase hex digits")]
pub struct IdError(pub String);

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// A new id: a UUIDv7, so ids sort by creation time.
            pub fn new() -> Self {
                Self::from_uuid(uuid::Uuid::now_v7())
            }

            /// The id of a UUID.
            pub fn from_uuid(u: uuid::Uuid) -> Self {
                let mut out = [0u8; 32];
                u.simple().encode_lower(&mut out);
                Self(out)
            }

            /// Parses 32 lowercase hex digits.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let b = s.as_bytes();
                if b.len() != 32 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(IdError(s.chars().take(64).collect()));
                }
                let mut out = [0u8; 32];
                out.copy_from_slice(b);
                Ok(Self(out))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                // Only ASCII hex digits are ever stored.
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A run (tracking/1).
    RunId
);
hex_id!(
    /// An experiment (tracking/1).
    ExperimentId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_shapes() {
        let id = RunId::new();
        assert_eq!(RunId::parse(id.as_str()), Ok(id));
        assert_eq!(id.as_str().len(), 32);
        for bad in [
            "",
            "x",
            &"A".repeat(32),
            &"0".repeat(31),
            &"0".repeat(33),
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
        let bytes = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(rmp_serde::from_slice::<RunId>(&bytes).unwrap(), id);
        assert!(rmp_serde::from_slice::<RunId>(&rmp_serde::to_vec("nope").unwrap()).is_err());
    }
}
