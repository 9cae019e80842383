//! End-to-end tests: the real `standby` and `standby-vnf` binaries, real
//! processes, real UDP and HTTP on loopback. One test binary, several
//! modules (the suite links once).

mod harness;
mod hooks;
mod netlab;
mod relay;

mod agents;
mod alertmanager;
mod auth;
mod auth_limits;
mod cloud;
mod config_errors;
mod conformance;
mod debian_guest;
mod demo;
mod ecosystem;
mod failover;
mod faults;
mod faults_lab;
mod fencing;
mod ha;
mod ha_db;
mod ha_scale;
mod ha_sites;
#[cfg(feature = "libvirt")]
mod libvirt;
mod live_move;
mod nfv;
mod portal;
mod protect_restore;
mod protocol;
mod qemu;
mod recovery;
mod recovery_delta;
mod recovery_plans;
mod reload;
mod report;
mod runbooks;
mod scheduler;
mod selfservice;
mod site_data;
mod site_wan;
mod sites;
mod templates;
mod upgrade;
mod watch;
