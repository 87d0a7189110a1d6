//! Any text as debian/control, then `@`, `@builddeps@` and `@recommends@`
//! expanded from it: a value or an error, never a panic.
#![no_main]

use dep8_core::source::{expand_depends, SourcePackage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(source) = SourcePackage::parse(text) {
        let _ = expand_depends("@, @builddeps@, @recommends@", Some(&source), "amd64");
    }
});
