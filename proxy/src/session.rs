//! One client's session, from accept to close: handshake, upstream connection,
//! authentication relay, then the two message loops.
//!
//! The loops run as two futures in one task, so each direction moves on its own
//! (a client pipelining while Postgres streams results never deadlocks on a full
//! socket buffer) without a task switch per message. Each loop reads into its
//! [`Framer`]'s reusable buffer, splits off every whole message as one `Bytes`
//! and writes it with one call: no copy, no allocation per message, and writes
//! batched by what one read brought.
//!
//! Metrics follow the same rule: per message the loops only add integers
//! ([`RoundTrip`]); a clock is read once per batch that holds a round trip, and
//! the shared counters are touched once per batch and per ReadyForQuery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::track::{self, ClientSide, ServerSide, Tracker};
use crate::audit::{Event, Record, SessionInfo};
use crate::auth;
use crate::error::{ClientError, ErrorKind};
use crate::handshake::{self, Opening};
use crate::listener::Shared;
use crate::metrics::{
    ConnectionOutcome, Denial, Direction, InFlight, Metrics, RoundTrip, StatementKind,
};
use crate::pipeline::backend::Answer;
use crate::pipeline::{Backend, Frontend, Queue};
use crate::policy;
use crate::protocol::{self, Fill, FrameError, Framer, StartupPacket};
use crate::tls::ClientTls;
use crate::upstream::reuse::{self, Kept, Login};

/// Bytes the encryption pipeline gathers for the client before writing them.
const FLUSH_AT: usize = 64 * 1024;

/// How a session (or its handshake) ended; decides what is sent on the way out.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate, which was forwarded (or, for a connection
    /// kept for the next client, swallowed: see [`SessionState::keeps`]).
    ClientTerminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client broke the protocol or a limit: tell it, then close.
    Client(ClientError),
    /// Postgres' socket closed or failed.
    UpstreamGone,
    /// Postgres misbehaved or could not be reached: tell the client, then close.
    Upstream(ClientError),
    /// Postgres refused authentication; its ErrorResponse was forwarded.
    /// `password`: it was a wrong password (28P01), which the lockout counts.
    AuthFailed { password: bool },
    /// A connection policy refused the client before Postgres was contacted.
    Refused(ClientError),
    /// The connection carried a CancelRequest, which was served.
    Cancel,
    /// Shutdown: running statements finished or the grace period ran out.
    Drained,
}

impl End {
    pub(crate) fn framing(e: FrameError, from_upstream: bool) -> End {
        if from_upstream {
            End::Upstream(ClientError::upstream_protocol_violation())
        } else {
            End::Client(client_framing_error(e))
        }
    }
}

fn client_framing_error(e: FrameError) -> ClientError {
    match e {
        FrameError::TooLarge { len, max } => ClientError::message_too_large(len, max),
        FrameError::BadLength(len) => {
            ClientError::protocol_violation(format!("invalid message length {len}"))
        }
        FrameError::UnknownTag(t) => {
            ClientError::protocol_violation(format!("invalid frontend message type {t}"))
        }
    }
}

/// Serves one accepted connection to its end. Never panics on client input.
/// Everything it logs carries the session's id and the client's address.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let id = format!("{:016x}", rand::random::<u64>());
    let span = tracing::info_span!("session", id = %id, client = %peer);
    serve_in_span(client, peer, shared, shutdown, id).instrument(span).await;
}

