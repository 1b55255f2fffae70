//! Real clients through the proxy: psql, pgbench and Python psycopg 3. Every
//! session is also run directly against Postgres (in a fresh database of the same
//! cluster) and the two outputs are compared, so a test fails on any difference a
//! user of that client would see, not only on a failed exit status.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a client that cannot run should fail the test loudly"
)]

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use pgwarden_integration::{python, roles, TestEnv};

const PSQL: &str = "/usr/bin/psql";
const PGBENCH: &str = "/usr/bin/pgbench";

/// What a client process printed, and how it ended.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A client command with a clean environment: no PG* variables, ~/.pgpass or
/// psqlrc of the machine, a UTF-8 locale, and `$HOME` in `home`.
fn client(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C.UTF-8")
        .env("PGPASSFILE", home.join("no-such-pgpass"))
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// Runs `cmd` to its end (killed after `limit`), with stdout and stderr in
/// files so that a chatty client never blocks on a full pipe. With `merged`,
/// stderr goes to stdout, interleaved as a terminal would show it.
fn run(mut cmd: Command, limit: Duration, merged: bool) -> Output {
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    cmd.stdin(std::process::Stdio::null()).stdout(out.try_clone().unwrap());
    if merged {
        cmd.stderr(out.try_clone().unwrap());
    } else {
        cmd.stderr(err.try_clone().unwrap());
    }
    let mut child =
        cmd.spawn().unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not finish within {limit:?}; stdout so far:\n{}",
                cmd.get_program(),
                read_all(&mut out)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: read_all(&mut out), stderr: read_all(&mut err) }
}

