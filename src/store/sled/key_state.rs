//! The embedded store's per-`(target, ordering key)` state values
//! ([`crate::store::Store::key_state`]): free functions, called from thin methods of the store
//! and its writer.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `I` | target (4), ordering key (its length (2) and bytes) | the value, as the caller encoded it |
//!
//! A value is written only in the write-ahead log record of a finish (see [`with_finish`]), so
//! it is durable exactly when that finish is, and replay after a crash restores both or
//! neither. The writer publishes a synced group's writes to the memtable before it applies the
//! group's effects to the queue, so the next delivery of the key, which that finish lets the
//! queue hand out, is claimed only once a read (memtable, then sled) sees the value.

use super::keys;
use crate::store::TargetId;

/// The sled key of `(target, ordering key)`'s value: no key is a prefix of another.
pub fn key(target: TargetId, ordering_key: &str) -> Vec<u8> {
    let bytes = ordering_key.as_bytes();
    let mut k = Vec::with_capacity(7 + bytes.len());
    k.extend_from_slice(&keys::target_prefix(b'I', target));
    k.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    k.extend_from_slice(bytes);
    k
}

/// A value to write with a finish: the sled key, and the value (`None` removes it).
#[derive(Debug)]
pub struct StateWrite {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What a finish of a delivery of `(target, ordering key)` also writes.
pub fn with_finish(target: TargetId, ordering_key: &str, value: Option<Vec<u8>>) -> StateWrite {
    StateWrite {
        key: key(target, ordering_key),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_targets_and_ordering_keys_never_collide() {
        assert_ne!(key(1, "ab"), key(2, "ab"));
        assert!(!key(1, "ab").starts_with(&key(1, "a")));
        assert_eq!(key(1, "a")[0], b'I');
    }
}
