//! Bytes read from a datastore as a manifest object (see standby_store::fuzz::manifest).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = standby_store::fuzz::manifest(data);
});
