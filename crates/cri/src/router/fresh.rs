//! When a copy of containerd's answer may stand for a new one: the rules of the forward cache
//! ([`super::cache`]), kept pure so that every case has a test.
//!
//! The kubelet lists every pod and container once a second (its PLEG relist) and asks for the
//! runtime's Status every few seconds. containerd's answers to those calls change only when
//! something happens to a container pod, and containerd says so on its event stream
//! (`containerd.services.events.v1.Events/Subscribe`, namespace `k8s.io`): a task started or
//! exited, a container was created or deleted. virtlet keeps containerd's last answer and
//! serves it again while it is still trusted:
//!
//! - the event stream is up, and has been for [`SETTLE`] (events missed while it was down may
//!   still be in flight inside containerd);
//! - no event arrived and no call that changes containerd's pods went through virtlet since the
//!   answer was fetched (a *generation* counter, bumped by both);
//! - no event is still *pending*: containerd publishes an event before its CRI plugin has
//!   applied it (an exit is published, then handled, then shown as EXITED), so an event's
//!   container is watched until containerd's own lists show its effect (a started task's
//!   container no longer CREATED, an exited one EXITED or NOTREADY or gone, a created one
//!   present, a deleted one gone). Until then every call is forwarded;
//! - the answer is younger than a maximum age (a bound on anything no event tells).
//!
//! So an answer served from the copy is never older than the last change containerd has
//! applied and announced; a change made behind virtlet's back (another client on containerd's
//! socket) shows up once its event arrives, which is before containerd's own call returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long after (re)connecting to containerd's events nothing is served from the copy.
pub const SETTLE: Duration = Duration::from_secs(2);

/// How long a pending event is waited for before it is given up (logged).
pub const PENDING_LIMIT: Duration = Duration::from_secs(120);

/// What containerd's lists must show before an event counts as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `/tasks/start`: a container past CREATED, or a sandbox listed.
    Started,
    /// `/tasks/exit` of a task's init process: a container EXITED, a sandbox NOTREADY, or gone.
    Exited,
    /// `/containers/create`: listed as a container or a sandbox.
    Created,
    /// `/containers/delete`: in neither list.
    Deleted,
}

impl Expect {
    /// The expectation an event of `topic` sets, if it changes what the lists show.
    pub fn of_topic(topic: &str) -> Option<Expect> {
        match topic {
            "/tasks/start" => Some(Expect::Started),
            "/tasks/exit" => Some(Expect::Exited),
            "/containers/create" => Some(Expect::Created),
            "/containers/delete" => Some(Expect::Deleted),
            _ => None,
        }
    }
}

/// Whether an event of `topic` may change containerd's CRI answers at all (others, such as
/// snapshots, content and images, leave pods and containers as they are).
pub fn touches_pods(topic: &str) -> bool {
    topic.starts_with("/tasks/")
        || topic.starts_with("/containers/")
        || topic.starts_with("/sandboxes/")
}

/// An ID's entry in one of containerd's lists: absent, or present in a CRI state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Absent,
    State(i32),
}

/// CRI states (`runtime.v1.ContainerState`, `runtime.v1.PodSandboxState`).
pub const CONTAINER_CREATED: i32 = 0;
pub const CONTAINER_EXITED: i32 = 2;
pub const SANDBOX_NOTREADY: i32 = 1;

/// Whether an event's effect is visible, given the ID's entry in containerd's container list
/// and in its sandbox list (each `None` while not looked at since the event).
pub fn applied(expect: Expect, container: Option<Seen>, sandbox: Option<Seen>) -> bool {
    use Seen::*;
    match expect {
        Expect::Started => {
            matches!(container, Some(State(s)) if s != CONTAINER_CREATED)
                || matches!(sandbox, Some(State(_)))
        }
        Expect::Exited => {
            matches!(container, Some(State(CONTAINER_EXITED)))
                || matches!(sandbox, Some(State(SANDBOX_NOTREADY)))
                || (container == Some(Absent) && sandbox == Some(Absent))
        }
        Expect::Created => matches!(container, Some(State(_))) || matches!(sandbox, Some(State(_))),
        Expect::Deleted => container == Some(Absent) && sandbox == Some(Absent),
    }
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    /// The generation the event made: lists fetched from it on show its effect or not yet.
    since: u64,
    deadline: Instant,
}

