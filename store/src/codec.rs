//! Binary encoding for everything the store writes to disk or sends between nodes: bincode 2
//! over serde, with a hard size limit so that decoding bytes from the network or a damaged disk
//! can never allocate more than the limit (no allocation bombs).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The largest message or record the store will decode (64 MiB: a snapshot chunk, a batch of
/// raft entries, a WAL record).
pub const MAX_DECODE_BYTES: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// The most a snapshot (a group's full image, or `snapshot.bin`) may decode to.
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 40;

/// Decodes a snapshot image or file, which outgrows `MAX_DECODE_BYTES` with the group (a
/// shard of a million keys, or of many chunks of samples). Safe without that limit: the bytes
/// are all in memory already, and serde preallocates "cautiously" (at most 1 MiB per
/// sequence before elements actually decode), so a lying length prefix fails at the end of
/// the input instead of allocating what it claims; memory stays proportional to the input.
pub fn decode_snapshot<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let config = bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>();
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)?;
    if used != bytes.len() {
        return Err(Error::Storage(format!("decode: {} trailing bytes after snapshot", bytes.len() - used)));
    }
    Ok(value)
}

/// Decodes exactly one value; trailing bytes are an error (a frame holds one value).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(Error::Storage(format!("decode: {} trailing bytes after value", bytes.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Image = Vec<(Vec<u8>, Vec<u8>)>;

    /// A group image past the message limit (70 MiB): refused as a message, read as a
    /// snapshot; and a length prefix claiming far more than the input fails cleanly.
    #[test]
    fn snapshots_decode_past_the_message_limit_and_lying_lengths_fail() {
        let image: Image = (0..70).map(|i| (vec![i as u8; 8], vec![7u8; 1 << 20])).collect();
        let bytes = encode(&image).unwrap();
        assert!(bytes.len() > MAX_DECODE_BYTES);
        assert!(decode::<Image>(&bytes).is_err());
        assert_eq!(decode_snapshot::<Image>(&bytes).unwrap(), image);
        // One element whose key claims 2^39 bytes (u64 varint: 253, then 8 bytes LE).
        let mut lying = vec![1u8, 253];
        lying.extend_from_slice(&(1u64 << 39).to_le_bytes());
        lying.extend_from_slice(&[0u8; 16]);
        assert!(decode_snapshot::<Image>(&lying).is_err());
    }
}
