//! A guest's output batch is untrusted bytes: reading it never panics,
//! reads nothing outside the buffer, and ends (an error or the last update).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_abi::{InputReader, OutputReader};

fuzz_target!(|data: &[u8]| {
    if let Ok(mut reader) = OutputReader::new(data) {
        loop {
            match reader.next_emit() {
                Ok(Some(e)) => assert!(e.key.len() + e.value.len() <= data.len()),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        while let Ok(Some(u)) = reader.next_update() {
            assert!(u.value.map_or(0, <[u8]>::len) <= data.len());
        }
    }
    // The guest side reads the host's input with the same care.
    if let Ok(mut reader) = InputReader::new(data) {
        while let Ok(Some(_)) = reader.next_slot() {}
        while let Ok(Some(_)) = reader.next_entry() {}
    }
});
