//! The behaviour every `Registry` backend must have, as one suite: the embedded backend runs
//! it in its unit tests; a distributed backend runs it against a real cluster.

use super::{Claim, Exceeded, NodeInfo, Registry, Revocation, Usage};
use std::future::Future;
use std::sync::Arc;

/// Runs every check against fresh registries from `make(stale_after_ms)`.
pub fn run_all(make: impl Fn(u64) -> Arc<dyn Registry>) {
    pins_are_claimed_once_and_released_by_their_holder(make(30_000).as_ref());
    connection_limits_count_every_node(make(30_000).as_ref());
    document_limits_count_pins(make(30_000).as_ref());
    a_stale_node_loses_its_pins_and_counts(make(30_000).as_ref());
    a_heartbeat_writes_the_nodes_true_counts(make(30_000).as_ref());
    apps_are_counted_apart(make(30_000).as_ref());
    revocations_are_kept_listed_and_lifted(make(30_000).as_ref());
    rotated_client_secrets_replace_older_ones(make(30_000).as_ref());
}

/// Drives a registry future to completion on this thread (backends' futures are driven by
/// whatever runtime calls them; the suite needs none).
pub fn block_on<F: Future>(future: F) -> F::Output {
    futures_lite::future::block_on(future)
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        region: format!("region-of-{id}"),
        url: format!("ws://{id}.example"),
    }
}

const T: u64 = 1_000_000;

fn pins_are_claimed_once_and_released_by_their_holder(r: &dyn Registry) {
    let (a, b) = (node("a"), node("b"));
    assert_eq!(
        block_on(r.claim("t::x::doc", "t::x", &a, None, T)),
        Ok(Claim::Pinned)
    );
    assert_eq!(
        block_on(r.claim("t::x::doc", "t::x", &a, None, T)),
        Ok(Claim::AlreadyHere)
    );
    assert_eq!(
        block_on(r.claim("t::x::doc", "t::x", &b, None, T)),
        Ok(Claim::Elsewhere(a.clone()))
    );
    assert_eq!(block_on(r.lookup("t::x::doc", T)), Ok(Some(a.clone())));
    // Only the holder's release counts.
    block_on(r.release("t::x::doc", "t::x", &b, T)).unwrap();
    assert_eq!(block_on(r.lookup("t::x::doc", T)), Ok(Some(a.clone())));
    block_on(r.release("t::x::doc", "t::x", &a, T)).unwrap();
    assert_eq!(block_on(r.lookup("t::x::doc", T)), Ok(None));
    assert_eq!(
        block_on(r.claim("t::x::doc", "t::x", &b, None, T)),
        Ok(Claim::Pinned)
    );
}

fn connection_limits_count_every_node(r: &dyn Registry) {
    let (a, b) = (node("a"), node("b"));
    block_on(r.acquire_connection("t::x", &a, Some(3), T))
        .unwrap()
        .unwrap();
    block_on(r.acquire_connection("t::x", &b, Some(3), T))
        .unwrap()
        .unwrap();
    block_on(r.acquire_connection("t::x", &b, Some(3), T))
        .unwrap()
        .unwrap();
    assert_eq!(
        block_on(r.acquire_connection("t::x", &a, Some(3), T)).unwrap(),
        Err(Exceeded {
            limit: 3,
            active: 3
        })
    );
    block_on(r.release_connection("t::x", &b, T)).unwrap();
    block_on(r.acquire_connection("t::x", &a, Some(3), T))
        .unwrap()
        .unwrap();
    assert_eq!(block_on(r.usage("t::x", T)).unwrap().connections, 3);
}

fn document_limits_count_pins(r: &dyn Registry) {
    let (a, b) = (node("a"), node("b"));
    assert_eq!(
        block_on(r.claim("t::x::1", "t::x", &a, Some(2), T)),
        Ok(Claim::Pinned)
    );
    assert_eq!(
        block_on(r.claim("t::x::2", "t::x", &b, Some(2), T)),
        Ok(Claim::Pinned)
    );
    assert_eq!(
        block_on(r.claim("t::x::3", "t::x", &a, Some(2), T)),
        Ok(Claim::DocumentLimit(Exceeded {
            limit: 2,
            active: 2
        }))
    );
    // A pinned document is joined, not counted again.
    assert_eq!(
        block_on(r.claim("t::x::1", "t::x", &a, Some(2), T)),
        Ok(Claim::AlreadyHere)
    );
    block_on(r.release("t::x::1", "t::x", &a, T)).unwrap();
    assert_eq!(
        block_on(r.claim("t::x::3", "t::x", &a, Some(2), T)),
        Ok(Claim::Pinned)
    );
    assert_eq!(block_on(r.usage("t::x", T)).unwrap().documents, 2);
}