async fn serve_in_span(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    id: String,
) {
    let _ = client.set_nodelay(true);
    let mut first = None;
    if let Some(acceptor) = shared.tls.load_full() {
        // The first packet decides: SSLRequest starts TLS on the whole socket.
        // read_startup reads exactly one packet, so no plaintext sent behind
        // the SSLRequest is buffered and later taken as encrypted input.
        let limit = shared.config.load().listen.handshake_timeout.get();
        match tokio::time::timeout(limit, protocol::read_startup(&mut client)).await {
            Ok(Ok(Some(StartupPacket::Ssl))) => {
                if client.write_all(b"S").await.is_err() {
                    return shared.metrics.connection_ended(ConnectionOutcome::Abandoned);
                }
                match tokio::time::timeout(limit, acceptor.accept(client)).await {
                    Ok(Ok(stream)) => {
                        let tls = ClientTls::of(stream.get_ref().1);
                        let (mut rd, mut wr) = tokio::io::split(stream);
                        let s = Start { peer, id, first: None, tls: Some(tls) };
                        finish(&mut rd, &mut wr, &shared, &shutdown, s).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "TLS handshake failed");
                        // A refusal by policy counts as its own denial; any
                        // other failure as a protocol error's (one each).
                        let outcome = match handshake_refusal(&e) {
                            Some(why) => {
                                shared.metrics.denied(why);
                                audit_refusal(&shared, id, peer, None, false, why).await;
                                ConnectionOutcome::RefusedPolicy
                            }
                            None => {
                                let why = Denial::Protocol;
                                audit_refusal(&shared, id, peer, None, false, why).await;
                                ConnectionOutcome::ProtocolError
                            }
                        };
                        shared.metrics.connection_ended(outcome);
                    }
                    Err(_) => {
                        audit_refusal(&shared, id, peer, None, false, Denial::HandshakeTimeout)
                            .await;
                        shared.metrics.connection_ended(ConnectionOutcome::HandshakeTimeout);
                    }
                }
                return;
            }
            Ok(Ok(Some(packet))) => first = Some(packet),
            Ok(Ok(None)) => return shared.metrics.connection_ended(ConnectionOutcome::Abandoned),
            Ok(Err(e)) => {
                let _ = client.write_all(&e.to_message()).await;
                audit_refusal(&shared, id, peer, None, false, Denial::Protocol).await;
                return shared.metrics.connection_ended(ConnectionOutcome::ProtocolError);
            }
            Err(_) => {
                let _ = client.write_all(&ClientError::handshake_timeout().to_message()).await;
                audit_refusal(&shared, id, peer, None, false, Denial::HandshakeTimeout).await;
                return shared.metrics.connection_ended(ConnectionOutcome::HandshakeTimeout);
            }
        }
    }
    let (mut crd, mut cwr) = client.into_split();
    finish(&mut crd, &mut cwr, &shared, &shutdown, Start { peer, id, first, tls: None }).await;
}

/// The policy a failed TLS handshake enforced, if pgwarden refused the
/// client (rather than the client giving up): a TLS version or cipher below
/// `listen.min_tls_version`, or a client certificate `listen.client_ca` did
/// not sign (or none).
fn handshake_refusal(e: &std::io::Error) -> Option<Denial> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Some(Denial::Certificate)
        }
        rustls::Error::PeerIncompatible(_) => Some(Denial::Tls),
        _ => None,
    }
}

/// Audits a client refused before it had a session: in its TLS handshake,
/// for a malformed or missing startup packet, at `listen.max_connections`.
/// Without a startup packet its role is not known: the record names the
/// client's address only.
pub(crate) async fn audit_refusal(
    shared: &Shared,
    id: String,
    peer: SocketAddr,
    startup: Option<&protocol::Startup>,
    tls: bool,
    why: Denial,
) {
    if let Some(a) = &shared.audit {
        let who = Arc::new(SessionInfo {
            id,
            user: startup.map(|s| s.user().to_string()).unwrap_or_default(),
            database: startup.map(|s| s.database().to_string()).unwrap_or_default(),
            application: startup
                .and_then(|s| s.param("application_name"))
                .unwrap_or_default()
                .to_string(),
            client_addr: peer.to_string(),
            tls,
            json: Default::default(),
        });
        a.record(Record::new(Event::Denied, Some(who), "denied").reason(why.as_str())).await;
    }
}

/// What a connection brings to its session.
struct Start {
    peer: SocketAddr,
    /// The session's id, in its log lines and audit records.
    id: String,
    /// A startup packet already read (before deciding on TLS).
    first: Option<StartupPacket>,
    tls: Option<ClientTls>,
}

/// Runs the session on its (plain or TLS) halves and closes it.
async fn finish<CR, CW>(
    crd: &mut CR,
    cwr: &mut CW,
    shared: &Shared,
    shutdown: &CancellationToken,
    start: Start,
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    let (end, outcome) = run(crd, cwr, shared, shutdown, start).await;
    shared.metrics.connection_ended(outcome);
    match &end {
        End::Client(e) | End::Upstream(e) | End::Refused(e) => {
            tracing::info!(sqlstate = e.sqlstate, error = %e.message, "session closed");
            let _ = cwr.write_all(&e.to_message()).await;
        }
        End::Drained => {
            let _ = cwr.write_all(&ClientError::shutting_down().to_message()).await;
        }
        _ => tracing::debug!(end = ?end, "session closed"),
    }
    let _ = cwr.shutdown().await;
}

