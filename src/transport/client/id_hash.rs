//! The pending-call map's hasher.

/// Hashes a pending call's id with a multiply per word instead of SipHash's rounds: the
/// keys are ids this client made (UUIDv7, 74 random bits), which a peer can look up, by
/// replies, but never insert, so there is no flooding to defend against.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// See [`IdHash`].
#[derive(Debug)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Two words for a UUID; a multiply and a rotation spread each over the hash's
        // high bits (hashbrown's tags) and low bits (its buckets).
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }
}
