//! Request bodies of the agent API (`/agent/v1/*`, crates/agent) and the
//! heartbeats the controller takes from agents: the first byte picks the
//! endpoint, the rest is its JSON body, read and checked as the handler
//! does before it acts (names, point ids, the agent's own policy for VM
//! specs). A spec the policy lets through keeps its disks in `disk_dir`.
#![no_main]

use std::path::{Component, Path};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use standby_agent::access::{
    CopyCall, GcCall, GrantCall, HasPointCall, LatestCall, PruneCall, StoreCall, VerifyCall,
};
use standby_agent::policy::{Policy, check_vm_name};
use standby_agent::transfer::{ReceiveBegin, ReceiveManifest, ReceiveMissing};
use standby_agent::wire::{
    DrillCall, DrillProbeCall, DrillStartCall, FenceCall, Heartbeat, MAX_STATUSES, PointCall,
    RestoreCall, ShutdownCall, SpecCall, VmCall, VmsCall,
};
use standby_hv::VmSpec;
use standby_store::PointId;
use standby_types::config::Config;

fn policies() -> &'static [Policy; 2] {
    static P: OnceLock<[Policy; 2]> = OnceLock::new();
    P.get_or_init(|| {
        let cfg = Config::parse(standby_fuzz::AGENTS_CONFIG, Path::new("agents.toml"))
            .expect("the agents' configuration loads");
        ["a1", "aq"].map(|a| Policy::from_config(&cfg, a).expect("a policy"))
    })
}

fn body<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

fn spec(spec: VmSpec) {
    for policy in policies() {
        if let Ok(checked) = policy.check(spec.clone()) {
            for d in &checked.disks {
                assert!(
                    d.path.starts_with(&policy.disk_dir)
                        && !d.path.components().any(|c| c == Component::ParentDir),
                    "disk {} let out of {}",
                    d.path.display(),
                    policy.disk_dir.display()
                );
            }
        }
    }
}

fn point(p: &str) {
    if let Ok(id) = p.parse::<PointId>() {
        assert_eq!(id.as_str(), p);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 22 {
        0 => {
            if let Some(c) = body::<VmCall>(data) {
                let _ = check_vm_name(&c.vm);
            }
        }
        1 => {
            if let Some(c) = body::<VmsCall>(data)
                && c.vms.len() <= MAX_STATUSES
            {
                c.vms.iter().for_each(|vm| drop(check_vm_name(vm)));
            }
        }
        2 => {
            if let Some(c) = body::<SpecCall>(data) {
                spec(c.spec);
            }
        }
        3 => {
            if let Some(c) = body::<ShutdownCall>(data) {
                let _ = check_vm_name(&c.vm);
            }
        }
        4 => {
            if let Some(c) = body::<PointCall>(data) {
                let _ = standby_store::valid_chunk_size(c.chunk_size);
                spec(c.spec);
            }
        }
        5 => {
            if let Some(c) = body::<RestoreCall>(data) {
                point(&c.point);
                spec(c.spec);
            }
        }
        6 => drop(body::<FenceCall>(data)),
        7 => {
            if let Some(c) = body::<DrillStartCall>(data) {
                point(&c.drill.point);
                spec(c.drill.spec);
            }
        }
        8 => {
            if let Some(c) = body::<DrillProbeCall>(data) {
                let _ = c.check.kind();
            }
        }
        9 => drop(body::<DrillCall>(data)),
        10 => drop(body::<StoreCall>(data)),
        11 => drop(body::<GrantCall>(data)),
        12 => {
            if let Some(c) = body::<HasPointCall>(data) {
                point(&c.point);
            }
        }
        13 => drop(body::<LatestCall>(data)),
        14 => drop(body::<PruneCall>(data)),
        15 => drop(body::<VerifyCall>(data)),
        16 => drop(body::<GcCall>(data)),
        17 => {
            if let Some(c) = body::<CopyCall>(data) {
                point(&c.point);
            }
        }
        18 => {
            if let Some(c) = body::<ReceiveBegin>(data) {
                point(&c.point);
            }
        }
        19 => drop(body::<ReceiveMissing>(data)),
        20 => {
            if let Some(c) = body::<ReceiveManifest>(data) {
                // A manifest from the wire is checked as one read from a store.
                if let Ok(bytes) = c.manifest.to_bytes() {
                    let _ = standby_store::Manifest::from_bytes(&bytes);
                }
            }
        }
        _ => drop(body::<Heartbeat>(data)),
    }
});