fn read_all(f: &mut File) -> String {
    f.rewind().unwrap();
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// [`run`] on the blocking pool, so the in-process proxy keeps serving.
async fn run_blocking(cmd: Command, limit: Duration, merged: bool) -> Output {
    tokio::task::spawn_blocking(move || run(cmd, limit, merged)).await.unwrap()
}

/// Runs SQL as the superuser over the cluster's Unix socket (not the proxy);
/// its unaligned, tuples-only output.
async fn admin_sql(env: &TestEnv, database: &str, sql: &str) -> String {
    let mut cmd = client(PSQL, env.pg.socket_dir());
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(env.pg.socket_dir())
        .args(["-p", &env.pg.port().to_string(), "-U", roles::SUPERUSER])
        .args(["-d", database, "-c", sql]);
    let out = run_blocking(cmd, Duration::from_secs(60), false).await;
    assert!(out.status.success(), "admin SQL {sql:?} failed: {}", out.describe());
    out.stdout
}

/// Replaces the proxy's and Postgres' port numbers where a client prints them
/// (`port 12345`, `:12345/`): the only part of an output expected to differ.
fn normalise_ports(text: &str, env: &TestEnv) -> String {
    let mut text = text.to_string();
    for port in [env.proxy_addr.port(), env.pg.port()] {
        text = text
            .replace(&format!("port {port}"), "port <PORT>")
            .replace(&format!(":{port}/"), ":<PORT>/");
    }
    text
}

/// Asserts two transcripts are equal, pointing at the first differing line.
fn assert_same_transcript(via_proxy: &str, direct: &str, what: &str) {
    if via_proxy == direct {
        return;
    }
    let (p, d): (Vec<&str>, Vec<&str>) = (via_proxy.lines().collect(), direct.lines().collect());
    let at = p.iter().zip(&d).position(|(a, b)| a != b).unwrap_or(p.len().min(d.len()));
    panic!(
        "{what}: the output through the proxy differs from the output direct to Postgres, \
         first at line {}:\n  via proxy: {:?}\n  direct:    {:?}\n\
         ===== via proxy =====\n{via_proxy}\n===== direct =====\n{direct}",
        at + 1,
        p.get(at),
        d.get(at),
    );
}

// ---------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------

/// Rows `\copy ... from` loads: quoting, an embedded comma and newline, NULLs,
/// an array and non-ASCII text.
const PSQL_CSV: &str = "id,name,price,tags\n\
10,\"comma, inside\",10.10,\"{a,b}\"\n\
11,\"line\nbreak\",,{}\n\
12,zoë ✓,12.00,\n";

/// A psql session touching what psql users do; `@CSV@` is the CSV file's path.
const PSQL_SCRIPT: &str = r#"\pset pager off
SHOW server_version_num;
SHOW client_encoding;
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                    tags text[], created timestamptz DEFAULT '2024-01-01 00:00:00+00');
INSERT INTO items VALUES (1, 'apple', 1.25, '{fruit,red}'), (2, 'bread', 3.50, '{bakery}');
INSERT INTO items (id, name, price) VALUES (3, 'crème brûlée ✓', 7.00) RETURNING id, name, price;
\copy items (id, name, price, tags) from '@CSV@' with (format csv, header true)
\copy (SELECT id, name, price, tags FROM items ORDER BY id) to stdout with (format csv, header true)
\copy items to stdout
SELECT 1 / 0;
SELECT 'the session continues' AS after_error;
BEGIN;
INSERT INTO items (id, name) VALUES (100, 'rolled back');
SELECT count(*) AS inside_transaction FROM items;
ROLLBACK;
BEGIN;
INSERT INTO items (id, name) VALUES (101, 'lost with the failed transaction');
SELECT 1 / 0;
SELECT 'ignored: the transaction is aborted';
COMMIT;
BEGIN;
UPDATE items SET price = price * 2 WHERE id <= 2;
SAVEPOINT before_delete;
DELETE FROM items;
ROLLBACK TO SAVEPOINT before_delete;
INSERT INTO items (id, name) VALUES (102, 'committed');
COMMIT;
SELECT 1 AS first; SELECT 2 AS second; INSERT INTO items (id, name) VALUES (200, 'multi'); SELECT count(*) AS total FROM items;
SELECT 'one query message' AS a \; SELECT 'two statements' AS b \; SELECT 1 / 0 \; SELECT 'not reached';
INSERT INTO items VALUES (1, 'duplicate');
INSERT INTO items (id) VALUES (300);
DO $$ BEGIN RAISE NOTICE 'notice from plpgsql: %', 42; RAISE WARNING 'a warning'; END $$;
\set VERBOSITY verbose
SELECT * FROM no_such_table;
\set VERBOSITY default
SELECT 42 AS answer \gset
\echo answer is :answer
PREPARE doubled (int) AS SELECT $1 * 2 AS doubled;
EXECUTE doubled(21);
DEALLOCATE doubled;
\d items
\dt
\x on
SELECT * FROM items WHERE id = 1;
\x off
SELECT id, name, price, tags, created FROM items ORDER BY id;
SELECT count(*), sum(g), md5(string_agg(md5(g::text), '')) FROM generate_series(1, 100000) g;
SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
\echo end of script
"#;

