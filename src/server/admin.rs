//! The admin listener (PRODUCT.md 13): a control plane of its own, on a thread of its own,
//! apart from the data plane. Every request carries the admin bearer token; each client
//! address has its own budget. What a request needs of the live node it asks the shards for
//! as jobs (`operator`); registry calls run on shard 0, where the registry's deadline lives.
//!
//! One request per connection, each bounded by [`CONNECTION_TIMEOUT`] from accept to the
//! last byte of the answer, served by [`WORKERS`] threads; connections past what they and a
//! short queue hold are dropped at once, so silent clients cannot lock the operator out for
//! long: an operator's tool, not a public service.

use super::operator::{close_refused, ShardJob, ShardJobs};
use super::shard::Shard;
use super::shared::Shared;
use super::stats::ShardStats;
use crate::auth::admin_token::{AdminToken, Denied};
use crate::http::request::{parse_request, percent_decode};
use crate::http::response::{json_string, response};
use crate::registry::Revocation;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The shards' answer to a job must come within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection is done within this of its accept: its request read, its answer written
/// (beside the shards' time).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Threads serving connections, and connections waiting for one.
const WORKERS: usize = 4;
const WAITING_MAX: usize = 16;

/// Request head bytes read at most (admin requests carry no body).
const HEAD_BYTES_MAX: usize = 8 << 10;

/// Documents one listing names at most.
const DOCUMENTS_LISTED_MAX: usize = 10_000;

