//! A strict `application/x-www-form-urlencoded` decoder.
//!
//! Lenient decoders turn a bad `%` escape into literal text, which would store a corrupted value
//! without telling the sender. This one rejects such bodies. Pairs are separated by `&` or `;`
//! (the separators Snowplow's decoder accepts), `+` is a space, and a key without `=` has an
//! empty value. A repeated key keeps its last value, in the place of its first.
//!
//! Linear in the body's size: a repeated key is found through an index, never by scanning the
//! keys before it, and a body with more than [`MAX_FORM_PAIRS`] fields is refused (StatusGator
//! sends seven).

use std::collections::HashMap;

use super::NormalizeError;

/// The most fields a form body may have.
pub const MAX_FORM_PAIRS: usize = 1000;

pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, NormalizeError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut offset = 0;
    for part in body.split(|b| *b == b'&' || *b == b';') {
        let start = offset;
        offset += part.len() + 1;
        if part.is_empty() {
            continue;
        }
        let (key, value) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &part[part.len()..]),
        };
        let key = decode(key, start)?;
        let value = decode(value, start + key.len() + 1)?;
        if key.is_empty() {
            return Err(NormalizeError::Form(format!(
                "empty field name at byte {start}"
            )));
        }
        match index.get(&key) {
            Some(&i) => pairs[i].1 = value,
            None => {
                if pairs.len() == MAX_FORM_PAIRS {
                    return Err(NormalizeError::Form(format!(
                        "more than {MAX_FORM_PAIRS} fields (at byte {start})"
                    )));
                }
                index.insert(key.clone(), pairs.len());
                pairs.push((key, value));
            }
        }
    }
    Ok(pairs)
}

fn decode(input: &[u8], at: usize) -> Result<String, NormalizeError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                match hex {
                    Some(b) => out.push(b),
                    None => {
                        return Err(NormalizeError::Form(format!(
                            "bad percent escape near byte {}",
                            at + i
                        )))
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| NormalizeError::Form(format!("a value near byte {at} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse_form(s.as_bytes()).unwrap()
    }

    #[test]
    fn decodes_plus_percent_and_both_separators() {
        assert_eq!(
            pairs("a=x+y&b=%2B1;c=%3Bz"),
            vec![
                ("a".into(), "x y".into()),
                ("b".into(), "+1".into()),
                ("c".into(), ";z".into())
            ]
        );
    }

    #[test]
    fn bare_keys_empty_pairs_and_repeats() {
        assert_eq!(
            pairs("&flag&&k=1&k=2"),
            vec![("flag".into(), "".into()), ("k".into(), "2".into())]
        );
    }

    #[test]
    fn caps_the_number_of_fields_but_not_repeats() {
        let at_cap: String = (0..MAX_FORM_PAIRS).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(parse_form(at_cap.as_bytes()).unwrap().len(), MAX_FORM_PAIRS);
        let over = format!("{at_cap}one=more");
        let err = parse_form(over.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("more than 1000 fields"), "{err}");
        let repeats = "k=v&".repeat(10 * MAX_FORM_PAIRS);
        assert_eq!(pairs(&repeats), vec![("k".into(), "v".into())]);
    }

    #[test]
    fn rejects_bad_escapes_and_non_utf8() {
        for bad in ["a=%zz", "a=%2", "a=%", "a=%ff%fe", "=v"] {
            assert!(
                matches!(parse_form(bad.as_bytes()), Err(NormalizeError::Form(_))),
                "{bad}"
            );
        }
    }
}
