//! Bytes from a guest agent's channel: cut into lines as the client reads
//! them (bounded), each read as a reply.
#![no_main]

use standby_hv::qga;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for limit in [256, qga::MAX_REPLY_LINE] {
        standby_fuzz::reply_lines(data, limit, |line| {
            if let Some(v) = qga::parse_reply(line) {
                assert!(v.get("return").is_some() || v.get("error").is_some());
            }
        });
    }
});
