//! Bit-level writer and reader for the chunk codecs (most significant bit first).
//!
//! The reader never panics on short or corrupt input: every read past the end is an error, so a
//! damaged chunk on disk is reported, not a crash.

use crate::Error;

#[derive(Default)]
pub struct BitWriter {
    buf: Vec<u8>,
    /// Bits used in the last byte of `buf` (0 = the last byte is full or there is none).
    used: u8,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        BitWriter { buf: Vec::with_capacity(bytes), used: 0 }
    }

    pub fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.buf.push(0);
        }
        if bit {
            let last = self.buf.len() - 1;
            self.buf[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) & 7;
    }

    /// Writes the low `n` bits of `v` (n ≤ 64), most significant first.
    pub fn write_bits(&mut self, v: u64, mut n: u32) {
        debug_assert!(n <= 64);
        while n > 0 {
            if self.used == 0 {
                self.buf.push(0);
            }
            let free = 8 - u32::from(self.used);
            let take = free.min(n);
            let shift = n - take;
            let chunk = ((v >> shift) & ((1u64 << take) - 1)) as u8;
            let last = self.buf.len() - 1;
            self.buf[last] |= chunk << (free - take);
            self.used = ((u32::from(self.used) + take) & 7) as u8;
            n -= take;
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

pub struct BitReader<'a> {
    buf: &'a [u8],
    /// Position in bits.
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, pos: 0 }
    }

    pub fn read_bit(&mut self) -> Result<bool, Error> {
        let byte = *self.buf.get(self.pos >> 3).ok_or_else(|| Error::Corrupt("chunk ends early".into()))?;
        let bit = byte & (0x80 >> (self.pos & 7)) != 0;
        self.pos += 1;
        Ok(bit)
    }

    /// Reads `n` bits (n ≤ 64) as the low bits of the result.
    pub fn read_bits(&mut self, mut n: u32) -> Result<u64, Error> {
        debug_assert!(n <= 64);
        if self.pos + n as usize > self.buf.len() * 8 {
            return Err(Error::Corrupt("chunk ends early".into()));
        }
        // Fast path: up to 57 bits from one 8-byte big-endian load (decoding spends its time
        // here).
        let byte = self.pos >> 3;
        if n > 0 && n <= 57 && byte + 8 <= self.buf.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.buf[byte..byte + 8]);
            let off = (self.pos & 7) as u32;
            let v = (u64::from_be_bytes(w) << off) >> (64 - n);
            self.pos += n as usize;
            return Ok(v);
        }
        let mut v = 0u64;
        while n > 0 {
            let byte = self.buf[self.pos >> 3];
            let off = (self.pos & 7) as u32;
            let avail = 8 - off;
            let take = avail.min(n);
            let bits = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            v = if take == 64 { bits } else { (v << take) | bits };
            self.pos += take as usize;
            n -= take;
        }
        Ok(v)
    }

    /// Counts one bits up to a zero or `max` ones (the prefix codes of the bucketed encodings).
    pub fn read_unary(&mut self, max: u32) -> Result<u32, Error> {
        let mut n = 0;
        while n < max && self.read_bit()? {
            n += 1;
        }
        Ok(n)
    }
}

/// Appends `v` as an LEB128 varint.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

/// Reads an LEB128 varint at `*pos`, advancing it.
pub fn get_uvarint(buf: &[u8], pos: &mut usize) -> Result<u64, Error> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| Error::Corrupt("varint ends early".into()))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Corrupt("varint longer than 10 bytes".into()))
}

pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i64, Error> {
    get_uvarint(buf, pos).map(unzigzag)
}

/// Bytes `put_varint` writes for `v`.
pub fn varint_len(v: i64) -> usize {
    let bits = 64 - zigzag(v).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_len_is_what_put_varint_writes(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(varint_len(v), out.len());
        }

        #[test]
        fn bits_round_trip(items in proptest::collection::vec((any::<u64>(), 0u32..=64), 0..200)) {
            let mut w = BitWriter::default();
            for (v, n) in &items {
                w.write_bits(*v, *n);
            }
            let buf = w.into_bytes();
            let mut r = BitReader::new(&buf);
            for (v, n) in &items {
                let mask = if *n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                prop_assert_eq!(r.read_bits(*n).unwrap(), v & mask);
            }
        }

        #[test]
        fn varints_round_trip(vs in proptest::collection::vec(any::<i64>(), 0..100)) {
            let mut out = Vec::new();
            for v in &vs {
                put_varint(&mut out, *v);
            }
            let mut pos = 0;
            for v in &vs {
                prop_assert_eq!(get_varint(&out, &mut pos).unwrap(), *v);
            }
            prop_assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut r = BitReader::new(&[0xff]);
        assert!(r.read_bits(8).is_ok());
        assert!(r.read_bit().is_err());
        assert!(BitReader::new(&[0xff]).read_bits(9).is_err());
        assert!(get_uvarint(&[0x80, 0x80], &mut 0).is_err());
        assert!(get_uvarint(&[0xff; 11], &mut 0).is_err());
    }
}
