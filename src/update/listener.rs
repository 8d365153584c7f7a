//! The device's side of over-the-air updates, part of `ucad run`: an HTTP listener that takes a
//! signed bank (`POST /bank`), refuses anything not signed by a trusted key for this device's
//! line, damaged, for another backbone, beyond the device's capacity or not newer than every
//! bank installed before, installs the rest atomically and hands it to the loop between two
//! frames; `GET /status` reports the installed bank and the loop's counters, `GET /metrics` the
//! same for Prometheus.
//!
//! Up to `MAX_CONNECTIONS` requests are served at once, each on its own thread and within the
//! request deadline, so that slow clients delay nobody. One remote address gets at most
//! `MAX_PER_PEER` of them: one more from it takes the place of its oldest connection still
//! sending its request (or is answered 503 at once when all of them are being answered). When
//! all places are taken, a new connection takes the place of the oldest one still sending its
//! request, which is cut and answered 503: holding a place for the whole deadline with a
//! request that does not come would otherwise keep every client out for as long as it is
//! repeated, while a cut request is only delayed (the pusher retries), and a request already
//! received is never cut, so an install is never half answered. The price: a push slower than `MAX_CONNECTIONS` newer
//! connections from at least three addresses is cut.
//!
//! One request body at a time is held in memory, from its first byte until its answer (the
//! others wait within their deadline, then get 503), so that concurrent pushes cost one
//! `max_bytes` body, not one per connection. Stopping cuts the connections being served and
//! never waits on a client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{info, warn};
use serde_json::json;

use super::http::{self, refuse, Refusal};
use super::install::Installer;
use super::metrics;
use super::policy::validate;
use super::status;
use super::store::Origin;

/// Requests served at once.
const MAX_CONNECTIONS: usize = 8;
/// Requests served at once for one remote address.
const MAX_PER_PEER: usize = 3;
/// An answer (a few KiB at most) must be taken within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct UpdateListener {
    address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the listener's threads share.
struct Shared {
    installer: Arc<Installer>,
    connections: Mutex<Connections>,
    /// Signalled when the body turn is given back, a connection is cut or the listener stops.
    turn_freed: Condvar,
}

/// The connections being served, so that stopping (or a newer connection) can cut them.
struct Connections {
    stopping: bool,
    next_id: u64,
    served: Vec<Connection>,
    /// The connection whose body is in memory, from its first byte until it is answered.
    body_turn: Option<u64>,
}

struct Connection {
    id: u64,
    peer: IpAddr,
    since: Instant,
    /// Still receiving its request: it may be cut to make room.
    receiving: bool,
    stream: TcpStream,
}

enum Admission {
    Served(u64),
    Refused(String),
    Stopping,
}

