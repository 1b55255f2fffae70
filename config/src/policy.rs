//! `[[network]]` and `[limits]`: who may connect from where and when, and how
//! much (the seed's `connection_security_policies`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::value::DurationValue;

/// One `[[network]]` rule. Every rule whose `roles` name the login role (or
/// `"*"`) must let a connection through: rules add restrictions, never lift one.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NetworkRule {
    /// Login roles the rule applies to; `"*"` is every role. Default `["*"]`.
    pub roles: Vec<String>,
    /// CIDRs a client may connect from; empty (the default) allows any.
    pub allow: Vec<String>,
    /// CIDRs a client may not connect from, even if allowed. Default empty.
    pub deny: Vec<String>,
    /// TLS required for these roles (needs `listen.tls_cert`). Default false.
    pub require_tls: bool,
    /// When connections are allowed, e.g. `"Mon-Fri 07:00-19:00 UTC"`;
    /// empty (the default) is always.
    pub hours: String,
}

impl Default for NetworkRule {
    fn default() -> Self {
        Self {
            roles: vec!["*".into()],
            allow: Vec::new(),
            deny: Vec::new(),
            require_tls: false,
            hours: String::new(),
        }
    }
}

impl NetworkRule {
    pub fn applies_to(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == "*" || r == role)
    }

    /// `allow`, parsed (entries that do not parse are reported by validation).
    pub fn allow_nets(&self) -> Vec<IpNet> {
        self.allow.iter().filter_map(|c| parse_net(c).ok()).collect()
    }

    pub fn deny_nets(&self) -> Vec<IpNet> {
        self.deny.iter().filter_map(|c| parse_net(c).ok()).collect()
    }

    /// `hours`, parsed; `None` when always.
    pub fn window(&self) -> Option<TimeWindow> {
        TimeWindow::parse(&self.hours).ok().flatten()
    }
}

/// A CIDR, or a bare address meaning just that host.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    t.parse::<IpNet>().or_else(|_| t.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
        format!("{t:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1/128\")")
    })
}

/// Days of the week and a time of day range, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit `d` set: weekday `d` (0 = Monday) allowed.
    days: u8,
    /// Minutes since midnight UTC, start inclusive, end exclusive; a start
    /// after the end wraps past midnight.
    start: u16,
    end: u16,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TimeWindow {
    /// `"[DAYS] HH:MM-HH:MM UTC"`, DAYS being `Mon-Fri`, `Sat,Sun`, `Mon`, ...
    /// (all days when absent). Empty text: `Ok(None)`, always allowed.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let usage =
            || format!("{text:?} is not a time window; write e.g. \"Mon-Fri 07:00-19:00 UTC\"");
        let (days, times) = match words.as_slice() {
            [] => return Ok(None),
            [times, tz] => ("mon-sun", (*times, *tz)),
            [days, times, tz] => (*days, (*times, *tz)),
            _ => return Err(usage()),
        };
        if !times.1.eq_ignore_ascii_case("utc") {
            return Err(format!("{text:?}: only UTC time windows are supported"));
        }
        let mut mask = 0u8;
        for part in days.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let day = |d: &str| DAYS.iter().position(|x| x.eq_ignore_ascii_case(d));
            let (Some(a), Some(b)) = (day(a), day(b)) else { return Err(usage()) };
            let mut d = a;
            loop {
                mask |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (start, end) = times.0.split_once('-').ok_or_else(usage)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
        };
        let (Some(start), Some(end)) = (minutes(start), minutes(end)) else { return Err(usage()) };
        if start == end {
            return Err(format!("{text:?}: the window is empty"));
        }
        Ok(Some(Self { days: mask, start, end }))
    }

    /// Whether `unix_seconds` (UTC) falls in the window. A window that wraps
    /// past midnight belongs to the day it starts on.
    pub fn contains(&self, unix_seconds: u64) -> bool {
        let days = unix_seconds / 86_400;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = ((days + 3) % 7) as u8;
        let minute = ((unix_seconds % 86_400) / 60) as u16;
        let day_ok = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            day_ok(weekday) && (self.start..self.end).contains(&minute)
        } else {
            (day_ok(weekday) && minute >= self.start)
                || (day_ok((weekday + 6) % 7) && minute < self.end)
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Sessions one login role may hold at once (53300 beyond). 0 (the
    /// default): no limit. SIGHUP applies it to new sessions.
    pub max_connections_per_user: u32,
    /// Statements per second per login role, shared by all its sessions (a
    /// token bucket whose burst is the rate). A statement over the rate gets
    /// 53400 and is not run; the session stays usable. Counted per Query,
    /// FunctionCall and Execute. 0 (the default): no limit, at no cost.
    /// SIGHUP changes the rate for limited sessions and new ones; sessions
    /// that started while it was 0 stay unlimited.
    pub queries_per_second_per_user: u32,
    /// Failed logins (28P01 from Postgres) per (role, client address) within
    /// `failed_login_window` before that pair is locked out. Default 5; 0
    /// turns lockout off.
    pub max_failed_logins: u32,
    /// Window the failures are counted in. Default `15m`.
    pub failed_login_window: DurationValue,
    /// How long a locked-out pair is refused (28000) without contacting
    /// Postgres. Default `15m`.
    pub lockout: DurationValue,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_user: 0,
            queries_per_second_per_user: 0,
            max_failed_logins: 5,
            failed_login_window: DurationValue::from_secs(15 * 60),
            lockout: DurationValue::from_secs(15 * 60),
        }
    }
}

