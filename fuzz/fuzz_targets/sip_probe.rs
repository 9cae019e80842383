//! A UDP datagram at the monitor's SIP probe, waiting for the answer to
//! its OPTIONS (`probe::sip_reply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for call_id in ["0123456789abcdef@127.0.0.1", ""] {
        if let Some((code, line)) = standby_monitor::probe::sip_reply(data, call_id) {
            assert!(code >= 200, "{code} is not final");
            assert!(line.starts_with("SIP/2.0 "), "{line:?}");
        }
    }
});
