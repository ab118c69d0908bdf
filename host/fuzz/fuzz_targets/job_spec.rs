//! Any text given as a job spec parses and validates to a spec or to an
//! error naming the problem; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weir::graph::JobSpec::parse(text);
    }
});
