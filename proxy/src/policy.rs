//! Connection policy, decided before a byte goes to Postgres: `[[network]]`
//! rules (addresses and hours per role), client certificates, per-role
//! connection caps, and the failed-login lockout per (role, client address);
//! and the one policy applied during a session, the per-role statement rate
//! ([`RateLimits`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use pgwarden_config::{Config, Limits};

use crate::error::ClientError;
use crate::metrics::{Denial, Metrics};
use crate::protocol::{self, Message};
use crate::tls::ClientTls;

/// Most (role, address) pairs the lockout tracks; past this, expired entries
/// are swept, and if none expired the oldest is forgotten. Bounds memory
/// against a flood of made-up role names.
const MAX_TRACKED: usize = 100_000;

/// Checks the `[[network]]` rules for `role` connecting from `ip` at `now`.
pub fn check_network(
    config: &Config,
    role: &str,
    ip: IpAddr,
    now: SystemTime,
    tls: bool,
) -> Result<(), (ClientError, Denial)> {
    if !tls && config.listen.require_tls {
        return Err((ClientError::tls_required(), Denial::Tls));
    }
    let ip = canonical(ip);
    let unix = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for (i, rule) in config.network.iter().enumerate().filter(|(_, r)| r.applies_to(role)) {
        if rule.deny_nets().iter().any(|n| n.contains(&ip)) {
            return Err((ClientError::address_refused(role, i), Denial::Network));
        }
        let allow = rule.allow_nets();
        if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
            return Err((ClientError::address_refused(role, i), Denial::Network));
        }
        if rule.require_tls && !tls {
            return Err((ClientError::tls_required(), Denial::Tls));
        }
        if let Some(window) = rule.window() {
            if !window.contains(unix) {
                return Err((ClientError::outside_hours(role, &rule.hours), Denial::Hours));
            }
        }
    }
    Ok(())
}

/// With `listen.client_ca` set, the client must have presented a verified
/// certificate whose common name is `role`. `tls` is `None` for plaintext.
pub fn check_client_cert(
    config: &Config,
    role: &str,
    tls: Option<&ClientTls>,
) -> Result<(), (ClientError, Denial)> {
    if config.listen.client_ca.is_empty() {
        return Ok(());
    }
    // A session accepted by an acceptor built before client_ca was set has
    // no verified certificate: it is refused too.
    match tls.and_then(|t| t.cert_cn.as_deref()) {
        None => Err((ClientError::client_certificate_required(), Denial::Certificate)),
        Some(cn) if cn == role => Ok(()),
        Some(cn) => Err((ClientError::certificate_role_mismatch(cn, role), Denial::Certificate)),
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is matched
/// as IPv4, so that `127.0.0.1/32` rules hold on dual-stack listeners.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Sessions per login role.
#[derive(Default, Clone)]
pub struct UserSlots {
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

/// One role's session; frees its slot on drop.
pub struct UserSlot {
    slots: UserSlots,
    role: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.slots.counts);
        if let Some(n) = counts.get_mut(&self.role) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.role);
            }
        }
    }
}

impl UserSlots {
    /// A slot for `role`, unless it already holds `max` (0: no limit).
    pub fn acquire(&self, role: &str, max: u32) -> Option<UserSlot> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(role.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot { slots: self.clone(), role: role.to_string() })
    }
}

