//! The encryption suite's results: medians and ratios, the terminal and
//! markdown tables, the verdict and the JSON.

use super::{Op, Table, COPY_CHUNK, INSERT_BATCH, INSERT_PIPELINE};
use crate::report::{js, median, num};

/// One measured operation on one table.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub seconds: f64,
    pub rows: u64,
    /// CPU seconds pgwarden used meanwhile (all threads).
    pub proxy_cpu_s: f64,
    /// CPU seconds the Postgres backend of the measuring connection used
    /// meanwhile; `None` for COPY TO STDOUT, which psql runs on a backend of
    /// its own.
    pub postgres_cpu_s: Option<f64>,
    /// CPU seconds the bench process itself (the tokio-postgres client) used
    /// meanwhile; `None` for COPY TO STDOUT, which psql runs.
    pub client_cpu_s: Option<f64>,
}

impl Sample {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }

    pub fn proxy_cpu_us_per_row(&self) -> f64 {
        self.proxy_cpu_s * 1e6 / self.rows as f64
    }

    pub fn postgres_cpu_us_per_row(&self) -> Option<f64> {
        self.postgres_cpu_s.map(|s| s * 1e6 / self.rows as f64)
    }
}

/// Every round of one operation, per table.
#[derive(Debug, Clone)]
pub struct OpResults {
    pub op: Op,
    /// Indexed like [`Table::ALL`].
    pub samples: [Vec<Sample>; 2],
}

impl OpResults {
    pub fn of(&self, t: Table) -> &[Sample] {
        &self.samples[t as usize]
    }

    pub fn rows_per_second(&self, t: Table) -> f64 {
        median(self.of(t).iter().map(Sample::rows_per_second))
    }

    pub fn cpu_us_per_row(&self, t: Table) -> f64 {
        median(self.of(t).iter().map(Sample::proxy_cpu_us_per_row))
    }

    /// Median Postgres backend CPU per row; NaN when not measured.
    pub fn postgres_cpu_us_per_row(&self, t: Table) -> f64 {
        median(self.of(t).iter().filter_map(Sample::postgres_cpu_us_per_row))
    }

    /// CPUs kept busy by pgwarden, the Postgres backend and the client
    /// together: their CPU time over the wall time, summed over the rounds
    /// (one round is too short for the 10 ms clock tick); NaN when not
    /// measured.
    pub fn cpus_busy(&self, t: Table) -> f64 {
        let (mut cpu, mut wall) = (0.0, 0.0);
        for s in self.of(t) {
            match (s.postgres_cpu_s, s.client_cpu_s) {
                (Some(pg), Some(client)) => cpu += s.proxy_cpu_s + pg + client,
                _ => return f64::NAN,
            }
            wall += s.seconds;
        }
        cpu / wall
    }

    /// Encrypted throughput / plaintext throughput (medians).
    pub fn ratio(&self) -> f64 {
        self.rows_per_second(Table::Encrypted) / self.rows_per_second(Table::Plaintext)
    }
}

/// The target of issue 3: encrypted at least 0.8× plaintext throughput.
pub const TARGET: f64 = 0.8;

/// What was run, on what, with which versions.
pub struct Meta {
    pub started_utc: String,
    pub finished_utc: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub postgres: String,
    pub pgwarden: String,
    pub git_rev: String,
    pub rows: usize,
    pub rounds: u32,
}

