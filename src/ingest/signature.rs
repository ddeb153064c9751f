//! PagerDuty V3 webhook signatures: `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`, each an
//! HMAC-SHA256 of the raw body keyed with the subscription's secret. Several values appear
//! during secret rotation; the request is authentic if any of them matches any configured
//! secret. Checked over the exact bytes received, before anything parses them; hex case and
//! spaces after commas do not matter; comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No header, or no decodable `v1=` value in it.
    Malformed,
    /// Well-formed, but no value matches any secret.
    Mismatch,
}

pub fn verify(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[String],
) -> Result<(), SignatureError> {
    let header = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(SignatureError::Malformed)?;
    let candidates: Vec<Vec<u8>> = header
        .split(',')
        .filter_map(|entry| entry.trim().strip_prefix("v1="))
        .filter_map(|h| hex::decode(h.trim()).ok())
        .filter(|d| d.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(body);
        for c in &candidates {
            // `verify_slice` compares in constant time.
            if mac.clone().verify_slice(c).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn the_published_test_vector_verifies() {
        let body = include_bytes!("../../tests/fixtures/pagerduty-v3-incident-triggered.json");
        let sig = include_str!("../../tests/fixtures/pagerduty-v3-incident-triggered.sig");
        let mut lines = sig.lines();
        let secret = lines.next().unwrap().to_owned();
        let header = lines.next().unwrap();
        assert_eq!(
            verify(Some(header.as_bytes()), body, std::slice::from_ref(&secret)),
            Ok(())
        );
        assert_eq!(
            verify(
                Some(header.to_uppercase().replace("V1=", "v1=").as_bytes()),
                body,
                std::slice::from_ref(&secret)
            ),
            Ok(())
        );
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(Some(header.as_bytes()), &tampered, &[secret]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(header.as_bytes()), body, &["wrong".into()]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rotation_any_value_any_secret() {
        let body = b"{}";
        let header = format!("{}, {}", sign("old", body), sign("new", body));
        assert_eq!(
            verify(Some(header.as_bytes()), body, &["new".into()]),
            Ok(())
        );
        assert_eq!(
            verify(
                Some(header.as_bytes()),
                body,
                &["other".into(), "old".into()]
            ),
            Ok(())
        );
        let only_second = format!("v1={},{}", "00".repeat(32), sign("s", body));
        assert_eq!(
            verify(Some(only_second.as_bytes()), body, &["s".into()]),
            Ok(())
        );
    }

    #[test]
    fn malformed_headers() {
        for h in ["", "v2=abcd", "v1=zz", "v1=abcd", "sha256=00"] {
            assert_eq!(
                verify(Some(h.as_bytes()), b"{}", &["s".into()]),
                Err(SignatureError::Malformed),
                "{h}"
            );
        }
        assert_eq!(
            verify(None, b"{}", &["s".into()]),
            Err(SignatureError::Malformed)
        );
    }
}
