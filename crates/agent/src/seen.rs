//! What a host last said of its VMs, for views that may be a moment old
//! (an API's VM list or status) so they need not ask a remote agent on
//! every request. Safety decisions (a start, a fence, single-copy checks)
//! never read it: they ask the host.
//!
//! An answer is kept only if no command that may change a VM's state
//! (start, stop, shutdown, restore, fence, unfence) began or ended while
//! it was asked; each such command also forgets what was kept, so a view
//! after a command asks the host again. A host that could not be reached
//! is remembered too, so views of its VMs say so at once instead of each
//! waiting for it in turn.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use standby_hv::VmStatus;

#[derive(Default)]
pub(crate) struct Seen {
    /// Bumped when a state-changing command begins and when it ends.
    generation: AtomicU64,
    states: Mutex<HashMap<String, (Instant, VmStatus)>>,
    /// When the host last could not be reached, and why.
    unreachable: Mutex<Option<(Instant, String)>>,
}

impl Seen {
    /// The generation to pass to [`Seen::record`] for a question asked now.
    pub(crate) fn asking(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keep these answers to a question asked at generation `asked`,
    /// unless a command began or ended since.
    pub(crate) fn record<'a>(
        &self,
        asked: u64,
        answers: impl IntoIterator<Item = (&'a str, &'a VmStatus)>,
    ) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) != asked {
            return;
        }
        let now = Instant::now();
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = None;
        for (vm, st) in answers {
            states.insert(vm.to_string(), (now, st.clone()));
        }
    }

    /// A state-changing command begins or ends: forget every answer and
    /// refuse those asked before.
    pub(crate) fn changing(&self) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        states.clear();
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The host could not be reached: `reason`.
    pub(crate) fn unreachable(&self, reason: String) {
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), reason));
    }

    /// Why the host could not be reached, and how long ago, if within
    /// `max_age`.
    pub(crate) fn recently_unreachable(&self, max_age: Duration) -> Option<(Duration, String)> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(at, why)| (at.elapsed(), why.clone()))
            .filter(|(age, _)| *age <= max_age)
    }

    /// `vm`'s state as last said, if said within `max_age`.
    pub(crate) fn recent(&self, vm: &str, max_age: Duration) -> Option<VmStatus> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .get(vm)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, st)| st.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use standby_hv::VmState;

    fn running() -> VmStatus {
        VmStatus {
            state: VmState::Running,
            pid: Some(7),
            since: None,
            exit: None,
        }
    }

    #[test]
    fn an_answer_is_served_while_fresh_and_forgotten_by_a_command() {
        let seen = Seen::default();
        let asked = seen.asking();
        seen.record(asked, [("pbx1", &running())]);
        assert_eq!(
            seen.recent("pbx1", Duration::from_secs(5)).map(|s| s.pid),
            Some(Some(7))
        );
        assert!(seen.recent("fw1", Duration::from_secs(5)).is_none());
        seen.changing();
        assert!(seen.recent("pbx1", Duration::from_secs(5)).is_none());
    }

    #[test]
    fn an_answer_asked_before_a_command_is_not_kept() {
        let seen = Seen::default();
        let asked = seen.asking();
        // A stop began (and perhaps ended) while the question was out.
        seen.changing();
        seen.record(asked, [("pbx1", &running())]);
        assert!(seen.recent("pbx1", Duration::from_secs(5)).is_none());
        let asked = seen.asking();
        seen.record(asked, [("pbx1", &running())]);
        assert!(seen.recent("pbx1", Duration::from_secs(5)).is_some());
    }

    #[test]
    fn an_unreachable_host_is_remembered_until_it_answers() {
        let seen = Seen::default();
        seen.unreachable("connection refused".into());
        let (_, why) = seen
            .recently_unreachable(Duration::from_secs(5))
            .expect("remembered");
        assert_eq!(why, "connection refused");
        let asked = seen.asking();
        seen.record(asked, [("pbx1", &running())]);
        assert!(seen.recently_unreachable(Duration::from_secs(5)).is_none());
    }
}
