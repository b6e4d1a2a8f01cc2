//! Every registry call with a deadline: a registry that stops answering must never stall a
//! shard's admissions forever; past `node.registry_timeout_ms` the call fails as
//! `Unavailable` (new upgrades get 1013, the API 503; live sessions never wait on it).

use crate::registry::rate::MinuteWindow;
use crate::registry::{
    Answer, AppKey, Claim, Exceeded, NodeInfo, Registry, Revocation, Unavailable, Usage,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub struct WithDeadline {
    inner: Arc<dyn Registry>,
    timeout: Duration,
}

impl WithDeadline {
    pub fn new(inner: Arc<dyn Registry>, timeout: Duration) -> Self {
        WithDeadline { inner, timeout }
    }

    fn bound<'a, T: 'a>(
        &'a self,
        call: impl Future<Output = Result<T, Unavailable>> + 'a,
    ) -> Answer<'a, T> {
        let timeout = self.timeout;
        Box::pin(futures_lite::future::or(call, async move {
            glommio::timer::sleep(timeout).await;
            Err(Unavailable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            )))
        }))
    }
}

impl Registry for WithDeadline {
    fn heartbeat<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(String, Usage)],
        now_ms: u64,
    ) -> Answer<'a, ()> {
        self.bound(self.inner.heartbeat(node, held, now_ms))
    }

    fn claim<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        documents_max: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Claim> {
        self.bound(self.inner.claim(document, app, node, documents_max, now_ms))
    }

    fn release<'a>(
        &'a self,
        document: &'a str,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()> {
        self.bound(self.inner.release(document, app, node, now_ms))
    }

    fn lookup<'a>(&'a self, document: &'a str, now_ms: u64) -> Answer<'a, Option<NodeInfo>> {
        self.bound(self.inner.lookup(document, now_ms))
    }

    fn acquire_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        limit: Option<u64>,
        now_ms: u64,
    ) -> Answer<'a, Result<(), Exceeded>> {
        self.bound(self.inner.acquire_connection(app, node, limit, now_ms))
    }

    fn release_connection<'a>(
        &'a self,
        app: &'a AppKey,
        node: &'a NodeInfo,
        now_ms: u64,
    ) -> Answer<'a, ()> {
        self.bound(self.inner.release_connection(app, node, now_ms))
    }

    fn usage<'a>(&'a self, app: &'a AppKey, now_ms: u64) -> Answer<'a, Usage> {
        self.bound(self.inner.usage(app, now_ms))
    }

    fn revoke<'a>(&'a self, what: &'a Revocation) -> Answer<'a, ()> {
        self.bound(self.inner.revoke(what))
    }

    fn restore<'a>(&'a self, what: &'a Revocation) -> Answer<'a, bool> {
        self.bound(self.inner.restore(what))
    }

    fn revocations(&self) -> Answer<'_, Vec<Revocation>> {
        self.bound(self.inner.revocations())
    }

    fn set_client_secret<'a>(&'a self, app: &'a AppKey, hash: &'a str) -> Answer<'a, ()> {
        self.bound(self.inner.set_client_secret(app, hash))
    }

    fn client_secrets(&self) -> Answer<'_, Vec<(String, String)>> {
        self.bound(self.inner.client_secrets())
    }

    fn ops_window(&self, app: &AppKey) -> Arc<MinuteWindow> {
        self.inner.ops_window(app)
    }

    fn sync_ops<'a>(&'a self, node: &'a NodeInfo, now_ms: u64) -> Answer<'a, ()> {
        self.bound(self.inner.sync_ops(node, now_ms))
    }
}
