//! The crash-injection hook, for tests only.
//!
//! Built in only with the cargo feature `crash-hook`, which the test
//! command's builds enable (standby-cli's dev-dependency on this crate
//! turns it on for `cargo test`) and release builds and packages do not:
//! there [`at`] is empty and `STANDBY_CRASH_AT` is ignored (with a
//! warning when it is set). With the feature, `STANDBY_CRASH_AT=POINT`
//! makes the process `abort()` when it reaches `POINT`:
//! - `RUNBOOK:STEP:before`: a runbook step persisted as running, before
//!   its action runs; `RUNBOOK:STEP:after`: its action returned, its
//!   outcome not persisted yet ([`crate::runbooks`]);
//! - `protect:after-point`: a member's point is written (its manifest
//!   visible) and the copies to the group's other datastores have not
//!   begun; `protect:after-copy`: the copies are done, retention not
//!   applied yet ([`crate::protect`]);
//! - `migrate:copied`: a live move's copy completed (the source paused,
//!   the target waiting), the target not resumed; `migrate:switched`: the
//!   target resumed, the new placement not recorded (`vm.migrate`).

/// Whether this build honours `STANDBY_CRASH_AT` (`standby --version`
/// says so).
pub const ENABLED: bool = cfg!(feature = "crash-hook");

const VAR: &str = "STANDBY_CRASH_AT";

/// Say at start whether the hook is armed, or ignored by this build.
pub fn announce() {
    if let Ok(v) = std::env::var(VAR) {
        if ENABLED {
            tracing::warn!("test hook {VAR}={v} is set");
        } else {
            tracing::warn!("{VAR}={v} is set, but this build has no crash hook: ignored");
        }
    }
}

/// Abort the process when `STANDBY_CRASH_AT` names `point` (only in a
/// build with the `crash-hook` feature; otherwise nothing).
#[inline]
pub fn at(point: impl FnOnce() -> String) {
    #[cfg(feature = "crash-hook")]
    {
        static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if let Some(want) = ARMED.get_or_init(|| std::env::var(VAR).ok())
            && *want == point()
        {
            tracing::error!(point = %want, "{VAR}: aborting the process (test hook)");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "crash-hook"))]
    let _ = point;
}
