//! FNV-1a 64, the one non-cryptographic hash the tools use: the test-pattern header checksum
//! (folded to 32 bits) and Janus room ids. Both must stay stable across builds and hosts, which
//! `std`'s `DefaultHasher` does not promise.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// FNV-1a 64 xor-folded to 32 bits, as the FNV authors suggest for narrower hashes.
pub fn fnv1a_32_folded(bytes: &[u8]) -> u32 {
    let h = fnv1a_64(bytes);
    (h >> 32) as u32 ^ h as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_32_folded(b""), 0xcbf2_9ce4 ^ 0x8422_2325);
    }
}
