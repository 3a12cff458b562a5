//! A MessagePack writer into a `Vec<u8>`, for the envelope encoder.
//!
//! Every value is written in its shortest form, with the same choice of format as rmp's
//! `write_uint`, `write_str`, `write_bin` and `write_map_len` (which rmp-serde, the
//! previous encoder, used): so the bytes are those of the SPEC 14 vectors, and the test
//! oracle in `codec/oracle.rs` checks that they stay identical. Written by hand rather
//! than through rmp's functions because those go through `io::Write` and return errors
//! that a `Vec` never produces.

use rmp::Marker;

use super::EncodeError;

// Marker bytes as constants: `Marker::to_u8` is a large `match` that the compiler does
// not always inline, and the encoder is a few dozen bytes per call.
const FIXMAP: u8 = Marker::FixMap(0).to_u8();
const FIXSTR: u8 = Marker::FixStr(0).to_u8();
const U8: u8 = Marker::U8.to_u8();
const U16: u8 = Marker::U16.to_u8();
const U32: u8 = Marker::U32.to_u8();
const U64: u8 = Marker::U64.to_u8();
const STR: [u8; 3] = [
    Marker::Str8.to_u8(),
    Marker::Str16.to_u8(),
    Marker::Str32.to_u8(),
];
const BIN: [u8; 3] = [
    Marker::Bin8.to_u8(),
    Marker::Bin16.to_u8(),
    Marker::Bin32.to_u8(),
];

/// The bytes written so far.
#[derive(Debug)]
pub(super) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// Makes room for `additional` more bytes at once.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.out.reserve(additional);
    }

    /// Appends to `out`, after what it holds.
    pub(super) fn from_vec(out: Vec<u8>) -> Self {
        Self { out }
    }

    pub(super) fn into_vec(self) -> Vec<u8> {
        self.out
    }

    /// A map header for `len` entries.
    #[inline]
    pub(super) fn map_len(&mut self, len: u8) {
        // The maps written here (an envelope, a status) have at most 11 keys.
        debug_assert!(len < 16);
        self.out.push(FIXMAP | (len & 0x0f));
    }

    /// A key of a map defined by the SPEC: a short ASCII name, so always a fixstr.
    #[inline]
    pub(super) fn key(&mut self, key: &'static str) {
        debug_assert!(key.len() < 32);
        self.out.push(FIXSTR | (key.len() as u8 & 0x1f));
        self.out.extend_from_slice(key.as_bytes());
    }

    /// A uint in its shortest format.
    #[inline(always)]
    pub(super) fn uint(&mut self, n: u64) {
        if let Ok(n) = u8::try_from(n) {
            if n < 0x80 {
                // A positive fixint is its own marker.
                self.out.push(n);
            } else {
                self.out.extend_from_slice(&[U8, n]);
            }
        } else if let Ok(n) = u16::try_from(n) {
            self.out.push(U16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else if let Ok(n) = u32::try_from(n) {
            self.out.push(U32);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.out.push(U64);
            self.out.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// A str: fixstr, str 8, 16 or 32 by length.
    #[inline(always)]
    pub(super) fn str(&mut self, s: &str) -> Result<(), EncodeError> {
        let len = len32(s.len())?;
        if len < 32 {
            self.out.push(FIXSTR | len as u8);
        } else {
            self.len(len, STR);
        }
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    /// A bin: bin 8, 16 or 32 by length.
    #[inline(always)]
    pub(super) fn bin(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.len(len32(b.len())?, BIN);
        self.out.extend_from_slice(b);
        Ok(())
    }

    /// A length after the smallest of the 8, 16 and 32-bit `markers` that holds it.
    #[inline(always)]
    fn len(&mut self, len: u32, [m8, m16, m32]: [u8; 3]) {
        if let Ok(len) = u8::try_from(len) {
            self.out.extend_from_slice(&[m8, len]);
        } else if let Ok(len) = u16::try_from(len) {
            self.out.push(m16);
            self.out.extend_from_slice(&len.to_be_bytes());
        } else {
            self.out.push(m32);
            self.out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// MessagePack lengths are 32-bit (rmp would silently truncate a longer one).
fn len32(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| {
        EncodeError::Serialize(format!(
            "a str or bin of {len} bytes is over MessagePack's 4 GiB limit"
        ))
    })
}