pub fn text_table(results: &[OpResults]) -> String {
    let mut out = format!(
        "{:<16} | {:>12} {:>12} | {:>7} | {:>9} {:>9} | {:>9} {:>9} | {:>6} {:>6}\n{}\n",
        "operation",
        "plain rows/s",
        "enc rows/s",
        "enc/pl",
        "plain cpu",
        "enc cpu",
        "plain pg",
        "enc pg",
        "plain busy",
        "enc busy",
        "-".repeat(115)
    );
    for r in results {
        out.push_str(&format!(
            "{:<16} | {:>12.0} {:>12.0} | {:>7.3} | {:>9.2} {:>9.2} | {:>9} {:>9} | {:>10} {:>8}\n",
            r.op.name(),
            r.rows_per_second(Table::Plaintext),
            r.rows_per_second(Table::Encrypted),
            r.ratio(),
            r.cpu_us_per_row(Table::Plaintext),
            r.cpu_us_per_row(Table::Encrypted),
            us(r.postgres_cpu_us_per_row(Table::Plaintext)),
            us(r.postgres_cpu_us_per_row(Table::Encrypted)),
            us(r.cpus_busy(Table::Plaintext)),
            us(r.cpus_busy(Table::Encrypted))
        ));
    }
    out.push_str(
        "rows/s: median over rounds; cpu = pgwarden's CPU time per row in µs (all threads); \
         pg = the Postgres backend's; busy = CPUs kept busy by pgwarden, Postgres and the client\n",
    );
    out
}

pub fn markdown_table(results: &[OpResults]) -> String {
    let mut out = String::from(
        "| operation | plaintext rows/s | encrypted rows/s | encrypted / plaintext \
         | pgwarden CPU µs/row, plaintext | pgwarden CPU µs/row, encrypted \
         | Postgres CPU µs/row, plaintext | Postgres CPU µs/row, encrypted \
         | CPUs busy, plaintext | CPUs busy, encrypted |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            r.op.describe(),
            r.rows_per_second(Table::Plaintext),
            r.rows_per_second(Table::Encrypted),
            r.ratio(),
            r.cpu_us_per_row(Table::Plaintext),
            r.cpu_us_per_row(Table::Encrypted),
            us(r.postgres_cpu_us_per_row(Table::Plaintext)),
            us(r.postgres_cpu_us_per_row(Table::Encrypted)),
            us(r.cpus_busy(Table::Plaintext)),
            us(r.cpus_busy(Table::Encrypted))
        ));
    }
    out
}

