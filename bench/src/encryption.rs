//! The `encryption` suite: the same rows read and written through pgwarden
//! in a table whose two text columns pgwarden encrypts and in a table where
//! they are plain `text`, as ratios (encrypted throughput / plaintext
//! throughput) measured in one run.
//!
//! # Layout
//! - this file: the run, its tables and the operations measured;
//! - [`report`]: medians, ratios, tables and JSON;
//! - [`masking`]: masked vs full reads of the encrypted table.
//!
//! Teardown is by drop order, as in the pass-through run: pgwarden stops
//! first, then its scratch directory (master key included) goes, then
//! Postgres.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgwarden::cluster::{roles, Cluster, PASSWORD};
use pgwarden::crypto::MasterKey;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use self::report::{markdown_table, text_table, to_json, verdict, Meta, OpResults, Sample};
use crate::procs::{self, Interrupt, ScratchDir};
use crate::report::utc_now;
use crate::runner::{first_line, read_trimmed};
use crate::warden::{self, Pgwarden};

mod ceiling;
mod masking;
mod report;

/// The database both tables live in.
pub(crate) const DATABASE: &str = "bench";
/// Rows per INSERT statement, and how many statements are in flight.
pub const INSERT_BATCH: usize = 100;
pub const INSERT_PIPELINE: usize = 4;
/// Bytes per CopyData message of a COPY FROM STDIN.
pub const COPY_CHUNK: usize = 64 * 1024;

/// `ssn` deterministic (AES-256-GCM-SIV), `card` randomized (AES-256-GCM),
/// both `text` to the client and `bytea` in Postgres.
const SCHEMA: &str = "
CREATE TABLE encrypted (id bigint NOT NULL, ssn bytea, card bytea);
CREATE TABLE plaintext (id bigint NOT NULL, ssn text, card text);
";

const COLUMNS: &str = r#"
[[columns]]
name = "public.encrypted.ssn"
type = "text"
mode = "deterministic"
key = "pii"

[[columns]]
name = "public.encrypted.card"
type = "text"
mode = "randomized"
key = "pci"
"#;

/// What to run; from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rows per table, a multiple of [`INSERT_BATCH`].
    pub rows: usize,
    pub rounds: u32,
    pub pgwarden_bin: Option<PathBuf>,
    pub out_dir: PathBuf,
}

/// The two tables, each measured through pgwarden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Plaintext,
    Encrypted,
}

impl Table {
    const ALL: [Table; 2] = [Table::Plaintext, Table::Encrypted];

    pub fn name(self) -> &'static str {
        match self {
            Table::Plaintext => "plaintext",
            Table::Encrypted => "encrypted",
        }
    }
}

/// What is measured, in the order a round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CopyIn,
    Insert,
    SelectExtended,
    SelectSimple,
    CopyOut,
}

impl Op {
    pub const ALL: [Op; 5] =
        [Op::CopyIn, Op::SelectExtended, Op::SelectSimple, Op::CopyOut, Op::Insert];

    pub fn name(self) -> &'static str {
        match self {
            Op::CopyIn => "copy-in",
            Op::Insert => "insert",
            Op::SelectExtended => "select-extended",
            Op::SelectSimple => "select-simple",
            Op::CopyOut => "copy-out",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Op::CopyIn => "COPY FROM STDIN (text format, 64 KiB CopyData)",
            Op::Insert => "INSERT, prepared, 100 rows per statement, 4 in flight",
            Op::SelectExtended => "SELECT all rows and columns, prepared (binary results)",
            Op::SelectSimple => "SELECT all rows and columns, simple query (text results)",
            Op::CopyOut => "COPY TO STDOUT (text format, by psql)",
        }
    }

    /// Loads rows (the table is emptied before and vacuumed after).
    fn writes(self) -> bool {
        matches!(self, Op::CopyIn | Op::Insert)
    }
}

