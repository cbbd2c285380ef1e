//! Chunk encoding of one series' samples: Gorilla-style delta-of-delta timestamps, and values
//! either as Gorilla XOR floats or — when every value of the chunk is a decimal with a few
//! digits (counters, integers, gauges with two decimals) — as scaled integers with bucketed
//! deltas or deltas-of-deltas, whichever is smaller (the idea VictoriaMetrics uses).
//!
//! Contract: `decode(encode(s)) == s` bit for bit, for every f64 including NaNs (Prometheus's
//! staleness marker is a NaN with a particular payload), -0.0 and infinities. Decimal scaling is
//! used only when it reproduces every value exactly; otherwise the chunk is XOR-encoded.
//!
//! Layout: `format u8 | n uvarint | t0 varint | [t1-t0 varint]` then, by format,
//! XOR: `v0 as 8 bytes BE`; decimal: `exponent u8 | value mode u8 | m0 varint`; decimal with a
//! common factor: `exponent u8 | value mode u8 | factor uvarint | m0 varint`; then one bit
//! stream holding the timestamps' delta-of-deltas (i ≥ 2) followed by the values (i ≥ 1).
//! The format byte's high bit says the timestamps are regular (every delta-of-delta is zero):
//! they then take no bits at all. The common factor divides every delta (or delta-of-delta)
//! of the chunk: counters that grow by tenths of a second, memory by pages of 4096 bytes.
//! Chunks written before these two existed (formats 1 and 2 without the bit) still decode.

use crate::bits::{
    get_uvarint, get_varint, put_uvarint, put_varint, unzigzag, varint_len, BitReader, BitWriter,
};
use crate::Error;

const FORMAT_XOR: u8 = 1;
const FORMAT_DECIMAL: u8 = 2;
const FORMAT_DECIMAL_FACTOR: u8 = 3;
/// Set on the format byte: regular timestamps, no bits for them.
const REGULAR: u8 = 0x80;
/// A chunk whose samples may take no bits at all (regular timestamps, constant steps) holds at
/// most this many, so a header cannot make the decoder allocate without bound.
const MAX_REGULAR_SAMPLES: usize = 1 << 20;
const MODE_DELTA: u8 = 0;
const MODE_DOD: u8 = 1;

/// Largest decimal exponent of the fast path (float arithmetic), and of any decimal chunk.
const FAST_EXPONENT: u32 = 12;
const MAX_EXPONENT: u32 = 40;
/// Scaled values stay where f64 holds every integer exactly.
const MAX_MANTISSA: f64 = 9_007_199_254_740_992.0; // 2^53

/// Bucket widths for timestamp delta-of-deltas (prefix `0` is zero, `10` the first width, ...);
/// the widths Prometheus uses for millisecond timestamps.
const TS_WIDTHS: [u32; 4] = [14, 17, 20, 64];
/// Bucket widths for scaled-integer deltas.
const INT_WIDTHS: [u32; 5] = [7, 12, 20, 32, 64];

/// A sample: timestamp in milliseconds since the epoch, value.
pub type Sample = (i64, f64);

/// The samples of `parts` in `[mint, maxt]`, sorted by time; of two samples with one timestamp
/// the one in the later part (or later in its part) wins, as a later write replaces an earlier
/// one. Sealed blocks are merged with it at read time (oldest batch first), and a sealed batch's
/// series before sealing (a single part), so both follow the plain store's rule.
pub fn merge_last_wins(parts: Vec<Vec<Sample>>, mint: i64, maxt: i64) -> Vec<Sample> {
    let mut all: Vec<Sample> = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for p in parts {
        all.extend(p.into_iter().filter(|s| s.0 >= mint && s.0 <= maxt));
    }
    // Stable: equal timestamps keep their order, so the last of a run is the latest write.
    all.sort_by_key(|s| s.0);
    let mut out: Vec<Sample> = Vec::with_capacity(all.len());
    for s in all {
        match out.last_mut() {
            Some(last) if last.0 == s.0 => *last = s,
            _ => out.push(s),
        }
    }
    out
}

/// Encodes samples (timestamps strictly increasing; the caller guarantees it): XOR, or the
/// decimal form when every value has one and it is smaller.
pub fn encode(samples: &[Sample]) -> Vec<u8> {
    let mut best = Vec::with_capacity(16 + samples.len() * 8);
    encode_xor(samples, &mut best);
    if let Some((k, ms)) = decimals(samples) {
        let mut d = Vec::with_capacity(16 + samples.len() * 4);
        encode_decimal(samples, &ms, k, &mut d);
        if d.len() < best.len() {
            best = d;
        }
    }
    best
}

