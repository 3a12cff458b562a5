//! The closed table of status codes carried by every reply.
//!
//! Numbers follow gRPC where gRPC has the same meaning; mlmesh's own codes start at 100.
//! A receiver that meets a number it does not know treats it as [`Code::Unknown`].

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $num:literal, $name:literal, $retry:literal;)*) => {
        /// A standard status code. See SPEC.md, "Status codes".
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The wire number.
            pub const fn as_u16(self) -> u16 {
                match self { $(Code::$variant => $num,)* }
            }

            /// The code for a wire number; unknown numbers become [`Code::Unknown`].
            pub const fn from_u16(n: u16) -> Code {
                match n { $($num => Code::$variant,)* _ => Code::Unknown }
            }

            /// The standard name, e.g. `NOT_FOUND`.
            pub const fn name(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// The code for a standard name.
            pub fn from_name(name: &str) -> Option<Code> {
                match name { $($name => Some(Code::$variant),)* _ => None }
            }

            /// Whether the same request may succeed if sent again unchanged
            /// (later, or to another provider).
            pub const fn is_retryable(self) -> bool {
                match self { $(Code::$variant => $retry,)* }
            }
        }
    };
}

codes! {
    /// Success.
    Ok = 0, "OK", false;
    /// The call ended before its outcome was known: the caller gave up, or the connection
    /// was lost after the request was sent (the instruction may or may not have run).
    Cancelled = 1, "CANCELLED", false;
    /// An error with no better code, including numbers this version does not know.
    Unknown = 2, "UNKNOWN", false;
    /// The payload or a field of it is malformed or out of range; `field` names it.
    InvalidArgument = 3, "INVALID_ARGUMENT", false;
    /// The deadline passed before a reply arrived.
    DeadlineExceeded = 4, "DEADLINE_EXCEEDED", true;
    /// The named thing does not exist.
    NotFound = 5, "NOT_FOUND", false;
    /// The thing to create exists already.
    AlreadyExists = 6, "ALREADY_EXISTS", false;
    /// The caller is known but not allowed to do this.
    PermissionDenied = 7, "PERMISSION_DENIED", false;
    /// A bounded resource (concurrency, queue, quota) is full; retry later or elsewhere.
    ResourceExhausted = 8, "RESOURCE_EXHAUSTED", true;
    /// The system is not in a state where this can be done (e.g. the run has ended).
    FailedPrecondition = 9, "FAILED_PRECONDITION", false;
    /// The receiving node does not serve this topic's instruction.
    Unimplemented = 12, "UNIMPLEMENTED", false;
    /// A bug or an unexpected failure inside the provider.
    Internal = 13, "INTERNAL", false;
    /// The provider cannot serve now (shutting down, backend down); the request was not executed.
    Unavailable = 14, "UNAVAILABLE", true;
    /// The message carries no valid credentials.
    Unauthenticated = 16, "UNAUTHENTICATED", false;
    /// The message is larger than the receiver's limit.
    TooLarge = 100, "TOO_LARGE", false;
    /// No live node in the mesh serves this instruction.
    NoResponders = 101, "NO_RESPONDERS", true;
    /// The envelope's protocol version is not one the receiver speaks.
    VersionMismatch = 102, "VERSION_MISMATCH", false;
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Code::from_u16(u16::deserialize(d)?))
    }
}

/// The outcome carried by a reply: OK, or an error with a code, a message and,
/// where one input is to blame, the offending field (a path such as `metrics[3].key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The status code.
    pub code: Code,
    /// A human-readable explanation; empty for OK.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The offending field of the request, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Status {
    /// The OK status.
    pub const fn ok() -> Self {
        Self {
            code: Code::Ok,
            message: String::new(),
            field: None,
        }
    }

    /// An error status.
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Whether this is OK.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_is_closed() {
        for &code in Code::ALL {
            assert_eq!(Code::from_u16(code.as_u16()), code);
            assert_eq!(Code::from_name(code.name()), Some(code));
        }
        assert_eq!(Code::from_u16(9999), Code::Unknown);
        let retryable: Vec<_> = Code::ALL.iter().filter(|c| c.is_retryable()).collect();
        assert_eq!(
            retryable,
            [
                &Code::DeadlineExceeded,
                &Code::ResourceExhausted,
                &Code::Unavailable,
                &Code::NoResponders
            ]
        );
    }

    #[test]
    fn display_names_the_field() {
        let s = Status::error(Code::InvalidArgument, "key too long").with_field("params.0.key");
        assert_eq!(
            s.to_string(),
            "INVALID_ARGUMENT: key too long (field `params.0.key`)"
        );
    }
}