pub fn run(settings: &Settings) -> Result<()> {
    let interrupt = Interrupt::install();
    let (started, stamp) = utc_now();
    let warden_bin = match &settings.pgwarden_bin {
        Some(bin) => bin.clone(),
        None => warden::build_release()?,
    };
    interrupt.check()?;

    eprintln!("starting a throwaway Postgres");
    let cluster = Cluster::start(None).context("starting a throwaway Postgres")?;
    cluster.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    cluster.psql(DATABASE, SCHEMA).context("creating the tables")?;
    cluster.psql(DATABASE, &masking::role_sql()).context("creating the masked role")?;

    let scratch = ScratchDir::create(None)?;
    let key = scratch.write("master.key", MasterKey::generate().to_base64().expose(), None)?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let password = scratch.write("admin.password", PASSWORD, None)?;
    let toml = |port: u16| config(port, cluster.port(), &key, &password);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    eprintln!("pgwarden keys init");
    rt.block_on(async {
        let config = warden::check_config(&toml(0))?;
        let mut admin = pgwarden::keys::connect_admin(&config).await?;
        pgwarden::keys::init(&config, &mut admin).await?;
        anyhow::Ok(())
    })
    .context("pgwarden keys init")?;

    let pgwarden = Pgwarden::start_with(&warden_bin, &scratch, toml)?;
    eprintln!(
        "postgres on 127.0.0.1:{} (log {}), pgwarden on :{} (pid {})",
        cluster.port(),
        cluster.log_path().display(),
        pgwarden.port,
        pgwarden.pid()
    );
    let data = Data::generate(settings.rows);
    let loadavg_start = read_trimmed("/proc/loadavg");
    let results = rt.block_on(measure(settings, &cluster, &pgwarden, &data, &interrupt))?;
    let rows = data.rows.len() as u64;
    let masks = rt.block_on(masking::measure(pgwarden.port, rows, settings.rounds, &interrupt))?;
    let ceiling =
        rt.block_on(ceiling::measure(cluster.port(), rows, settings.rounds, &interrupt))?;

    let meta = Meta {
        started_utc: started,
        finished_utc: utc_now().0,
        loadavg_start,
        loadavg_end: read_trimmed("/proc/loadavg"),
        postgres: first_line(Command::new(cluster.bindir().join("postgres")).arg("--version")),
        pgwarden: warden::version(&warden_bin),
        git_rev: first_line(Command::new("git").arg("-C").arg(warden::workspace_root()).args([
            "rev-parse",
            "--short",
            "HEAD",
        ])),
        rows: settings.rows,
        rounds: settings.rounds,
    };
    std::fs::create_dir_all(&settings.out_dir)
        .with_context(|| format!("creating {}", settings.out_dir.display()))?;
    let json = settings.out_dir.join(format!("encryption-{stamp}.json"));
    std::fs::write(&json, to_json(&meta, &results))
        .with_context(|| format!("writing {}", json.display()))?;
    let masks_json = settings.out_dir.join(format!("encryption-{stamp}-masking.json"));
    std::fs::write(&masks_json, masking::to_json(&masks))
        .with_context(|| format!("writing {}", masks_json.display()))?;
    let ceiling_json = settings.out_dir.join(format!("encryption-{stamp}-ceiling.json"));
    std::fs::write(&ceiling_json, ceiling::to_json(&ceiling))
        .with_context(|| format!("writing {}", ceiling_json.display()))?;

    println!();
    println!(
        "{} rows per table, {} round(s) (median), through pgwarden; load average {} at start, {} at end",
        meta.rows, meta.rounds, meta.loadavg_start, meta.loadavg_end
    );
    println!();
    print!("{}", text_table(&results));
    println!();
    println!("{}", verdict(&results));
    println!();
    println!("markdown:");
    println!();
    print!("{}", markdown_table(&results));
    println!();
    println!(
        "masked vs full reads of the encrypted table (target masked / full >= {}):",
        masking::TARGET
    );
    println!();
    print!("{}", masking::markdown(&masks));
    println!();
    println!("Postgres alone loading the same rows (the ceiling of copy-in):");
    println!();
    print!("{}", ceiling::markdown(&ceiling));
    let plain_copy_in = results
        .iter()
        .find(|r| r.op == Op::CopyIn)
        .map_or(f64::NAN, |r| r.rows_per_second(Table::Plaintext));
    println!();
    println!(
        "bound on the copy-in ratio (envelopes in text format, directly, over plaintext copy-in through pgwarden): {:.3}",
        ceiling::bound(&ceiling, plain_copy_in)
    );
    println!();
    println!("wrote {}", json.display());
    Ok(())
}

