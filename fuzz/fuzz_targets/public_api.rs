//! Request bodies of the public API (`/api/v1`, crates/server) read as
//! the handlers read them: the first byte picks the endpoint, the rest is
//! its JSON body. A group specification (`POST /api/v1/groups/{name}`)
//! goes the whole way: into a group, into the configuration in force
//! (the shipped example), checked whole as the controller checks it.
#![no_main]

use std::sync::OnceLock;

use standby_types::api::{
    GcRequest, GroupSpec, PruneRequest, RestoreRequest, ShutdownRequest, SyncRequest,
};
use standby_types::config::Config;

fn base() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(standby_fuzz::example_config)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 | 1 => {
            let Ok(mut group) = GroupSpec::group_from_json(data) else {
                return;
            };
            group.managed = true;
            let mut cfg = base().clone();
            cfg.groups.insert("fuzz".into(), group);
            if cfg.check_whole().is_ok() {
                // What is in force shows as a specification again.
                let spec = serde_json::to_value(&cfg.groups["fuzz"])
                    .and_then(serde_json::from_value::<GroupSpec>);
                assert!(spec.is_ok(), "{spec:?}");
            }
        }
        2 => drop(serde_json::from_slice::<RestoreRequest>(data)),
        3 => drop(serde_json::from_slice::<SyncRequest>(data)),
        4 => {
            drop(serde_json::from_slice::<PruneRequest>(data));
            drop(serde_json::from_slice::<GcRequest>(data));
        }
        _ => drop(serde_json::from_slice::<ShutdownRequest>(data)),
    }
});
