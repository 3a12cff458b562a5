//! JSON <-> MessagePack, exactly: what `mlmesh pub`, `call` and `sub` read and print.
//!
//! Every MessagePack value has one JSON form, and that form reads back to the same value
//! (the same bits for floats, the same order of map entries). JSON cannot say everything
//! MessagePack can (binary, float 32, NaN, non-str map keys, extension types), so those
//! take the form of an object with exactly one key, a **tag** starting with `$`:
//!
//! | MessagePack | JSON |
//! |---|---|
//! | nil | `null` |
//! | bool | `true`, `false` |
//! | int, any width, signed or not (-2^63 to 2^64-1) | an integer: `42`, `-7`, `18446744073709551615` |
//! | float 64 | a number with a fraction or an exponent: `0.5`, `1.0`, `-0.0`, `1e+300` (the fewest digits that read back to the same bits) |
//! | float 64 NaN, infinities | `{"$float": "NaN"}`, `{"$float": "Infinity"}`, `{"$float": "-Infinity"}` |
//! | float 64 NaN other than the canonical quiet NaN (`0x7ff8000000000000`) | `{"$float": "0x7ff0000000000001"}`: its IEEE 754 bits, 16 hex digits |
//! | float 32 | `{"$float32": 1.5}`: the number (exactly its value, written as a float 64), or `"NaN"`, `"Infinity"`, `"-Infinity"`, `"0x7fc00001"` (8 hex digits) |
//! | str | a string |
//! | bin | `{"$bytes": "00ff10"}`: lowercase hex, two digits a byte (input may use upper case) |
//! | array | an array |
//! | map whose keys are all str, none repeated | an object, entries in order |
//! | any other map: a key that is not a str, a repeated key, or a single entry whose key is one of the tags | `{"$map": [[key, value], ...]}` |
//! | ext | `{"$ext": [type, "hex data"]}`, type from -128 to 127 |
//!
//! Reading JSON: an integer (no fraction, no exponent) is a MessagePack int, and one
//! outside -2^63 to 2^64-1 is an error, never silently rounded (`-0` reads as the float
//! -0.0, since an int has no sign for zero). A number with a fraction or an exponent is a float 64, correctly rounded.
//! An object with exactly one key that is one of the five tags is read as that tag (a
//! malformed tag value is an error); any other object is a map with str keys, in the order
//! written, and a repeated key is an error. A MessagePack str that is not valid UTF-8
//! (which MessagePack forbids) is shown as `$bytes`.

use std::fmt::{self, Write as _};

use rmpv::{Integer, Value};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The tags of the JSON forms that plain JSON has no form for.
const TAGS: [&str; 5] = ["$bytes", "$float", "$float32", "$map", "$ext"];

/// Most nested arrays and maps accepted when decoding MessagePack, as the codec allows.
const MAX_DEPTH: usize = mlmesh_protocol::MAX_DEPTH;

/// JSON text that cannot be read as one MessagePack value: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct JsonError {
    /// What is wrong, e.g. `expected a JSON value`.
    pub message: String,
    /// 1-based line within the text.
    pub line: usize,
    /// 1-based column within that line.
    pub column: usize,
}

impl JsonError {
    /// The message for text that is one line of a larger input (a JSON Lines stream):
    /// `expected a JSON value at column 7`; the caller prefixes the input's line number.
    pub fn in_line(&self) -> String {
        if self.line <= 1 {
            format!("{} at column {}", self.message, self.column)
        } else {
            self.to_string()
        }
    }
}

/// Bytes that are not exactly one MessagePack value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a MessagePack value: {0}")]
pub struct MsgpackError(String);

/// Reads JSON text (one value, surrounding whitespace allowed) as a MessagePack value.
pub fn from_json(text: &str) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Seed.deserialize(&mut de).map_err(from_serde)?;
    de.end().map_err(from_serde)?;
    // serde_json reads an integer outside 64 bits as a float: refuse it instead.
    if let Some((line, column, token)) = integer_out_of_range(text) {
        return Err(JsonError {
            message: format!(
                "the integer {token} is outside -2^63..2^64-1 (write {token}.0 for a float)"
            ),
            line,
            column,
        });
    }
    Ok(value)
}

/// Reads JSON text as the bytes of one MessagePack value (a payload).
pub fn json_to_msgpack(text: &str) -> Result<Vec<u8>, JsonError> {
    from_json(text).map(|v| encode(&v))
}

/// The MessagePack encoding of a value (the shortest form of each int).
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out
}