/// pgwarden with the two registered columns, its own connection as the SCRAM
/// superuser, keys under a master key in the scratch directory. No metrics
/// listener (metrics are still counted; only their HTTP server is off).
fn config(port: u16, upstream_port: u16, key: &Path, password: &Path) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[metrics]\naddress = \"\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {upstream_port}\ntls = \"disable\"\n\
         admin_user = \"{admin}\"\nadmin_password = \"file:{password}\"\n\
         admin_database = \"{DATABASE}\"\n\n\
         [keys]\nmaster_key = \"file:{key}\"\n{COLUMNS}{policies}",
        policies = masking::POLICIES,
        admin = roles::SCRAM,
        password = password.display(),
        key = key.display(),
    )
}

/// The rows both tables get: an id and two values shaped like an SSN and a
/// card number (11 and 16 bytes).
struct Data {
    rows: Vec<(i64, String, String)>,
    /// The same rows as COPY text.
    copy_text: Bytes,
}

impl Data {
    fn generate(n: usize) -> Self {
        let rows: Vec<(i64, String, String)> = (0..n as u64)
            .map(|i| {
                let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (
                    i as i64,
                    format!("{:03}-{:02}-{:04}", h % 1000, (h >> 10) % 100, (h >> 20) % 10_000),
                    format!("4{:015}", (h >> 4) % 1_000_000_000_000_000),
                )
            })
            .collect();
        let mut text = String::with_capacity(n * 40);
        for (id, ssn, card) in &rows {
            text.push_str(&format!("{id}\t{ssn}\t{card}\n"));
        }
        Self { rows, copy_text: Bytes::from(text) }
    }
}

/// Prepared statements of one table.
struct Prepared {
    insert: Statement,
    select: Statement,
}

