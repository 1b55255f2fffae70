//! Hex digits, several at a time: bytea travels as `\x` hex in Postgres'
//! text format, so every encrypted value of a text result or a text COPY is
//! hex-decoded on its way out and hex-encoded on its way in. Eight digits
//! are handled in one `u64` (SIMD within a register, safe Rust); what does
//! not fill one goes digit by digit.

/// A one in every byte of a `u64`.
const LANES: u64 = 0x0101_0101_0101_0101;

/// `b` in every byte of a `u64`.
const fn rep(b: u8) -> u64 {
    LANES * b as u64
}

/// Each byte's value as a hex digit; 0xff for bytes that are not one.
static DIGIT: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Eight hex digits in either case (the first in the lowest byte) as four
/// bytes (the first in the lowest byte), or `None` if any is not a digit.
fn decode8(x: u64) -> Option<u32> {
    if x & rep(0x80) != 0 {
        return None;
    }
    // Every byte is below 0x80 now, so adding at most 0x80 to each never
    // carries into the next: bit 7 of each sum answers for its byte alone.
    let at_least = |v: u64, lo: u8| v + rep(0x80 - lo);
    let above = |v: u64, hi: u8| v + rep(0x7f - hi);
    let digit = at_least(x, b'0') & !above(x, b'9');
    // Setting bit 5 folds `A`-`F` onto `a`-`f` and nothing else onto them.
    let lower = x | rep(0x20);
    let letter = at_least(lower, b'a') & !above(lower, b'f');
    if (digit | letter) & rep(0x80) != rep(0x80) {
        return None;
    }
    // A digit's low four bits are its value; a letter's plus nine.
    let nibbles = (x & rep(0x0f)) + ((letter >> 7) & LANES) * 9;
    // Pairs of nibbles into bytes, one per 16-bit lane, then packed.
    let bytes = ((nibbles & 0x00ff_00ff_00ff_00ff) << 4) | ((nibbles >> 8) & 0x00ff_00ff_00ff_00ff);
    let packed = (bytes | (bytes >> 8)) & 0x0000_ffff_0000_ffff;
    Some((packed | (packed >> 16)) as u32)
}

/// Four bytes (the first in the lowest byte) as eight lowercase hex digits
/// (the first in the lowest byte).
fn encode4(b: u32) -> u64 {
    let x = u64::from(b);
    // One byte per 16-bit lane.
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    // The high nibble first, then the low one.
    let nibbles = ((x >> 4) & 0x000f_000f_000f_000f) | ((x & 0x000f_000f_000f_000f) << 8);
    // Nibbles of 10 and more get bit 7 from the addition (no carry: <= 0x85).
    let letters = ((nibbles + rep(0x80 - 10)) >> 7) & LANES;
    nibbles + rep(b'0') + letters * u64::from(b'a' - b'0' - 10)
}

/// Appends the bytes `hex` spells (pairs of digits in either case, nothing
/// else); `None` if it holds anything else or an odd number of digits, in
/// which case what was appended is meaningless.
pub fn decode_into(hex: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    out.reserve(hex.len() / 2);
    let mut chunks = hex.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        out.extend_from_slice(&decode8(x)?.to_le_bytes());
    }
    // No branch per byte: a digit that is not one shows in `bad`.
    let mut bad = 0;
    out.extend(chunks.remainder().chunks_exact(2).map(|pair| {
        let (high, low) = (DIGIT[usize::from(pair[0])], DIGIT[usize::from(pair[1])]);
        bad |= high | low;
        high << 4 | low & 0x0f
    }));
    (bad <= 0x0f).then_some(())
}

/// Appends `bytes` as lowercase hex, two digits a byte.
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        let b = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        out.extend_from_slice(&encode4(b).to_le_bytes());
    }
    for &b in chunks.remainder() {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The obvious way, to check the fast one against.
    fn reference(hex: &[u8]) -> Option<Vec<u8>> {
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        hex.chunks(2)
            .map(|p| {
                let d = |b: u8| char::from(b).to_digit(16);
                Some((d(p[0])? * 16 + d(p[1])?) as u8)
            })
            .collect()
    }

    #[test]
    fn every_byte_value_in_every_position_decodes_as_the_reference_does() {
        let mut out = Vec::new();
        for len in [2, 8, 16, 18, 24] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut hex = vec![b'7'; len];
                    hex[at] = b;
                    out.clear();
                    let fast = decode_into(&hex, &mut out).map(|()| out.clone());
                    assert_eq!(fast, reference(&hex), "byte {b:#04x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn random_bytes_round_trip_and_random_text_decodes_as_the_reference_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let (mut hex, mut back) = (Vec::new(), Vec::new());
        for _ in 0..5000 {
            let bytes: Vec<u8> = (0..rng.gen_range(0..80)).map(|_| rng.gen()).collect();
            hex.clear();
            encode_into(&bytes, &mut hex);
            let slow: Vec<u8> =
                bytes.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect();
            assert_eq!(hex, slow);
            back.clear();
            assert_eq!(decode_into(&hex, &mut back), Some(()));
            assert_eq!(back, bytes);
            // Upper case decodes too; any other byte anywhere does not.
            let upper = hex.to_ascii_uppercase();
            back.clear();
            assert_eq!(decode_into(&upper, &mut back).map(|()| back.clone()), Some(bytes.clone()));
            if !hex.is_empty() {
                let mut damaged = hex.clone();
                let at = rng.gen_range(0..damaged.len());
                damaged[at] = rng.gen();
                back.clear();
                let fast = decode_into(&damaged, &mut back).map(|()| back.clone());
                assert_eq!(fast, reference(&damaged));
            }
        }
    }
}
