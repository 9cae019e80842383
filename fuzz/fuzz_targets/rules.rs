//! A rules file (YAML) of the monitor: parse and check.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = standby_monitor::RuleSet::parse(src, Path::new("rules.yaml")) {
        let _ = e.to_string();
    }
});