/// Starts serving `listener` on a thread of its own.
pub fn start(
    listener: TcpListener,
    shared: Arc<Shared>,
    stats: Arc<[ShardStats]>,
    jobs: Arc<ShardJobs>,
    token: AdminToken,
) -> std::io::Result<()> {
    let admin = Arc::new(Admin {
        shared,
        stats,
        jobs,
        token,
    });
    let (tx, rx) = mpsc::sync_channel::<(TcpStream, Instant)>(WAITING_MAX);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..WORKERS {
        let (admin, rx) = (admin.clone(), rx.clone());
        std::thread::Builder::new()
            .name(format!("wiresocket-admin-{i}"))
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((stream, accepted)) = next else { return };
                admin.serve(stream, accepted + CONNECTION_TIMEOUT);
            })?;
    }
    std::thread::Builder::new()
        .name("wiresocket-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    // Past the workers and the queue: dropped (closed) at once.
                    Ok(stream) => {
                        let _ = tx.try_send((stream, Instant::now()));
                    }
                    Err(e) => {
                        crate::log::warn("admin_accept_failed", &[("error", &e)]);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(|_| ())
}

struct Admin {
    shared: Arc<Shared>,
    stats: Arc<[ShardStats]>,
    jobs: Arc<ShardJobs>,
    token: AdminToken,
}

/// An answer: its status and JSON body.
type Answer = (u16, Value);

fn error(status: u16, message: &str) -> Answer {
    (status, json!({ "error": message }))
}

impl Admin {
    /// Reads one request by `deadline` and answers it (the answer's write by the deadline
    /// too, plus what the shards took).
    fn serve(&self, mut stream: TcpStream, deadline: Instant) {
        let ip = match stream.peer_addr() {
            Ok(addr) => addr.ip(),
            Err(_) => return,
        };
        let left = |deadline: Instant| {
            Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
        };
        let mut buf = vec![0u8; HEAD_BYTES_MAX];
        let mut filled = 0;
        let bytes = loop {
            // Each read gets only what is left of the connection's time.
            let Some(left) = left(deadline) else { return };
            let _ = stream.set_read_timeout(Some(left));
            match stream.read(&mut buf[filled..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
            match parse_request(&buf[..filled], HEAD_BYTES_MAX) {
                Ok(Some(req)) => break self.answer(&req, ip),
                Ok(None) if filled < buf.len() => continue,
                _ => break self.render(error(400, "malformed or oversized request head")),
            }
        };
        let write_by = deadline.max(Instant::now() + Duration::from_millis(500));
        let Some(left) = left(write_by) else { return };
        let _ = stream.set_write_timeout(Some(left));
        let _ = stream.write_all(&bytes);
    }

    fn answer(&self, req: &crate::http::request::Request<'_>, ip: std::net::IpAddr) -> Vec<u8> {
        let now_s = crate::log::unix_ms() / 1000;
        if !self.shared.admin_per_ip.allow(ip, now_s) {
            return self.render(error(429, "too many admin requests from this address"));
        }
        if let Err(denied) = self.token.check(req.header("authorization")) {
            crate::log::warn("admin_denied", &[("ip", &ip), ("path", &req.path)]);
            return self.render(match denied {
                Denied::Missing => error(401, "send Authorization: Bearer <admin token>"),
                Denied::Wrong => error(403, "this is not the admin token"),
            });
        }
        if req.method == "GET" && req.path == "/metrics" && self.shared.config.metrics_on_admin {
            let text = super::stats::render_all(&self.stats, &self.shared.webhooks);
            return response(200, "text/plain; version=0.0.4", &[], &text);
        }
        let answer = self.route(req.method, req.path, req.query_param("app"));
        self.render(answer)
    }

    fn render(&self, (status, body): Answer) -> Vec<u8> {
        response(status, "application/json", &[], &body.to_string())
    }

    fn route(&self, method: &str, path: &str, app: Option<&str>) -> Answer {
        // Each segment percent-decoded (`wiresocket admin` encodes ids and names).
        let decoded: Option<Vec<String>> = path
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let Some(decoded) = decoded else {
            return error(400, "the path is not valid percent-encoding");
        };
        let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let app = app.map(percent_decode);
        let app = match app {
            Some(None) => return error(400, "app is not valid percent-encoding"),
            Some(Some(ref id)) => Some(id.as_str()),
            None => None,
        };
        match (method, parts.as_slice()) {
            ("GET", ["admin", "apps"]) => self.apps(),
            ("GET", ["admin", "documents"]) => self.documents(app),
            ("GET", ["admin", "revocations"]) => self.revocations(),
            ("POST", ["admin", "apps", id, action @ ("revoke" | "restore")]) => {
                match self.app_key(id) {
                    Some(key) => self.revocation(Revocation::App(key), action == &"revoke"),
                    None => error(404, &format!("no app {}", json_string(id))),
                }
            }
            ("POST", ["admin", "apps", id, "rotate-secret"]) => self.rotate_secret(id),
            ("POST", ["admin", "tenants", id, action @ ("revoke" | "restore")]) => {
                if self.shared.directory().verifier.has_tenant(id) {
                    self.revocation(Revocation::Tenant((*id).to_owned()), action == &"revoke")
                } else {
                    error(404, &format!("no tenant {}", json_string(id)))
                }
            }
            ("POST", ["admin", "keys", tenant, kid, action @ ("revoke" | "restore")]) => {
                let key = Revocation::Key(format!("{tenant}::{kid}"));
                // A revoked key removed from the file since can still be restored (a key
                // configured later under its kid would otherwise start revoked).
                let restorable = action == &"restore" && self.shared.revoked.list().contains(&key);
                if restorable || self.shared.directory().verifier.has_key(tenant, kid) {
                    self.revocation(key, action == &"revoke")
                } else {
                    let (tenant, kid) = (json_string(tenant), json_string(kid));
                    error(404, &format!("tenant {tenant} has no key with kid {kid}"))
                }
            }
            // A name with `/` (`allow_path_names`) comes as one encoded segment or several.
            ("POST", ["admin", "documents", app, name @ .., "close"]) if !name.is_empty() => {
                self.close_document(app, &name.join("/"))
            }
            (_, ["admin", ..]) => error(
                404,
                "no such admin endpoint (see the README's operator section)",
            ),
            _ => error(404, "not found"),
        }
    }

    /// `{tenant}::{app}` of a configured app.
    fn app_key(&self, id: &str) -> Option<String> {
        let directory = self.shared.directory();
        let app = directory.apps.get(id)?;
        Some(format!("{}::{}", app.tenant, app.id))
    }

    fn apps(&self) -> Answer {
        let directory = self.shared.directory();
        let keys: Vec<(String, String)> = directory
            .apps
            .values()
            .map(|a| (a.id.clone(), format!("{}::{}", a.tenant, a.id)))
            .collect();
        let lookup = keys.iter().map(|(_, key)| key.clone()).collect::<Vec<_>>();
        let usage = self.on_shard0(move |shard| {
            Box::pin(async move {
                let mut out = Vec::new();
                for key in lookup {
                    let usage = shard
                        .shared
                        .registry
                        .usage(&key, crate::log::unix_ms())
                        .await;
                    out.push(usage.ok());
                }
                out
            })
        });
        let Ok(usage) = usage else {
            return error(503, "the shards did not answer in time");
        };
        let mut apps: Vec<Value> = keys
            .iter()
            .zip(usage)
            .map(|((id, key), usage)| {
                let app = &directory.apps[id];
                json!({
                    "id": id,
                    "tenant": app.tenant,
                    "enabled": app.enabled,
                    "revoked": self.shared.revoked.refusal(key).is_some(),
                    "connections": usage.map(|u| u.connections),
                    "documents": usage.map(|u| u.documents),
                })
            })
            .collect();
        apps.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        (200, json!({ "apps": apps }))
    }

    /// This node's live documents (of one app), with their connection counts.
    fn documents(&self, app: Option<&str>) -> Answer {
        let key = match app {
            None => None,
            Some(id) => match self.app_key(id) {
                Some(key) => Some(key),
                None => return error(404, &format!("no app {}", json_string(id))),
            },
        };
        let listed =
            self.on_each_shard(move |shard| shard.rooms.list(key.as_deref(), DOCUMENTS_LISTED_MAX));
        let Ok(listed) = listed else {
            return error(503, "the shards did not answer in time");
        };
        let mut documents: Vec<Value> = listed
            .into_iter()
            .flatten()
            .take(DOCUMENTS_LISTED_MAX)
            .map(|(app, name, connections)| {
                json!({ "app": app, "name": name, "connections": connections })
            })
            .collect();
        documents.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let truncated = documents.len() >= DOCUMENTS_LISTED_MAX;
        (
            200,
            json!({ "documents": documents, "truncated": truncated }),
        )
    }

    fn revocations(&self) -> Answer {
        let list: Vec<String> = self
            .shared
            .revoked
            .list()
            .iter()
            .map(|r| r.name())
            .collect();
        (200, json!({ "revocations": list }))
    }

    /// Revokes or restores `what` in the registry (every node reads it each heartbeat), then
    /// this node's sessions of it are closed at once.
    fn revocation(&self, what: Revocation, revoke: bool) -> Answer {
        let name = what.name();
        let closed_before = self.shared.revoked.closed_total();
        let changed = self.on_shard0(move |shard| {
            Box::pin(async move {
                let registry = &shard.shared.registry;
                let changed = if revoke {
                    registry.revoke(&what).await.map(|()| true)
                } else {
                    registry.restore(&what).await
                };
                let read = shard.shared.revoked.begin_read();
                let list = registry.revocations().await;
                match (changed, list) {
                    (Ok(changed), Ok(list)) => {
                        shard.shared.revoked.replace(read, list);
                        Ok(changed)
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.0),
                }
            })
        });
        let changed = match changed {
            Ok(Ok(changed)) => changed,
            Ok(Err(why)) => return error(503, &format!("the registry did not answer: {why}")),
            Err(()) => return error(503, "the shards did not answer in time"),
        };
        // Once every shard has run this, each has closed what it held of `what` (here or
        // on its own tick, which counts in the same total).
        if self.on_each_shard(|shard| close_refused(shard)).is_err() {
            return error(503, "the shards did not answer in time");
        }
        let closed = self.shared.revoked.closed_total() - closed_before;
        let action = if revoke { "revoked" } else { "restored" };
        crate::log::info(
            "admin_revocation",
            &[
                ("action", &action),
                ("what", &name),
                ("sessions_closed", &closed),
            ],
        );
        (
            200,
            json!({ action: name, "changed": changed, "sessions_closed": closed }),
        )
    }

    /// Gives `id`'s OAuth client a new secret, answered once; only its hash is kept, in the
    /// registry (every node reads it each heartbeat). Refresh tokens are bound to the secret
    /// they were issued under, so every one of the app's stops working.
    fn rotate_secret(&self, id: &str) -> Answer {
        let directory = self.shared.directory();
        let Some(app) = directory.apps.get(id) else {
            return error(404, &format!("no app {}", json_string(id)));
        };
        let Some(client_id) = app.client_id.clone() else {
            return error(
                409,
                "the app has no client_id: it takes no client credentials",
            );
        };
        let key = format!("{}::{}", app.tenant, app.id);
        let bytes: [u8; 32] = rand::random();
        let secret =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
        let hash = crate::auth::secret::hash_secret(&secret, crate::auth::secret::ITERATIONS);
        let (app_key, stored) = (key.clone(), hash);
        let written = self.on_shard0(move |shard| {
            Box::pin(async move {
                let registry = &shard.shared.registry;
                registry.set_client_secret(&app_key, &stored).await?;
                let all = registry.client_secrets().await?;
                shard
                    .shared
                    .directory()
                    .set_rotated_secrets(all.into_iter().collect());
                Ok::<_, crate::registry::Unavailable>(())
            })
        });
        match written {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return error(503, &format!("the registry did not answer: {}", why.0)),
            Err(()) => return error(503, "the shards did not answer in time"),
        }
        crate::log::info(
            "admin_secret_rotated",
            &[("app", &key), ("client_id", &client_id)],
        );
        (
            200,
            json!({
                "app": id,
                "client_id": client_id,
                "client_secret": secret,
                "note": "shown once: only its hash is kept; the app's refresh tokens no longer work",
            }),
        )
    }

    /// Closes one document's sessions on this node (4003).
    fn close_document(&self, app: &str, name: &str) -> Answer {
        let Some(app_key) = self.app_key(app) else {
            return error(404, &format!("no app {}", json_string(app)));
        };
        let key = format!("{app_key}::{name}");
        let closed = self.on_each_shard(move |shard| {
            let closed_by_operator = crate::refusal::Refusal::ClosedByOperator;
            shard
                .rooms
                .close_where(|k, _| (k == key).then_some(closed_by_operator.clone()))
        });
        let Ok(closed) = closed else {
            return error(503, "the shards did not answer in time");
        };
        let closed: usize = closed.into_iter().sum();
        crate::log::info(
            "admin_document_closed",
            &[
                ("app", &app_key),
                ("document", &name),
                ("sessions_closed", &closed),
            ],
        );
        if closed == 0 {
            return error(404, "the document is not open on this node");
        }
        (200, json!({ "document": name, "sessions_closed": closed }))
    }

    /// Runs `job` on every shard; their answers, in shard order, or `Err` when one did not
    /// answer within [`REQUEST_TIMEOUT`].
    fn on_each_shard<T: Send + 'static>(
        &self,
        job: impl Fn(&Rc<Shard>) -> T + Send + Sync + 'static,
    ) -> Result<Vec<T>, ()> {
        let job = Arc::new(job);
        let jobs = &self.jobs;
        let mut answers = Vec::new();
        for id in 0..jobs.shards() {
            let (tx, rx) = mpsc::channel();
            let job = job.clone();
            let run: ShardJob = Box::new(move |shard| {
                let _ = tx.send(job(shard));
            });
            jobs.send(id, run).map_err(|_| ())?;
            answers.push(rx);
        }
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        answers
            .into_iter()
            .map(|rx| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left).map_err(|_| ())
            })
            .collect()
    }

    /// Runs the future `make` gives on shard 0 (where registry calls have their deadline).
    fn on_shard0<T: Send + 'static>(
        &self,
        make: impl FnOnce(Rc<Shard>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> Result<T, ()> {
        let (tx, rx) = mpsc::channel();
        let run: ShardJob = Box::new(move |shard| {
            let future = make(shard.clone());
            let stats_of = shard.clone();
            glommio::spawn_local(async move {
                // A panic here is contained (and its waiter answered 503).
                let answered = super::contain::future(stats_of.my_stats(), "admin_job", future);
                if let Some(value) = answered.await {
                    let _ = tx.send(value);
                }
            })
            .detach();
        });
        self.jobs.send(0, run).map_err(|_| ())?;
        rx.recv_timeout(REQUEST_TIMEOUT).map_err(|_| ())
    }
}
