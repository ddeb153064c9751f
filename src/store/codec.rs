//! Event encoding: the normalized event as JSON, then the raw request verbatim, so the
//! sender's bytes are never re-escaped or re-encoded.
//!
//! `[json length: u32][json][content type length: u16][content type][body]`; a content type
//! length of `u16::MAX` means the request had none.

use bytes::Bytes;

use super::StoreError;
use crate::normalize::{Event, Raw};

/// An event's record: its JSON (as `serde_json` writes an [`Event`]), content type and raw
/// body. The JSON is the one `{{json event}}` writes with the names of the rules that matched
/// as a last member: the same bytes, made from the event's [`Event::template_json`], which its
/// deliveries then share.
pub fn encode_event(event: &Event) -> Result<Vec<u8>, StoreError> {
    let shown = event.template_json();
    let rules = if event.matched_rules.is_empty() {
        None
    } else {
        Some(
            serde_json::to_vec(&event.matched_rules)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )
    };
    let mut json = Vec::with_capacity(shown.len() + rules.as_ref().map_or(0, |r| r.len() + 18));
    match &rules {
        None => json.extend_from_slice(&shown),
        Some(rules) => {
            json.extend_from_slice(&shown[..shown.len() - 1]);
            json.extend_from_slice(b",\"matched_rules\":");
            json.extend_from_slice(rules);
            json.push(b'}');
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{normalize, Received, SourceKind};

    fn event() -> Event {
        let body = include_str!("../../tests/fixtures/pagerduty-v3-incident-triggered.json");
        normalize(&Received {
            source: "pd",
            kind: SourceKind::Pagerduty,
            content_type: Some("application/json"),
            body: Bytes::copy_from_slice(body.as_bytes()),
            query: [("q".to_owned(), "v\"1".to_owned())].into(),
            received_at: chrono::Utc::now(),
            webhook_id: None,
        })
        .unwrap()
        .remove(0)
    }

    /// The record's JSON is the event as `serde_json` writes it, byte for byte, with and
    /// without rules that matched, though it is made from `{{json event}}`'s bytes; and it
    /// reads back as the same event. Guards the splice of the rules into the shared bytes:
    /// with the rules left out, or put anywhere but last, this fails.
    #[test]
    fn the_record_is_the_event_as_json_made_from_its_shared_bytes() {
        for rules in [
            vec![],
            vec!["first".to_owned(), "a \"quoted\" one".to_owned()],
        ] {
            let mut event = event();
            event.matched_rules = rules;
            let record = encode_event(&event).unwrap();
            let json_len = u32::from_be_bytes(record[..4].try_into().unwrap()) as usize;
            assert_eq!(
                String::from_utf8_lossy(&record[4..4 + json_len]),
                serde_json::to_string(&event).unwrap()
            );
            assert_eq!(decode_event(&record).unwrap(), event);
        }
    }

    /// A copy of an event makes its own `{{json event}}` bytes, so a copy changed after the
    /// original's were made shows its change. Guards `JsonMemo`'s clone: with the memo
    /// copied, the copy's JSON shows the original's title.
    #[test]
    fn a_changed_copy_of_an_event_shows_its_change() {
        let event = event();
        let before = event.template_json();
        let mut copy = event.clone();
        copy.title = "changed".into();
        let after = copy.template_json();
        assert_ne!(before, after);
        assert!(String::from_utf8_lossy(&after).contains("\"title\":\"changed\""));
        assert_eq!(event.template_json(), before);
    }
}