/// Failed logins per (role, client address).
#[derive(Default, Clone)]
pub struct Lockouts {
    entries: Arc<Mutex<HashMap<(String, IpAddr), Failures>>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures counted since `since`.
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

impl Lockouts {
    /// Time left on a lockout of (role, ip), if it is locked out now.
    pub fn locked(&self, role: &str, ip: IpAddr) -> Option<Duration> {
        let entries = lock(&self.entries);
        let until = entries.get(&(role.to_string(), canonical(ip)))?.locked_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Postgres refused the password (28P01).
    pub fn failed(&self, role: &str, ip: IpAddr, limits: &Limits) {
        if limits.max_failed_logins == 0 {
            return;
        }
        let now = Instant::now();
        let window = limits.failed_login_window.get();
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_TRACKED {
            sweep(&mut entries, now, window);
        }
        let f = entries.entry((role.to_string(), canonical(ip))).or_insert(Failures {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now.duration_since(f.since) > window {
            *f = Failures { count: 0, since: now, locked_until: None };
        }
        f.count += 1;
        if f.count >= limits.max_failed_logins {
            f.locked_until = Some(now + limits.lockout.get());
            tracing::warn!(role, client = %ip, "too many failed logins; locked out");
        }
    }

    /// A successful login resets the count.
    pub fn succeeded(&self, role: &str, ip: IpAddr) {
        lock(&self.entries).remove(&(role.to_string(), canonical(ip)));
    }

    /// Pairs locked out now, for `pgwarden_lockouts_active` (at scrape time,
    /// not on any session's path).
    pub fn active(&self) -> usize {
        let now = Instant::now();
        lock(&self.entries).values().filter(|f| f.locked_until.is_some_and(|u| u > now)).count()
    }
}

/// Drops entries neither locked nor counting within `window`; if none could go,
/// the oldest.
fn sweep(entries: &mut HashMap<(String, IpAddr), Failures>, now: Instant, window: Duration) {
    entries.retain(|_, f| {
        f.locked_until.is_some_and(|u| u > now) || now.duration_since(f.since) <= window
    });
    if entries.len() >= MAX_TRACKED {
        if let Some(oldest) = entries.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| k.clone()) {
            entries.remove(&oldest);
        }
    }
}

/// Most roles the rate limit tracks; past this, buckets no session uses are
/// forgotten (full ones first, as they equal a fresh bucket).
const MAX_RATE_ROLES: usize = 100_000;

/// `limits.queries_per_second_per_user`: one token bucket per login role,
/// shared by all its sessions, whose burst is the rate. Buckets outlive their
/// sessions, so reconnecting does not refill one.
#[derive(Clone)]
pub struct RateLimits {
    /// The rate in force, changed on reload; 0 lets limited sessions through.
    rate: Arc<AtomicU32>,
    buckets: Arc<Mutex<HashMap<String, Arc<Mutex<Bucket>>>>>,
}

#[derive(Debug)]
struct Bucket {
    /// May go below zero: a pipeline admitted at its start pays for each of
    /// its Executes, and the round trips after it wait for the refill.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: u32, now: Instant) {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
    }
}

impl RateLimits {
    pub fn new(rate: u32) -> Self {
        Self { rate: Arc::new(AtomicU32::new(rate)), buckets: Arc::default() }
    }

    /// A reload's new rate, for limited sessions and new ones.
    pub fn set_rate(&self, rate: u32) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Roles with a bucket.
    pub fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// The limiter of a new session of `role`; `None` when the rate is 0, so
    /// that an unlimited session does no work per message.
    pub fn limiter(&self, role: &str) -> Option<Limiter> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_RATE_ROLES && !buckets.contains_key(role) {
            sweep_buckets(&mut buckets, rate, now);
        }
        let bucket = buckets
            .entry(role.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Bucket { tokens: f64::from(rate), last: now })))
            .clone();
        Some(Limiter {
            role: role.to_string(),
            bucket,
            rate: self.rate.clone(),
            in_round_trip: false,
            refusing: false,
            now: None,
        })
    }
}

/// Forgets buckets no session holds: full ones first, then any.
fn sweep_buckets(buckets: &mut HashMap<String, Arc<Mutex<Bucket>>>, rate: u32, now: Instant) {
    buckets.retain(|_, b| {
        if Arc::strong_count(b) > 1 {
            return true;
        }
        let mut b = lock(b);
        b.refill(rate, now);
        b.tokens < f64::from(rate)
    });
    if buckets.len() >= MAX_RATE_ROLES {
        buckets.retain(|_, b| Arc::strong_count(b) > 1);
    }
}

