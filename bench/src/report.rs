//! The results: a terminal table, a markdown table for bench/README.md, JSON
//! and an SVG bar chart for bench/results/.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::pgbench::{Mode, Sample};

/// The three paths pgbench is run through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct,
    PgBouncer,
    Pgwarden,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Direct, Target::PgBouncer, Target::Pgwarden];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "pgbouncer",
            Target::Pgwarden => "pgwarden",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn colour(self) -> &'static str {
        match self {
            Target::Direct => "#9e9e9e",
            Target::PgBouncer => "#4e79a7",
            Target::Pgwarden => "#e15759",
        }
    }
}

/// One measured pgbench run.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub sample: Sample,
    /// CPU seconds the proxy process (all threads) used during the run; `None`
    /// for direct. Less noisy than TPS on a shared machine: it is the cost of
    /// the proxy itself, whatever else runs.
    pub proxy_cpu_s: Option<f64>,
}

impl Measurement {
    fn cpu_us_per_txn(&self) -> Option<f64> {
        let txn = self.sample.transactions;
        self.proxy_cpu_s.filter(|_| txn > 0).map(|cpu| cpu * 1e6 / txn as f64)
    }
}

/// One (mode, clients) combination and what each target scored in it.
#[derive(Debug, Clone)]
pub struct Row {
    pub mode: Mode,
    pub clients: u32,
    pub threads: u32,
    /// Indexed by [`Target`]: one measurement per round.
    samples: [Vec<Measurement>; 3],
}

impl Row {
    pub fn new(mode: Mode, clients: u32, threads: u32) -> Self {
        Self { mode, clients, threads, samples: Default::default() }
    }

    pub fn push(&mut self, target: Target, m: Measurement) {
        self.samples[target.index()].push(m);
    }

    /// Median TPS over the rounds.
    pub fn tps(&self, target: Target) -> f64 {
        median(self.samples[target.index()].iter().map(|m| m.sample.tps))
    }

    /// Median mean latency over the rounds, in ms.
    pub fn latency_ms(&self, target: Target) -> f64 {
        median(self.samples[target.index()].iter().map(|m| m.sample.latency_ms))
    }

    /// Median CPU time of the proxy per transaction, in µs; `None` for direct.
    pub fn cpu_us_per_txn(&self, target: Target) -> Option<f64> {
        let v: Vec<f64> =
            self.samples[target.index()].iter().filter_map(Measurement::cpu_us_per_txn).collect();
        (!v.is_empty()).then(|| median(v.into_iter()))
    }

    /// TPS of `a` divided by TPS of `b`.
    pub fn ratio(&self, a: Target, b: Target) -> f64 {
        let d = self.tps(b);
        if d > 0.0 {
            self.tps(a) / d
        } else {
            f64::NAN
        }
    }
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// What was run, on what, with which versions.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub started_utc: String,
    pub finished_utc: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// /proc/loadavg when the run started and ended: other work on a shared
    /// machine shows up here.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub postgres: String,
    pub pgbench: String,
    pub pgbouncer: String,
    pub pgwarden: String,
    pub git_rev: String,
    pub scale: u32,
    pub seconds: u32,
    pub warmup_seconds: u32,
    pub rounds: u32,
    /// pgwarden's `listen.worker_threads` (0: one per CPU).
    pub pgwarden_workers: u16,
}

