//! What the relay keeps per `(target, ordering key)` in the store's key state
//! ([`crate::store::Store::key_state`]): one small JSON record, written only in the same
//! atomic write as the outcome of one of the key's deliveries, so it can never drift from
//! what was recorded about them.
//!
//! - `incident`: for a `statushub` target, the entity's incident as the receiver has been
//!   told it (see [`super::incident`]);
//! - `unsent`: the incident as alerts that were superseded left it, while the receiver has
//!   not heard of it yet (latest-state coalescing; the next request decides against it);
//! - `flap`: the entity's recent state changes, for flap suppression ([`super::flap`]);
//! - `held`: why the key's head is held (a maintenance window, flapping); while it is set,
//!   the key's deliveries are coalesced when it is released, so it gets its current state.

use serde::{Deserialize, Serialize};

use super::flap::FlapState;
use crate::targets::incident::Incident;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<Incident>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsent: Option<Unsent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<FlapState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// The incident (none: no open incident) that superseded alerts left.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unsent {
    pub incident: Option<Incident>,
}

impl KeyRecord {
    /// Reads a stored record; an unreadable one counts as empty (logged), and the next write
    /// replaces it.
    pub fn decode(bytes: Option<&[u8]>, target: &str, seq: u64) -> KeyRecord {
        match bytes.map(serde_json::from_slice::<KeyRecord>) {
            None => KeyRecord::default(),
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(target_name = %target, seq, error = %e, "unreadable key record ignored");
                KeyRecord::default()
            }
        }
    }

    /// The value to store: `None` deletes the record when nothing is left in it.
    pub fn encode(&self) -> Option<Vec<u8>> {
        (*self != KeyRecord::default())
            .then(|| serde_json::to_vec(self).expect("key records serialize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_record_is_deleted_and_others_read_back() {
        assert_eq!(KeyRecord::default().encode(), None);
        let r = KeyRecord {
            held: Some("maintenance".into()),
            ..Default::default()
        };
        let bytes = r.encode().unwrap();
        assert_eq!(KeyRecord::decode(Some(&bytes), "t", 1), r);
        assert_eq!(
            KeyRecord::decode(Some(b"{oops"), "t", 1),
            KeyRecord::default()
        );
    }
}
