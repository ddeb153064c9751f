//! Any request body, for both source kinds and every content type the relay treats
//! differently: normalize returns events or an error, and never panics.
#![no_main]

use hookrelay::normalize::{normalize, Received, SourceKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [SourceKind::Statusgator, SourceKind::Pagerduty] {
        for ct in [None, Some("application/json"), Some("application/x-www-form-urlencoded"), Some("text/plain")] {
            let _ = normalize(&Received {
                source: "fuzz",
                kind,
                content_type: ct,
                body: bytes::Bytes::copy_from_slice(data),
                query: Default::default(),
                received_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
                webhook_id: None,
            });
        }
    }
});
