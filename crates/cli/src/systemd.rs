//! The service manager's protocol (`sd_notify`): when systemd runs
//! `standby server` or `standby agent` as a `Type=notify` unit, they say
//! when they are ready and when they stop, and keep its watchdog fed. Off
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;

/// Ready: tell the manager, with `status` for `systemctl status`, and
/// feed its watchdog from now on when it asked for one (`WatchdogSec=`).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        // Twice per period, as sd_watchdog_enabled(3) advises.
        let every = period / 2;
        tracing::info!(every = ?every, "feeding the service manager's watchdog");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        });
    }
}

/// Reloading the configuration (`ExecReload=` sends SIGHUP); `ready`
/// follows once it is applied or refused.
pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// Done reloading, with the outcome for `systemctl status`.
pub fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Stopping: the manager waits for the exit instead of calling it a crash.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("unable to notify the service manager: {e}");
    }
}
