//! CRC32C (Castagnoli), the iSCSI header and data digest.
//!
//! The `crc32c` crate uses the SSE4.2 / ARMv8 CRC instructions when the CPU
//! has them. On the wire the digest is sent least significant byte first
//! (RFC 7143 appendix B.4 lists the bytes in that order).

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C of `rest` continuing a checksum `crc` over earlier bytes.
pub fn crc32c_append(crc: u32, rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, rest)
}

/// The four digest bytes as they appear on the wire.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// A digest read from the wire.
pub fn from_wire(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_of_the_castagnoli_polynomial() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn rfc_7143_appendix_b4_vectors() {
        assert_eq!(to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(to_wire(crc32c(&[0xffu8; 32])), [0x43, 0xab, 0xa8, 0x62]);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(to_wire(crc32c(&ascending)), [0x4e, 0x79, 0xdd, 0x46]);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(to_wire(crc32c(&descending)), [0x5c, 0xdb, 0x3f, 0x11]);
        // An iSCSI READ command PDU (48 bytes).
        let read_pdu: [u8; 48] = [
            0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0, 0,
            0, 0, 0x14, 0, 0, 0, 0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(to_wire(crc32c(&read_pdu)), [0x56, 0x3a, 0x96, 0xd9]);
    }

    #[test]
    fn append_equals_one_pass() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let (a, b) = data.split_at(333);
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
    }
}
