//! A runbook file (YAML) as the controller loads it: parse and validate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = standby_runbook::parse("runbook.yaml", src) {
        let _ = e.to_string();
    }
});
