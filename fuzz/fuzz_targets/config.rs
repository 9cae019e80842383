//! A configuration file as `standby config check` and the controller read
//! it: TOML, then validation (errors with line and field).
#![no_main]

use std::path::Path;

use standby_types::config::{self, Config};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(src, Path::new("standby.toml")) {
        Ok(cfg) => {
            // What loads checks whole, and shows redacted.
            if let Err(e) = cfg.check_whole() {
                panic!("a loaded configuration fails its own check: {e}");
            }
            let _ = config::redacted(&cfg);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