/// One session's view of its role's bucket. It sees every message the client
/// sends and says what goes to Postgres instead:
/// - a Query or FunctionCall takes a token; without one it is replaced by a
///   `DO` block raising 53400, so the error arrives where Postgres would have
///   put the statement's own answer and the session goes on;
/// - an extended-protocol round trip (its first message to its Sync) is
///   admitted at its first message if a token is left, and each of its
///   Executes takes one (the bucket may go negative). A refused round trip is
///   dropped whole and its Sync replaced by that `DO` block, which Postgres
///   answers with the ErrorResponse and ReadyForQuery the client expects for
///   a sequence that failed at its first message. Refusing mid-sequence
///   instead would leave Postgres with half a sequence (a Bind without its
///   Execute), and refusing per Sync after the fact would be too late: Postgres
///   runs an Execute when it arrives.
pub struct Limiter {
    role: String,
    bucket: Arc<Mutex<Bucket>>,
    rate: Arc<AtomicU32>,
    /// Extended-protocol messages were seen since the last Sync.
    in_round_trip: bool,
    /// The open round trip was refused: drop until its Sync.
    refusing: bool,
    /// The clock, read once per batch the client's read brought.
    now: Option<Instant>,
}

impl Limiter {
    /// A new read from the client: the clock is read again when needed.
    pub fn begin_batch(&mut self) {
        self.now = None;
    }

    /// What goes to Postgres in place of `msg`: itself, the refusal, or
    /// nothing (a message of a refused round trip).
    pub fn filter(&mut self, msg: Message, metrics: &Metrics) -> Option<Message> {
        match msg.tag {
            b'Q' | b'F' if self.refusing => None,
            b'Q' | b'F' => {
                if self.take(true) {
                    Some(msg)
                } else {
                    metrics.rate_limited();
                    Some(self.refusal())
                }
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                if !self.in_round_trip {
                    self.in_round_trip = true;
                    if !self.take(false) {
                        metrics.rate_limited();
                        self.refusing = true;
                    }
                }
                if self.refusing {
                    return None;
                }
                if msg.tag == b'E' {
                    self.charge();
                }
                Some(msg)
            }
            b'S' => {
                self.in_round_trip = false;
                if std::mem::take(&mut self.refusing) {
                    Some(self.refusal())
                } else {
                    Some(msg)
                }
            }
            _ => Some(msg),
        }
    }