/// Decodes the bytes of exactly one MessagePack value.
pub fn decode(bytes: &[u8]) -> Result<Value, MsgpackError> {
    // The protocol's own check: exactly one value, no reserved marker, bounded depth.
    mlmesh_protocol::check_payload(bytes).map_err(|e| MsgpackError(e.to_string()))?;
    let mut rd = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| MsgpackError(e.to_string()))?;
    if !rd.is_empty() {
        return Err(MsgpackError(format!("{} bytes follow the value", rd.len())));
    }
    Ok(value)
}

/// The JSON form of MessagePack bytes (a payload), compact, on one line.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, MsgpackError> {
    decode(bytes).map(|v| to_json(&v))
}

/// The JSON form of a value, compact, on one line.
pub fn to_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value);
    out
}

/// Appends the JSON form of `value` to `out`.
pub fn write_json(out: &mut String, value: &Value) {
    match value {
        Value::Nil => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::F64(f) => write_f64(out, *f),
        Value::F32(f) => {
            out.push_str("{\"$float32\":");
            if f.is_nan() && f.to_bits() != f32::NAN.to_bits() {
                let _ = write!(out, "\"0x{:08x}\"}}", f.to_bits());
            } else if f.is_finite() {
                write_finite(out, f64::from(*f));
                out.push('}');
            } else {
                let _ = write!(out, "\"{}\"}}", special(f64::from(*f)));
            }
        }
        Value::String(s) => match s.as_str() {
            Some(s) => write_str(out, s),
            None => write_bytes(out, s.as_bytes()),
        },
        Value::Binary(b) => write_bytes(out, b),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Map(entries) => write_map(out, entries),
        Value::Ext(kind, data) => {
            let _ = write!(out, "{{\"$ext\":[{kind},\"");
            push_hex(out, data);
            out.push_str("\"]}");
        }
    }
}

fn write_map(out: &mut String, entries: &[(Value, Value)]) {
    let plain = entries.iter().all(|(k, _)| k.as_str().is_some())
        && !(entries.len() == 1 && entries[0].0.as_str().is_some_and(|k| TAGS.contains(&k)))
        && !has_repeats(entries);
    if plain {
        out.push('{');
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, k.as_str().unwrap_or_default());
            out.push(':');
            write_json(out, v);
        }
        out.push('}');
    } else {
        out.push_str("{\"$map\":[");
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('[');
            write_json(out, k);
            out.push(',');
            write_json(out, v);
            out.push(']');
        }
        out.push_str("]}");
    }
}

fn has_repeats(entries: &[(Value, Value)]) -> bool {
    let mut keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

fn write_f64(out: &mut String, f: f64) {
    if f.is_finite() {
        write_finite(out, f);
    } else if f.is_nan() && f.to_bits() != f64::NAN.to_bits() {
        let _ = write!(out, "{{\"$float\":\"0x{:016x}\"}}", f.to_bits());
    } else {
        let _ = write!(out, "{{\"$float\":\"{}\"}}", special(f));
    }
}

/// A finite float, always with a `.` or an exponent so that it reads back as a float.
fn write_finite(out: &mut String, f: f64) {
    // serde_json writes the shortest digits that read back to the same bits (ryu), and
    // always a fraction or an exponent (`1.0`, `1e300`).
    match serde_json::Number::from_f64(f) {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"), // unreachable: f is finite
    }
}

fn special(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn write_bytes(out: &mut String, b: &[u8]) {
    out.push_str("{\"$bytes\":\"");
    push_hex(out, b);
    out.push_str("\"}");
}

/// Appends `s` as a JSON string.
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Lowercase hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    push_hex(&mut s, b);
    s
}

fn push_hex(out: &mut String, b: &[u8]) {
    for byte in b {
        let _ = write!(out, "{byte:02x}");
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("{} hex digits, not an even number", s.len()));
    }
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("{:?} is not a hex digit", c as char)),
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn from_serde(e: serde_json::Error) -> JsonError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let raw = full.strip_suffix(&suffix).unwrap_or(&full);
    let message = match raw {
        "expected value" => "expected a JSON value".to_owned(),
        "EOF while parsing a value" => "the text ended where a JSON value was expected".to_owned(),
        "EOF while parsing an object" => "the text ended inside an object".to_owned(),
        "EOF while parsing a list" => "the text ended inside an array".to_owned(),
        "EOF while parsing a string" => "the text ended inside a string".to_owned(),
        "trailing characters" => "unexpected text after the JSON value".to_owned(),
        "key must be a string" => "object keys must be strings".to_owned(),
        other => other.to_owned(),
    };
    JsonError {
        message,
        line: e.line(),
        column: e.column(),
    }
}