/// The table for the terminal.
pub fn text_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>7} | {:>9} {:>6} | {:>9} {:>6} | {:>9} {:>6} | {:>7} {:>7} | {:>7} {:>7}",
        "mode",
        "clients",
        "direct",
        "ms",
        "pgbouncer",
        "ms",
        "pgwarden",
        "ms",
        "pgw/pgb",
        "pgw/dir",
        "pgb cpu",
        "pgw cpu"
    );
    let _ = writeln!(out, "{}", "-".repeat(109));
    for r in rows {
        let _ = write!(out, "{:<9} {:>7}", r.mode.as_str(), r.clients);
        for t in Target::ALL {
            let _ = write!(out, " | {:>9.0} {:>6.3}", r.tps(t), r.latency_ms(t));
        }
        let _ = writeln!(
            out,
            " | {:>7.3} {:>7.3} | {:>7} {:>7}",
            r.ratio(Target::Pgwarden, Target::PgBouncer),
            r.ratio(Target::Pgwarden, Target::Direct),
            cpu(r.cpu_us_per_txn(Target::PgBouncer)),
            cpu(r.cpu_us_per_txn(Target::Pgwarden))
        );
    }
    let _ = writeln!(
        out,
        "TPS; ms = mean latency; cpu = proxy CPU time per transaction in µs (all threads)"
    );
    out
}

fn cpu(us: Option<f64>) -> String {
    us.map_or_else(|| "-".into(), |us| format!("{us:.1}"))
}

/// The table for bench/README.md: TPS (mean latency in ms) per target, the
/// ratios, and the proxies' CPU time per transaction.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| mode | clients | direct TPS (ms) | PgBouncer TPS (ms) | pgwarden TPS (ms) \
         | pgwarden / PgBouncer | pgwarden / direct \
         | PgBouncer CPU µs/txn | pgwarden CPU µs/txn |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = write!(out, "| {} | {} |", r.mode.as_str(), r.clients);
        for t in Target::ALL {
            let _ = write!(out, " {:.0} ({:.3}) |", r.tps(t), r.latency_ms(t));
        }
        let _ = writeln!(
            out,
            " {:.3} | {:.3} | {} | {} |",
            r.ratio(Target::Pgwarden, Target::PgBouncer),
            r.ratio(Target::Pgwarden, Target::Direct),
            cpu(r.cpu_us_per_txn(Target::PgBouncer)),
            cpu(r.cpu_us_per_txn(Target::Pgwarden))
        );
    }
    out
}

/// Whether pgwarden reached PgBouncer's TPS everywhere, and where not.
pub fn verdict(rows: &[Row]) -> String {
    let below: Vec<String> = rows
        .iter()
        .filter(|r| r.ratio(Target::Pgwarden, Target::PgBouncer) < 1.0)
        .map(|r| {
            format!(
                "{} c={} ({:.3})",
                r.mode.as_str(),
                r.clients,
                r.ratio(Target::Pgwarden, Target::PgBouncer)
            )
        })
        .collect();
    if below.is_empty() {
        "target met: pgwarden TPS >= PgBouncer TPS in every mode".into()
    } else {
        format!("target missed: pgwarden TPS < PgBouncer TPS in {}", below.join(", "))
    }
}

