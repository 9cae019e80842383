//! Helpers shared by the fuzz targets (`fuzz_targets/`): the line framing
//! of QMP and the guest agent run over an input, and the fixed
//! configurations the API targets check requests against.

use std::path::Path;

use standby_types::config::Config;

/// `input` cut into reply lines as the QMP and guest-agent clients read
/// them (`standby_hv::line::read_line`, at most `limit` bytes a line),
/// each passed to `each`; stops at the first line over the limit.
pub fn reply_lines(input: &[u8], limit: usize, mut each: impl FnMut(&[u8])) {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    RT.with(|rt| {
        rt.block_on(async {
            // A small buffer, so lines cross buffer refills.
            let mut reader = tokio::io::BufReader::with_capacity(64, input);
            let mut buf = Vec::new();
            loop {
                match standby_hv::line::read_line(&mut reader, &mut buf, limit).await {
                    Ok(true) => {
                        assert!(buf.len() <= limit);
                        each(&buf);
                    }
                    Ok(false) => return,
                    Err(standby_hv::line::LineError::TooLong { .. }) => return,
                    Err(e) => panic!("reading from memory failed: {e}"),
                }
            }
        })
    })
}

/// The shipped example configuration, parsed (the API targets add what
/// a request makes to it and check the whole, as the controller does).
pub fn example_config() -> Config {
    Config::parse(
        include_str!("../../crates/types/standby.example.toml"),
        Path::new("standby.example.toml"),
    )
    .expect("the example configuration loads")
}

/// A configuration with a process host and a qemu host, each with its
/// agent: the policies the agent target checks VM specs against.
pub const AGENTS_CONFIG: &str = r#"
[controller]
data_dir = "/var/lib/standby"
[sites.s1]
[hosts.h1]
site = "s1"
driver = "process"
disk_dir = "/var/lib/standby/h1"
[hosts.q1]
site = "s1"
driver = "qemu"
disk_dir = "/var/lib/standby/q1"
[agents.a1]
site = "s1"
host = "h1"
allowed_commands = ["/usr/bin/standby-vnf"]
[agents.aq]
site = "s1"
host = "q1"
"#;
