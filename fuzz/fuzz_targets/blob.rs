//! Bytes read from a datastore as a blob, after its chunk id (see standby_store::fuzz::blob).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = standby_store::fuzz::blob(data);
});
