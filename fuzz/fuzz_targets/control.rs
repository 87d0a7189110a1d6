//! Any bytes as debian/tests/control: entries or an error, never a panic.
#![no_main]

use dep8_core::control::{parse_bytes, DependsContext};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let ctx = DependsContext {
        source: None,
        arch: "amd64",
    };
    assert!(!parse_bytes(Path::new("control"), data, &ctx).is_empty());
});