/// Runs psql on `url` with `args`, its output merged as a user would see it.
async fn psql(home: &Path, url: &str, args: &[&str]) -> Output {
    let mut cmd = client(PSQL, home);
    cmd.args(["-X", "-d", url]).args(args);
    run_blocking(cmd, Duration::from_secs(60), true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_prints_the_same_through_the_proxy_as_direct() {
    let env = TestEnv::start().await;
    admin_sql(&env, "postgres", "CREATE DATABASE a").await;
    admin_sql(&env, "postgres", "CREATE DATABASE b").await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("items.csv");
    std::fs::write(&csv, PSQL_CSV).unwrap();
    let script = dir.path().join("session.sql");
    std::fs::write(&script, PSQL_SCRIPT.replace("@CSV@", csv.to_str().unwrap())).unwrap();
    let args = ["-v", "ON_ERROR_STOP=0", "-a", "-f", script.to_str().unwrap()];

    let via = psql(dir.path(), &env.proxy_url(roles::SCRAM, "a"), &args).await;
    let direct = psql(dir.path(), &env.direct_url(roles::SCRAM, "b"), &args).await;

    assert_eq!(via.status.code(), direct.status.code(), "{}", via.describe());
    assert!(via.status.success(), "{}", via.describe());
    let (via_text, direct_text) =
        (normalise_ports(&via.stdout, &env), normalise_ports(&direct.stdout, &env));
    assert_same_transcript(&via_text, &direct_text, "psql -f session.sql");
    // The same, and also what the script is about: check it did run.
    for expected in [
        "COPY 3",
        "10,\"comma, inside\",10.10,\"{a,b}\"",
        "ERROR:  division by zero",
        "the session continues",
        "ERROR:  current transaction is aborted",
        "two statements",
        "DETAIL:  Key (id)=(1) already exists.",
        "NOTICE:  notice from plpgsql: 42",
        "ERROR:  42P01: relation \"no_such_table\" does not exist",
        "answer is 42",
        "Table \"public.items\"",
        "(2000 rows)",
        "end of script",
    ] {
        assert!(
            via_text.contains(expected),
            "psql output through the proxy lacks {expected:?}:\n{via_text}"
        );
    }
    // The rolled-back and failed transactions left nothing; the committed ones did.
    let ids = admin_sql(&env, "a", "SELECT string_agg(id::text, ',' ORDER BY id) FROM items").await;
    assert_eq!(ids.trim(), "1,2,3,10,11,12,102,200");
}

/// What psql prints connecting as `user` with `password` (None: none given).
async fn psql_login(
    env: &TestEnv,
    home: &Path,
    port: u16,
    user: &str,
    password: Option<&str>,
) -> String {
    let url = match password {
        Some(p) => format!("postgresql://{user}:{p}@127.0.0.1:{port}/postgres?sslmode=disable"),
        None => format!("postgresql://{user}@127.0.0.1:{port}/postgres?sslmode=disable"),
    };
    let sql = "SELECT current_user, session_user, current_setting('is_superuser')";
    let out = psql(home, &url, &["-w", "-A", "-t", "-c", sql]).await;
    normalise_ports(&format!("exit {:?}\n{}", out.status.code(), out.stdout), env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_through_the_proxy_with_every_auth_method_and_is_refused_a_wrong_password() {
    let env = TestEnv::start().await;
    let home = tempfile::tempdir().unwrap();
    let proxy_port = env.proxy_addr.port();
    let pg_port = env.pg.port();
    let pw = pgwarden_integration::PASSWORD;
    for user in [roles::SCRAM, roles::MD5, roles::PASSWORD, roles::TRUST] {
        for (case, password) in [
            ("right password", Some(pw)),
            ("wrong password", Some("not-the-password")),
            ("no password", None),
        ] {
            let via = psql_login(&env, home.path(), proxy_port, user, password).await;
            let direct = psql_login(&env, home.path(), pg_port, user, password).await;
            assert_same_transcript(&via, &direct, &format!("psql login as {user}, {case}"));
            match (case, user) {
                // Trust ignores whatever password is given, through the proxy too.
                ("right password", _) | (_, roles::TRUST) => {
                    assert_eq!(via, format!("exit Some(0)\n{user}|{user}|on\n"), "{user}, {case}")
                }
                ("wrong password", _) => assert!(
                    via.contains(&format!(
                        "FATAL:  password authentication failed for user \"{user}\""
                    )) && via.starts_with("exit Some(2)"),
                    "{user}, {case}: {via}"
                ),
                _ => assert!(
                    via.contains("fe_sendauth: no password supplied"),
                    "{user}, {case}: {via}"
                ),
            }
        }
    }
    // A database that does not exist: Postgres' refusal reaches psql unchanged.
    let url = |port| {
        format!("postgresql://{}:{pw}@127.0.0.1:{port}/no_such_db?sslmode=disable", roles::SCRAM)
    };
    let via = psql(home.path(), &url(proxy_port), &["-w", "-c", "SELECT 1"]).await;
    let direct = psql(home.path(), &url(pg_port), &["-w", "-c", "SELECT 1"]).await;
    assert_same_transcript(
        &normalise_ports(&via.stdout, &env),
        &normalise_ports(&direct.stdout, &env),
        "psql to a missing database",
    );
    assert!(
        via.stdout.contains("FATAL:  database \"no_such_db\" does not exist"),
        "{}",
        via.describe()
    );
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

async fn pgbench(home: &Path, url: &str, args: &[&str]) -> Output {
    let mut cmd = client(PGBENCH, home);
    cmd.args(args).arg(url);
    run_blocking(cmd, Duration::from_secs(120), false).await
}

/// The number after `label` on its own line of pgbench's report.
fn report_number(report: &str, label: &str) -> Option<u64> {
    report.lines().find_map(|l| l.strip_prefix(label)).and_then(|rest| {
        // "400/400" with -t, "51336" with -T, "0 (0.000%)" for failures.
        let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Row count and a checksum of each pgbench table, read directly.
async fn pgbench_tables(env: &TestEnv, database: &str) -> String {
    admin_sql(
        env,
        database,
        "SELECT (SELECT count(*) || ' ' || sum(aid) || ' ' || sum(bid) || ' ' || sum(abalance) \
                 FROM pgbench_accounts), \
                (SELECT count(*) || ' ' || sum(bbalance) FROM pgbench_branches), \
                (SELECT count(*) || ' ' || sum(tbalance) FROM pgbench_tellers), \
                (SELECT count(*) FROM pgbench_history)",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_and_runs_select_only_in_every_query_mode_through_the_proxy() {
    let env = TestEnv::start().await;
    admin_sql(&env, "postgres", "CREATE DATABASE bench_proxy").await;
    admin_sql(&env, "postgres", "CREATE DATABASE bench_direct").await;
    let home = tempfile::tempdir().unwrap();
    let via_url = env.proxy_url(roles::SCRAM, "bench_proxy");

    // -i loads pgbench_accounts with COPY FROM STDIN (client-side generation).
    let init = pgbench(home.path(), &via_url, &["-i", "-s", "1"]).await;
    assert!(init.status.success(), "pgbench -i through the proxy: {}", init.describe());
    assert!(init.stderr.contains("done in"), "{}", init.describe());
    let direct_init =
        pgbench(home.path(), &env.direct_url(roles::SCRAM, "bench_direct"), &["-i", "-s", "1"])
            .await;
    assert!(direct_init.status.success(), "{}", direct_init.describe());
    let loaded = pgbench_tables(&env, "bench_proxy").await;
    assert!(
        loaded.starts_with("100000 5000050000 100000 0|1 0|10 0|0"),
        "pgbench tables after -i through the proxy: {loaded}"
    );
    assert_eq!(loaded, pgbench_tables(&env, "bench_direct").await);

    for mode in ["simple", "extended", "prepared"] {
        let out =
            pgbench(home.path(), &via_url, &["-S", "-T", "2", "-c", "2", "-n", "-M", mode]).await;
        let report = format!("{}{}", out.stdout, out.stderr);
        assert!(out.status.success(), "pgbench -M {mode}: {}", out.describe());
        assert!(report.contains(&format!("query mode: {mode}")), "pgbench -M {mode}: {report}");
        let processed = report_number(&report, "number of transactions actually processed:");
        assert!(
            processed.is_some_and(|n| n > 0),
            "pgbench -M {mode} processed no transaction: {report}"
        );
        if report.contains("number of failed transactions") {
            assert_eq!(
                report_number(&report, "number of failed transactions:"),
                Some(0),
                "pgbench -M {mode}: {report}"
            );
        }
    }
    let accounts = admin_sql(&env, "bench_proxy", "SELECT count(*) FROM pgbench_accounts").await;
    assert_eq!(accounts.trim(), "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_writes_through_the_proxy_keep_the_balances_consistent() {
    let env = TestEnv::start().await;
    admin_sql(&env, "postgres", "CREATE DATABASE bench").await;
    let home = tempfile::tempdir().unwrap();
    let url = env.proxy_url(roles::MD5, "bench");
    let init = pgbench(home.path(), &url, &["-i", "-s", "1", "-q"]).await;
    assert!(init.status.success(), "{}", init.describe());

    // 4 clients × 100 TPC-B transactions (3 UPDATEs, a SELECT, an INSERT each).
    let out = pgbench(home.path(), &url, &["-c", "4", "-t", "100", "-n", "-M", "extended"]).await;
    let report = format!("{}{}", out.stdout, out.stderr);
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(
        report_number(&report, "number of transactions actually processed:"),
        Some(400),
        "{report}"
    );
    // Every committed transaction moved the same delta in all four tables.
    let sums = admin_sql(
        &env,
        "bench",
        "SELECT count(*), \
                (SELECT sum(abalance) FROM pgbench_accounts) = sum(delta), \
                (SELECT sum(bbalance) FROM pgbench_branches) = sum(delta), \
                (SELECT sum(tbalance) FROM pgbench_tellers) = sum(delta) \
         FROM pgbench_history",
    )
    .await;
    assert_eq!(sums.trim(), "400|t|t|t");
}

// ---------------------------------------------------------------------------
// Python psycopg 3
// ---------------------------------------------------------------------------

async fn psycopg_session(home: &Path, interpreter: &Path, url: &str) -> Output {
    let mut cmd = client(interpreter, home);
    cmd.arg(python::script("psycopg_client.py"))
        .arg(url)
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_blocking(cmd, Duration::from_secs(120), false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_session_gives_the_same_transcript_through_the_proxy_as_direct() {
    let interpreter = python::interpreter();
    let env = TestEnv::start().await;
    admin_sql(&env, "postgres", "CREATE DATABASE via_proxy").await;
    admin_sql(&env, "postgres", "CREATE DATABASE direct").await;
    let home = tempfile::tempdir().unwrap();

    // One after the other: the cancel step watches pg_stat_activity cluster-wide.
    let via =
        psycopg_session(home.path(), &interpreter, &env.proxy_url(roles::SCRAM, "via_proxy")).await;
    let direct =
        psycopg_session(home.path(), &interpreter, &env.direct_url(roles::SCRAM, "direct")).await;
    assert!(
        direct.status.success(),
        "the psycopg session fails even direct to Postgres: {}",
        direct.describe()
    );
    assert_same_transcript(&via.stdout, &direct.stdout, "psycopg_client.py");
    assert!(via.status.success(), "{}", via.describe());
    // The transcripts agree; check they hold what each step is about.
    for expected in [
        // prepared statements: server-side, executed as often as asked
        r#"["_pg3_0", "INSERT INTO prep_t VALUES ($1, $2) RETURNING id, label", "{smallint,text}", false, 7]"#,
        // binary results decode to the same values as text ones
        r#"{"equal": true, "step": "binary_equals_text"}"#,
        r#""formats_binary": [1, 1, 1"#,
        // COPY both ways, text and binary
        r#"{"rowcount": 5000, "step": "copy_from_stdin_text"}"#,
        r#""equal_to_written": true"#,
        r#""sqlstate": "22P02""#,
        // pipeline: the failing statement aborts only its own sync block
        r#""table": [[1, 2, 3, 4, 5, 100]]"#,
        // server-side cursor: 10000 rows in batches
        r#""batches": [1500, 1500, 1500, 1500, 1500, 1500, 1000]"#,
        r#""count": 10000"#,
        // LISTEN/NOTIFY from a second connection
        r#"{"channel": "pgw_chan", "from_notifier": true, "payload": "hello"}"#,
        r#"{"handled": [["pgw_chan", "during query"]], "step": "notify_handler"}"#,
        r#"{"same": true, "step": "backend_pid_matches_server"}"#,
        // errors and cancel
        r#""sqlstate": "22012""#,
        r#""sqlstate": "57014""#,
        r#"{"failed_steps": [], "step": "done"}"#,
    ] {
        assert!(
            via.stdout.contains(expected),
            "psycopg transcript through the proxy lacks {expected}:\n{}",
            via.stdout
        );
    }
}
