//! A MessagePack reader over a byte slice, for the envelope decoder and `check_payload`.
//!
//! Two kinds of read. Typed reads (`uint`, `str_bytes`, `bin`, `map_len`, ...) return
//! `None` when the next value is not of that type or is cut short; wrapped in
//! [`Reader::attempt`] they leave the reader where it was, so that the decoder can then
//! skip the value to tell "a known key holds the wrong type" (INVALID_ARGUMENT naming the
//! key) from "the bytes are not MessagePack" (a [`Malformed`] frame). Structural reads
//! (`key`, `skip_value`, `end`) return a [`Malformed`] saying what is wrong.
//!
//! Nothing here recurses, indexes out of bounds or allocates on the success path, so no
//! input can panic the reader or overflow the stack.

use std::fmt;

use rmp::Marker;

use super::MAX_DEPTH;

/// What is structurally wrong with the bytes (not which field: there is none to name).
#[derive(Debug)]
pub(super) struct Malformed(String);

impl Malformed {
    pub(super) fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }

    fn ends() -> Self {
        Self::new("the bytes end inside a value")
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The start of a value, as [`Reader::skip_value`] sees it.
enum Head {
    /// A scalar (number, str, bin, ext ...), now consumed whole.
    Scalar,
    /// An array or a map, with this many values after its header (for a map, keys and
    /// values both).
    Container(u64),
}

/// The unread part of a frame or payload; every read advances it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Runs a typed read and keeps its progress only if it succeeds: on `None` the
    /// reader is still at the start of the value, ready to skip it.
    #[inline]
    pub(super) fn attempt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let mut probe = *self;
        let value = read(&mut probe)?;
        *self = probe;
        Some(value)
    }

    /// The next `n` bytes, borrowed.
    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    /// The next bytes if they are `expected`.
    #[inline]
    pub(super) fn expect(&mut self, expected: &[u8]) -> Option<()> {
        (self.take(expected.len())? == expected).then_some(())
    }

    /// The next `N` bytes, for a big-endian number or an id.
    #[inline]
    pub(super) fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    #[inline]
    fn marker(&mut self) -> Option<Marker> {
        let (&first, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(Marker::from_u8(first))
    }

    /// A length written after a `*8`, `*16` or `*32` marker.
    #[inline]
    fn len8(&mut self) -> Option<usize> {
        Some(u8::from_be_bytes(self.be()?).into())
    }

    #[inline]
    fn len16(&mut self) -> Option<usize> {
        Some(u16::from_be_bytes(self.be()?).into())
    }

    #[inline]
    fn len32(&mut self) -> Option<usize> {
        usize::try_from(u32::from_be_bytes(self.be()?)).ok()
    }

    /// A non-negative integer in any MessagePack integer format (SPEC 1.4 "uint"),
    /// if it fits in `T`: a number out of `T`'s range is not of the field's type.
    #[inline]
    pub(super) fn uint<T: TryFrom<u64>>(&mut self) -> Option<T> {
        let n: u64 = match self.marker()? {
            Marker::FixPos(n) => n.into(),
            Marker::U8 => u8::from_be_bytes(self.be()?).into(),
            Marker::U16 => u16::from_be_bytes(self.be()?).into(),
            Marker::U32 => u32::from_be_bytes(self.be()?).into(),
            Marker::U64 => u64::from_be_bytes(self.be()?),
            Marker::I8 => u64::try_from(i8::from_be_bytes(self.be()?)).ok()?,
            Marker::I16 => u64::try_from(i16::from_be_bytes(self.be()?)).ok()?,
            Marker::I32 => u64::try_from(i32::from_be_bytes(self.be()?)).ok()?,
            Marker::I64 => u64::try_from(i64::from_be_bytes(self.be()?)).ok()?,
            _ => return None,
        };
        T::try_from(n).ok()
    }

    /// The bytes of a str, not yet checked for UTF-8: the decoder compares most strs
    /// with known ASCII names, which makes the check unnecessary.
    #[inline]
    pub(super) fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.marker()? {
            Marker::FixStr(n) => n.into(),
            Marker::Str8 => self.len8()?,
            Marker::Str16 => self.len16()?,
            Marker::Str32 => self.len32()?,
            _ => return None,
        };
        self.take(len)
    }

    /// A str holding UTF-8.
    pub(super) fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// The bytes of a bin (a str is not a bin).
    #[inline]
    pub(super) fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.marker()? {
            Marker::Bin8 => self.len8()?,
            Marker::Bin16 => self.len16()?,
            Marker::Bin32 => self.len32()?,
            _ => return None,
        };
        self.take(len)
    }

    /// `nil`.
    pub(super) fn nil(&mut self) -> Option<()> {
        matches!(self.marker()?, Marker::Null).then_some(())
    }

    /// The entry count of a map header.
    pub(super) fn map_len(&mut self) -> Option<usize> {
        match self.marker()? {
            Marker::FixMap(n) => Some(n.into()),
            Marker::Map16 => self.len16(),
            Marker::Map32 => self.len32(),
            _ => None,
        }
    }

    /// The element count of an array header.
    pub(super) fn array_len(&mut self) -> Option<usize> {
        match self.marker()? {
            Marker::FixArray(n) => Some(n.into()),
            Marker::Array16 => self.len16(),
            Marker::Array32 => self.len32(),
            _ => None,
        }
    }

    /// A map key, as bytes: SPEC 1.4 makes the key of every map a str.
    #[inline]
    pub(super) fn key(&mut self) -> Result<&'a [u8], Malformed> {
        self.attempt(Self::str_bytes)
            .ok_or_else(|| Malformed::new("a map key is not a str, or the bytes end inside it"))
    }

    /// Skips one value of any type, checking its structure but not its content (a str
    /// inside it is not checked for UTF-8). `depth` is the number of arrays and maps
    /// already open around the value; no more than [`MAX_DEPTH`] may be open at once.
    pub(super) fn skip_value(&mut self, depth: usize) -> Result<(), Malformed> {
        // Values still to skip in each enclosing container this call opened, innermost
        // last: a fixed stack, so that hostile nesting costs neither recursion nor heap.
        let mut outer = [0u64; MAX_DEPTH];
        let mut open = 0;
        // Values still to skip in the innermost open container (at first: the one value).
        let mut left: u64 = 1;
        loop {
            while left == 0 {
                if open == 0 {
                    return Ok(());
                }
                open -= 1;
                left = outer[open];
            }
            left -= 1;
            if let Head::Container(items) = self.head()? {
                // `depth + open` containers are open around this one.
                if depth + open >= MAX_DEPTH {
                    return Err(Malformed::new(format!(
                        "arrays and maps are nested more than {MAX_DEPTH} deep"
                    )));
                }
                outer[open] = left;
                open += 1;
                left = items;
            }
        }
    }

    /// Consumes a scalar whole, or the header of an array or map.
    fn head(&mut self) -> Result<Head, Malformed> {
        let marker = self.marker().ok_or_else(Malformed::ends)?;
        // For a scalar: the bytes after the marker (and after its length, if any).
        let size = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                Some(0)
            }
            Marker::U8 | Marker::I8 => Some(1),
            Marker::U16 | Marker::I16 => Some(2),
            Marker::U32 | Marker::I32 | Marker::F32 => Some(4),
            Marker::U64 | Marker::I64 | Marker::F64 => Some(8),
            Marker::FixStr(n) => Some(n.into()),
            Marker::Str8 | Marker::Bin8 => self.len8(),
            Marker::Str16 | Marker::Bin16 => self.len16(),
            Marker::Str32 | Marker::Bin32 => self.len32(),
            // An extension is a type byte, then its data.
            Marker::FixExt1 => Some(2),
            Marker::FixExt2 => Some(3),
            Marker::FixExt4 => Some(5),
            Marker::FixExt8 => Some(9),
            Marker::FixExt16 => Some(17),
            Marker::Ext8 => self.len8().map(|n| n.saturating_add(1)),
            Marker::Ext16 => self.len16().map(|n| n.saturating_add(1)),
            Marker::Ext32 => self.len32().map(|n| n.saturating_add(1)),
            Marker::FixArray(n) => return Ok(Head::Container(n.into())),
            Marker::Array16 => return self.items(Self::len16, 1),
            Marker::Array32 => return self.items(Self::len32, 1),
            Marker::FixMap(n) => return Ok(Head::Container(2 * u64::from(n))),
            Marker::Map16 => return self.items(Self::len16, 2),
            Marker::Map32 => return self.items(Self::len32, 2),
            Marker::Reserved => return Err(Malformed::new("0xc1 is not a MessagePack value")),
        };
        size.and_then(|n| self.take(n))
            .ok_or_else(Malformed::ends)?;
        Ok(Head::Scalar)
    }

    /// The header of an array (`per_entry` 1) or a map (2, a key and a value).
    fn items(
        &mut self,
        len: fn(&mut Self) -> Option<usize>,
        per_entry: u64,
    ) -> Result<Head, Malformed> {
        let n = len(self).ok_or_else(Malformed::ends)?;
        Ok(Head::Container(per_entry * n as u64))
    }

    /// Checks that nothing follows the value just read.
    pub(super) fn end(&self) -> Result<(), Malformed> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(Malformed::new(format!("{n} bytes follow the value"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Vec<u8> {
        let mut v = vec![0x91; levels];
        v.push(0x01);
        v
    }

    #[test]
    fn skip_allows_max_depth_and_no_more() {
        let ok = nested(MAX_DEPTH);
        let mut r = Reader::new(&ok);
        r.skip_value(0).expect("64 levels");
        assert_eq!(r.remaining(), 0);
        // The same value inside one more container: one level too deep.
        assert!(Reader::new(&ok).skip_value(1).is_err());
        assert!(Reader::new(&nested(MAX_DEPTH + 1)).skip_value(0).is_err());
        // Hostile nesting is an error, not a stack overflow.
        assert!(Reader::new(&nested(1_000_000)).skip_value(0).is_err());
    }

    #[test]
    fn skip_knows_every_format() {
        let values: &[&[u8]] = &[
            b"\x05",
            b"\xff",
            b"\xc0",
            b"\xc2",
            b"\xc3",
            b"\xcc\x01",
            b"\xcd\x01\x02",
            b"\xce\x01\x02\x03\x04",
            b"\xcf\x01\x02\x03\x04\x05\x06\x07\x08",
            b"\xd0\xff",
            b"\xd1\x01\x02",
            b"\xd2\x01\x02\x03\x04",
            b"\xd3\x01\x02\x03\x04\x05\x06\x07\x08",
            b"\xca\x01\x02\x03\x04",
            b"\xcb\x01\x02\x03\x04\x05\x06\x07\x08",
            b"\xa2hi",
            b"\xd9\x02hi",
            b"\xda\x00\x02hi",
            b"\xdb\x00\x00\x00\x02hi",
            b"\xc4\x02hi",
            b"\xc5\x00\x02hi",
            b"\xc6\x00\x00\x00\x02hi",
            b"\xd4\x01\x00",
            b"\xd5\x01\x00\x00",
            b"\xd6\x01\x00\x00\x00\x00",
            b"\xd7\x01\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\xd8\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\xc7\x02\x01hi",
            b"\xc8\x00\x02\x01hi",
            b"\xc9\x00\x00\x00\x02\x01hi",
            b"\x92\x01\x02",
            b"\xdc\x00\x02\x01\x02",
            b"\xdd\x00\x00\x00\x02\x01\x02",
            b"\x81\xa1k\x01",
            b"\xde\x00\x01\xa1k\x01",
            b"\xdf\x00\x00\x00\x01\xa1k\x90",
        ];
        for v in values {
            let mut r = Reader::new(v);
            r.skip_value(0).unwrap_or_else(|e| panic!("{v:02x?}: {e}"));
            assert_eq!(r.remaining(), 0, "{v:02x?}");
            // Every strict prefix is cut short.
            for cut in 0..v.len() {
                assert!(
                    Reader::new(&v[..cut]).skip_value(0).is_err(),
                    "{v:02x?}[..{cut}]"
                );
            }
        }
        assert!(Reader::new(b"\xc1").skip_value(0).is_err());
    }

    #[test]
    fn typed_reads_leave_the_reader_in_place_on_a_mismatch() {
        let mut r = Reader::new(b"\xa1x");
        assert_eq!(r.attempt(Reader::bin), None);
        assert_eq!(r.attempt(Reader::uint::<u64>), None);
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.attempt(Reader::str), Some("x"));
        assert_eq!(r.remaining(), 0);
        // Signed formats holding a non-negative value are uints (SPEC 1.4); ranges apply.
        assert_eq!(Reader::new(b"\xd0\x05").uint::<u16>(), Some(5));
        assert_eq!(Reader::new(b"\xd0\xfb").uint::<u16>(), None);
        assert_eq!(Reader::new(b"\xce\x00\x01\x00\x00").uint::<u16>(), None);
        assert_eq!(Reader::new(b"\xcd\xff\xff").uint::<u16>(), Some(u16::MAX));
        assert_eq!(Reader::new(b"\xcb\0\0\0\0\0\0\0\0").uint::<u64>(), None);
    }
}
