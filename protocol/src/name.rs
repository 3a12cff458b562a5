//! Standard names: topics (what a message is about) and subscription patterns.
//!
//! A topic is one to [`MAX_SEGMENTS`] lowercase segments of `[a-z0-9_]`, joined by `.`,
//! at most [`MAX_TOPIC_LEN`] bytes long. A pattern is a topic in which a segment may be
//! `*` (exactly one segment) and the last segment may be `**` (one or more segments).
//! Topics under `sys.` are reserved for the runtime.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;
/// Most segments in a topic or pattern.
pub const MAX_SEGMENTS: usize = 16;
/// The namespace reserved for the runtime's own messages.
pub const RESERVED_PREFIX: &str = "sys.";

/// Why a string is not a valid topic or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("name is {len} bytes long, the limit is {MAX_TOPIC_LEN}")]
    TooLong {
        /// The length found.
        len: usize,
    },
    /// The name has more than [`MAX_SEGMENTS`] segments.
    #[error("name has {count} segments, the limit is {MAX_SEGMENTS}")]
    TooManySegments {
        /// The number of segments found.
        count: usize,
    },
    /// A segment is empty (leading, trailing or doubled `.`).
    #[error("segment {index} is empty")]
    EmptySegment {
        /// Zero-based segment index.
        index: usize,
    },
    /// A character outside `[a-z0-9_]` (or a misplaced wildcard).
    #[error("invalid character {ch:?} at byte {at}")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// `**` somewhere other than the last segment.
    #[error("`**` may only be the last segment")]
    MisplacedGlob,
}

/// Checks the shape shared by topics and patterns; `wild` allows wildcard segments.
fn check(name: &str, wild: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    let count = name.split('.').count();
    if count > MAX_SEGMENTS {
        return Err(NameError::TooManySegments { count });
    }
    let mut offset = 0;
    for (index, segment) in name.split('.').enumerate() {
        if segment.is_empty() {
            return Err(NameError::EmptySegment { index });
        }
        let is_glob = segment == "**";
        if wild && (segment == "*" || is_glob) {
            if is_glob && index + 1 != count {
                return Err(NameError::MisplacedGlob);
            }
        } else if let Some((at, ch)) = segment
            .char_indices()
            .find(|&(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '_'))
        {
            return Err(NameError::InvalidChar {
                ch,
                at: offset + at,
            });
        }
        offset += segment.len() + 1;
    }
    Ok(())
}

/// Whether `name` is a valid topic, in one pass over its bytes. Every received message
/// has its topic validated, and `check` (which finds the precise error) splits the name
/// twice and walks it by `char`; this accepts exactly what `check(name, false)` accepts.
fn is_topic(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return false;
    }
    let mut segments = 1;
    // At the start, as after a dot, an empty segment would follow.
    let mut after_dot = true;
    for &b in name.as_bytes() {
        match b {
            b'.' if after_dot => return false,
            b'.' => {
                segments += 1;
                after_dot = true;
            }
            b'a'..=b'z' | b'0'..=b'9' | b'_' => after_dot = false,
            _ => return false,
        }
    }
    !after_dot && segments <= MAX_SEGMENTS
}

/// A validated topic name such as `tracking.run.start`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Parses and validates a topic.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if !is_topic(name) {
            check(name, false)?;
        }
        Ok(Self(Arc::from(name)))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the topic is in the runtime's reserved `sys.` namespace.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_PREFIX)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// A map keyed by topics can be searched with the bytes of a frame, as a `&str`, without
/// building a `Topic` (`Topic`'s `Hash` and `Eq` are those of its text).
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated subscription pattern: `tracking.run.*`, `tracking.**`, `**`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern(Arc<str>, Shape);

