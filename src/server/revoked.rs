//! The revocations in force on this node (PRODUCT.md 13), as last read from the registry
//! (every heartbeat, and at once after an action on this node): checked at every admission,
//! and watched by the shards, which close the sessions a change cuts off.

use crate::registry::Revocation;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The revocations in force.
#[derive(Default)]
pub struct Revoked {
    set: RwLock<Arc<BTreeSet<Revocation>>>,
    /// Bumped on every change: shards close what a change revoked when they see it move.
    generation: AtomicU64,
    /// Sessions closed for revocations on this node, wherever it was done.
    closed_total: AtomicU64,
    /// Reads of the registry begun, and the latest one applied: a read that began before
    /// another was applied is older than it (the heartbeat's and an admin action's reads
    /// overlap), and must not undo it.
    reads_begun: AtomicU64,
    read_applied: AtomicU64,
}

impl Revoked {
    /// Numbers a read of the registry's revocations about to begin.
    pub fn begin_read(&self) -> u64 {
        self.reads_begun.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Replaces the set with what read `read` (from [`Revoked::begin_read`]) found, unless a
    /// later read was applied already; whether the set changed.
    pub fn replace(&self, read: u64, list: Vec<Revocation>) -> bool {
        let new: BTreeSet<Revocation> = list.into_iter().collect();
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        if read <= self.read_applied.load(Ordering::Acquire) {
            return false;
        }
        self.read_applied.store(read, Ordering::Release);
        if **set == new {
            return false;
        }
        *set = Arc::new(new);
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Whether any revocation is in force.
    pub fn any(&self) -> bool {
        !self
            .set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn closed_total(&self) -> u64 {
        self.closed_total.load(Ordering::Acquire)
    }

    /// Counts sessions closed for revocations.
    pub fn count_closed(&self, sessions: usize) {
        self.closed_total
            .fetch_add(sessions as u64, Ordering::AcqRel);
    }

    pub fn list(&self) -> Arc<BTreeSet<Revocation>> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why a connection of `app` (`{tenant}::{app}`) may not be: its tenant or app revoked.
    pub fn refusal(&self, app: &str) -> Option<&'static str> {
        let (tenant, app_id) = app.split_once("::")?;
        self.refusal_of(tenant, app_id, None)
    }

    /// Why a connection of `tenant`'s `app_id` whose token was signed with `signing_key`
    /// (`{tenant}::{kid}`) may not be: its tenant, app or key revoked (nothing is allocated
    /// while none is revoked: it is asked at every admission).
    pub fn refusal_of(
        &self,
        tenant: &str,
        app_id: &str,
        signing_key: Option<&str>,
    ) -> Option<&'static str> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        if set.is_empty() {
            return None;
        }
        if set.contains(&Revocation::Tenant(tenant.to_owned())) {
            Some("tenant revoked")
        } else if set.contains(&Revocation::App(format!("{tenant}::{app_id}"))) {
            Some("app revoked")
        } else if signing_key.is_some_and(|k| set.contains(&Revocation::Key(k.to_owned()))) {
            Some("key revoked")
        } else {
            None
        }
    }

    /// The revoked keys, as `{tenant}::{kid}`.
    pub fn keys(&self) -> Vec<String> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        set.iter()
            .filter_map(|r| match r {
                Revocation::Key(key) => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_refuse_their_tenant_and_app_and_changes_move_the_generation() {
        let revoked = Revoked::default();
        let replace = |list| revoked.replace(revoked.begin_read(), list);
        assert_eq!(revoked.refusal("acme::web"), None);
        let g0 = revoked.generation();
        assert!(replace(vec![Revocation::App("acme::web".into())]));
        assert_eq!(revoked.refusal("acme::web"), Some("app revoked"));
        assert_eq!(revoked.refusal("acme::docs"), None);
        assert_eq!(revoked.refusal("acme2::web"), None);
        assert!(!replace(vec![Revocation::App("acme::web".into())]));
        assert_eq!(revoked.generation(), g0 + 1, "the same set is no change");
        assert!(replace(vec![Revocation::Tenant("acme".into())]));
        assert_eq!(revoked.refusal("acme::docs"), Some("tenant revoked"));
        assert_eq!(revoked.refusal("acme::web"), Some("tenant revoked"));
        assert!(replace(vec![Revocation::Key("acme::k1".into())]));
        assert_eq!(revoked.refusal("acme::web"), None, "a key revokes no app");
        assert_eq!(
            revoked.refusal_of("acme", "web", Some("acme::k1")),
            Some("key revoked")
        );
        assert_eq!(revoked.refusal_of("acme", "web", Some("acme::k2")), None);
        assert_eq!(revoked.refusal_of("beta", "web", Some("beta::k1")), None);
        assert_eq!(revoked.keys(), ["acme::k1"]);
        assert!(replace(vec![]));
        assert_eq!(revoked.refusal("acme::web"), None);
        // A read begun before another was applied does not undo it.
        let older = revoked.begin_read();
        let newer = revoked.begin_read();
        assert!(revoked.replace(newer, vec![Revocation::Tenant("t".into())]));
        assert!(!revoked.replace(older, vec![]));
        assert_eq!(revoked.refusal("t::a"), Some("tenant revoked"));
    }
}
