//! The PagerDuty V1/V2 batch path: the input is the inside of a `messages` array. Whatever it
//! holds, a batch yields at most the cap's events, each carrying its own message's bytes (a
//! slice of the body, together never more than the body), or an error.
#![no_main]

use hookrelay::normalize::{normalize_with, Limits, Received, SourceKind};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut body = b"{\"messages\":[".to_vec();
    body.extend_from_slice(data);
    body.extend_from_slice(b"]}");
    let received = Received {
        source: "fuzz",
        kind: SourceKind::Pagerduty,
        content_type: Some("application/json"),
        body: bytes::Bytes::copy_from_slice(&body),
        query: Default::default(),
        received_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        webhook_id: None,
    };
    let limits = Limits {
        max_batch_messages: CAP,
    };
    if let Ok(events) = normalize_with(&received, limits) {
        assert!(events.len() <= CAP);
        let mut kept = 0;
        for e in &events {
            let raw = e.raw.body.as_ref();
            // The message's own bytes: a slice of the request's buffer, not a copy of it all.
            let start = raw.as_ptr() as usize - received.body.as_ptr() as usize;
            assert!(start + raw.len() <= body.len());
            assert_eq!(&body[start..start + raw.len()], raw);
            assert!(e.dedup_key.len() <= 128);
            kept += raw.len();
        }
        assert!(kept <= body.len());
    }
});