/// Problems with `[[network]]` and `[limits]`, each with its key path.
pub(crate) fn validate(
    network: &[NetworkRule],
    limits: &Limits,
    tls: bool,
    problems: &mut Vec<String>,
) {
    for (i, rule) in network.iter().enumerate() {
        let at = format!("network[{i}]");
        if rule.roles.is_empty() {
            problems.push(format!("{at}.roles: must name at least one role or \"*\""));
        }
        for (key, list) in [("allow", &rule.allow), ("deny", &rule.deny)] {
            for (j, c) in list.iter().enumerate() {
                if let Err(e) = parse_net(c) {
                    problems.push(format!("{at}.{key}[{j}]: {e}"));
                }
            }
        }
        if let Err(e) = TimeWindow::parse(&rule.hours) {
            problems.push(format!("{at}.hours: {e}"));
        }
        if rule.require_tls && !tls {
            problems.push(format!(
                "{at}.require_tls: needs listen.tls_cert and listen.tls_key, or no connection \
                 could satisfy it"
            ));
        }
    }
    for (key, d) in [
        ("limits.failed_login_window", &limits.failed_login_window),
        ("limits.lockout", &limits.lockout),
    ] {
        if let Some(e) = d.error() {
            problems.push(format!("{key}: {e}"));
        } else if limits.max_failed_logins > 0 && d.get().is_zero() {
            problems.push(format!("{key}: must be more than 0s while lockout is on"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_windows_parse_and_match_days_and_hours_in_utc() {
        let w = TimeWindow::parse("Mon-Fri 07:00-19:00 UTC").unwrap().unwrap();
        // 2026-12-03 is a Thursday.
        let thursday_noon = 1_796_256_000 + 12 * 3600;
        assert!(w.contains(thursday_noon));
        assert!(!w.contains(thursday_noon + 8 * 3600), "20:00 allowed");
        assert!(!w.contains(thursday_noon + 2 * 86_400), "Saturday allowed");
        let night = TimeWindow::parse("Fri 22:00-06:00 UTC").unwrap().unwrap();
        assert!(night.contains(thursday_noon + 86_400 + 11 * 3600), "Fri 23:00");
        assert!(night.contains(thursday_noon + 2 * 86_400 - 7 * 3600), "Sat 05:00");
        assert!(!night.contains(thursday_noon + 2 * 86_400 - 5 * 3600), "Sat 07:00");
        assert_eq!(TimeWindow::parse("  ").unwrap(), None);
        for bad in [
            "Mon-Fri 07:00-19:00",
            "Mon-Xyz 07:00-19:00 UTC",
            "25:00-26:00 UTC",
            "09:00-09:00 UTC",
            "Mon 07:00-19:00 CET",
        ] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert!(parse_net("10.0.0.0/8").unwrap().contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert!(parse_net("::1").unwrap().contains(&"::1".parse::<IpAddr>().unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