/// The first integer token (no fraction, no exponent) outside the 64-bit range:
/// (line, column, token). Only called on text that is valid JSON.
fn integer_out_of_range(text: &str) -> Option<(usize, usize, String)> {
    let bytes = text.as_bytes();
    let (mut line, mut line_start) = (1, 0);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                line += 1;
                line_start = i + 1;
                i += 1;
            }
            b'"' => {
                // Skip the string; valid JSON has no raw newline in one.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &text[start..i];
                let integer = !token.contains(['.', 'e', 'E']);
                let fits = token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok();
                if integer && !fits {
                    let column = text[line_start..start].chars().count() + 1;
                    return Some((line, column, token.to_owned()));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Builds a MessagePack value straight from the JSON parser, keeping object order and
/// telling integers from floats.
struct Seed;

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Boolean(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Integer(Integer::from(n)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Integer(Integer::from(n)))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::F64(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::from(s))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::from(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Seed)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} is repeated in an object"
                )));
            }
            let value = map.next_value_seed(Seed)?;
            entries.push((key, value));
        }
        if let [(tag, value)] = &entries[..] {
            if TAGS.contains(&tag.as_str()) {
                return tagged(tag, value)
                    .map_err(|why| de::Error::custom(format!("{tag}: {why}")));
            }
        }
        Ok(Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        ))
    }
}