    /// Whether a token is left (refilled to now); `consume`: take it.
    fn take(&mut self, consume: bool) -> bool {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return true;
        }
        let now = *self.now.get_or_insert_with(Instant::now);
        let mut b = lock(&self.bucket);
        b.refill(rate, now);
        if b.tokens < 1.0 {
            return false;
        }
        if consume {
            b.tokens -= 1.0;
        }
        true
    }

    /// An Execute of an admitted round trip: one token, even below zero.
    fn charge(&mut self) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let now = *self.now.get_or_insert_with(Instant::now);
        let mut b = lock(&self.bucket);
        b.refill(rate, now);
        b.tokens -= 1.0;
    }

    /// Query (F) of a `DO` block raising 53400.
    fn refusal(&self) -> Message {
        let rate = self.rate.load(Ordering::Relaxed);
        let sql =
            crate::pipeline::raise("53400", &ClientError::rate_limited_message(&self.role, rate));
        let mut body = BytesMut::with_capacity(sql.len() + 1);
        body.put_slice(sql.as_bytes());
        body.put_u8(0);
        Message { tag: b'Q', frame: protocol::frame(b'Q', &body) }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        pgwarden_config::load_str(toml, std::iter::empty()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_rule_for_the_role_must_pass() {
        let c = config(
            r#"
[[network]]
roles = ["*"]
allow = ["127.0.0.0/8", "::1"]
[[network]]
roles = ["app"]
deny = ["127.0.0.2"]
"#,
        );
        let now = SystemTime::now();
        assert!(check_network(&c, "app", ip("127.0.0.1"), now, false).is_ok());
        assert!(check_network(&c, "app", ip("::1"), now, false).is_ok());
        assert!(check_network(&c, "app", ip("::ffff:127.0.0.1"), now, false).is_ok());
        assert!(check_network(&c, "other", ip("127.0.0.2"), now, false).is_ok());
        let (e, why) = check_network(&c, "app", ip("127.0.0.2"), now, false).unwrap_err();
        assert_eq!((e.sqlstate, why), ("28000", Denial::Network));
        assert!(check_network(&c, "app", ip("10.0.0.1"), now, false).is_err());
    }

    #[test]
    fn hours_outside_the_window_are_refused() {
        let c = config("[[network]]\nhours = \"Mon-Fri 07:00-19:00 UTC\"\n");
        let thursday_noon = UNIX_EPOCH + Duration::from_secs(1_796_256_000 + 12 * 3600);
        let saturday = thursday_noon + Duration::from_secs(2 * 86_400);
        assert!(check_network(&c, "app", ip("127.0.0.1"), thursday_noon, false).is_ok());
        let (e, why) = check_network(&c, "app", ip("127.0.0.1"), saturday, false).unwrap_err();
        assert_eq!((e.sqlstate, why), ("28000", Denial::Hours));
        assert!(e.message.contains("Mon-Fri 07:00-19:00 UTC"), "{}", e.message);
    }

    #[test]
    fn a_rule_requiring_tls_refuses_plaintext_for_its_roles_only() {
        let mut c = Config::default();
        c.network.push(pgwarden_config::NetworkRule {
            roles: vec!["app".into()],
            require_tls: true,
            ..Default::default()
        });
        let now = SystemTime::now();
        let (e, why) = check_network(&c, "app", ip("127.0.0.1"), now, false).unwrap_err();
        assert_eq!((e.sqlstate, why), ("28000", Denial::Tls));
        assert!(check_network(&c, "app", ip("127.0.0.1"), now, true).is_ok());
        assert!(check_network(&c, "other", ip("127.0.0.1"), now, false).is_ok());
    }

    #[test]
    fn user_slots_cap_each_role_and_free_on_drop() {
        let slots = UserSlots::default();
        let a = slots.acquire("app", 2).unwrap();
        let _b = slots.acquire("app", 2).unwrap();
        assert!(slots.acquire("app", 2).is_none());
        assert!(slots.acquire("other", 2).is_some());
        drop(a);
        assert!(slots.acquire("app", 2).is_some());
        assert!(slots.acquire("x", 0).is_some(), "0 is no limit");
    }

    fn msg(tag: u8) -> Message {
        Message { tag, frame: protocol::frame(tag, b"") }
    }

    /// The tags `limiter` sends on for `tags`, all in one batch; `!` for a
    /// refusal.
    fn pass(limiter: &mut Limiter, metrics: &Metrics, tags: &[u8]) -> Vec<u8> {
        limiter.begin_batch();
        tags.iter()
            .filter_map(|&t| limiter.filter(msg(t), metrics))
            .map(|m| if m.body().starts_with(b"DO ") { b'!' } else { m.tag })
            .collect()
    }

    #[test]
    fn the_rate_is_a_bucket_shared_by_a_roles_sessions() {
        let m = Metrics::new().unwrap();
        let limits = RateLimits::new(2);
        let mut a = limits.limiter("app").unwrap();
        let mut b = limits.limiter("app").unwrap();
        let mut other = limits.limiter("other").unwrap();
        // Burst = rate: two queries pass, the third is replaced by a refusal.
        assert_eq!(pass(&mut a, &m, b"Q"), b"Q");
        assert_eq!(pass(&mut b, &m, b"Q"), b"Q");
        let refused = a.filter(msg(b'Q'), &m).unwrap();
        assert_eq!(refused.tag, b'Q');
        let sql = String::from_utf8_lossy(refused.body()).into_owned();
        assert!(sql.contains("53400") && sql.contains("\"app\""), "{sql}");
        assert_eq!(pass(&mut other, &m, b"QQ"), b"QQ", "another role shares the bucket");
        assert!(String::from_utf8(m.encode()).unwrap().contains("pgwarden_rate_limited_total 1\n"));
        assert!(RateLimits::new(0).limiter("app").is_none(), "0 costs nothing");
    }

    #[test]
    fn a_refused_round_trip_is_dropped_up_to_its_sync_which_becomes_the_error() {
        let m = Metrics::new().unwrap();
        let limits = RateLimits::new(1);
        let mut l = limits.limiter("app").unwrap();
        // Admitted at its first message; its one Execute takes the token.
        assert_eq!(pass(&mut l, &m, b"PBDES"), b"PBDES");
        // The next round trip finds none: dropped, its Sync replaced by a Query.
        assert_eq!(pass(&mut l, &m, b"BES"), b"!");
        // A prepare-only round trip is still refused at its start (no token),
        // and Terminate always goes through.
        assert_eq!(pass(&mut l, &m, b"PDSX"), b"!X");
    }

    #[test]
    fn a_pipeline_pays_for_each_execute_and_a_reload_changes_the_rate() {
        let m = Metrics::new().unwrap();
        let limits = RateLimits::new(2);
        let mut l = limits.limiter("app").unwrap();
        assert_eq!(pass(&mut l, &m, b"BEBEBES"), b"BEBEBES");
        // Three Executes on a burst of two: in debt, refused.
        assert!(lock(&l.bucket).tokens < 0.0);
        let is_refusal = |m: Message| m.body().starts_with(b"DO ");
        assert!(is_refusal(l.filter(msg(b'Q'), &m).unwrap()));
        limits.set_rate(0);
        l.begin_batch();
        assert!(!is_refusal(l.filter(msg(b'Q'), &m).unwrap()), "rate 0 after a reload");
    }

    #[test]
    fn client_certificates_must_name_the_login_role() {
        let mut c = Config::default();
        let cn = |s: &str| ClientTls { cert_cn: Some(s.into()) };
        assert!(check_client_cert(&c, "app", None).is_ok(), "off without client_ca");
        c.listen.client_ca = "ca.pem".into();
        assert!(check_client_cert(&c, "app", Some(&cn("app"))).is_ok());
        let (e, why) = check_client_cert(&c, "app", Some(&cn("eve"))).unwrap_err();
        assert_eq!((e.sqlstate, why), ("28000", Denial::Certificate));
        assert!(e.message.contains("\"eve\"") && e.message.contains("\"app\""), "{}", e.message);
        assert!(check_client_cert(&c, "app", None).is_err(), "plaintext");
        assert!(check_client_cert(&c, "app", Some(&ClientTls::default())).is_err(), "no cert");
    }

    #[test]
    fn lockout_after_n_failures_and_reset_on_success() {
        let l = Lockouts::default();
        let limits = config("[limits]\nmax_failed_logins = 3\nlockout = \"1h\"\n").limits;
        let (who, from) = ("app", ip("127.0.0.1"));
        l.failed(who, from, &limits);
        l.failed(who, from, &limits);
        assert!(l.locked(who, from).is_none());
        l.succeeded(who, from);
        l.failed(who, from, &limits);
        l.failed(who, from, &limits);
        assert!(l.locked(who, from).is_none(), "success did not reset");
        l.failed(who, from, &limits);
        assert!(l.locked(who, from).unwrap() > Duration::from_secs(3500));
        assert!(l.locked(who, ip("127.0.0.2")).is_none(), "another address locked");
    }
}
