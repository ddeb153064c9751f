//! Event encoding: the normalized event as JSON, then the raw request verbatim, so the
//! sender's bytes are never re-escaped or re-encoded.
//!
//! `[json length: u32][json][content type length: u16][content type][body]`; a content type
//! length of `u16::MAX` means the request had none.

use bytes::Bytes;

use super::StoreError;
use crate::normalize::{Event, Raw};

pub fn encode_event(event: &Event) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let ct = event.raw.content_type.as_deref().map(str::as_bytes);
    let mut out =
        Vec::with_capacity(6 + json.len() + ct.map_or(0, <[u8]>::len) + event.raw.body.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    match ct {
        Some(ct) => {
            let ct = &ct[..ct.len().min(u16::MAX as usize - 1)];
            out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
            out.extend_from_slice(ct);
        }
        None => out.extend_from_slice(&u16::MAX.to_be_bytes()),
    }
    out.extend_from_slice(&event.raw.body);
    Ok(out)
}

/// A target's persisted state, as both backends keep it (JSON).
pub fn decode_target_state(value: &[u8]) -> Result<super::TargetState, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(format!("target state: {e}")))
}

pub fn decode_event(value: &[u8]) -> Result<Event, StoreError> {
    let bad = || StoreError::Corrupt("truncated event record".into());
    let json_len = u32::from_be_bytes(value.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
    let json = value.get(4..4 + json_len).ok_or_else(bad)?;
    let mut event: Event =
        serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rest = &value[4 + json_len..];
    let ct_len = u16::from_be_bytes(rest.get(..2).ok_or_else(bad)?.try_into().unwrap());
    let (content_type, body) = if ct_len == u16::MAX {
        (None, &rest[2..])
    } else {
        let ct = rest.get(2..2 + ct_len as usize).ok_or_else(bad)?;
        (
            Some(String::from_utf8_lossy(ct).into_owned()),
            &rest[2 + ct_len as usize..],
        )
    };
    event.raw = Raw {
        content_type,
        body: Bytes::copy_from_slice(body),
    };
    Ok(event)
}
