//! Bytes read from a datastore as a pack index file (see standby_store::fuzz::pack_index).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = standby_store::fuzz::pack_index(data);
});
