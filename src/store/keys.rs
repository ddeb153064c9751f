//! Key layout of the single sled tree. One tree keeps every write of a request inside one
//! atomic batch. Integers are big-endian so byte order is numeric order.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `E` | event id (16) | the event's entry: where its body lies in the log and the seqs of its deliveries (see `wal::Pointer`); in stores written before entries, a pointer alone or the event inline (see `codec`) |
//! | `V` | event id (16), seq (8) | empty: the deliveries of an event whose `E` value is not an entry (read, never written for new events) |
//! | `D` | source, 0, dedup key | expiry ms (8), event id (16) |
//! | `Y` | expiry ms (8), `D` key | empty: dedup keys by expiry, in stores written before pruning swept `D` itself (drained by pruning, never written) |
//! | `L` | seq (8) | delivery record |
//! | `A` | seq (8), attempt (4) | attempt record |
//! | `R` | target (4), due ms (8), seq (8) | empty: the ready index, heads of ordering keys only |
//! | `K` | target (4), ordering key | seq (8) of the key's head |
//! | `F` | target (4), ordering key, seq (8) | empty: followers waiting behind the head |
//! | `X` | target (4), dead ms (8), seq (8) | empty: dead letters |
//! | `T` | target name | target id (4) |
//! | `S` | target (4) | target state |
//! | `C` | target (4) | pending (8), dead (8) |
//! | `I` | target (4), ordering key | a key's state value (see `key_state`) |
//! | `M` | `seq` | the next delivery seq (8), written by pruning (opening takes the larger of it and the seq after the last `L`) |
//! | `G` | log segment (8, its first LSN) | event bodies (8) stored in it and not yet pruned |
//! | `M` | `wal` | the LSN (8) of the last write-ahead log record applied, written with every group applied |
//!
//! An ordering key is written as its length (2) and bytes, so no key is a prefix of another.
//!
//! `R`, `K` and `L` keys of young pending deliveries may be held in memory for a moment before
//! sled gets them (see `overlay`); readers of those kinds look in both places.

use super::{Seq, TargetId};

/// Ordering keys are cut to this many bytes (VictorOps caps `entity_id` at 512 characters).
pub const MAX_ORDERING_KEY: usize = 512;

pub fn event(id: &[u8; 16]) -> Vec<u8> {
    [b"E".as_slice(), id].concat()
}

pub fn event_delivery(id: &[u8; 16], seq: Seq) -> Vec<u8> {
    [b"V".as_slice(), id, &seq.to_be_bytes()].concat()
}

pub fn event_deliveries(id: &[u8; 16]) -> Vec<u8> {
    [b"V".as_slice(), id].concat()
}

pub fn dedup(source: &str, key: &str) -> Vec<u8> {
    [b"D".as_slice(), source.as_bytes(), &[0], key.as_bytes()].concat()
}

pub fn dedup_expiry(until_ms: u64, dedup_key: &[u8]) -> Vec<u8> {
    [b"Y".as_slice(), &until_ms.to_be_bytes(), dedup_key].concat()
}

/// Where the next delivery seq is kept.
pub const NEXT_SEQ: &[u8] = b"Mseq";

pub fn live_bodies(segment: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'G';
    k[1..].copy_from_slice(&segment.to_be_bytes());
    k
}

/// Where the last applied write-ahead log record's LSN is kept.
pub const APPLIED_LSN: &[u8] = b"Mwal";

pub fn delivery(seq: Seq) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'L';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn attempt(seq: Seq, n: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'A';
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn attempts(seq: Seq) -> [u8; 9] {
    let mut k = delivery(seq);
    k[0] = b'A';
    k
}

fn timed(tag: u8, target: TargetId, ms: u64, seq: Seq) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = tag;
    k[1..5].copy_from_slice(&target.to_be_bytes());
    k[5..13].copy_from_slice(&ms.to_be_bytes());
    k[13..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn ready(target: TargetId, due_ms: u64, seq: Seq) -> [u8; 21] {
    timed(b'R', target, due_ms, seq)
}

pub fn dead(target: TargetId, at_ms: u64, seq: Seq) -> [u8; 21] {
    timed(b'X', target, at_ms, seq)
}

pub fn target_prefix(tag: u8, target: TargetId) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = tag;
    k[1..].copy_from_slice(&target.to_be_bytes());
    k
}

/// `(ms, seq)` from a `R` or `X` key.
pub fn parse_timed(key: &[u8]) -> Option<(u64, Seq)> {
    if key.len() != 21 {
        return None;
    }
    let ms = u64::from_be_bytes(key[5..13].try_into().ok()?);
    let seq = u64::from_be_bytes(key[13..].try_into().ok()?);
    Some((ms, seq))
}

pub fn head(target: TargetId, ordering_key: &str) -> Vec<u8> {
    let key = ordering_key.as_bytes();
    let mut k = Vec::with_capacity(7 + key.len());
    k.extend_from_slice(&target_prefix(b'K', target));
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The prefix of a key's followers; a follower's key is this plus its seq.
pub fn followers(target: TargetId, ordering_key: &str) -> Vec<u8> {
    let mut k = head(target, ordering_key);
    k[0] = b'F';
    k
}

pub fn follower(target: TargetId, ordering_key: &str, seq: Seq) -> Vec<u8> {
    let mut k = followers(target, ordering_key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn target_name(name: &str) -> Vec<u8> {
    [b"T".as_slice(), name.as_bytes()].concat()
}

/// Cuts an ordering key to [`MAX_ORDERING_KEY`] bytes on a character boundary.
pub fn clamp_ordering_key(key: &mut String) {
    if key.len() > MAX_ORDERING_KEY {
        let mut end = MAX_ORDERING_KEY;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
}

pub fn seq_of(value: &[u8]) -> Option<Seq> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ordering_key_prefixes_another() {
        assert!(!followers(1, "ab").starts_with(&followers(1, "a")));
        assert!(follower(1, "a", 7).starts_with(&followers(1, "a")));
    }

    #[test]
    fn ready_keys_sort_by_due_time_then_seq() {
        let mut keys = [ready(1, 20, 1), ready(1, 10, 9), ready(1, 10, 2)];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_timed(k).unwrap()).collect();
        assert_eq!(parsed, vec![(10, 2), (10, 9), (20, 1)]);
    }

    #[test]
    fn clamp_respects_char_boundaries() {
        let mut k = "é".repeat(300);
        clamp_ordering_key(&mut k);
        assert_eq!(k.len(), 512);
    }
}