fn a_stale_node_loses_its_pins_and_counts(r: &dyn Registry) {
    let (a, b) = (node("a"), node("b"));
    block_on(r.heartbeat(&a, &[], T)).unwrap();
    block_on(r.heartbeat(&b, &[], T)).unwrap();
    assert_eq!(
        block_on(r.claim("t::x::doc", "t::x", &a, None, T)),
        Ok(Claim::Pinned)
    );
    block_on(r.acquire_connection("t::x", &a, None, T))
        .unwrap()
        .unwrap();
    block_on(r.acquire_connection("t::x", &b, None, T))
        .unwrap()
        .unwrap();
    // b keeps beating, a falls silent for longer than the stale timeout.
    let later = T + 31_000;
    let b_holds = [("t::x".to_owned(), usage(1, 0))];
    block_on(r.heartbeat(&b, &b_holds, later)).unwrap();
    assert_eq!(block_on(r.lookup("t::x::doc", later)), Ok(None));
    assert_eq!(
        block_on(r.claim("t::x::doc", "t::x", &b, None, later)),
        Ok(Claim::Pinned)
    );
    assert_eq!(
        block_on(r.usage("t::x", later)),
        Ok(usage(1, 1)),
        "a's connection and document are released"
    );
}

fn usage(connections: u64, documents: u64) -> Usage {
    Usage {
        connections,
        documents,
    }
}

/// A count the calls got wrong (a release lost, an acquire counted twice) is put right by
/// the node's next heartbeat; an app it no longer lists is cleared; other nodes' counts stay.
fn a_heartbeat_writes_the_nodes_true_counts(r: &dyn Registry) {
    let (a, b) = (node("a"), node("b"));
    for _ in 0..3 {
        block_on(r.acquire_connection("t::x", &a, None, T))
            .unwrap()
            .unwrap();
    }
    block_on(r.acquire_connection("t::y", &a, None, T))
        .unwrap()
        .unwrap();
    block_on(r.acquire_connection("t::x", &b, None, T))
        .unwrap()
        .unwrap();
    assert_eq!(
        block_on(r.claim("t::x::d", "t::x", &a, None, T)),
        Ok(Claim::Pinned)
    );
    assert_eq!(block_on(r.usage("t::x", T)), Ok(usage(4, 1)));
    // a holds one connection of t::x (two were counted too many) and its document; t::y
    // nothing.
    let holds = [("t::x".to_owned(), usage(1, 1))];
    block_on(r.heartbeat(&a, &holds, T + 1)).unwrap();
    assert_eq!(
        block_on(r.usage("t::x", T + 1)),
        Ok(usage(2, 1)),
        "b's stays"
    );
    assert_eq!(block_on(r.usage("t::y", T + 1)), Ok(usage(0, 0)));
    // The limit counts the truth.
    assert_eq!(
        block_on(r.acquire_connection("t::x", &a, Some(3), T + 1)),
        Ok(Ok(()))
    );
    assert_eq!(
        block_on(r.acquire_connection("t::x", &a, Some(3), T + 1)),
        Ok(Err(Exceeded {
            limit: 3,
            active: 3
        }))
    );
}

fn apps_are_counted_apart(r: &dyn Registry) {
    let a = node("a");
    block_on(r.acquire_connection("t::x", &a, Some(1), T))
        .unwrap()
        .unwrap();
    block_on(r.acquire_connection("t::y", &a, Some(1), T))
        .unwrap()
        .unwrap();
    assert!(block_on(r.acquire_connection("t::x", &a, Some(1), T))
        .unwrap()
        .is_err());
    assert_eq!(
        block_on(r.usage("t::y", T)).unwrap(),
        Usage {
            connections: 1,
            documents: 0
        }
    );
}

fn revocations_are_kept_listed_and_lifted(r: &dyn Registry) {
    let app = Revocation::App("t::x".into());
    let tenant = Revocation::Tenant("t".into());
    let key = Revocation::Key("t::k1".into());
    assert_eq!(block_on(r.revocations()), Ok(vec![]));
    block_on(r.revoke(&app)).unwrap();
    block_on(r.revoke(&app)).unwrap();
    block_on(r.revoke(&tenant)).unwrap();
    block_on(r.revoke(&key)).unwrap();
    let mut listed = vec![app.clone(), tenant.clone(), key.clone()];
    listed.sort();
    assert_eq!(block_on(r.revocations()), Ok(listed), "once each, in order");
    assert_eq!(block_on(r.restore(&app)), Ok(true));
    assert_eq!(block_on(r.restore(&app)), Ok(false));
    assert_eq!(block_on(r.revocations()), Ok(vec![tenant, key]));
    for name in ["tenant:t", "app:t::x", "key:t::k1", "key:t::a::b"] {
        assert_eq!(
            Revocation::parse(name).map(|r| r.name()).as_deref(),
            Some(name)
        );
    }
    for name in ["tenant:a:b", "app:a:b::c:d"] {
        assert_eq!(
            Revocation::parse(name).map(|r| r.name()).as_deref(),
            Some(name)
        );
    }
    for bad in [
        "tenant:",
        "app:x",
        "app:a::b::c",
        "key:t",
        "key:t::",
        "key:::k",
        "kid:t::k",
    ] {
        assert_eq!(Revocation::parse(bad), None, "{bad}");
    }
}

fn rotated_client_secrets_replace_older_ones(r: &dyn Registry) {
    assert_eq!(block_on(r.client_secrets()), Ok(vec![]));
    block_on(r.set_client_secret("t::x", "hash-1")).unwrap();
    block_on(r.set_client_secret("t::y", "hash-y")).unwrap();
    block_on(r.set_client_secret("t::x", "hash-2")).unwrap();
    assert_eq!(
        block_on(r.client_secrets()),
        Ok(vec![
            ("t::x".to_owned(), "hash-2".to_owned()),
            ("t::y".to_owned(), "hash-y".to_owned())
        ])
    );
}
