//! The strict form decoder: any bytes give pairs or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hookrelay::normalize::parse_form(data);
});
