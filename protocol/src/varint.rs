//! Unsigned LEB128 and zigzag varints, as Kafka's record format uses them.

pub(crate) fn put_u64(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(crate) fn put_i64(buf: &mut Vec<u8>, value: i64) {
    put_u64(buf, ((value << 1) ^ (value >> 63)) as u64);
}

pub(crate) fn len_u64(mut value: u64) -> usize {
    let mut length = 1;
    while value >= 0x80 {
        value >>= 7;
        length += 1;
    }
    length
}

pub(crate) fn len_i64(value: i64) -> usize {
    len_u64(((value << 1) ^ (value >> 63)) as u64)
}

/// Reads a varint from the front of `input`, advancing it. `None` when it is cut short or
/// longer than ten bytes.
pub(crate) fn get_u64(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (index, byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Some(value);
        }
    }
    None
}

pub(crate) fn get_i64(input: &mut &[u8]) -> Option<i64> {
    let raw = get_u64(input)?;
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

/// A zigzag varint that counts or measures something (Kafka writes lengths, counts and
/// offset deltas of records as signed varints): `None` when cut short or negative.
pub(crate) fn get_length(input: &mut &[u8]) -> Option<u64> {
    u64::try_from(get_i64(input)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edge_values() {
        for value in [0i64, 1, -1, 63, -64, 64, 300, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            put_i64(&mut buf, value);
            assert_eq!(buf.len(), len_i64(value));
            let mut input = buf.as_slice();
            assert_eq!(get_i64(&mut input), Some(value));
            assert!(input.is_empty());
        }
        assert_eq!(get_u64(&mut [0x80u8, 0x80].as_slice()), None);
        // Kafka's record lengths are zigzag: 10 is written 0x14, and -1 (0x01) is no length.
        assert_eq!(get_length(&mut [0x14u8].as_slice()), Some(10));
        assert_eq!(get_length(&mut [0x01u8].as_slice()), None);
    }
}