/// µs with two decimals, `-` when not measured.
fn us(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

pub fn verdict(results: &[OpResults]) -> String {
    let below: Vec<String> = results
        .iter()
        .filter(|r| r.ratio().is_nan() || r.ratio() < TARGET)
        .map(|r| format!("{} ({:.3})", r.op.name(), r.ratio()))
        .collect();
    if below.is_empty() {
        format!("target met: encrypted >= {TARGET} x plaintext throughput in every operation")
    } else {
        format!(
            "target missed: encrypted < {TARGET} x plaintext throughput in {}",
            below.join(", ")
        )
    }
}

pub fn to_json(meta: &Meta, results: &[OpResults]) -> String {
    let mut out = String::from("{\n  \"benchmark\": \"encryption\",\n");
    out.push_str(&format!(
        "  \"description\": {},\n",
        js("the same rows through pgwarden in a table with two encrypted text columns (ssn deterministic AES-256-GCM-SIV, card randomized AES-256-GCM) and in one with plain text columns; one tokio-postgres connection; rows/s median over rounds, ratio = encrypted / plaintext")
    ));
    out.push_str(&format!(
        "  \"started_utc\": {},\n  \"finished_utc\": {},\n",
        js(&meta.started_utc),
        js(&meta.finished_utc)
    ));
    out.push_str(&format!(
        "  \"machine\": {{\"cpus\": {}, \"loadavg_start\": {}, \"loadavg_end\": {}}},\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        js(&meta.loadavg_start),
        js(&meta.loadavg_end)
    ));
    out.push_str(&format!(
        "  \"versions\": {{\"postgres\": {}, \"pgwarden\": {}, \"git_rev\": {}}},\n",
        js(&meta.postgres),
        js(&meta.pgwarden),
        js(&meta.git_rev)
    ));
    out.push_str(&format!(
        "  \"settings\": {{\"rows\": {}, \"rounds\": {}, \"insert_batch\": {INSERT_BATCH}, \"insert_pipeline\": {INSERT_PIPELINE}, \"copy_chunk_bytes\": {COPY_CHUNK}}},\n",
        meta.rows, meta.rounds
    ));
    out.push_str(&format!("  \"target_ratio\": {},\n  \"results\": [\n", num(TARGET)));
    for (i, r) in results.iter().enumerate() {
        out.push_str(&format!(
            "    {{\"operation\": {}, \"description\": {}, \"ratio\": {}",
            js(r.op.name()),
            js(r.op.describe()),
            num(r.ratio())
        ));
        for t in Table::ALL {
            let list = |f: fn(&Sample) -> f64| -> String {
                r.of(t).iter().map(|s| num(f(s))).collect::<Vec<_>>().join(", ")
            };
            out.push_str(&format!(
                ", {}: {{\"rows_per_second\": {}, \"proxy_cpu_us_per_row\": {}, \"postgres_cpu_us_per_row\": {}, \"cpus_busy\": {}, \"rounds_seconds\": [{}], \"rounds_rows_per_second\": [{}], \"rounds_proxy_cpu_s\": [{}], \"rounds_postgres_cpu_s\": [{}], \"rounds_client_cpu_s\": [{}]}}",
                js(t.name()),
                num(r.rows_per_second(t)),
                num(r.cpu_us_per_row(t)),
                num(r.postgres_cpu_us_per_row(t)),
                num(r.cpus_busy(t)),
                list(|s| s.seconds),
                list(Sample::rows_per_second),
                list(|s| s.proxy_cpu_s),
                list(|s| s.postgres_cpu_s.unwrap_or(f64::NAN)),
                list(|s| s.client_cpu_s.unwrap_or(f64::NAN))
            ));
        }
        out.push_str(if i + 1 < results.len() { "},\n" } else { "}\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows_per_second: f64) -> Sample {
        Sample {
            seconds: 1000.0 / rows_per_second,
            rows: 1000,
            proxy_cpu_s: 0.001,
            postgres_cpu_s: Some(0.002),
            client_cpu_s: Some(0.003),
        }
    }

    fn results(op: Op, plain: &[f64], enc: &[f64]) -> OpResults {
        OpResults {
            op,
            samples: [
                plain.iter().map(|&r| sample(r)).collect(),
                enc.iter().map(|&r| sample(r)).collect(),
            ],
        }
    }

    #[test]
    fn the_ratio_is_encrypted_over_plaintext_of_the_medians() {
        let r = results(Op::CopyIn, &[1000.0, 900.0, 5000.0], &[700.0, 100.0, 800.0]);
        assert!((r.ratio() - 0.7).abs() < 1e-9);
        assert!((r.cpu_us_per_row(Table::Encrypted) - 1.0).abs() < 1e-9);
        // 0.006 CPU seconds per sample over 1000/700 + 1000/100 + 1000/800 s.
        let wall = 1000.0 / 700.0 + 1000.0 / 100.0 + 1000.0 / 800.0;
        assert!((r.cpus_busy(Table::Encrypted) - 3.0 * 0.006 / wall).abs() < 1e-12);
        assert!(verdict(&[r]).contains("copy-in (0.700)"));
        let fast = results(Op::Insert, &[1000.0], &[850.0]);
        assert!(verdict(&[fast]).starts_with("target met"));
    }

    #[test]
    fn json_and_tables_name_every_operation() {
        let all: Vec<OpResults> = Op::ALL.iter().map(|&op| results(op, &[10.0], &[9.0])).collect();
        let meta = Meta {
            started_utc: String::new(),
            finished_utc: String::new(),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            postgres: String::new(),
            pgwarden: String::new(),
            git_rev: String::new(),
            rows: 1000,
            rounds: 1,
        };
        let json = to_json(&meta, &all);
        for op in Op::ALL {
            assert!(json.contains(&format!("\"operation\": \"{}\"", op.name())));
            assert!(text_table(&all).contains(op.name()));
            assert!(markdown_table(&all).contains(op.describe()));
        }
        assert!(!json.contains("NaN") && !json.contains("inf"));
    }
}
