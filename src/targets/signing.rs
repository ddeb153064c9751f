//! Request signing as the Standard Webhooks specification describes it
//! (<https://www.standardwebhooks.com>, `spec/standard-webhooks.md`, symmetric scheme):
//!
//! - `webhook-id`: the message id, the same on every attempt of one delivery;
//! - `webhook-timestamp`: when the attempt was made, integer Unix seconds (each retry signs
//!   afresh, so a receiver's replay window holds);
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per
//!   secret, space-separated: during a rotation the old and new secrets both sign and the
//!   receiver accepts any.
//!
//! Secrets are written as the specification serializes them: `whsec_` and the base64 of at
//! least 24 random bytes (at most 64). The HMAC key is the decoded bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

const PREFIX: &str = "whsec_";

/// The decoded signing secrets of a target, in the order configured. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SigningKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys({} secrets)", self.0.len())
    }
}

impl SigningKeys {
    /// Decodes `whsec_…` secrets; the error says which one is wrong and why.
    pub fn parse(secrets: &[String]) -> Result<SigningKeys, String> {
        secrets
            .iter()
            .enumerate()
            .map(|(i, s)| decode_secret(s).map_err(|e| format!("secret {}: {e}", i + 1)))
            .collect::<Result<_, _>>()
            .map(SigningKeys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the three headers for one attempt.
    pub fn sign_into(&self, headers: &mut HeaderMap, id: &str, timestamp: u64, body: &[u8]) {
        if self.0.is_empty() {
            return;
        }
        let signature = sign(&self.0, id, timestamp, body);
        for (name, value) in [
            (WEBHOOK_ID, id.to_owned()),
            (WEBHOOK_TIMESTAMP, timestamp.to_string()),
            (WEBHOOK_SIGNATURE, signature),
        ] {
            // An id is ASCII (see `message_id`), a timestamp digits, a signature base64.
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
}

/// The HMAC key of a `whsec_…` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.trim().strip_prefix(PREFIX) else {
        return Err(format!(
            "must start with {PREFIX:?} followed by base64, as Standard Webhooks writes secrets"
        ));
    };
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("the part after {PREFIX:?} is not base64: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; Standard Webhooks secrets are 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` value: `v1,<base64>` per key, space-separated.
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let signatures: Vec<String> = keys
        .iter()
        .map(|key| {
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
            for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
                mac.update(part);
            }
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect();
    signatures.join(" ")
}

/// The message id of a delivery: the same on every attempt, unique per event and target,
/// and without `.` (the signed content is dot-delimited).
pub fn message_id(event_id: &str, delivery: u64) -> String {
    let event: String = event_id.chars().filter(|c| *c != '-').collect();
    format!("msg_{event}_{delivery}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the signature scheme against the specification project's published test
    /// vector (`standard-webhooks` `libraries/python/tests/test_webhooks.py`,
    /// `test_sign_function`): fails with any change to the signed content, the key decoding
    /// or the encoding.
    #[test]
    fn the_standard_webhooks_test_vector() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &[key],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// Guards secret validation: prefix, base64, length.
    #[test]
    fn secrets_are_checked() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_err()
            .contains("whsec_"));
        assert!(decode_secret("whsec_not base64!")
            .unwrap_err()
            .contains("base64"));
        assert!(decode_secret("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("24 to 64"));
        let e = SigningKeys::parse(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), "x".into()])
            .unwrap_err();
        assert!(e.starts_with("secret 2:"), "{e}");
        assert_eq!(
            message_id("0190e0c2-0000-7000-8000-000000000001", 42),
            "msg_0190e0c2000070008000000000000001_42"
        );
    }
}