impl Connections {
    /// The oldest connection (of `peer`, or of anyone) still receiving its request: it has had
    /// its chance.
    fn oldest_receiving(&self, peer: Option<IpAddr>) -> Option<usize> {
        (self.served.iter().enumerate())
            .filter(|(_, c)| c.receiving && peer.is_none_or(|p| c.peer == p))
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i)
    }

    /// Ends a connection's reads at once; its thread answers 503 (the write side stays open).
    fn cut(&mut self, index: usize) {
        let cut = self.served.swap_remove(index);
        let _ = cut.stream.shutdown(Shutdown::Read);
    }

    fn is_served(&self, id: u64) -> bool {
        self.served.iter().any(|c| c.id == id)
    }
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, stream: &TcpStream, peer: IpAddr) -> Admission {
        let mut connections = self.connections();
        if connections.stopping {
            return Admission::Stopping;
        }
        // Whose oldest still-receiving connection gives up its place, when there is none free.
        let full = if connections.served.iter().filter(|c| c.peer == peer).count() >= MAX_PER_PEER {
            Some((Some(peer), MAX_PER_PEER))
        } else {
            (connections.served.len() >= MAX_CONNECTIONS).then_some((None, MAX_CONNECTIONS))
        };
        if let Some((of, places)) = full {
            let Some(oldest) = connections.oldest_receiving(of) else {
                let from = of.map_or(String::new(), |p| format!(" from {p}"));
                return Admission::Refused(format!("busy: {places} requests{from} are being answered"));
            };
            connections.cut(oldest);
            self.turn_freed.notify_all();
        }
        match stream.try_clone() {
            Ok(handle) => {
                let id = connections.next_id;
                connections.next_id += 1;
                connections.served.push(Connection {
                    id,
                    peer,
                    since: Instant::now(),
                    receiving: true,
                    stream: handle,
                });
                Admission::Served(id)
            }
            Err(e) => Admission::Refused(format!("cannot serve the connection: {e}")),
        }
    }

    /// Whether a connection whose request is read may be answered (it was not cut to make
    /// room meanwhile); from then on it is not cut.
    fn answering(&self, id: u64) -> bool {
        let mut connections = self.connections();
        let connection = connections.served.iter_mut().find(|c| c.id == id);
        connection.map(|c| c.receiving = false).is_some()
    }

    /// Waits (until `deadline`) for the one turn to hold a request body in memory.
    fn body_turn(self: &Arc<Self>, id: u64, deadline: Instant) -> Result<BodyTurn, Refusal> {
        let mut connections = self.connections();
        loop {
            if connections.stopping || !connections.is_served(id) {
                return Err(cut());
            }
            if connections.body_turn.is_none() {
                connections.body_turn = Some(id);
                return Ok(BodyTurn { shared: self.clone() });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(refuse(503, "busy: another update is being received; try again"));
            }
            connections = (self.turn_freed.wait_timeout(connections, left))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Refuses new connections and cuts the ones being served: their reads end at once.
    fn close_all(&self) {
        let mut connections = self.connections();
        connections.stopping = true;
        for connection in &connections.served {
            let _ = connection.stream.shutdown(Shutdown::Both);
        }
        self.turn_freed.notify_all();
    }
}

fn cut() -> Refusal {
    refuse(503, "cut to make room for newer connections; try again")
}

/// A connection's place among those served, given back when its thread ends, however it ends.
struct Served {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shared.connections().served.retain(|c| c.id != self.id);
    }
}

/// The turn to hold a request body in memory, given back when the request is answered.
struct BodyTurn {
    shared: Arc<Shared>,
}

impl Drop for BodyTurn {
    fn drop(&mut self) {
        self.shared.connections().body_turn = None;
        self.shared.turn_freed.notify_all();
    }
}

impl UpdateListener {
    pub fn start(listen: &str, installer: Arc<Installer>) -> Result<UpdateListener> {
        let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen for updates on {listen}"))?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            installer,
            connections: Mutex::new(Connections {
                stopping: false,
                next_id: 0,
                served: Vec::with_capacity(MAX_CONNECTIONS),
                body_turn: None,
            }),
            turn_freed: Condvar::new(),
        });
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ucad-updates".into())
            .spawn(move || accept(&listener, &accepting))
            .context("cannot start the update listener")?;
        info!("listening for signed bank updates on {address}");
        Ok(UpdateListener {
            address,
            shared,
            thread: Some(thread),
        })
    }

    /// Where it listens (the port the system chose, for `ADDR:0`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops listening and cuts the connections being served; never waits on a client. (Also
    /// what dropping the listener does.)
    pub fn stop(self) {}
}

