//! Config text: TOML, rules (wildcards, regexes, expansions), templates and URLs all compile
//! or give an error naming the key; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hookrelay::Config::parse(text, "fuzz.toml", std::path::Path::new("/nonexistent"));
    }
});
