//! Bytes read from a datastore as a key object (see standby_store::fuzz::key_object).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = standby_store::fuzz::key_object(data);
});