/// How a connection that ended with `end` counts in
/// `pgwarden_connections_total`; `established` once authentication succeeded.
fn outcome(end: &End, established: bool) -> ConnectionOutcome {
    use ConnectionOutcome as O;
    let left = if established { O::Ok } else { O::Abandoned };
    match end {
        End::ClientTerminated | End::ClientGone => left,
        End::Client(e) if e.kind == ErrorKind::Io => left,
        // 57P05 is sent for the idle timeout only.
        End::Client(e) if e.sqlstate == "57P05" => O::IdleTimeout,
        End::Client(_) => O::ProtocolError,
        End::UpstreamGone | End::Upstream(_) => O::UpstreamError,
        End::AuthFailed { .. } => O::AuthFailed,
        End::Refused(_) => O::RefusedPolicy,
        End::Cancel => O::CancelRequest,
        End::Drained => O::Shutdown,
    }
}

async fn run<CR, CW>(
    crd: &mut CR,
    cwr: &mut CW,
    shared: &Shared,
    shutdown: &CancellationToken,
    start: Start,
) -> (End, ConnectionOutcome)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    let Start { peer, id, first, tls } = start;
    let began = Instant::now();
    let audit = shared.audit.as_ref();
    // Who the session is, once its startup packet is read (audit on only).
    let info: Mutex<Option<Arc<SessionInfo>>> = Mutex::new(None);
    // Why a connection policy refused it: a `Denial` + 1.
    let refused = AtomicU32::new(0);
    let config = shared.config.load_full();
    let listen = &config.listen;
    let mut client = Framer::frontend(listen.max_message_bytes as usize);
    let mut upstream = Framer::backend();
    let metrics = &shared.metrics;
    let mut unreachable = false;

    let handshake = async {
        let startup = match handshake::read_opening(crd, cwr, &shared.cancels, first).await {
            Ok(Opening::Startup(s)) => s,
            Ok(Opening::Cancel) => return Err(End::Cancel),
            Ok(Opening::Closed) => return Err(End::ClientGone),
            Err(e) => return Err(End::Client(e)),
        };
        let role = startup.user();
        if let Some(a) = audit {
            let who = Arc::new(SessionInfo {
                id: id.clone(),
                user: role.to_string(),
                database: startup.database().to_string(),
                application: startup.param("application_name").unwrap_or_default().to_string(),
                client_addr: peer.to_string(),
                tls: tls.is_some(),
                json: Default::default(),
            });
            *info.lock().unwrap_or_else(|p| p.into_inner()) = Some(who.clone());
            a.record(Record::new(Event::Connect, Some(who), "ok")).await;
        }
        let refuse = |e: ClientError, why: Denial| {
            refused.store(why as u32 + 1, Ordering::Relaxed);
            metrics.denied(why);
            tracing::info!(role, reason = why.as_str(), "connection refused by policy");
            End::Refused(e)
        };
        policy::check_network(&config, role, peer.ip(), SystemTime::now(), tls.is_some())
            .and_then(|()| policy::check_client_cert(&config, role, tls.as_ref()))
            .map_err(|(e, why)| refuse(e, why))?;
        if let Some(left) = shared.lockouts.locked(role, peer.ip()) {
            return Err(refuse(ClientError::locked_out(left), Denial::Lockout));
        }
        let slot =
            shared.user_slots.acquire(role, config.limits.max_connections_per_user).ok_or_else(
                || refuse(ClientError::too_many_connections_for_role(role), Denial::RoleCapacity),
            )?;
        let connecting = Instant::now();
        let reuse = shared.reuse.as_ref();
        let kept = match reuse {
            Some(r) => r.take(&startup.raw).await,
            None => None,
        };
        let (urd, uwr, registration, login) =
            if let Some(k) = kept {
                // Postgres admitted this very startup packet without asking for
                // anything: its next client is told what Postgres told the first.
                let (pid, secret, registration) = shared.cancels.register(k.login.key.clone());
                let greeting = k.login.greeting(&protocol::backend_key_data(pid, secret));
                cwr.write_all(&greeting).await.map_err(|_| End::ClientGone)?;
                shared.lockouts.succeeded(role, peer.ip());
                metrics.upstream_reused();
                upstream = k.framer;
                (k.rd, k.wr, registration, Some(k.login))
            } else {
                let conn = shared.upstream.open().await.map_err(|e| {
                    tracing::warn!(error = %e, "cannot reach upstream Postgres");
                    unreachable = true;
                    End::Upstream(e.client_error())
                })?;
                metrics.upstream_connected(connecting.elapsed().as_secs_f64());
                let addr = conn
                    .peer_addr()
                    .map_err(|_| End::Upstream(ClientError::upstream_unreachable()))?;
                let upstream_tls = if conn.is_tls() { shared.upstream.tls.as_ref() } else { None };
                let (mut urd, mut uwr) = conn.into_split();
                uwr.write_all(&startup.raw).await.map_err(|_| End::UpstreamGone)?;
                let sides = auth::Sides {
                    client_rd: crd,
                    client_wr: cwr,
                    client: &mut client,
                    upstream_rd: &mut urd,
                    upstream_wr: &mut uwr,
                    upstream: &mut upstream,
                };
                let admitted =
                    match auth::relay(sides, &shared.cancels, addr, upstream_tls, reuse.is_some())
                        .await
                    {
                        Ok(a) => {
                            shared.lockouts.succeeded(role, peer.ip());
                            a
                        }
                        Err(End::AuthFailed { password: true }) => {
                            shared.lockouts.failed(role, peer.ip(), &config.limits);
                            return Err(End::AuthFailed { password: true });
                        }
                        Err(e) => return Err(e),
                    };
                let login = (reuse.is_some() && !admitted.challenged).then(|| Login {
                    startup: startup.raw.clone(),
                    params: admitted.params,
                    negotiated: admitted.negotiated,
                    key: admitted.registration.upstream.clone(),
                    opened: connecting.into_std(),
                });
                (urd, uwr, admitted.registration, login)
            };
        tracing::debug!(user = startup.user(), database = startup.database(), "authenticated");
        if let Some(a) = audit {
            a.record(Record::new(Event::AuthOk, session_info(&info), "ok")).await;
        }
        // Columns are registered in one database; sessions on others pass through.
        let encryption =
            shared.encryption.as_ref().filter(|e| e.database == startup.database()).cloned();
        // The policy identity: the login role, whatever SET ROLE does later.
        let identity: Arc<str> = Arc::from(role);
        // Only a limited session looks at each message for the rate.
        let rate = shared.rate_limits.limiter(role);
        Ok((urd, uwr, registration, login, slot, encryption, rate, identity))
    };
    let established = tokio::select! {
        r = tokio::time::timeout(listen.handshake_timeout.get(), handshake) => match r {
            Ok(Ok(established)) => Ok(established),
            Ok(Err(end)) if unreachable => Err((end, ConnectionOutcome::UpstreamUnreachable)),
            Ok(Err(end)) => {
                let outcome = outcome(&end, false);
                Err((end, outcome))
            }
            Err(_) => {
                let end = End::Client(ClientError::handshake_timeout());
                Err((end, ConnectionOutcome::HandshakeTimeout))
            }
        },
        _ = shutdown.cancelled() => Err((End::Drained, ConnectionOutcome::Shutdown)),
    };
    let (mut urd, mut uwr, registration, login, slot, encryption, rate, identity) =
        match established {
            Ok(e) => e,
            Err((end, outcome)) => {
                if let (Some(a), Some(who)) = (audit, session_info(&info)) {
                    let why = refused.load(Ordering::Relaxed) as usize;
                    // A policy's refusal, or pgwarden cutting the connection.
                    let denial = why.checked_sub(1).and_then(|i| Denial::ALL.get(i).copied());
                    if let Some(d) = denial.or_else(|| outcome.denial()) {
                        let r = Record::new(Event::Denied, Some(who.clone()), "denied");
                        a.record(r.reason(d.as_str())).await;
                    } else if matches!(end, End::AuthFailed { .. }) {
                        a.record(Record::new(Event::AuthFailed, Some(who.clone()), "error")).await;
                    }
                    let mut r =
                        Record::new(Event::Disconnect, Some(who), "ok").reason(outcome.as_str());
                    r.duration_us = Some(micros(began));
                    a.record(r).await;
                } else if let Some(d) = outcome.denial() {
                    // No startup packet came (or it was malformed): no role.
                    audit_refusal(shared, id.clone(), peer, None, tls.is_some(), d).await;
                }
                return (end, outcome);
            }
        };
    let tracker = match (audit, session_info(&info)) {
        (Some(a), Some(who)) => Some(Tracker::new(a.clone(), who)),
        _ => None,
    };
    let keep_literals = config.audit.statement_literals == pgwarden_config::StatementLiterals::All;
    let mut client_side = tracker.as_ref().map(|_| ClientSide::new(keep_literals));
    let mut server_side = tracker.as_ref().map(|_| ServerSide::default());

    let state = SessionState {
        pending: AtomicU32::new(0),
        unsynced: AtomicBool::new(false),
        closing: shutdown.child_token(),
        client_error: Mutex::new(None),
        in_flight: InFlight::default(),
        queue: Queue::default(),
        tracker,
        reusable: login.is_some(),
        status: AtomicU8::new(b'I'),
        kept: AtomicBool::new(false),
    };
    let max_row = listen.max_message_bytes as usize;
    let mut frontend = encryption.clone().map(|e| Frontend::new(e, max_row, identity.clone()));
    if let Some(front) = frontend.as_mut().filter(|_| state.tracker.is_some()) {
        front.audit = Some(track::Seen::default());
    }
    let mut backend = encryption.map(|e| Backend::new(e, identity));
    let stages = Stages { rate, frontend: frontend.as_mut(), audit: client_side.as_mut() };
    let end = tokio::select! {
        biased;
        end = client_to_upstream(
            &mut client, crd, &mut uwr, &state, metrics, listen.idle_timeout(), stages,
        ) => end,
        end = upstream_to_client(
            &mut upstream, &mut urd, cwr, &state, metrics, listen.shutdown_grace.get(),
            backend.as_mut(), server_side.as_mut(),
        ) => end,
    };
    let end = match (end, state.take_client_error()) {
        // The client broke the protocol after messages that Postgres answered
        // before the session closed: now tell it why.
        (End::Drained, Some(e)) => End::Client(e),
        (end, _) => end,
    };
    let keep = matches!(end, End::ClientTerminated) && state.kept.load(Ordering::Acquire);
    if let (true, Some(reuse), Some(login)) = (keep, shared.reuse.as_ref(), login) {
        // The leaving client's role slot is free and its cancel key dead,
        // with any cancel it has on the way, before the connection can serve
        // anyone else.
        drop(slot);
        let kept = Kept { rd: urd, wr: uwr, framer: upstream, login };
        if registration.retire(crate::cancel::SEND_TIMEOUT).await {
            reuse.keep(kept).await;
        } else {
            reuse::close(kept).await;
        }
    } else {
        if matches!(end, End::ClientGone | End::Client(_) | End::Drained) {
            if !state.idle() {
                // Postgres notices a closed socket only when it next writes: a
                // long statement abandoned by its client would run on. Cancel it.
                let _ = crate::upstream::send_cancel(
                    &registration.upstream,
                    crate::cancel::SEND_TIMEOUT,
                )
                .await;
            }
            // Let the backend end cleanly instead of logging a lost connection.
            let _ = uwr.write_all(&crate::protocol::terminate()).await;
        }
        let _ = uwr.shutdown().await;
    }
    // Records of finished statements that a loop had gathered but not yet
    // queued when the other loop ended the session.
    flush_records(state.tracker.as_ref(), client_side.as_mut().map(|a| &mut a.records)).await;
    flush_records(state.tracker.as_ref(), server_side.as_mut().map(|a| &mut a.records)).await;
    let outcome = outcome(&end, true);
    if let Some(t) = &state.tracker {
        if let Some(d) = outcome.denial() {
            t.auditor.record(t.record(Event::Denied, "denied").reason(d.as_str())).await;
        }
        let mut r = t.record(Event::Disconnect, "ok").reason(outcome.as_str());
        r.duration_us = Some(micros(began));
        t.auditor.record(r).await;
    }
    (end, outcome)
}

