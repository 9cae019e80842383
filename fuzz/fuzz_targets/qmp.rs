//! Bytes from QEMU's QMP socket: cut into lines as the client reads them
//! (bounded), each read as a greeting, a message (event or answer), a
//! `query-status` answer; and as `qemu-img map` output.
#![no_main]

use standby_hv::qmp::{self, Message, QmpStatus};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = standby_hv::qemu::parse_map(data);
    // A small limit as well as the real one, so both sides of it are hit.
    for limit in [256, qmp::MAX_REPLY_LINE] {
        standby_fuzz::reply_lines(data, limit, |line| {
            let _ = qmp::parse_greeting(line);
            if let Message::Answer { answer: Ok(v), .. } = qmp::parse_message(line) {
                let _ = serde_json::from_value::<QmpStatus>(v);
            }
        });
    }
});