/// What a pattern's shape lets [`Pattern::matches`] skip: most patterns are a topic, a
/// prefix followed by `**`, or `**` alone, and those need no segment-by-segment walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Shape {
    /// No wildcard: the topic must be equal.
    Exact,
    /// `**` alone.
    All,
    /// `a.b.**`: the topic starts with `a.b.` (the stored length) and has more after it.
    Prefix(usize),
    /// Anything with `*`.
    General,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn new(pattern: &str) -> Result<Self, NameError> {
        check(pattern, true)?;
        let shape = if pattern == "**" {
            Shape::All
        } else if !pattern.contains('*') {
            Shape::Exact
        } else if let Some(prefix) = pattern.strip_suffix("**") {
            if prefix.contains('*') {
                Shape::General
            } else {
                Shape::Prefix(prefix.len())
            }
        } else {
            Shape::General
        };
        Ok(Self(Arc::from(pattern), shape))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        let t = topic.as_str();
        match self.1 {
            Shape::All => return true,
            Shape::Exact => return *self.0 == *t,
            Shape::Prefix(n) => return t.len() > n && t.as_bytes()[..n] == self.0.as_bytes()[..n],
            Shape::General => {}
        }
        let mut want = self.0.split('.');
        let mut have = topic.as_str().split('.');
        loop {
            match (want.next(), have.next()) {
                (Some("**"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(w), Some(h)) if w == h => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// The longest literal prefix every matching topic starts with, for ZeroMQ
    /// prefix subscriptions: `tracking.run.*` gives `tracking.run.`, `a.b` gives `a.b`.
    pub fn literal_prefix(&self) -> &str {
        match self.0.find('*') {
            Some(at) => &self.0[..at],
            None => &self.0,
        }
    }
}

impl From<Topic> for Pattern {
    fn from(topic: Topic) -> Self {
        Self(topic.0, Shape::Exact)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", &self.0)
    }
}

impl std::str::FromStr for Pattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).expect("valid topic")
    }

    proptest::proptest! {
        // Short names of valid and invalid characters, names around the length limit,
        // and names around the segment limit.
        #[test]
        fn the_fast_topic_check_agrees_with_check(
            name in "[a-z0-9_.A*é]{0,20}|[a-z]{120,135}|[a-z]{1,2}(\\.[a-z]{1,2}){12,18}"
        ) {
            proptest::prop_assert_eq!(is_topic(&name), check(&name, false).is_ok(), "{}", name);
        }
    }

    #[test]
    fn topics_follow_the_grammar() {
        assert!(Topic::new("tracking.run.start").is_ok());
        assert!(Topic::new("a").is_ok());
        assert!(Topic::new("a_1.b2").is_ok());
        assert_eq!(Topic::new(""), Err(NameError::Empty));
        assert_eq!(
            Topic::new("a..b"),
            Err(NameError::EmptySegment { index: 1 })
        );
        assert_eq!(Topic::new(".a"), Err(NameError::EmptySegment { index: 0 }));
        assert_eq!(Topic::new("a."), Err(NameError::EmptySegment { index: 1 }));
        assert_eq!(
            Topic::new("a.Bc"),
            Err(NameError::InvalidChar { ch: 'B', at: 2 })
        );
        assert_eq!(
            Topic::new("a.*"),
            Err(NameError::InvalidChar { ch: '*', at: 2 })
        );
        assert!(matches!(
            Topic::new(&"a".repeat(129)),
            Err(NameError::TooLong { len: 129 })
        ));
        assert!(matches!(
            Topic::new(&["a"; 17].join(".")),
            Err(NameError::TooManySegments { count: 17 })
        ));
        assert!(t("sys.heartbeat").is_reserved());
        assert!(!t("system.x").is_reserved());
    }

    #[test]
    fn patterns_match_by_segment() {
        let p = |s: &str| Pattern::new(s).expect("valid pattern");
        assert!(p("tracking.run.*").matches(&t("tracking.run.started")));
        assert!(!p("tracking.run.*").matches(&t("tracking.run")));
        assert!(!p("tracking.run.*").matches(&t("tracking.run.a.b")));
        assert!(p("tracking.**").matches(&t("tracking.run.a.b")));
        assert!(!p("tracking.**").matches(&t("tracking")));
        assert!(p("**").matches(&t("x")));
        assert!(p("*.run.*").matches(&t("tracking.run.ended")));
        assert!(p("a.b").matches(&t("a.b")));
        assert!(!p("a.b").matches(&t("a.bc")));
        assert_eq!(Pattern::new("**.a"), Err(NameError::MisplacedGlob));
        assert_eq!(p("tracking.run.*").literal_prefix(), "tracking.run.");
        assert_eq!(p("**").literal_prefix(), "");
        assert_eq!(p("a.b").literal_prefix(), "a.b");
        // Each shape's fast path agrees with the segment walk.
        assert!(p("a.**").matches(&t("a.b")));
        assert!(!p("a.**").matches(&t("ab.c")));
        assert!(!p("a.**").matches(&t("a")));
        assert!(p("a.*.**").matches(&t("a.b.c")));
        assert!(!p("a.*.**").matches(&t("a.b")));
    }
}
