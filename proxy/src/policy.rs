//! Connection policy, decided before a byte goes to Postgres: `[[network]]`
//! rules (addresses and hours per role), per-role connection caps, and the
//! failed-login lockout per (role, client address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgwarden_config::{Config, Limits};

use crate::error::ClientError;
use crate::metrics::Denial;

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