/// The state of trust in containerd's last answers.
#[derive(Debug)]
pub struct Fresh {
    generation: u64,
    /// Whether the event stream is up, and from when answers may be trusted.
    trusted_from: Option<Instant>,
    pending: HashMap<String, Pending>,
}

impl Default for Fresh {
    fn default() -> Fresh {
        Fresh::new()
    }
}

impl Fresh {
    /// Not trusted until the event stream is up.
    pub fn new() -> Fresh {
        Fresh {
            generation: 0,
            trusted_from: None,
            pending: HashMap::new(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Something changed (or may have): answers fetched before now are not served again.
    pub fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// The event stream is (again) up: what happened while it was down is not known, so every
    /// copy is dropped and nothing is trusted for [`SETTLE`].
    pub fn connected(&mut self, now: Instant) {
        self.bump();
        self.pending.clear();
        self.trusted_from = Some(now + SETTLE);
    }

    /// The event stream broke (containerd stopped or restarts): nothing is trusted.
    pub fn disconnected(&mut self) {
        self.bump();
        self.pending.clear();
        self.trusted_from = None;
    }

    /// An event about `id` (a container or sandbox ID) of `topic`.
    pub fn event(&mut self, topic: &str, id: &str, now: Instant) {
        if !touches_pods(topic) {
            return;
        }
        let since = self.bump();
        if let Some(expect) = Expect::of_topic(topic).filter(|_| !id.is_empty()) {
            self.pending.insert(
                id.to_owned(),
                Pending {
                    expect,
                    since,
                    deadline: now + PENDING_LIMIT,
                },
            );
        }
    }

    /// Whether answers of the current generation may be served from the copy.
    pub fn trusted(&self, now: Instant) -> bool {
        self.pending.is_empty() && self.trusted_from.is_some_and(|t| now >= t)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// containerd's two lists, unfiltered, both fetched from generation `fetched_at` on:
    /// pending events whose effect they show are settled. Returns how many stay pending.
    pub fn observe(
        &mut self,
        fetched_at: u64,
        containers: &HashMap<String, i32>,
        sandboxes: &HashMap<String, i32>,
    ) -> usize {
        let seen = |list: &HashMap<String, i32>, id: &str| {
            list.get(id).map_or(Seen::Absent, |s| Seen::State(*s))
        };
        self.pending.retain(|id, p| {
            p.since > fetched_at
                || !applied(
                    p.expect,
                    Some(seen(containers, id)),
                    Some(seen(sandboxes, id)),
                )
        });
        self.pending.len()
    }

    /// Gives up pending events older than [`PENDING_LIMIT`] (containerd never showed their
    /// effect, e.g. a pod whose start failed and was cleaned up): returns their IDs.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let old: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            self.pending.remove(id);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: i32 = 1;
    const READY: i32 = 0;

    fn up() -> (Fresh, Instant) {
        let mut f = Fresh::new();
        let t = Instant::now();
        f.connected(t);
        (f, t + SETTLE)
    }

    fn list(entries: &[(&str, i32)]) -> HashMap<String, i32> {
        entries.iter().map(|(i, s)| ((*i).to_owned(), *s)).collect()
    }

    #[test]
    fn not_trusted_before_the_stream_is_up_and_settled() {
        let mut f = Fresh::new();
        let t = Instant::now();
        assert!(!f.trusted(t));
        f.connected(t);
        assert!(!f.trusted(t), "events missed while down may be in flight");
        assert!(f.trusted(t + SETTLE));
        f.disconnected();
        assert!(!f.trusted(t + SETTLE * 10));
    }

    #[test]
    fn every_event_and_change_makes_a_new_generation() {
        let (mut f, t) = up();
        let g = f.generation();
        f.event("/tasks/oom", "c1", t);
        assert!(f.generation() > g);
        assert!(f.trusted(t), "an OOM event changes no list entry");
        let g = f.generation();
        f.event("/snapshot/prepare", "", t);
        f.event("/images/create", "busybox", t);
        assert_eq!(
            f.generation(),
            g,
            "snapshots and images leave pods as they are"
        );
        f.bump();
        assert!(f.generation() > g);
    }

    #[test]
    fn an_exit_is_pending_until_the_lists_show_it() {
        let (mut f, t) = up();
        f.event("/tasks/exit", "c1", t);
        assert!(!f.trusted(t));
        let g = f.generation();
        let sandboxes = list(&[("p1", READY)]);
        assert_eq!(
            f.observe(g - 1, &list(&[("c1", 2)]), &sandboxes),
            1,
            "fetched before the event"
        );
        assert_eq!(
            f.observe(g, &list(&[("c1", RUNNING)]), &sandboxes),
            1,
            "not applied yet"
        );
        assert_eq!(f.observe(g, &list(&[("c1", 2)]), &sandboxes), 0);
        assert!(f.trusted(t));
    }

    #[test]
    fn a_sandbox_exit_is_applied_when_not_ready_or_gone() {
        let (mut f, t) = up();
        f.event("/tasks/exit", "p1", t);
        let g = f.generation();
        assert_eq!(f.observe(g, &list(&[]), &list(&[("p1", READY)])), 1);
        assert_eq!(
            f.observe(g, &list(&[]), &list(&[("p1", SANDBOX_NOTREADY)])),
            0
        );
        f.event("/tasks/exit", "p2", t);
        let g = f.generation();
        assert_eq!(
            f.observe(g, &list(&[]), &list(&[])),
            0,
            "gone counts as exited"
        );
    }

    #[test]
    fn starts_creates_and_deletes() {
        assert!(!applied(
            Expect::Started,
            Some(Seen::State(CONTAINER_CREATED)),
            Some(Seen::Absent)
        ));
        assert!(applied(Expect::Started, Some(Seen::State(RUNNING)), None));
        assert!(applied(Expect::Started, None, Some(Seen::State(READY))));
        assert!(!applied(
            Expect::Started,
            Some(Seen::Absent),
            Some(Seen::Absent)
        ));
        assert!(!applied(
            Expect::Created,
            Some(Seen::Absent),
            Some(Seen::Absent)
        ));
        assert!(applied(
            Expect::Created,
            Some(Seen::State(CONTAINER_CREATED)),
            None
        ));
        assert!(
            !applied(Expect::Deleted, Some(Seen::Absent), None),
            "needs both lists"
        );
        assert!(!applied(
            Expect::Deleted,
            Some(Seen::Absent),
            Some(Seen::State(1))
        ));
        assert!(applied(
            Expect::Deleted,
            Some(Seen::Absent),
            Some(Seen::Absent)
        ));
        assert!(
            !applied(Expect::Exited, Some(Seen::Absent), None),
            "needs both lists"
        );
    }

    #[test]
    fn exec_exits_and_empty_ids_set_nothing_pending() {
        let (mut f, t) = up();
        f.event("/tasks/exit", "", t);
        assert!(f.trusted(t));
    }

    #[test]
    fn reconnecting_forgets_pending_events_and_settles_again() {
        let (mut f, t) = up();
        f.event("/tasks/start", "c1", t);
        f.disconnected();
        f.connected(t);
        assert!(!f.has_pending());
        assert!(!f.trusted(t));
        assert!(f.trusted(t + SETTLE));
    }

    #[test]
    fn pending_events_are_given_up_after_the_limit() {
        let (mut f, t) = up();
        f.event("/containers/create", "p9", t);
        assert!(f.expire(t + PENDING_LIMIT / 2).is_empty());
        assert_eq!(f.expire(t + PENDING_LIMIT), vec!["p9".to_owned()]);
        assert!(f.trusted(t + PENDING_LIMIT));
    }
}