/// The whole run as JSON.
pub fn json(meta: &Meta, rows: &[Row]) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"benchmark\": \"passthrough\",");
    let _ = writeln!(
        out,
        "  \"description\": \"pgbench -S (select only) through direct Postgres, PgBouncer (pool_mode=session) and pgwarden (pass-through); TPS without initial connection time, median over rounds\","
    );
    let _ = writeln!(out, "  \"started_utc\": {},", js(&meta.started_utc));
    let _ = writeln!(out, "  \"finished_utc\": {},", js(&meta.finished_utc));
    let _ = writeln!(
        out,
        "  \"machine\": {{\"cpus\": {}, \"cpu_model\": {}, \"kernel\": {}, \"loadavg_start\": {}, \"loadavg_end\": {}, \"note\": \"pgbench, Postgres and the proxies share these cores\"}},",
        meta.cpus,
        js(&meta.cpu_model),
        js(&meta.kernel),
        js(&meta.loadavg_start),
        js(&meta.loadavg_end)
    );
    let _ = writeln!(
        out,
        "  \"versions\": {{\"postgres\": {}, \"pgbench\": {}, \"pgbouncer\": {}, \"pgwarden\": {}, \"git_rev\": {}}},",
        js(&meta.postgres),
        js(&meta.pgbench),
        js(&meta.pgbouncer),
        js(&meta.pgwarden),
        js(&meta.git_rev)
    );
    let _ = writeln!(
        out,
        "  \"settings\": {{\"scale\": {}, \"seconds\": {}, \"warmup_seconds\": {}, \"rounds\": {}, \"pgbouncer_pool_mode\": \"session\", \"pgwarden_worker_threads\": {}}},",
        meta.scale, meta.seconds, meta.warmup_seconds, meta.rounds, meta.pgwarden_workers
    );
    out.push_str("  \"results\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            out,
            "    {{\"mode\": {}, \"clients\": {}, \"threads\": {}, \"targets\": {{",
            js(r.mode.as_str()),
            r.clients,
            r.threads
        );
        for (j, t) in Target::ALL.into_iter().enumerate() {
            let samples = &r.samples[t.index()];
            let list = |f: &dyn Fn(&Measurement) -> String| -> String {
                samples.iter().map(f).collect::<Vec<_>>().join(", ")
            };
            let _ = write!(
                out,
                "{}{}: {{\"tps\": {}, \"latency_ms\": {}, \"proxy_cpu_us_per_txn\": {}, \"rounds_tps\": [{}], \"rounds_latency_ms\": [{}], \"rounds_transactions\": [{}], \"rounds_proxy_cpu_s\": [{}]}}",
                if j > 0 { ", " } else { "" },
                js(t.name()),
                num(r.tps(t)),
                num(r.latency_ms(t)),
                r.cpu_us_per_txn(t).map_or_else(|| "null".into(), num),
                list(&|m| num(m.sample.tps)),
                list(&|m| num(m.sample.latency_ms)),
                list(&|m| m.sample.transactions.to_string()),
                list(&|m| m.proxy_cpu_s.map_or_else(|| "null".into(), num))
            );
        }
        let _ = write!(
            out,
            "}}, \"pgwarden_over_pgbouncer\": {}, \"pgwarden_over_direct\": {}, \"pgbouncer_over_direct\": {}}}",
            num(r.ratio(Target::Pgwarden, Target::PgBouncer)),
            num(r.ratio(Target::Pgwarden, Target::Direct)),
            num(r.ratio(Target::PgBouncer, Target::Direct))
        );
        out.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

/// A JSON string literal.
pub(crate) fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number; `null` for NaN or infinity, which JSON cannot hold.
pub(crate) fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{:.4}", x).trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        "null".into()
    }
}