impl Drop for UpdateListener {
    fn drop(&mut self) {
        self.shared.close_all();
        // Wake the blocking accept; should that fail, it ends at the next connection instead.
        let mut wake = self.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        match TcpStream::connect_timeout(&wake, Duration::from_millis(500)) {
            Ok(_) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(e) => warn!("update listener: cannot wake it to stop ({e}); it stops at the next connection"),
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        let (stream, peer) = match stream.and_then(|s| s.peer_addr().map(|peer| (s, peer))) {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: try again shortly, without spinning.
                warn!("update listener: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match shared.admit(&stream, peer.ip().to_canonical()) {
            Admission::Stopping => break,
            Admission::Refused(message) => respond(&stream, refused(refuse(503, message))),
            Admission::Served(id) => {
                let served = Served {
                    shared: shared.clone(),
                    id,
                };
                let spawned = std::thread::Builder::new()
                    .name("ucad-update-request".into())
                    .spawn(move || serve(&stream, &served));
                if let Err(e) = spawned {
                    warn!("update listener: cannot serve a connection: {e}");
                }
            }
        }
    }
}

fn serve(stream: &TcpStream, served: &Served) {
    let reply = receive(stream, served).unwrap_or_else(refused);
    if (400..500).contains(&reply.status) && reply.status != 404 {
        served
            .shared
            .installer
            .state
            .refused_requests
            .fetch_add(1, Ordering::Relaxed);
    }
    respond(stream, reply);
}

/// Answers the request unless the connection was cut to make room before it was read.
fn receive(stream: &TcpStream, served: &Served) -> Result<Reply, Refusal> {
    let shared = &served.shared;
    let read = read(stream, served);
    if !shared.answering(served.id) {
        return Err(cut());
    }
    let (request, _turn) = read?;
    Ok(answer(&request, shared))
}

/// Reads a request, holding its body (if any) in memory only with the body turn, which comes
/// back with it.
fn read(stream: &TcpStream, served: &Served) -> Result<(http::HttpRequest, Option<BodyTurn>), Refusal> {
    let shared = &served.shared;
    let policy = &shared.installer.policy;
    let deadline = Instant::now() + policy.request_deadline;
    let max_bytes = policy.max_bytes;
    let mut source = stream;
    let incoming = http::read_head(&mut source, deadline)?;
    let turn = match incoming.holds_a_body(max_bytes) {
        true => Some(shared.body_turn(served.id, deadline)?),
        false => None,
    };
    Ok((incoming.read_body(max_bytes)?, turn))
}

/// An answer: status, content type and body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    immutable: bool,
}

impl Reply {
    fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            immutable: false,
        }
    }
}

fn respond(stream: &TcpStream, reply: Reply) {
    let written = stream.set_write_timeout(Some(WRITE_TIMEOUT)).and_then(|()| {
        http::write_response(
            &mut &*stream,
            reply.status,
            reply.content_type,
            reply.immutable,
            &reply.body,
        )
    });
    if let Err(e) = written {
        warn!("update listener: cannot answer: {e}");
    }
}

fn refused(refusal: Refusal) -> Reply {
    warn!("update request refused ({}): {}", refusal.status, refusal.message);
    Reply::json(refusal.status, json!({"ok": false, "error": refusal.message}))
}

fn answer(request: &http::HttpRequest, shared: &Shared) -> Reply {
    let installer = &shared.installer;
    let path = request.path.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        ("POST", "/bank") => {
            let installed = installer.install(Origin::Pushed, |highest| {
                validate(&request.body, &installer.policy, highest)
            });
            match installed {
                Ok(installed) => Reply::json(200, json!({"ok": true, "installed": installed})),
                Err(refusal) => refused(refusal),
            }
        }
        ("GET", "/status") => Reply::json(200, status::status(&installer.state)),
        ("GET", "/metrics") => Reply {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(&installer.state).into_bytes(),
            immutable: false,
        },
        ("GET", "/") => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: status::PAGE.as_bytes().to_vec(),
            immutable: false,
        },
        ("GET", path) if path.starts_with("/audit/") => match status::audit_file(&installer.state, &path[7..]) {
            Ok((content_type, body)) => Reply {
                status: 200,
                content_type,
                body,
                // Audit names are unique: a browser need not fetch one twice.
                immutable: true,
            },
            Err(message) => Reply::json(404, json!({"ok": false, "error": message})),
        },
        (method, path) => Reply::json(404, json!({"ok": false, "error": format!("no {method} {path} here")})),
    }
}