fn session_info(info: &Mutex<Option<Arc<SessionInfo>>>) -> Option<Arc<SessionInfo>> {
    info.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Queues the records a loop gathered in its last batch. Cancel safe: what
/// a loop ended in the middle of it leaves is queued by the session's end.
async fn flush_records(
    tracker: Option<&Tracker>,
    records: Option<&mut std::collections::VecDeque<Record>>,
) {
    if let (Some(t), Some(records)) = (tracker, records) {
        t.auditor.queue_all(records).await;
    }
}

/// What the two loops of one session share.
struct SessionState {
    /// ReadyForQuery messages Postgres still owes: one per Query, Sync and
    /// FunctionCall sent. Zero means no statement is running.
    pending: AtomicU32,
    /// Extended-protocol messages were sent since the last Sync: a statement
    /// may be running even though no ReadyForQuery is owed yet.
    unsynced: AtomicBool,
    /// Cancelled when the session should end once no statement runs: on
    /// shutdown (a child of the proxy's token) or after a fatal client error,
    /// so that what Postgres owes for earlier messages still reaches the client.
    closing: CancellationToken,
    /// The fatal client error to send once the session has drained.
    client_error: Mutex<Option<ClientError>>,
    /// Round trips sent and not yet answered, with their kind and send time:
    /// how statements are timed and labelled.
    in_flight: InFlight,
    /// What Postgres still owes, for the encryption pipeline (unused on the
    /// pass-through path).
    queue: Queue,
    /// Statements awaiting their answer, for the audit log; `None` when it
    /// is off.
    tracker: Option<Tracker>,
    /// Whether the server connection may be kept for a later client
    /// (`upstream.reuse_idle`, a login Postgres did not challenge).
    reusable: bool,
    /// Transaction status of Postgres' last ReadyForQuery.
    status: AtomicU8,
    /// Set when the client's Terminate was swallowed to keep the connection.
    kept: AtomicBool,
}

impl SessionState {
    /// Whether the Terminate the client just sent leaves a connection to
    /// keep: reusable, nothing running, no transaction open. If so, the
    /// Terminate is not forwarded and the session's end keeps it.
    fn keeps(&self) -> bool {
        let keep = self.reusable && self.idle() && self.status.load(Ordering::Acquire) == b'I';
        if keep {
            self.kept.store(true, Ordering::Release);
        }
        keep
    }

    fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0 && !self.unsynced.load(Ordering::Acquire)
    }

    /// Stops reading from the client; the session ends once drained.
    async fn fail_client(&self, e: ClientError) -> End {
        *self.client_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.closing.cancel();
        // The other loop ends the session.
        std::future::pending().await
    }

    fn take_client_error(&self) -> Option<ClientError> {
        self.client_error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What the client's messages pass through on their way to Postgres; with
/// both `None` (pass-through) the loop forwards the framer's bytes untouched.
struct Stages<'a> {
    /// `limits.queries_per_second_per_user`, when on for this session.
    rate: Option<policy::Limiter>,
    /// The encryption pipeline, for sessions on the registered database.
    frontend: Option<&'a mut Frontend>,
    /// The audit log's view of the client's requests, when it is on.
    audit: Option<&'a mut ClientSide>,
}

/// Client → Postgres. Cancel safe at its await points (a [`Framer`] keeps what
/// it read), except within a write, which only a session's end interrupts.
async fn client_to_upstream<R, W>(
    framer: &mut Framer,
    rd: &mut R,
    wr: &mut W,
    state: &SessionState,
    metrics: &Metrics,
    idle_timeout: Option<Duration>,
    mut stages: Stages<'_>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The encryption pipeline's output; the pass-through path forwards the
    // framer's own bytes.
    let mut out = BytesMut::new();
    loop {
        let filled = match idle_timeout.filter(|_| state.idle()) {
            Some(limit) => match tokio::time::timeout(limit, framer.fill(rd)).await {
                Ok(r) => r,
                Err(_) => return state.fail_client(ClientError::idle_timeout()).await,
            },
            None => framer.fill(rd).await,
        };
        match filled {
            Ok(Ok(Fill::Ready)) => {}
            Ok(Ok(Fill::Eof { .. })) | Err(_) => return End::ClientGone,
            Ok(Err(e)) => return state.fail_client(client_framing_error(e)).await,
        }
        let mut terminated = false;
        // Read at the first round trip of the batch, shared by the others.
        let mut now = None;
        let tracker = state.tracker.as_ref();
        if let (Some(a), Some(t)) = (stages.audit.as_deref_mut(), tracker) {
            a.begin_batch(t);
        }
        if stages.rate.is_some() || stages.frontend.is_some() {
            if let Some(rate) = stages.rate.as_mut() {
                rate.begin_batch();
            }
            let mut error = None;
            while !terminated {
                let msg = match framer.next_message() {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                };
                // The client's own message, as the audit log records it.
                let original = stages.audit.is_some().then(|| (msg.tag, msg.frame.clone()));
                let msg = match stages.rate.as_mut() {
                    Some(rate) => match rate.filter(msg, metrics) {
                        Some(msg) => msg,
                        None => {
                            audit_request(&mut stages, tracker, original.as_ref(), false);
                            continue;
                        }
                    },
                    None => msg,
                };
                let rate_refused =
                    original.as_ref().is_some_and(|(_, f)| f.as_ptr() != msg.frame.as_ptr());
                terminated = track(state, msg.tag, &mut now);
                if terminated && state.keeps() {
                    audit_request(&mut stages, tracker, original.as_ref(), rate_refused);
                    continue;
                }
                match stages.frontend.as_deref_mut() {
                    Some(front) => {
                        if let Some(seen) = front.audit.as_mut() {
                            *seen = track::Seen::default();
                        }
                        if !front.handle(msg, &state.queue, &mut out) {
                            return state.fail_client(ClientError::too_many_pending()).await;
                        }
                    }
                    None => out.extend_from_slice(&msg.frame),
                }
                audit_request(&mut stages, tracker, original.as_ref(), rate_refused);
            }
            if let (Some(a), Some(t)) = (stages.audit.as_deref_mut(), tracker) {
                a.commit(t);
            }
            if !out.is_empty() {
                if wr.write_all(&out).await.is_err() {
                    return End::UpstreamGone;
                }
                metrics.bytes(Direction::ClientToUpstream, out.len());
                out.clear();
            }
            flush_records(tracker, stages.audit.as_deref_mut().map(|a| &mut a.records)).await;
            if terminated {
                return End::ClientTerminated;
            }
            if let Some(e) = error {
                return state.fail_client(client_framing_error(e)).await;
            }
            continue;
        }
        let (batch, error) = match (stages.audit.as_deref_mut(), tracker) {
            (Some(a), Some(t)) => {
                let split = framer.split_batch(|tag, body| {
                    if terminated {
                        return false;
                    }
                    terminated = track(state, tag, &mut now);
                    a.message(t, tag, body, None);
                    !(terminated && state.keeps())
                });
                a.commit(t);
                split
            }
            _ => framer.split_batch(|tag, _| {
                if terminated {
                    return false;
                }
                terminated = track(state, tag, &mut now);
                !(terminated && state.keeps())
            }),
        };
        if !batch.is_empty() {
            if wr.write_all(&batch).await.is_err() {
                return End::UpstreamGone;
            }
            metrics.bytes(Direction::ClientToUpstream, batch.len());
        }
        if terminated {
            return End::ClientTerminated;
        }
        if let Some(e) = error {
            return state.fail_client(client_framing_error(e)).await;
        }
    }
}

/// Shows the audit log a message the client sent (`original`), after the
/// rate limit and the pipeline had it. `rate_refused`: the rate limit put its
/// refusal in the message's place.
fn audit_request(
    stages: &mut Stages<'_>,
    tracker: Option<&Tracker>,
    original: Option<&(u8, bytes::Bytes)>,
    rate_refused: bool,
) {
    let (Some(a), Some(t), Some((tag, frame))) = (stages.audit.as_deref_mut(), tracker, original)
    else {
        return;
    };
    if rate_refused && matches!(tag, b'Q' | b'S') {
        a.rate_limited(t, *tag);
    }
    let seen = stages.frontend.as_deref().and_then(|f| f.audit.as_ref());
    a.message(t, *tag, frame.get(5..).unwrap_or_default(), seen);
}

/// Accounts for a message the client sent: ReadyForQuery owed, statements in
/// flight. True for Terminate.
fn track(state: &SessionState, tag: u8, now: &mut Option<u64>) -> bool {
    let mut sent = |kind| {
        let at = *now.get_or_insert_with(|| state.in_flight.now_us());
        state.in_flight.sent(kind, at);
    };
    match tag {
        b'Q' => {
            state.pending.fetch_add(1, Ordering::AcqRel);
            sent(StatementKind::Simple);
        }
        b'F' => {
            state.pending.fetch_add(1, Ordering::AcqRel);
            sent(StatementKind::Function);
        }
        b'S' => {
            state.pending.fetch_add(1, Ordering::AcqRel);
            state.unsynced.store(false, Ordering::Release);
            sent(StatementKind::Extended);
        }
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
            state.unsynced.store(true, Ordering::Release);
        }
        b'X' => return true,
        _ => {}
    }
    false
}

