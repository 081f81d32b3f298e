//! containerd's last answers to the kubelet's periodic calls (ListPodSandbox, ListContainers,
//! Status), kept encoded and served again while [`Fresh`] trusts them: a forwarded list then
//! costs virtlet's own answer, not a second CRI call. The rules are in [`super::fresh`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fresh::Fresh;

/// The longest a copy is served: a bound on what no event announces (containerd's Status
/// conditions follow its CNI config directory, which sends no event).
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// The most answers kept at once (the kubelet asks with a handful of filters).
const MAX_ENTRIES: usize = 256;

#[derive(Debug)]
struct Entry {
    generation: u64,
    at: Instant,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct State {
    fresh: Fresh,
    entries: HashMap<Vec<u8>, Entry>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Cache {
    state: Mutex<State>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A trusted copy.
    Hit(Bytes),
    /// Fetch; the answer may be stored with this generation. `pending`: events wait to be
    /// seen applied in containerd's lists first.
    Miss { generation: u64, pending: bool },
}

/// The key of a call: its path and encoded request.
pub fn key(path: &str, request: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(path.len() + 1 + request.len());
    k.extend_from_slice(path.as_bytes());
    k.push(0);
    k.extend_from_slice(request);
    k
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only a cache behind: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the trust state (events, connection changes, observations).
    pub fn fresh<R>(&self, f: impl FnOnce(&mut Fresh) -> R) -> R {
        f(&mut self.lock().fresh)
    }

    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        let mut s = self.lock();
        for id in s.fresh.expire(now) {
            tracing::warn!(id = %id, "containerd announced a change to this pod or container that its lists never showed; serving its lists from virtlet's copy again");
        }
        let generation = s.fresh.generation();
        if s.fresh.trusted(now)
            && let Some(e) = s.entries.get(key)
            && e.generation == generation
            && now.duration_since(e.at) < MAX_AGE
        {
            return Lookup::Hit(e.bytes.clone());
        }
        Lookup::Miss {
            generation,
            pending: s.fresh.has_pending(),
        }
    }

    /// Keeps an answer fetched from `generation` on, if nothing changed since and it is trusted.
    pub fn store(&self, key: Vec<u8>, generation: u64, bytes: Bytes, at: Instant) {
        let mut s = self.lock();
        if s.fresh.generation() != generation || !s.fresh.trusted(at) {
            return;
        }
        s.entries.retain(|_, e| e.generation == generation);
        if s.entries.len() >= MAX_ENTRIES {
            s.entries.clear();
        }
        s.entries.insert(
            key,
            Entry {
                generation,
                at,
                bytes,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::fresh::SETTLE;
    use super::*;

    fn trusted_cache() -> (Cache, Instant) {
        let c = Cache::default();
        let t = Instant::now();
        c.fresh(|f| f.connected(t));
        (c, t + SETTLE)
    }

    fn miss_generation(l: Lookup) -> u64 {
        match l {
            Lookup::Miss { generation, .. } => generation,
            Lookup::Hit(_) => panic!("a hit where a miss was due"),
        }
    }

    #[test]
    fn a_stored_answer_is_served_until_something_changes() {
        let (c, t) = trusted_cache();
        let k = key("/runtime.v1.RuntimeService/ListContainers", b"");
        let g = miss_generation(c.lookup(&k, t));
        c.store(k.clone(), g, Bytes::from_static(b"answer"), t);
        assert_eq!(c.lookup(&k, t), Lookup::Hit(Bytes::from_static(b"answer")));
        let other = key("/runtime.v1.RuntimeService/ListPodSandbox", b"");
        assert!(matches!(c.lookup(&other, t), Lookup::Miss { .. }));
        c.fresh(Fresh::bump);
        assert!(matches!(
            c.lookup(&k, t),
            Lookup::Miss { pending: false, .. }
        ));
    }

    #[test]
    fn an_answer_fetched_across_a_change_is_not_kept() {
        let (c, t) = trusted_cache();
        let k = key("/p", b"");
        let g = miss_generation(c.lookup(&k, t));
        c.fresh(|f| f.event("/tasks/oom", "c1", t));
        c.store(k.clone(), g, Bytes::from_static(b"old"), t);
        assert!(matches!(c.lookup(&k, t), Lookup::Miss { .. }));
    }

    #[test]
    fn copies_age_out() {
        let (c, t) = trusted_cache();
        let k = key("/p", b"");
        let g = miss_generation(c.lookup(&k, t));
        c.store(k.clone(), g, Bytes::from_static(b"a"), t);
        assert!(matches!(c.lookup(&k, t + MAX_AGE / 2), Lookup::Hit(_)));
        assert!(matches!(c.lookup(&k, t + MAX_AGE), Lookup::Miss { .. }));
    }

    #[test]
    fn nothing_is_served_or_kept_while_an_event_is_pending_or_the_stream_is_down() {
        let (c, t) = trusted_cache();
        let k = key("/p", b"");
        c.fresh(|f| f.event("/tasks/exit", "c1", t));
        let l = c.lookup(&k, t);
        assert!(matches!(l, Lookup::Miss { pending: true, .. }));
        c.store(k.clone(), miss_generation(l), Bytes::from_static(b"a"), t);
        assert!(matches!(c.lookup(&k, t), Lookup::Miss { .. }));

        let (c, t) = trusted_cache();
        c.fresh(Fresh::disconnected);
        let g = miss_generation(c.lookup(&k, t));
        c.store(k.clone(), g, Bytes::from_static(b"a"), t);
        assert!(matches!(c.lookup(&k, t), Lookup::Miss { .. }));
    }
}