/// Grouped bars: TPS of each target relative to direct Postgres, per (mode,
/// clients), so the 1-client and 16-client groups share one axis.
pub fn svg(meta: &Meta, rows: &[Row]) -> String {
    const W: f64 = 820.0;
    const H: f64 = 440.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 70.0;
    const BOTTOM: f64 = 80.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max_ratio = rows
        .iter()
        .flat_map(|r| Target::ALL.map(|t| r.ratio(t, Target::Direct)))
        .filter(|x| x.is_finite())
        .fold(1.0_f64, f64::max);
    // Axis top: the next 20% step above the highest bar.
    let top = ((max_ratio * 100.0 / 20.0).floor() + 1.0) * 20.0;
    let y = |pct: f64| TOP + plot_h * (1.0 - pct / top);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">pgbench -S: TPS relative to direct Postgres (higher is better)</text>",
        W / 2.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"40\" text-anchor=\"middle\" fill=\"#555\">scale {}, {} s per run, {} round(s), {} CPUs shared by pgbench, Postgres and the proxy; PgBouncer pool_mode=session</text>",
        W / 2.0,
        meta.scale,
        meta.seconds,
        meta.rounds,
        meta.cpus
    );
    // Grid lines every 20%.
    let mut pct = 0.0;
    while pct <= top + 0.1 {
        let yy = y(pct);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"{}\"/>",
            W - RIGHT,
            if pct == 100.0 { "#333" } else { "#ddd" }
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{pct:.0}%</text>",
            LEFT - 6.0,
            yy + 4.0
        );
        pct += 20.0;
    }
    let groups = rows.len().max(1) as f64;
    let group_w = plot_w / groups;
    let bar_w = group_w * 0.8 / 3.0;
    for (g, r) in rows.iter().enumerate() {
        let x0 = LEFT + group_w * g as f64 + group_w * 0.1;
        for (i, t) in Target::ALL.into_iter().enumerate() {
            let ratio = r.ratio(t, Target::Direct);
            let pct = if ratio.is_finite() { ratio * 100.0 } else { 0.0 };
            let x = x0 + bar_w * i as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {} c={}: {:.0} TPS, {:.3} ms</title></rect>",
                y(pct),
                bar_w - 2.0,
                y(0.0) - y(pct),
                t.colour(),
                t.name(),
                r.mode.as_str(),
                r.clients,
                r.tps(t),
                r.latency_ms(t)
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{pct:.0}</text>",
                x + (bar_w - 2.0) / 2.0,
                y(pct) - 3.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} c={}</text>",
            x0 + group_w * 0.4,
            y(0.0) + 18.0,
            r.mode.as_str(),
            r.clients
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\" font-size=\"10\">direct {:.0} TPS</text>",
            x0 + group_w * 0.4,
            y(0.0) + 33.0,
            r.tps(Target::Direct)
        );
    }
    for (i, t) in Target::ALL.into_iter().enumerate() {
        let x = LEFT + 10.0 + 120.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            H - 20.0,
            t.colour(),
            x + 16.0,
            H - 10.0,
            t.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Now in UTC: (`2026-01-02T03:04:05Z`, `20260102T030405Z`).
pub fn utc_now() -> (String, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let (hh, mm, ss) = (t / 3600, t % 3600 / 60, t % 60);
    (
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The opening of a suite's JSON result: its name and description, when it
/// ran and on what (the caller adds its own fields and closes the object).
pub(crate) fn json_header(
    benchmark: &str,
    description: &str,
    started: &str,
    loadavg_start: &str,
    loadavg_end: &str,
) -> String {
    use std::fmt::Write;
    let mut out = format!("{{\n  \"benchmark\": {},\n", js(benchmark));
    let _ = writeln!(out, "  \"description\": {},", js(description));
    let _ = writeln!(out, "  \"started_utc\": {},", js(started));
    let _ = writeln!(out, "  \"finished_utc\": {},", js(&utc_now().0));
    let _ = writeln!(
        out,
        "  \"machine\": {{\"cpus\": {}, \"cpu_model\": {}, \"loadavg_start\": {}, \"loadavg_end\": {}}},",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        js(&crate::runner::cpu_model()),
        js(loadavg_start),
        js(loadavg_end)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tps: f64) -> Measurement {
        Measurement {
            sample: Sample {
                tps,
                latency_ms: 1000.0 / tps,
                transactions: tps as u64 * 10,
                failed: 0,
            },
            proxy_cpu_s: Some(tps / 100.0),
        }
    }

    #[test]
    fn ratios_and_verdict_use_the_median_of_rounds() {
        let mut r = Row::new(Mode::Simple, 1, 1);
        for tps in [1000.0, 900.0, 1100.0] {
            r.push(Target::Direct, sample(tps));
        }
        r.push(Target::PgBouncer, sample(500.0));
        r.push(Target::Pgwarden, sample(450.0));
        assert_eq!(r.tps(Target::Direct), 1000.0);
        assert!((r.ratio(Target::Pgwarden, Target::PgBouncer) - 0.9).abs() < 1e-9);
        assert_eq!(r.cpu_us_per_txn(Target::Pgwarden), Some(1000.0));
        assert_eq!(r.cpu_us_per_txn(Target::Pgwarden), Some(1000.0));
        assert!(verdict(&[r]).contains("simple c=1 (0.900)"));
    }

    #[test]
    fn json_escapes_strings_and_writes_no_nan() {
        assert_eq!(js("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(num(f64::NAN), "null");
        assert_eq!(num(12.5), "12.5");
        assert_eq!(num(3.0), "3");
    }

    #[test]
    fn converts_days_to_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