/// For write batches (the raft entries): the decimal form when plain float arithmetic finds
/// it (counters, integers, few-decimal gauges), else XOR — no search for the shortest digits
/// of full-precision values, which costs more CPU than the bytes it saves in a log entry that
/// lives only until the next snapshot. Chunks use `encode`.
pub fn encode_fast(samples: &[Sample]) -> Vec<u8> {
    if let Some((k, ms)) = fast_decimals(samples) {
        let mut d = Vec::with_capacity(16 + samples.len() * 4);
        encode_decimal(samples, &ms, k, &mut d);
        return d;
    }
    encode_xor_only(samples)
}

/// XOR encoding only: no search for a decimal form (for transient uses such as sending
/// selected samples to a peer, where encoding speed matters more than size).
pub fn encode_xor_only(samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + samples.len() * 8);
    encode_xor(samples, &mut out);
    out
}

/// Whether the timestamps may be written as regular (no bits per sample).
fn regular(samples: &[Sample]) -> bool {
    samples.len() <= MAX_REGULAR_SAMPLES
        && samples.len() > 2
        && samples.windows(3).all(|w| w[2].0.wrapping_sub(w[1].0) == w[1].0.wrapping_sub(w[0].0))
}

fn header(samples: &[Sample], format: u8, out: &mut Vec<u8>) {
    out.push(format);
    put_uvarint(out, samples.len() as u64);
    if let Some(&(t0, _)) = samples.first() {
        put_varint(out, t0);
    }
    if samples.len() > 1 {
        put_varint(out, samples[1].0.wrapping_sub(samples[0].0));
    }
}

fn write_timestamps(samples: &[Sample], w: &mut BitWriter) {
    if samples.len() < 3 {
        return;
    }
    let mut delta = samples[1].0.wrapping_sub(samples[0].0);
    for pair in samples[1..].windows(2) {
        let d = pair[1].0.wrapping_sub(pair[0].0);
        write_bucketed(w, d.wrapping_sub(delta), &TS_WIDTHS);
        delta = d;
    }
}

fn encode_xor(samples: &[Sample], out: &mut Vec<u8>) {
    let regular = regular(samples);
    header(samples, FORMAT_XOR | if regular { REGULAR } else { 0 }, out);
    let Some(&(_, v0)) = samples.first() else { return };
    out.extend_from_slice(&v0.to_bits().to_be_bytes());
    let mut w = BitWriter::with_capacity(samples.len() * 4);
    if !regular {
        write_timestamps(samples, &mut w);
    }
    let mut prev = v0.to_bits();
    // The previous window of meaningful bits, reused when the next XOR fits in it.
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for &(_, v) in &samples[1..] {
        let bits = v.to_bits();
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.write_bit(false);
            continue;
        }
        w.write_bit(true);
        let l = x.leading_zeros().min(31);
        let t = x.trailing_zeros();
        if lead != u32::MAX && l >= lead && t >= trail {
            w.write_bit(false);
            w.write_bits(x >> trail, 64 - lead - trail);
        } else {
            w.write_bit(true);
            let sig = 64 - l - t;
            w.write_bits(u64::from(l), 5);
            // 64 significant bits is stored as 0 (it does not fit 6 bits; 0 cannot occur).
            w.write_bits(u64::from(sig & 63), 6);
            w.write_bits(x >> t, sig);
            lead = l;
            trail = t;
        }
    }
    out.extend_from_slice(&w.into_bytes());
}

/// The smallest exponent k such that every value is exactly `m / 10^k` for an integer m with
/// |m| ≤ 2^53, or None (the fast path: plain float arithmetic).
fn decimal_exponent(samples: &[Sample]) -> Option<u32> {
    let mut k = 0u32;
    for &(_, v) in samples {
        if !v.is_finite() {
            return None;
        }
        while k <= FAST_EXPONENT && scaled(v, k).is_none() {
            k += 1;
        }
        if k > FAST_EXPONENT {
            return None;
        }
    }
    // A larger exponent found later must also reproduce the earlier values.
    samples.iter().all(|&(_, v)| scaled(v, k).is_some()).then_some(k)
}

