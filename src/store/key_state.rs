//! The sled store's per-`(target, ordering key)` state values ([`super::Store::key_state`]):
//! free functions, called from thin methods of the sled store and its writer.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `I` | target (4), ordering key (its length (2) and bytes) | the value, as the caller encoded it |
//!
//! A value is written only in the write-ahead log record of a finish (see [`with_finish`]), so
//! it is durable exactly when that finish is, and replay after a crash restores both or
//! neither. It is never held in memory (`overlay` holds only `R`, `K` and `L` keys), and the
//! writer applies a group's other keys to sled before its ready keys and before it answers:
//! the next delivery of the key, promoted by that finish, can only be claimed once the value
//! is in sled, so reading sled directly always sees it.

use super::{keys, StoreError, TargetId};

/// The sled key of `(target, ordering key)`'s value.
pub fn key(target: TargetId, ordering_key: &str) -> Vec<u8> {
    let mut k = keys::head(target, ordering_key);
    k[0] = b'I';
    k
}

/// The value of `(target, ordering key)`, straight from sled.
pub fn read(
    db: &sled::Db,
    target: TargetId,
    ordering_key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(db.get(key(target, ordering_key))?.map(|v| v.to_vec()))
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
