//! A UDP datagram at the sample VNF's SIP registrar: parsed, classified
//! (`registrar::plan`), and every reply it would send reads back as a SIP
//! response.
#![no_main]

use std::net::SocketAddr;

use standby_vnf::registrar::{self, Action};
use standby_vnf::sip::{self, StartLine};

fn reads_back(reply: &str) {
    match sip::parse(reply.as_bytes()) {
        Ok(Some(m)) if matches!(m.start, StartLine::Response { .. }) => {}
        other => panic!("reply {reply:?} does not read back: {other:?}"),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let from: SocketAddr = "127.0.0.1:5070".parse().expect("an address");
    let _ = sip::parse_request_line_only(data);
    if let Ok(Some(m)) = sip::parse(data) {
        for (_, value) in &m.headers {
            let _ = sip::split_commas(value);
            let (_, params) = sip::uri_and_params(value);
            let _ = sip::param(params, "tag");
        }
        let _ = m.header_values("Contact");
    }
    match registrar::plan(data, from) {
        Action::Ignore => {}
        Action::Reply(reply) => reads_back(&reply),
        Action::Register { req, .. } => reads_back(&sip::response(&req, 200, "OK", "1", &[])),
    }
});
