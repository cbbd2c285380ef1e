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

/// Decodes exactly one value; trailing bytes are an error (a frame holds one value).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(Error::Storage(format!("decode: {} trailing bytes after value", bytes.len() - used)));
    }
    Ok(value)
}