/// `v * 10^k` as an integer if dividing it back gives `v` bit for bit.
fn scaled(v: f64, k: u32) -> Option<i64> {
    let p = POW10[k as usize];
    let m = (v * p).round();
    if m.abs() > MAX_MANTISSA {
        return None;
    }
    // Through the integer, as the decoder goes: -0.0 becomes 0 and must not pass.
    let m = m as i64;
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

/// Exact powers of ten as f64 (10^22 is the largest exact one).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// `v` as `digits × 10^exp` with the shortest digits that read back as `v` (what `{:e}` prints),
/// or None for non-finite values and -0.0.
fn shortest_decimal(v: f64) -> Option<(i64, i32)> {
    if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
        return None;
    }
    // Ryu's shortest round-trip digits ("51.60212854816802", "1e21", "1.5e-7"): this runs for
    // every value of a chunk being cut, so no allocation and no slow formatting.
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v).as_bytes();
    let (mant, exp) = match s.iter().position(|&c| c == b'e' || c == b'E') {
        Some(e) => (&s[..e], std::str::from_utf8(&s[e + 1..]).ok()?.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (mut d, mut neg, mut frac, mut dot) = (0i64, false, 0i32, false);
    for &c in mant {
        match c {
            b'-' => neg = true,
            b'.' => dot = true,
            b'0'..=b'9' => {
                d = d.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
                frac += i32::from(dot);
            }
            _ => return None,
        }
    }
    let mut e = exp - frac;
    while d != 0 && d % 10 == 0 {
        d /= 10;
        e += 1;
    }
    Some((if neg { -d } else { d }, e))
}

/// The value `m / 10^k`, correctly rounded (so exactly the value whose shortest digits made it).
fn unscale(m: i64, k: u32) -> f64 {
    if m.unsigned_abs() <= 1 << 53 && (k as usize) < POW10.len() {
        return m as f64 / POW10[k as usize];
    }
    if let Some(v) = divide_rounded(m, k) {
        return v;
    }
    // Beyond both fast paths: parse the decimal, which rounds correctly.
    let mut buf = [0u8; 48];
    let mut w = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut w, format_args!("{m}e-{k}"));
    let n = w.position() as usize;
    std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

/// `m / 10^k` correctly rounded (to nearest, ties to even) by 128-bit integer division, when
/// the quotient keeps enough bits for that (|m| ≥ 2^53 and k ≤ 17 always do); None otherwise.
/// The common case for full-precision values, whose mantissas pass 2^53: parsing them as text
/// was half of a query's time.
fn divide_rounded(m: i64, k: u32) -> Option<f64> {
    if k > 38 || m == 0 {
        return None;
    }
    let n = u128::from(m.unsigned_abs());
    let d = 10u128.pow(k);
    // q = floor(n · 2^64 / d): the quotient as a fixed-point number with 64 fraction bits.
    let (q, r) = ((n << 64) / d, (n << 64) % d);
    let bits = 128 - q.leading_zeros();
    // 53 mantissa bits plus a guard bit must come from q itself.
    if bits < 55 {
        return None;
    }
    let drop = bits - 53;
    let mut mant = (q >> drop) as u64;
    let rest = q & ((1u128 << drop) - 1);
    let half = 1u128 << (drop - 1);
    if rest > half || (rest == half && (r != 0 || mant & 1 == 1)) {
        mant += 1;
    }
    // mant ≤ 2^53 and a power of two scale: both exact in f64. The scale is built from its
    // bits (2^e for -64 ≤ e < 64 is a normal number), not by powi.
    let e = i64::from(drop) - 64;
    let scale = f64::from_bits(((e + 1023) as u64) << 52);
    let v = mant as f64 * scale;
    Some(if m < 0 { -v } else { v })
}

/// Every value as `m_i / 10^k` with one k and |m_i| < 2^63, exactly; or None.
/// The decimal form by plain float arithmetic alone (`decimal_exponent`), if there is one.
fn fast_decimals(samples: &[Sample]) -> Option<(u32, Vec<i64>)> {
    let k = decimal_exponent(samples)?;
    Some((k, samples.iter().map(|&(_, v)| scaled(v, k).unwrap_or_default()).collect()))
}

fn decimals(samples: &[Sample]) -> Option<(u32, Vec<i64>)> {
    if let Some(d) = fast_decimals(samples) {
        return Some(d);
    }
    // Values with more digits (full-precision floats from text, e.g. 51.60212854816802): the
    // shortest decimal digits, scaled to a common exponent (VictoriaMetrics's idea, kept exact).
    let parts: Vec<(i64, i32)> = samples.iter().map(|&(_, v)| shortest_decimal(v)).collect::<Option<_>>()?;
    let k = parts.iter().map(|&(_, e)| -e).max()?.max(0);
    if k > MAX_EXPONENT as i32 {
        return None;
    }
    let mut ms = Vec::with_capacity(parts.len());
    for (&(d, e), &(_, v)) in parts.iter().zip(samples) {
        let m = d.checked_mul(10i64.checked_pow((k + e) as u32)?)?;
        if unscale(m, k as u32).to_bits() != v.to_bits() {
            return None;
        }
        ms.push(m);
    }
    Some((k as u32, ms))
}

/// Per-value codes for a decimal chunk's integers: deltas or delta-of-deltas, each either in
/// bucketed prefix codes (small, uneven values: counters, gauges) or packed at one width per
/// chunk (large, even values: random walks at full precision) — zigzag values in format 2,
/// offsets from the chunk's minimum in format 3.
const MODE_PACKED_DELTA: u8 = 2;
const MODE_PACKED_DOD: u8 = 3;

/// Frame of reference (format 3's packed modes): the smallest x, and the width of `x - min`
/// — a counter's steps of 0..14 take 4 bits, where zigzag needs 5.
fn frame_of_reference(xs: &[i64]) -> (i64, u32) {
    let (Some(&min), Some(&max)) = (xs.iter().min(), xs.iter().max()) else { return (0, 0) };
    (min, 64 - (max.wrapping_sub(min) as u64).leading_zeros())
}

/// The largest factor dividing every x (1 if all are zero, or if one is `i64::MIN`, whose
/// magnitude does not fit).
fn common_factor(xs: &[i64]) -> u64 {
    let mut g = 0u64;
    for &x in xs {
        if x == i64::MIN {
            return 1;
        }
        let (mut a, mut b) = (g, x.unsigned_abs());
        while b != 0 {
            (a, b) = (b, a % b);
        }
        g = a;
        if g == 1 {
            break;
        }
    }
    g.max(1)
}

fn encode_decimal(samples: &[Sample], ms: &[i64], k: u32, out: &mut Vec<u8>) {
    let regular = regular(samples);
    header(samples, FORMAT_DECIMAL_FACTOR | if regular { REGULAR } else { 0 }, out);
    let deltas: Vec<i64> = ms.windows(2).map(|p| p[1].wrapping_sub(p[0])).collect();
    let dods: Vec<i64> = std::iter::once(deltas.first().copied().unwrap_or(0))
        .chain(deltas.windows(2).map(|p| p[1].wrapping_sub(p[0])))
        .take(deltas.len())
        .collect();
    // Each sequence divided by its common factor (exact: the factor divides every element).
    let divided = |xs: Vec<i64>| {
        let g = common_factor(&xs);
        let q: Vec<i64> = xs.iter().map(|&x| x / g as i64).collect();
        (g, q)
    };
    let (deltas, dods) = (divided(deltas), divided(dods));
    let bucketed = |xs: &[i64]| xs.iter().map(|&x| bucketed_cost(x, &INT_WIDTHS)).sum::<u64>();
    let packed = |xs: &[i64]| {
        let (min, width) = frame_of_reference(xs);
        8 + 8 * varint_len(min) as u64 + u64::from(width) * xs.len() as u64
    };
    let options = [
        (MODE_DELTA, bucketed(&deltas.1)),
        (MODE_DOD, bucketed(&dods.1)),
        (MODE_PACKED_DELTA, packed(&deltas.1)),
        (MODE_PACKED_DOD, packed(&dods.1)),
    ];
    let (mode, _) = options.iter().copied().min_by_key(|o| o.1).unwrap_or((MODE_DELTA, 0));
    let (g, xs) = if mode == MODE_DOD || mode == MODE_PACKED_DOD { dods } else { deltas };
    let packed = mode == MODE_PACKED_DELTA || mode == MODE_PACKED_DOD;
    let (min, width) = frame_of_reference(&xs);
    out.push(k as u8);
    out.push(mode);
    put_uvarint(out, g);
    put_varint(out, ms.first().copied().unwrap_or(0));
    if packed {
        put_varint(out, min);
    }
    let mut w = BitWriter::with_capacity(samples.len() * 2);
    if !regular {
        write_timestamps(samples, &mut w);
    }
    if packed {
        w.write_bits(u64::from(width), 8);
        for x in xs {
            w.write_bits(x.wrapping_sub(min) as u64, width);
        }
    } else {
        for x in xs {
            write_bucketed(&mut w, x, &INT_WIDTHS);
        }
    }
    out.extend_from_slice(&w.into_bytes());
}

/// Whether `x` fits `bits` bits as two's complement.
fn fits(x: i64, bits: u32) -> bool {
    bits >= 64 || (-(1i64 << (bits - 1))..(1i64 << (bits - 1))).contains(&x)
}

fn bucketed_cost(x: i64, widths: &[u32]) -> u64 {
    if x == 0 {
        return 1;
    }
    for (i, &b) in widths.iter().enumerate() {
        if fits(x, b) {
            let prefix = if i + 1 == widths.len() { i + 1 } else { i + 2 };
            return (prefix as u64) + u64::from(b);
        }
    }
    unreachable!("the last width is 64")
}

/// `0` for zero; else i ones, a zero (omitted for the last bucket), and x in widths[i] bits.
fn write_bucketed(w: &mut BitWriter, x: i64, widths: &[u32]) {
    if x == 0 {
        w.write_bit(false);
        return;
    }
    for (i, &b) in widths.iter().enumerate() {
        if fits(x, b) {
            for _ in 0..=i {
                w.write_bit(true);
            }
            if i + 1 < widths.len() {
                w.write_bit(false);
            }
            let mask = if b == 64 { u64::MAX } else { (1u64 << b) - 1 };
            w.write_bits(x as u64 & mask, b);
            return;
        }
    }
}

fn read_bucketed(r: &mut BitReader, widths: &[u32]) -> Result<i64, Error> {
    let ones = r.read_unary(widths.len() as u32)?;
    if ones == 0 {
        return Ok(0);
    }
    let b = widths[ones as usize - 1];
    let raw = r.read_bits(b)?;
    // Sign-extend from b bits.
    Ok(if b == 64 { raw as i64 } else { ((raw << (64 - b)) as i64) >> (64 - b) })
}

/// Number of samples in a chunk, read from its header.
pub fn count(buf: &[u8]) -> Result<usize, Error> {
    let mut pos = 1;
    Ok(get_uvarint(buf, &mut pos)? as usize)
}

/// Decodes a chunk. Corrupt input is an error, never a panic.
pub fn decode(buf: &[u8]) -> Result<Vec<Sample>, Error> {
    let mut out = Vec::new();
    decode_into(buf, &mut out)?;
    Ok(out)
}

/// Decodes a chunk, appending its samples to `out` (left as it was on error).
pub fn decode_into(buf: &[u8], out: &mut Vec<Sample>) -> Result<(), Error> {
    let start = out.len();
    let res = decode_appending(buf, out);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn decode_appending(buf: &[u8], out: &mut Vec<Sample>) -> Result<(), Error> {
    let byte = *buf.first().ok_or_else(|| Error::Corrupt("empty chunk".into()))?;
    let (format, regular) = (byte & !REGULAR, byte & REGULAR != 0);
    let mut pos = 1;
    let n = get_uvarint(buf, &mut pos)?;
    // Irregular: every sample after the first takes at least one bit (its timestamp's code).
    // Regular: a packed constant step takes none, and the encoder's cap is the bound.
    let bound = if regular { MAX_REGULAR_SAMPLES as u64 } else { 1 + (buf.len() as u64) * 8 };
    if n > bound {
        return Err(Error::Corrupt(format!("chunk claims {n} samples in {} bytes", buf.len())));
    }
    let n = n as usize;
    if n == 0 {
        return Ok(());
    }
    let t0 = get_varint(buf, &mut pos)?;
    let d1 = if n > 1 { get_varint(buf, &mut pos)? } else { 0 };
    let mut ts = Vec::with_capacity(n);
    ts.push(t0);
    match format {
        FORMAT_XOR => {
            let raw = buf.get(pos..pos + 8).ok_or_else(|| Error::Corrupt("chunk ends early".into()))?;
            let v0 =
                u64::from_be_bytes(raw.try_into().map_err(|_| Error::Corrupt("chunk ends early".into()))?);
            pos += 8;
            let mut r = BitReader::new(&buf[pos..]);
            read_timestamps(&mut r, n, d1, regular, &mut ts)?;
            let mut vs = Vec::with_capacity(n);
            vs.push(v0);
            let (mut lead, mut trail) = (0u32, 0u32);
            let mut prev = v0;
            for _ in 1..n {
                if r.read_bit()? {
                    if r.read_bit()? {
                        lead = r.read_bits(5)? as u32;
                        let mut sig = r.read_bits(6)? as u32;
                        if sig == 0 {
                            sig = 64;
                        }
                        if lead + sig > 64 {
                            return Err(Error::Corrupt("XOR window wider than 64 bits".into()));
                        }
                        trail = 64 - lead - sig;
                    }
                    let sig = 64 - lead - trail;
                    prev ^= r.read_bits(sig)? << trail;
                }
                vs.push(prev);
            }
            out.extend(ts.into_iter().zip(vs.into_iter().map(f64::from_bits)));
            Ok(())
        }
        FORMAT_DECIMAL | FORMAT_DECIMAL_FACTOR => {
            let k = u32::from(*buf.get(pos).ok_or_else(|| Error::Corrupt("chunk ends early".into()))?);
            let mode = *buf.get(pos + 1).ok_or_else(|| Error::Corrupt("chunk ends early".into()))?;
            pos += 2;
            if k > MAX_EXPONENT || mode > MODE_PACKED_DOD {
                return Err(Error::Corrupt(format!("decimal chunk with exponent {k}, mode {mode}")));
            }
            let g = if format == FORMAT_DECIMAL_FACTOR { get_uvarint(buf, &mut pos)? } else { 1 };
            let g = i64::try_from(g)
                .ok()
                .filter(|&g| g >= 1)
                .ok_or_else(|| Error::Corrupt(format!("decimal chunk with factor {g}")))?;
            let m0 = get_varint(buf, &mut pos)?;
            let packed = mode == MODE_PACKED_DELTA || mode == MODE_PACKED_DOD;
            // Format 3 packs offsets from a minimum; format 2 packed zigzag values.
            let min = if packed && format == FORMAT_DECIMAL_FACTOR {
                Some(get_varint(buf, &mut pos)?)
            } else {
                None
            };
            let mut r = BitReader::new(&buf[pos..]);
            read_timestamps(&mut r, n, d1, regular, &mut ts)?;
            let dod = mode == MODE_DOD || mode == MODE_PACKED_DOD;
            let width = if packed && n > 1 { r.read_bits(8)? as u32 } else { 0 };
            if width > 64 {
                return Err(Error::Corrupt(format!("packed width {width}")));
            }
            // The integers first, then one pass dividing them: when every one is exact as an
            // f64 the pass is a plain division the compiler vectorizes.
            let mut ms = Vec::with_capacity(n);
            ms.push(m0);
            let (mut m, mut delta) = (m0, 0i64);
            let mut widest = m0.unsigned_abs();
            for _ in 1..n {
                let x = match (packed, min) {
                    (true, Some(min)) => min.wrapping_add(r.read_bits(width)? as i64),
                    (true, None) => unzigzag(r.read_bits(width)?),
                    (false, _) => read_bucketed(&mut r, &INT_WIDTHS)?,
                };
                let x = x.wrapping_mul(g);
                delta = if dod { delta.wrapping_add(x) } else { x };
                m = m.wrapping_add(delta);
                widest = widest.max(m.unsigned_abs());
                ms.push(m);
            }
            out.reserve(n);
            match POW10.get(k as usize) {
                Some(&p) if widest <= 1 << 53 => {
                    out.extend(ts.iter().zip(&ms).map(|(&t, &m)| (t, m as f64 / p)));
                }
                _ => out.extend(ts.iter().zip(&ms).map(|(&t, &m)| (t, unscale(m, k)))),
            }
            Ok(())
        }
        other => Err(Error::Corrupt(format!("unknown chunk format {other}"))),
    }
}

fn read_timestamps(
    r: &mut BitReader,
    n: usize,
    d1: i64,
    regular: bool,
    ts: &mut Vec<i64>,
) -> Result<(), Error> {
    if n < 2 {
        return Ok(());
    }
    let mut t = ts[0].wrapping_add(d1);
    ts.push(t);
    let mut delta = d1;
    for _ in 2..n {
        if !regular {
            delta = delta.wrapping_add(read_bucketed(r, &TS_WIDTHS)?);
        }
        t = t.wrapping_add(delta);
        ts.push(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    fn sorted_ts(mut ts: Vec<i64>) -> Vec<i64> {
        ts.sort_unstable();
        ts.dedup();
        ts
    }

    proptest! {
        /// Against a model: writing parts in order into a map, a later write replacing.
        #[test]
        fn merge_keeps_the_latest_write(parts in proptest::collection::vec(
            proptest::collection::vec((0i64..40, -5i32..5), 0..20), 0..6), mint in 0i64..20, len in 0i64..30) {
            let maxt = mint + len;
            let parts: Vec<Vec<Sample>> =
                parts.into_iter().map(|p| p.into_iter().map(|(t, v)| (t, f64::from(v))).collect()).collect();
            let mut model = std::collections::BTreeMap::new();
            for p in &parts {
                for &(t, v) in p {
                    if t >= mint && t <= maxt {
                        model.insert(t, v);
                    }
                }
            }
            let want: Vec<Sample> = model.into_iter().collect();
            prop_assert_eq!(merge_last_wins(parts, mint, maxt), want);
        }

        #[test]
        fn any_floats_round_trip(ts in proptest::collection::vec(any::<i64>(), 0..300), seed in any::<u64>()) {
            let ts = sorted_ts(ts);
            let mut x = seed;
            let s: Vec<Sample> = ts.iter().map(|&t| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (t, f64::from_bits(x))
            }).collect();
            prop_assert!(same(&decode(&encode(&s)).unwrap(), &s));
        }

        #[test]
        fn decimals_round_trip(start in -1_000_000_000i64..1_000_000_000, step in 1i64..100_000,
                               jitter in proptest::collection::vec(-50i64..50, 1..300),
                               cents in proptest::collection::vec(-100_000i64..100_000, 1..300),
                               k in 0u32..4) {
            let n = jitter.len().min(cents.len());
            let s: Vec<Sample> = (0..n).map(|i| {
                let t = start + step * 100 * i as i64 + jitter[i];
                (t, cents[i] as f64 / 10f64.powi(k as i32))
            }).collect();
            let e = encode(&s);
            prop_assert!(same(&decode(&e).unwrap(), &s));
        }

        #[test]
        fn counters_round_trip(incs in proptest::collection::vec(0u32..1000, 1..500)) {
            let mut c = 0f64;
            let s: Vec<Sample> = incs.iter().enumerate().map(|(i, &d)| {
                c += f64::from(d);
                (1_700_000_000_000 + 15_000 * i as i64, c)
            }).collect();
            prop_assert!(same(&decode(&encode(&s)).unwrap(), &s));
        }

        #[test]
        fn full_precision_walks_round_trip_as_decimals(seed in any::<u64>(), start in 0.0f64..100.0) {
            // TSBS-like: a random walk written at full precision (shortest digits).
            let mut x = seed | 1;
            let mut v = start;
            let s: Vec<Sample> = (0..240).map(|i| {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                v = (v + (x % 2001) as f64 / 1000.0 - 1.0).clamp(0.0, 100.0);
                (i * 10_000, v)
            }).collect();
            let e = encode(&s);
            prop_assert!(same(&decode(&e).unwrap(), &s));
        }

        #[test]
        fn integer_division_rounds_like_the_parser(m in any::<i64>(), k in 0u32..=24) {
            let parsed: f64 = format!("{m}e-{k}").parse().unwrap();
            if let Some(v) = divide_rounded(m, k) {
                prop_assert_eq!(v.to_bits(), parsed.to_bits(), "{}e-{}", m, k);
            }
            prop_assert_eq!(unscale(m, k).to_bits(), parsed.to_bits());
        }

        #[test]
        fn corrupt_chunks_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncated_chunks_are_errors(cut in 1usize..40) {
            let s: Vec<Sample> = (0..50).map(|i| (i * 10_000, (i as f64).sin())).collect();
            let e = encode(&s);
            let cut = cut.min(e.len() - 1);
            prop_assert!(decode(&e[..e.len() - cut]).is_err());
            // Appending decode leaves what was there, and nothing else, on error.
            let mut out = vec![(-1, 0.5)];
            prop_assert!(decode_into(&e[..e.len() - cut], &mut out).is_err());
            prop_assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn special_values_survive() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let s = vec![
            (0, 1.0),
            (1, f64::NAN),
            (2, stale),
            (3, f64::INFINITY),
            (4, f64::NEG_INFINITY),
            (5, -0.0),
            (6, f64::MIN_POSITIVE),
            (7, f64::MAX),
        ];
        assert!(same(&decode(&encode(&s)).unwrap(), &s));
        // -0.0 is not a decimal (scaling loses its sign): that chunk must be XOR.
        let z = vec![(0, 1.0), (1, -0.0)];
        assert_eq!(encode(&z)[0], FORMAT_XOR);
        assert!(same(&decode(&encode(&z)).unwrap(), &z));
    }

    #[test]
    fn regular_series_are_small() {
        // A constant series at a fixed interval: a header, no bits per sample.
        let s: Vec<Sample> = (0..1000).map(|i| (1_700_000_000_000 + i * 10_000, 42.0)).collect();
        let e = encode(&s);
        assert_eq!(e[0], FORMAT_DECIMAL_FACTOR | REGULAR);
        assert!(e.len() < 24, "{} bytes", e.len());
        assert!(same(&decode(&e).unwrap(), &s));
        // One late timestamp: no longer regular, a bit per sample for the timestamps.
        let mut j = s.clone();
        j[500].0 += 1;
        let e = encode(&j);
        assert_eq!(e[0], FORMAT_DECIMAL_FACTOR);
        assert!(e.len() > 1000 / 8, "{} bytes", e.len());
        assert!(same(&decode(&e).unwrap(), &j));
        // A gauge with two decimals.
        let g: Vec<Sample> = (0..1000)
            .map(|i| (1_700_000_000_000 + i * 10_000, (2000 + (i * 37) % 500) as f64 / 100.0))
            .collect();
        let e = encode(&g);
        assert_eq!(e[0], FORMAT_DECIMAL_FACTOR | REGULAR);
        assert!(same(&decode(&e).unwrap(), &g));
    }

    #[test]
    fn a_common_factor_of_the_steps_costs_nothing() {
        // A counter growing by tenths with two decimals shown (like node_cpu_seconds_total at
        // 10 s), and memory moving by pages: the steps' factor (10, 4096) is divided out.
        let mut x = 7u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut c, mut m) = (123_456i64, 8i64 << 30);
        let mut counter = vec![];
        let mut memory = vec![];
        for i in 0..1000 {
            c += 10 * next(15) as i64;
            m += 4096 * (next(257) as i64 - 128);
            counter.push((i * 10_000, c as f64 / 100.0));
            memory.push((i * 10_000, m as f64));
        }
        // 15 step values take 4 bits packed; 257 take 9.
        for (s, bits) in [(&counter, 4), (&memory, 9)] {
            let e = encode(s);
            assert!(same(&decode(&e).unwrap(), s));
            assert!(e.len() <= 1000 * bits / 8 + 24, "{} bytes for {bits} bits a sample", e.len());
        }
        assert_eq!(common_factor(&[0, 0]), 1);
        assert_eq!(common_factor(&[-20, 30, 0]), 10);
        assert_eq!(common_factor(&[i64::MIN, 2]), 1);
    }

    #[test]
    fn chunks_of_the_earlier_layout_still_decode() {
        // Written by the encoder before regular timestamps and common factors (format 2).
        let small = [
            2u8, 6, 128, 160, 171, 254, 249, 98, 162, 156, 1, 1, 1, 200, 1, 191, 254, 128, 2, 191, 254, 128,
            2, 129, 128,
        ];
        let want: Vec<Sample> = (0..6)
            .map(|i| (1_700_000_000_000 + i * 10_000 + (i % 2), (1000 + i * 30) as f64 / 100.0))
            .collect();
        assert!(same(&decode(&small).unwrap(), &want));
        let long = [
            2u8, 6, 128, 160, 171, 254, 249, 98, 160, 156, 1, 16, 2, 0, 3, 110, 242, 145, 39, 176, 253, 58,
            132, 209, 193, 123, 168, 47, 120, 218, 84, 67, 109, 153, 221, 7, 252, 209, 215, 207, 179, 144,
            51, 151, 36, 184, 76, 151, 115, 64,
        ];
        let want: Vec<Sample> = (0..6).map(|i| (1_700_000_000_000 + i * 10_000, (i as f64).sin())).collect();
        assert!(same(&decode(&long).unwrap(), &want));
    }

    #[test]
    fn long_decimals_beat_xor_and_stay_exact() {
        // Values with 16-17 significant digits: mantissas beyond 2^53 take the exact parse path.
        let s: Vec<Sample> = (0..240)
            .map(|i| {
                (i * 10_000, format!("{}", 51.60212854816802 + (i as f64) * 0.73).parse::<f64>().unwrap())
            })
            .collect();
        let mut xor = Vec::new();
        encode_xor(&s, &mut xor);
        let e = encode(&s);
        assert_eq!(e[0] & !REGULAR, FORMAT_DECIMAL_FACTOR);
        assert!(e.len() < xor.len(), "decimal {} vs XOR {}", e.len(), xor.len());
        assert!(same(&decode(&e).unwrap(), &s));
        assert_eq!(unscale(5_160_212_854_816_802, 14), 51.60212854816802);
        assert_eq!(unscale(-12_345_678_901_234_567, 17), -0.12345678901234567);
    }

    #[test]
    fn a_header_claiming_too_many_samples_is_refused() {
        let mut e = encode(&[(0, 1.0), (1, 2.0)]);
        e[1] = 0xff;
        e.insert(2, 0x7f);
        assert!(decode(&e).is_err());
        // A regular constant chunk takes no bits per sample: its claim is capped instead.
        let s: Vec<Sample> = (0..10).map(|i| (i * 1000, 5.0)).collect();
        let mut e = encode(&s);
        assert_ne!(e[0] & REGULAR, 0);
        let mut claim = vec![];
        put_uvarint(&mut claim, MAX_REGULAR_SAMPLES as u64 + 1);
        e.splice(1..2, claim);
        assert!(decode(&e).unwrap_err().to_string().contains("claims"));
    }
}
