//! Key layout of the single sled tree. Integers are big-endian so byte order is numeric order.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `E` | event id (16) | the event's entry: where its body lies in the log and the seqs of its deliveries (see `wal::Pointer`) |
//! | `D` | source, 0, dedup key | expiry ms (8), event id (16) |
//! | `L` | seq (8) | delivery record, from its first attempt or change on (before it, the `P` key stands for it) |
//! | `A` | seq (8), attempt (4) | an earlier attempt (the record holds the last one) |
//! | `P` | seq (8) | target (4), due ms (8), place in its key's queue (8), created ms (8), event id (16), ordering key: the pending deliveries, from which the queue is rebuilt at opening; a delivery with no `L` record yet is this one, as created. sled keeps those of seqs a pack spans in the pack (`N`) |
//! | `N` | first seq (8), last seq (8) | pending keys' values of the seqs between, packed (see `packs`): sled keeps a `P` key of such a seq here, not as its own key |
//! | `Z` | ms (8), LSN (8), part (2) | event ids (16 each): events to look at for pruning once `ms` is past the retention of delivered events (a delivery of each was delivered or skipped by then, or it was stored with none); one key per write group (and per 256 events), `ms` the group's latest |
//! | `Y` | ms (8), LSN (8), part (2) | the same for dead letters (a delivery of each died by then) |
//! | `X` | target (4), dead ms (8), seq (8) | empty: dead letters |
//! | `T` | target name | target id (4) |
//! | `S` | target (4) | target state |
//! | `C` | target (4) | pending (8), dead (8) |
//! | `I` | target (4), ordering key (its length (2) and bytes) | a key's state value (see `key_state`) |
//! | `G` | log segment (8, its first LSN) | event bodies (8) stored in it and not yet pruned |
//! | `M` | `seq` | the next delivery seq (8), written by pruning (opening takes the larger of it and the seq after the last `L`, `P` or pack) |
//! | `M` | `wal` | the LSN (8) of the last write-ahead log record whose writes sled holds |

use crate::store::{Seq, TargetId};

pub fn event(id: &[u8; 16]) -> Vec<u8> {
    [b"E".as_slice(), id].concat()
}

pub fn dedup(source: &str, key: &str) -> Vec<u8> {
    [b"D".as_slice(), source.as_bytes(), &[0], key.as_bytes()].concat()
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

pub fn pending(seq: Seq) -> [u8; 9] {
    let mut k = delivery(seq);
    k[0] = b'P';
    k
}

/// Where a pending delivery waits: its target, when it is due, its place in its key's queue
/// and the key; and enough to stand for its record until it has one (`L`): a new delivery
/// gets no record of its own until its first attempt, so under a backlog each delivery costs
/// sled one write fewer. `recorded` says whether it has one, so that a read of a pending
/// delivery takes one key, not two (see `delivery_with`).
#[derive(Debug, PartialEq, Eq)]
pub struct Pending<'a> {
    pub target: TargetId,
    pub due_ms: u64,
    pub pos: u64,
    pub created_ms: u64,
    pub event: uuid::Uuid,
    pub recorded: bool,
    pub ordering_key: &'a str,
}

/// Where a pending value's `recorded` byte lies, and where its ordering key begins.
pub const PENDING_RECORDED_AT: usize = 44;
const PENDING_KEY_AT: usize = 45;

impl Pending<'_> {
    pub fn value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(PENDING_KEY_AT + self.ordering_key.len());
        v.extend_from_slice(&self.target.to_be_bytes());
        v.extend_from_slice(&self.due_ms.to_be_bytes());
        v.extend_from_slice(&self.pos.to_be_bytes());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        v.extend_from_slice(self.event.as_bytes());
        v.push(u8::from(self.recorded));
        v.extend_from_slice(self.ordering_key.as_bytes());
        v
    }

    pub fn parse(v: &[u8]) -> Option<Pending<'_>> {
        let u64_at = |at: usize| Some(u64::from_be_bytes(v.get(at..at + 8)?.try_into().ok()?));
        Some(Pending {
            target: u32::from_be_bytes(v.get(..4)?.try_into().ok()?),
            due_ms: u64_at(4)?,
            pos: u64_at(12)?,
            created_ms: u64_at(20)?,
            event: uuid::Uuid::from_slice(v.get(28..PENDING_RECORDED_AT)?).ok()?,
            recorded: match v.get(PENDING_RECORDED_AT)? {
                0 => false,
                1 => true,
                _ => return None,
            },
            ordering_key: std::str::from_utf8(&v[PENDING_KEY_AT..]).ok()?,
        })
    }

    /// The record of delivery `seq` while it has none of its own: pending as created, due
    /// when this says.
    pub fn record(&self, seq: Seq) -> crate::store::Delivery {
        let mut d = crate::store::Delivery::new(
            seq,
            self.event,
            self.target,
            self.ordering_key.to_owned(),
            self.created_ms,
        );
        d.due_ms = self.due_ms;
        d
    }
}

/// A pruning index key: `Z` for events with a delivery delivered or skipped by `ms` (or stored
/// with none then), `Y` for events with a delivery dead by `ms`; `lsn` is the log record that
/// writes it, `part` its place among that record's keys of the same tag.
pub fn ended(tag: u8, ms: u64, lsn: u64, part: u16) -> [u8; 19] {
    let mut k = [0u8; 19];
    k[0] = tag;
    k[1..9].copy_from_slice(&ms.to_be_bytes());
    k[9..17].copy_from_slice(&lsn.to_be_bytes());
    k[17..].copy_from_slice(&part.to_be_bytes());
    k
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

/// `(ms, seq)` from an `X` key.
pub fn parse_timed(key: &[u8]) -> Option<(u64, Seq)> {
    if key.len() != 21 {
        return None;
    }
    let ms = u64::from_be_bytes(key[5..13].try_into().ok()?);
    let seq = u64::from_be_bytes(key[13..].try_into().ok()?);
    Some((ms, seq))
}

pub fn target_name(name: &str) -> Vec<u8> {
    [b"T".as_slice(), name.as_bytes()].concat()
}

pub fn seq_of(value: &[u8]) -> Option<Seq> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keys_sort_by_time_then_seq() {
        let mut keys = [dead(1, 20, 1), dead(1, 10, 9), dead(1, 10, 2)];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_timed(k).unwrap()).collect();
        assert_eq!(parsed, vec![(10, 2), (10, 9), (20, 1)]);
    }

    #[test]
    fn pending_values_read_back() {
        let p = Pending {
            target: 3,
            due_ms: 99,
            pos: 7,
            created_ms: 98,
            event: uuid::Uuid::from_u128(5),
            recorded: true,
            ordering_key: "key é",
        };
        let mut v = p.value();
        assert_eq!(Pending::parse(&v), Some(p));
        assert_eq!(Pending::parse(&v[..44]), None);
        v[PENDING_RECORDED_AT] = 2;
        assert_eq!(Pending::parse(&v), None);
    }
}