/// The value a tagged object stands for.
fn tagged(tag: &str, value: &Value) -> Result<Value, String> {
    match tag {
        "$bytes" => match value {
            Value::String(s) => unhex(s.as_str().unwrap_or_default()).map(Value::Binary),
            _ => Err("expected a string of hex digits".into()),
        },
        "$float" => match value {
            Value::F64(f) => Ok(Value::F64(*f)),
            Value::Integer(i) => i.as_f64().map(Value::F64).ok_or_else(|| "bad number".into()),
            Value::String(s) => float_text(s.as_str().unwrap_or_default(), 16)
                .map(|bits| Value::F64(f64::from_bits(bits))),
            _ => Err("expected a number, \"NaN\", \"Infinity\", \"-Infinity\" or \"0x\" and 16 hex digits".into()),
        },
        "$float32" => match value {
            Value::F64(f) => narrow(*f),
            Value::Integer(i) => i.as_f64().ok_or_else(|| "bad number".into()).and_then(narrow),
            Value::String(s) => float_text(s.as_str().unwrap_or_default(), 8).and_then(|bits| {
                u32::try_from(bits)
                    .map(|b| Value::F32(f32::from_bits(b)))
                    .map_err(|_| "more than 32 bits".into())
            }),
            _ => Err("expected a number, \"NaN\", \"Infinity\", \"-Infinity\" or \"0x\" and 8 hex digits".into()),
        },
        "$map" => {
            let Value::Array(pairs) = value else {
                return Err("expected an array of [key, value] pairs".into());
            };
            pairs
                .iter()
                .enumerate()
                .map(|(i, pair)| match pair {
                    Value::Array(kv) if kv.len() == 2 => Ok((kv[0].clone(), kv[1].clone())),
                    _ => Err(format!("item {i} is not a [key, value] pair")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Map)
        }
        "$ext" => match value {
            Value::Array(parts) if parts.len() == 2 => {
                let kind = parts[0]
                    .as_i64()
                    .and_then(|k| i8::try_from(k).ok())
                    .ok_or("the type must be an integer from -128 to 127")?;
                let data = match &parts[1] {
                    Value::String(s) => unhex(s.as_str().unwrap_or_default())?,
                    _ => return Err("the data must be a string of hex digits".into()),
                };
                Ok(Value::Ext(kind, data))
            }
            _ => Err("expected [type, \"hex data\"]".into()),
        },
        _ => Err("unknown tag".into()),
    }
}

/// A float 64 rounded to the nearest float 32; one beyond its range is an error.
fn narrow(f: f64) -> Result<Value, String> {
    let g = f as f32;
    if f.is_finite() && g.is_infinite() {
        return Err(format!("{f} is outside the float 32 range"));
    }
    Ok(Value::F32(g))
}

/// The bits of a float named by text: `NaN`, `Infinity`, `-Infinity`, or `0x` and
/// `digits` hex digits.
fn float_text(s: &str, digits: usize) -> Result<u64, String> {
    let wide = digits == 16;
    match s {
        "NaN" if wide => Ok(f64::NAN.to_bits()),
        "Infinity" if wide => Ok(f64::INFINITY.to_bits()),
        "-Infinity" if wide => Ok(f64::NEG_INFINITY.to_bits()),
        "NaN" => Ok(u64::from(f32::NAN.to_bits())),
        "Infinity" => Ok(u64::from(f32::INFINITY.to_bits())),
        "-Infinity" => Ok(u64::from(f32::NEG_INFINITY.to_bits())),
        _ => match s.strip_prefix("0x") {
            Some(h) if h.len() == digits && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u64::from_str_radix(h, 16).map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "{s:?} is not \"NaN\", \"Infinity\", \"-Infinity\" or \"0x\" and {digits} hex digits"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every MessagePack type, and the edges of each.
    fn samples() -> Vec<Value> {
        let ints: Vec<Value> = [
            0i128,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as i128,
            u32::MAX as i128 + 1,
            i64::MAX as i128,
            u64::MAX as i128,
            -1,
            -32,
            -33,
            -128,
            -129,
            i16::MIN as i128,
            i32::MIN as i128,
            i64::MIN as i128,
        ]
        .into_iter()
        .map(|n| match u64::try_from(n) {
            Ok(u) => Value::from(u),
            Err(_) => Value::from(i64::try_from(n).unwrap()),
        })
        .collect();
        let f64s = [
            0.0,
            -0.0,
            0.1,
            1.0,
            -2.5,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            9_007_199_254_740_993.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::from_bits(0xfff8_0000_0000_0000),
        ]
        .map(Value::F64);
        let f32s = [
            0.0f32,
            -0.0,
            0.1,
            1.5,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7fc0_0001),
        ]
        .map(Value::F32);
        let mut v = vec![Value::Nil, Value::Boolean(true), Value::Boolean(false)];
        v.extend(ints);
        v.extend(f64s);
        v.extend(f32s);
        v.extend([
            Value::from(""),
            Value::from("héllo ✓ 🦀"),
            Value::from("quote \" backslash \\ nul \u{0} newline \n del \u{7f}"),
            Value::from("$bytes"),
            Value::Binary(vec![]),
            Value::Binary((0..=255).collect()),
            Value::Array(vec![]),
            Value::Array(vec![Value::Nil, Value::Array(vec![Value::from(1u64)])]),
            Value::Map(vec![]),
            Value::Map(vec![
                (Value::from("b"), Value::from(1u64)),
                (Value::from("a"), Value::F64(f64::NAN)),
            ]),
            Value::Map(vec![(Value::from(1u64), Value::from("int key"))]),
            Value::Map(vec![(Value::Binary(vec![1, 2]), Value::Nil)]),
            Value::Map(vec![
                (Value::from("k"), Value::from(1u64)),
                (Value::from("k"), Value::from(2u64)),
            ]),
            Value::Map(vec![(Value::from("$bytes"), Value::from("not a tag"))]),
            Value::Map(vec![(Value::from("$map"), Value::Array(vec![]))]),
            Value::Map(vec![(Value::from("$other"), Value::Nil)]),
            Value::Map(vec![(
                Value::from("$float"),
                Value::Map(vec![(Value::from("$ext"), Value::Nil)]),
            )]),
            Value::Ext(-1, vec![0, 0, 0, 1]),
            Value::Ext(127, vec![]),
            Value::Ext(-128, vec![0xff]),
        ]);
        v
    }

    #[test]
    fn every_msgpack_type_round_trips_exactly() {
        for value in samples() {
            let bytes = encode(&value);
            let json = msgpack_to_json(&bytes).unwrap();
            let back =
                json_to_msgpack(&json).unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
            assert_eq!(back, bytes, "{value:?} -> {json}");
            // The JSON form is stable: printing the value read back gives the same text.
            assert_eq!(msgpack_to_json(&back).unwrap(), json);
        }
        // All of them at once, nested.
        let all = Value::Array(samples());
        let bytes = encode(&all);
        assert_eq!(json_to_msgpack(&to_json(&all)).unwrap(), bytes);
    }

    #[test]
    fn the_documented_forms() {
        let cases: [(Value, &str); 14] = [
            (Value::from(u64::MAX), "18446744073709551615"),
            (Value::from(i64::MIN), "-9223372036854775808"),
            (Value::F64(1.0), "1.0"),
            (Value::F64(-0.0), "-0.0"),
            (Value::F64(1e300), "1e+300"),
            (Value::F64(f64::NAN), r#"{"$float":"NaN"}"#),
            (Value::F64(f64::NEG_INFINITY), r#"{"$float":"-Infinity"}"#),
            (
                Value::F64(f64::from_bits(0x7ff0_0000_0000_0001)),
                r#"{"$float":"0x7ff0000000000001"}"#,
            ),
            (Value::F32(1.5), r#"{"$float32":1.5}"#),
            (Value::F32(f32::INFINITY), r#"{"$float32":"Infinity"}"#),
            (Value::Binary(vec![0, 0xff, 0x10]), r#"{"$bytes":"00ff10"}"#),
            (Value::Ext(5, vec![0xab]), r#"{"$ext":[5,"ab"]}"#),
            (
                Value::Map(vec![(Value::from(1u64), Value::Nil)]),
                r#"{"$map":[[1,null]]}"#,
            ),
            (
                Value::Map(vec![
                    (Value::from("z"), Value::from(-1i64)),
                    (Value::from("a"), Value::from("x\ty")),
                ]),
                r#"{"z":-1,"a":"x\ty"}"#,
            ),
        ];
        for (value, json) in cases {
            assert_eq!(to_json(&value), json);
            assert_eq!(json_to_msgpack(json).unwrap(), encode(&value), "{json}");
        }
    }

    #[test]
    fn json_numbers_keep_their_kind() {
        let read = |s: &str| from_json(s).unwrap();
        assert_eq!(read("7"), Value::from(7u64));
        assert!(matches!(read("-0"), Value::F64(f) if f == 0.0 && f.is_sign_negative()));
        assert!(matches!(read("-0.0"), Value::F64(f) if f == 0.0 && f.is_sign_negative()));
        assert!(matches!(read("1e2"), Value::F64(f) if f == 100.0));
        assert!(matches!(read("2.0"), Value::F64(f) if f == 2.0));
        // Correctly rounded: the shortest text of each float reads back to its bits.
        for bits in [
            0x3fb9_9999_9999_999a_u64,
            0x0000_0000_0000_0001,
            0x7fef_ffff_ffff_ffff,
        ] {
            let f = f64::from_bits(bits);
            assert_eq!(read(&to_json(&Value::F64(f))), Value::F64(f));
        }
        // Upper-case hex is read too.
        assert_eq!(
            read(r#"{"$bytes":"ABcd"}"#),
            Value::Binary(vec![0xab, 0xcd])
        );
        assert_eq!(read(r#"{"$float32":0.1}"#), Value::F32(0.1));
        assert_eq!(read(r#"{"$float":2}"#), Value::F64(2.0));
    }

    #[test]
    fn errors_name_what_is_wrong_and_where() {
        let err = |s: &str| from_json(s).unwrap_err();
        let e = err(r#"{"a": }"#);
        assert_eq!(e.in_line(), "expected a JSON value at column 7");
        assert_eq!(e.to_string(), "expected a JSON value at line 1 column 7");
        let e = err("[1,\n 18446744073709551616]");
        assert_eq!((e.line, e.column), (2, 2));
        assert!(e.message.contains("18446744073709551616"), "{e}");
        assert!(err("-9223372036854775809").message.contains("outside"));
        assert!(err(r#"{"k":1,"k":2}"#)
            .message
            .contains("\"k\" is repeated"));
        assert!(err(r#"{"$bytes":"abc"}"#)
            .message
            .starts_with("$bytes: 3 hex digits"));
        assert!(err(r#"{"$bytes":"zz"}"#)
            .message
            .contains("not a hex digit"));
        assert!(err(r#"{"$bytes":1}"#).message.contains("hex"));
        assert!(err(r#"{"$float":"nan"}"#)
            .message
            .starts_with("$float: \"nan\""));
        assert!(err(r#"{"$float32":1e39}"#)
            .message
            .contains("float 32 range"));
        assert!(err(r#"{"$ext":[300,""]}"#).message.contains("-128 to 127"));
        assert!(err(r#"{"$map":[[1]]}"#).message.contains("item 0"));
        assert_eq!(err("1 2").message, "unexpected text after the JSON value");
        assert_eq!(
            err("").message,
            "the text ended where a JSON value was expected"
        );
        assert_eq!(err(r#"{"a":1"#).message, "the text ended inside an object");
        assert!(
            err("1e400").message.contains("out of range"),
            "{}",
            err("1e400")
        );
        // Strings that look like numbers are not scanned as numbers.
        assert_eq!(
            from_json(r#""99999999999999999999""#).unwrap(),
            Value::from("99999999999999999999")
        );
    }

    #[test]
    fn malformed_msgpack_is_an_error() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0xc1]).is_err());
        assert!(
            decode(&[0x01, 0x02])
                .unwrap_err()
                .to_string()
                .contains("1 bytes follow"),
            "{}",
            decode(&[1, 2]).unwrap_err()
        );
        assert!(decode(&[0x92, 0x01]).is_err());
    }
}