async fn measure(
    settings: &Settings,
    cluster: &Cluster,
    pgwarden: &Pgwarden,
    data: &Data,
    interrupt: &Interrupt,
) -> Result<Vec<OpResults>> {
    let url = format!(
        "host=127.0.0.1 port={} user={} dbname={DATABASE} sslmode=disable application_name=pgwarden-bench",
        pgwarden.port,
        roles::TRUST
    );
    let (client, conn) =
        tokio_postgres::connect(&url, NoTls).await.context("connecting through pgwarden")?;
    let conn = tokio::spawn(conn);
    // pgwarden hands clients Postgres' own backend pid.
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let backend = u32::try_from(backend).context("pg_backend_pid()")?;
    let mut prepared = Vec::new();
    for t in Table::ALL {
        let placeholders: Vec<String> = (0..INSERT_BATCH)
            .map(|r| format!("(${}, ${}, ${})", 3 * r + 1, 3 * r + 2, 3 * r + 3))
            .collect();
        let insert =
            format!("INSERT INTO {} (id, ssn, card) VALUES {}", t.name(), placeholders.join(", "));
        prepared.push(Prepared {
            insert: client
                .prepare(&insert)
                .await
                .with_context(|| format!("preparing {insert:.60}"))?,
            select: client.prepare(&format!("SELECT id, ssn, card FROM {}", t.name())).await?,
        });
    }

    // Fill both tables once, and check that pgwarden encrypts what it should
    // and reads it back.
    for t in Table::ALL {
        load(cluster, t, || copy_in(&client, t, data)).await?;
    }
    check(cluster, &client, data).await?;
    interrupt.check()?;

    // Beside the server binaries on Debian, else on PATH.
    let psql = Some(cluster.bindir().join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let ticks = procs::clock_ticks();
    let mut results: Vec<OpResults> =
        Op::ALL.iter().map(|&op| OpResults { op, samples: Default::default() }).collect();
    let total = settings.rounds as usize * Op::ALL.len() * Table::ALL.len();
    let mut done = 0;
    for round in 0..settings.rounds as usize {
        for (i, result) in results.iter_mut().enumerate() {
            for k in 0..Table::ALL.len() {
                // Which table goes first alternates from one operation (and
                // round) to the next, so drift of the machine is shared out.
                let t = Table::ALL[(round + i + k) % Table::ALL.len()];
                let p = &prepared[t as usize];
                if result.op.writes() {
                    truncate(cluster, t)?;
                }
                let cpu_before = procs::cpu_seconds(pgwarden.pid(), ticks)?;
                let pg_before = procs::cpu_seconds(backend, ticks)?;
                let client_before = procs::cpu_seconds(std::process::id(), ticks)?;
                let start = Instant::now();
                let rows = match result.op {
                    Op::CopyIn => copy_in(&client, t, data).await,
                    Op::Insert => insert(&client, &p.insert, data).await,
                    Op::SelectExtended => select_extended(&client, &p.select).await,
                    Op::SelectSimple => select_simple(&client, t).await,
                    Op::CopyOut => copy_out(&psql, pgwarden.port, t),
                }
                .with_context(|| format!("{} on table {}", result.op.name(), t.name()))?;
                let seconds = start.elapsed().as_secs_f64();
                let client_cpu_s = (result.op != Op::CopyOut)
                    .then(|| {
                        procs::cpu_seconds(std::process::id(), ticks).map(|s| s - client_before)
                    })
                    .transpose()?;
                let proxy_cpu_s = procs::cpu_seconds(pgwarden.pid(), ticks)? - cpu_before;
                let postgres_cpu_s = (result.op != Op::CopyOut)
                    .then(|| procs::cpu_seconds(backend, ticks).map(|s| s - pg_before))
                    .transpose()?;
                ensure!(
                    rows == data.rows.len() as u64,
                    "{} on {}: {rows} rows, expected {}",
                    result.op.name(),
                    t.name(),
                    data.rows.len()
                );
                if result.op.writes() {
                    vacuum(cluster, t)?;
                }
                let sample = Sample { seconds, rows, proxy_cpu_s, postgres_cpu_s, client_cpu_s };
                done += 1;
                eprintln!(
                    "[{done:>2}/{total}] {:<16} {:<9} {:>9.0} rows/s  {:.3} s  pgwarden {:.2} µs CPU/row",
                    result.op.name(),
                    t.name(),
                    sample.rows_per_second(),
                    seconds,
                    sample.proxy_cpu_us_per_row()
                );
                result.samples[t as usize].push(sample);
                interrupt.check()?;
            }
        }
    }
    drop(prepared);
    drop(client);
    let _ = conn.await;
    Ok(results)
}

/// Empties `t`, runs `fill`, vacuums: the setup of the measured tables.
async fn load<F: Future<Output = Result<u64>>>(
    cluster: &Cluster,
    t: Table,
    fill: impl FnOnce() -> F,
) -> Result<()> {
    truncate(cluster, t)?;
    fill().await.with_context(|| format!("filling table {}", t.name()))?;
    vacuum(cluster, t)
}

// TRUNCATE and VACUUM go to Postgres directly: they are not measured, and
// VACUUM leaves both tables with hint bits set and statistics, so that a
// SELECT right after a load does not pay for them.
fn truncate(cluster: &Cluster, t: Table) -> Result<()> {
    cluster.psql(DATABASE, &format!("TRUNCATE {}", t.name()))?;
    Ok(())
}

fn vacuum(cluster: &Cluster, t: Table) -> Result<()> {
    cluster.psql(DATABASE, &format!("VACUUM ANALYZE {}", t.name()))?;
    Ok(())
}

/// Through pgwarden both tables read the same; in Postgres the encrypted one
/// holds only envelopes.
async fn check(cluster: &Cluster, client: &Client, data: &Data) -> Result<()> {
    let probe = (data.rows.len() / 2) as i64;
    let (_, ssn, card) = &data.rows[probe as usize];
    for t in Table::ALL {
        let row = client
            .query_one(&format!("SELECT ssn, card FROM {} WHERE id = $1", t.name()), &[&probe])
            .await?;
        ensure!(
            row.get::<_, &str>(0) == ssn && row.get::<_, &str>(1) == card,
            "table {}: row {probe} does not read back as written",
            t.name()
        );
    }
    let stored = cluster.psql(
        DATABASE,
        "SELECT count(*) FROM encrypted WHERE substring(ssn from 1 for 2) = '\\x5057'::bytea \
         AND substring(card from 1 for 2) = '\\x5057'::bytea",
    )?;
    if stored.trim() != data.rows.len().to_string() {
        bail!("table encrypted: {} of {} rows hold envelopes", stored.trim(), data.rows.len());
    }
    Ok(())
}

async fn copy_in(client: &Client, t: Table, data: &Data) -> Result<u64> {
    let sql = format!("COPY {} (id, ssn, card) FROM STDIN", t.name());
    copy_from_stdin(client, &sql, &data.copy_text).await
}

/// Runs `sql`, a COPY FROM STDIN, sending `rows` in CopyData messages of
/// [`COPY_CHUNK`] bytes; the rows copied.
pub(crate) async fn copy_from_stdin(client: &Client, sql: &str, rows: &Bytes) -> Result<u64> {
    let sink = client.copy_in(sql).await?;
    let mut sink = pin!(sink);
    let mut at = 0;
    while at < rows.len() {
        let end = (at + COPY_CHUNK).min(rows.len());
        sink.send(rows.slice(at..end)).await?;
        at = end;
    }
    Ok(sink.finish().await?)
}

async fn insert(client: &Client, statement: &Statement, data: &Data) -> Result<u64> {
    let batches = data.rows.chunks(INSERT_BATCH).map(|batch| async move {
        let params: Vec<&(dyn ToSql + Sync)> = batch
            .iter()
            .flat_map(|(id, ssn, card)| {
                [id as &(dyn ToSql + Sync), ssn as &(dyn ToSql + Sync), card as &(dyn ToSql + Sync)]
            })
            .collect();
        client.execute(statement, &params).await
    });
    let counts: Vec<u64> =
        futures_util::stream::iter(batches).buffered(INSERT_PIPELINE).try_collect().await?;
    Ok(counts.iter().sum())
}

/// Streams the rows and reads every value, as an application would.
async fn select_extended(client: &Client, statement: &Statement) -> Result<u64> {
    let rows = client.query_raw(statement, Vec::<String>::new()).await?;
    let mut rows = pin!(rows);
    let (mut n, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.try_next().await? {
        let id: i64 = row.get(0);
        let ssn: &str = row.get(1);
        let card: &str = row.get(2);
        std::hint::black_box(id);
        bytes += ssn.len() + card.len();
        n += 1;
    }
    std::hint::black_box(bytes);
    Ok(n)
}

async fn select_simple(client: &Client, t: Table) -> Result<u64> {
    let messages = client.simple_query(&format!("SELECT id, ssn, card FROM {}", t.name())).await?;
    let mut n = 0;
    for m in &messages {
        if let SimpleQueryMessage::Row(row) = m {
            std::hint::black_box((row.get(0), row.get(1), row.get(2)));
            n += 1;
        }
    }
    Ok(n)
}

/// By psql, as a simple query (the one way pgwarden decrypted COPY TO
/// STDOUT when this was written). psql's start-up (a few ms) is paid by both
/// tables alike.
fn copy_out(psql: &Path, port: u16, t: Table) -> Result<u64> {
    let out = procs::output(
        Command::new(psql)
            .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", roles::TRUST, "-d", DATABASE, "-c"])
            .arg(format!("COPY {} (id, ssn, card) TO STDOUT", t.name()))
            .env("PGSSLMODE", "disable"),
        "psql COPY TO STDOUT",
    )?;
    Ok(out.bytes().filter(|&b| b == b'\n').count() as u64)
}
