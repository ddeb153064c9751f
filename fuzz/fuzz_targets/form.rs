//! The form path: any bytes to the strict form decoder, and as a StatusGator form body. Pairs
//! or an error, never more than the field cap, and the whole path linear (libFuzzer's
//! `-timeout` catches a quadratic input).
#![no_main]

use hookrelay::normalize::{normalize, parse_form, Received, SourceKind, MAX_FORM_PAIRS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = parse_form(data) {
        assert!(pairs.len() <= MAX_FORM_PAIRS);
        let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), pairs.len(), "a repeated key is kept once");
    }
    let _ = normalize(&Received {
        source: "fuzz",
        kind: SourceKind::Statusgator,
        content_type: Some("application/x-www-form-urlencoded"),
        body: bytes::Bytes::copy_from_slice(data),
        query: Default::default(),
        received_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        webhook_id: None,
    });
});