/// Postgres → client. Also watches `state.closing`: once it is cancelled, the
/// session ends at the next moment no statement runs, or when `grace` is over.
#[allow(clippy::too_many_arguments, reason = "the loop's state, passed apart to borrow apart")]
async fn upstream_to_client<R, W>(
    framer: &mut Framer,
    rd: &mut R,
    wr: &mut W,
    state: &SessionState,
    metrics: &Metrics,
    grace: Duration,
    mut backend: Option<&mut Backend>,
    mut audit: Option<&mut ServerSide>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    // Made once, not per read: the hot loop registers no waiter and no timer.
    let closing = state.closing.cancelled();
    tokio::pin!(closing);
    let deadline = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(deadline);
    let mut draining = false;
    let mut round_trip = RoundTrip::default();
    loop {
        tokio::select! {
            biased;
            filled = framer.fill(rd) => match filled {
                Ok(Ok(Fill::Ready)) => {}
                Ok(Ok(Fill::Eof { .. })) | Err(_) => return End::UpstreamGone,
                Ok(Err(e)) => return End::framing(e, true),
            },
            _ = &mut closing, if !draining => {
                if state.idle() {
                    return End::Drained;
                }
                draining = true;
                deadline.as_mut().reset(Instant::now() + grace);
                continue;
            }
            _ = &mut deadline, if draining => return End::Drained,
        }
        let mut now = None;
        let mut answered = |tag: u8, body: &[u8]| {
            round_trip.saw(tag);
            if tag == b'Z' {
                if let Some(&status) = body.first() {
                    state.status.store(status, Ordering::Release);
                }
                // Saturating: a ReadyForQuery we did not count never underflows.
                let _ = state.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
                let at = *now.get_or_insert_with(|| state.in_flight.now_us());
                round_trip.ready(&state.in_flight, at, metrics);
            }
        };
        if let Some(back) = backend.as_deref_mut() {
            loop {
                let msg = match framer.next_message() {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(_) => return End::Upstream(ClientError::upstream_protocol_violation()),
                };
                match back.handle(&msg, &state.queue, &mut out) {
                    Ok(Answer::Relayed) => answered(msg.tag, msg.body()),
                    // DDL committed: the next statement must see the new catalog.
                    Ok(Answer::RefreshCatalog) => {
                        answered(msg.tag, msg.body());
                        back.refresh_catalog().await;
                    }
                    // The answer to the proxy's own Sync: no statement of the
                    // client's ended.
                    Ok(Answer::OwnReady) => {}
                    Err(_) => return End::Upstream(ClientError::upstream_protocol_violation()),
                }
                if out.len() >= FLUSH_AT {
                    break;
                }
            }
            // What the client is sent answers its requests, whatever the
            // pipeline swallowed or put in place of Postgres' messages.
            if let (Some(a), Some(t)) = (audit.as_deref_mut(), state.tracker.as_ref()) {
                let mut answers = a.batch(t);
                track::frames(&out, |tag, body| answers.message(tag, body));
            }
            if !out.is_empty() {
                if wr.write_all(&out).await.is_err() {
                    return End::ClientGone;
                }
                metrics.bytes(Direction::UpstreamToClient, out.len());
                out.clear();
            }
            flush_records(state.tracker.as_ref(), audit.as_deref_mut().map(|a| &mut a.records))
                .await;
            if draining && state.idle() {
                return End::Drained;
            }
            continue;
        }
        let (batch, error) = match (audit.as_deref_mut(), state.tracker.as_ref()) {
            (Some(a), Some(t)) => {
                let mut answers = a.batch(t);
                framer.split_batch(|tag, body| {
                    answered(tag, body);
                    answers.message(tag, body);
                    true
                })
            }
            _ => framer.split_batch(|tag, body| {
                answered(tag, body);
                true
            }),
        };
        if !batch.is_empty() {
            if wr.write_all(&batch).await.is_err() {
                return End::ClientGone;
            }
            metrics.bytes(Direction::UpstreamToClient, batch.len());
        }
        flush_records(state.tracker.as_ref(), audit.as_deref_mut().map(|a| &mut a.records)).await;
        if error.is_some() {
            return End::Upstream(ClientError::upstream_protocol_violation());
        }
        if draining && state.idle() {
            return End::Drained;
        }
    }
}
