"""A psycopg 3 session exercising the protocol features a proxy must relay.

Usage: psycopg_client.py CONNINFO

Runs every step against the database named in CONNINFO (which must be empty:
the steps create their own tables) and prints a transcript on stdout, one JSON
object per line. The transcript holds only what is deterministic for a given
server: no process ids, ports, database names or timings. The integration test
runs this once through pgwarden and once directly to Postgres (in two fresh
databases of the same cluster) and compares the two transcripts line by line.

A step that raises unexpectedly is recorded (exception type, SQLSTATE, message)
and the script goes on, so that one difference does not hide the others; the
exit status is 0 only when every step ran to its end.
"""

import datetime
import hashlib
import json
import sys
import threading
import time
import traceback
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

CONNINFO = sys.argv[1]
FAILED_STEPS = []


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, sort_keys=True, ensure_ascii=False))


def show(value):
    """A deterministic, type-revealing rendering of a Python value."""
    if isinstance(value, (list, tuple)):
        return [show(v) for v in value]
    if isinstance(value, dict):
        return {k: show(v) for k, v in sorted(value.items())}
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) > 64:
            return f"bytes[{len(data)}] sha256={hashlib.sha256(data).hexdigest()}"
        return f"bytes:{data.hex()}"
    if isinstance(value, str) and len(value) > 200:
        return f"str[{len(value)}] sha256={hashlib.sha256(value.encode()).hexdigest()}"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return f"{type(value).__name__}:{value!r}"


def error_fields(e):
    d = e.diag
    return {
        "type": type(e).__name__,
        "sqlstate": e.sqlstate,
        "severity": d.severity,
        "severity_nonlocalized": d.severity_nonlocalized,
        "message": d.message_primary,
        "detail": d.message_detail,
        "hint": d.message_hint,
        "position": d.statement_position,
        "context": d.context,
        "schema": d.schema_name,
        "table": d.table_name,
        "column": d.column_name,
        "constraint": d.constraint_name,
    }


def connect(**kwargs):
    return psycopg.connect(CONNINFO, **kwargs)


def step(fn):
    """Runs a step; records an unexpected exception instead of stopping."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - recorded, and makes the exit status 1
        FAILED_STEPS.append(fn.__name__)
        fields = {"type": type(e).__name__, "text": str(e)}
        if isinstance(e, psycopg.Error):
            fields["sqlstate"] = e.sqlstate
        emit(fn.__name__ + ":unexpected_exception", **fields)
        traceback.print_exc()


# --- session parameters (startup options and ParameterStatus) -----------------


def session_parameters():
    with connect(
        autocommit=True,
        application_name="pgw-psycopg",
        options="-c TimeZone=Europe/Paris -c DateStyle=ISO,DMY",
    ) as conn:
        info = conn.info
        emit(
            "session_parameters",
            server_version=info.server_version,
            protocol_version=conn.pgconn.protocol_version,
            status=info.status.name,
            transaction_status=info.transaction_status.name,
            params={
                k: info.parameter_status(k)
                for k in (
                    "application_name",
                    "client_encoding",
                    "DateStyle",
                    "integer_datetimes",
                    "IntervalStyle",
                    "is_superuser",
                    "server_encoding",
                    "standard_conforming_strings",
                    "TimeZone",
                )
            },
            show=conn.execute(
                "SELECT current_setting('TimeZone'), current_setting('DateStyle'), "
                "current_setting('application_name'), current_user"
            ).fetchone(),
        )
        # A SET must come back as a ParameterStatus the client sees at once.
        conn.execute("SET application_name = 'renamed'")
        conn.execute("SET TimeZone = 'UTC'")
        emit(
            "parameter_status_after_set",
            application_name=info.parameter_status("application_name"),
            timezone=info.parameter_status("TimeZone"),
        )


# --- prepared statements ------------------------------------------------------


def prepared_statements():
    with connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE prep_t (id int PRIMARY KEY, label text)")
        results = []
        for i in range(1, 8):
            cur = conn.execute(
                "INSERT INTO prep_t VALUES (%s, %s) RETURNING id, label",
                (i, f"label {i}"),
                prepare=True,
            )
            results.append(cur.fetchone())
        emit("prepared_insert_returning", rows=show(results))

        # Not asked to prepare: psycopg prepares it after prepare_threshold runs.
        sums = []
        for i in range(conn.prepare_threshold + 3):
            sums.append(
                conn.execute("SELECT sum(id) + %s FROM prep_t WHERE id > %s", (i, i)).fetchone()[0]
            )
        emit("threshold_prepared_select", threshold=conn.prepare_threshold, sums=show(sums))

        # A server-prepared statement in binary, with a NULL parameter.
        rows = []
        for label in ("label 3", None, "label 5"):
            cur = conn.cursor(binary=True)
            cur.execute(
                "SELECT id, label FROM prep_t WHERE label IS NOT DISTINCT FROM %s",
                (label,),
                prepare=True,
            )
            rows.append(cur.fetchall())
        emit("prepared_binary_select", rows=show(rows))

        # executemany uses the prepared statement too.
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE prep_t SET label = %s WHERE id = %s",
                [(f"updated {i}", i) for i in range(1, 8)],
            )
            emit("prepared_executemany", rowcount=cur.rowcount)

        # What the server holds: statement names, texts and how often each ran.
        emit(
            "pg_prepared_statements",
            rows=show(
                conn.execute(
                    "SELECT name, statement, parameter_types::text, from_sql, "
                    "generic_plans + custom_plans AS executions "
                    "FROM pg_prepared_statements ORDER BY name"
                ).fetchall()
            ),
        )
        emit(
            "prepared_final_table",
            rows=show(conn.execute("SELECT * FROM prep_t ORDER BY id").fetchall()),
        )

        # SQL-level PREPARE/EXECUTE/DEALLOCATE through the simple protocol.
        conn.execute("PREPARE sql_level (int) AS SELECT $1 * 2")
        doubled = conn.execute("EXECUTE sql_level (21)").fetchone()
        conn.execute("DEALLOCATE sql_level")
        try:
            conn.execute("EXECUTE sql_level (1)")
            emit("deallocated_statement", error=None)
        except psycopg.Error as e:
            emit("deallocated_statement", doubled=doubled, error=error_fields(e))


# --- binary and text results with many types ----------------------------------

TYPES_SQL = """
SELECT 42::int4 AS i4, 9007199254740993::int8 AS i8, (-7)::int2 AS i2,
       'héllo wörld ✓'::text AS t, 'padded'::char(8) AS bpchar,
       12345678901234567890.123456789::numeric AS n, 'NaN'::numeric AS nan,
       (-0.5)::numeric(10, 3) AS n_scale, 1.5::float8 AS f8, 0.25::float4 AS f4,
       'Infinity'::float8 AS inf,
       '2024-02-29 12:34:56.789012+02'::timestamptz AS tstz,
       '2024-02-29 12:34:56'::timestamp AS ts, '2024-02-29'::date AS d,
       '13:14:15.5'::time AS tm, '1 day 02:03:04.5'::interval AS iv,
       '\\xdeadbeef00'::bytea AS b,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
       '{"a": [1, 2.5, null], "b": "x"}'::json AS j,
       '{"k": {"n": 1}, "s": "ü"}'::jsonb AS jb,
       ARRAY[1, 2, NULL, 4]::int4[] AS arr, ARRAY['a', 'b c', NULL]::text[] AS tarr,
       true AS bo, NULL::text AS nul, '192.168.0.1/24'::inet AS ip,
       int4range(1, 10) AS rng, 'pg_class'::regclass::oid AS oid
"""


def binary_results():
    with connect(autocommit=True, options="-c TimeZone=UTC") as conn:
        text_cur = conn.execute(TYPES_SQL)
        text_row = text_cur.fetchone()
        bin_cur = conn.cursor(binary=True)
        bin_cur.execute(TYPES_SQL)
        bin_row = bin_cur.fetchone()
        emit(
            "result_types",
            columns=[(d.name, d.type_code) for d in bin_cur.description],
            formats_text=[text_cur.pgresult.fformat(i) for i in range(text_cur.pgresult.nfields)],
            formats_binary=[bin_cur.pgresult.fformat(i) for i in range(bin_cur.pgresult.nfields)],
        )
        emit("result_values_text", row=show(text_row))
        emit("result_values_binary", row=show(bin_row))
        emit("binary_equals_text", equal=show(text_row) == show(bin_row))

        # Binary parameters (%b) and binary results, over the extended protocol.
        params = (
            2**40,
            "param ✓",
            b"\x00\x01\xff",
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            Decimal("-1234.5678"),
            datetime.datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc),
            datetime.date(1999, 12, 31),
            Jsonb({"nested": [1, {"x": None}]}),
            [1, 2, 3],
        )
        row = conn.execute(
            "SELECT %b::int8 + 1, %b || '!', %b::bytea || '\\x02'::bytea, %b::uuid, "
            "%b::numeric * 2, %b::timestamptz + interval '1 second', %b::date + 1, "
            "%b::jsonb -> 'nested', %b::int4[] || 4",
            params,
            binary=True,
        ).fetchone()
        emit("binary_params_binary_results", row=show(row))

        # Large values in both directions (several network packets each way).
        big_text = "".join(chr(0x41 + i % 26) for i in range(3_000_000))
        big_bytes = bytes(i % 251 for i in range(2_000_000))
        row = conn.execute(
            "SELECT length(%s::text), md5(%s::text), length(%b::bytea), md5(%b::bytea)",
            (big_text, big_text, big_bytes, big_bytes),
        ).fetchone()
        emit("large_params", row=show(row))
        got = conn.execute("SELECT repeat('xyz', 1000000), decode(repeat('ab', 1500000), 'hex')",
                           binary=True).fetchone()
        emit("large_results", row=show(got))


# --- COPY ---------------------------------------------------------------------


def copy_rows():
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    for i in range(1, 5001):
        name = f"name {i}\twith tab\nand newline \\ backslash" if i % 1000 == 0 else f"name {i}"
        yield (
            i,
            name,
            Decimal(i) / 100,
            base + datetime.timedelta(seconds=i),
            bytes([i % 256]) * (i % 7),
            None if i % 10 == 0 else f"note {i}",
        )


def copy_text_and_binary():
    with connect(autocommit=True, options="-c TimeZone=UTC") as conn:
        conn.execute(
            "CREATE TABLE copy_t (id int PRIMARY KEY, name text, amount numeric, "
            "ts timestamptz, data bytea, note text)"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY copy_t FROM STDIN") as copy:
                for r in copy_rows():
                    copy.write_row(r)
            emit("copy_from_stdin_text", rowcount=cur.rowcount)
        emit(
            "copy_from_stdin_text_contents",
            row=show(
                conn.execute(
                    "SELECT count(*), sum(amount), count(note), "
                    "md5(string_agg(id || name || amount || ts || data || coalesce(note, '-'), ',' ORDER BY id)) "
                    "FROM copy_t"
                ).fetchone()
            ),
        )

        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT") as copy:
                raw = b"".join(bytes(chunk) for chunk in copy)
            emit(
                "copy_to_stdout_raw",
                rowcount=cur.rowcount,
                length=len(raw),
                sha256=hashlib.sha256(raw).hexdigest(),
                head=raw[:120].decode(),
            )
            with cur.copy("COPY (SELECT id, name, note FROM copy_t WHERE id IN (1, 10, 1000) ORDER BY id) TO STDOUT (FORMAT CSV, HEADER)") as copy:
                csv_text = b"".join(bytes(chunk) for chunk in copy).decode()
            emit("copy_to_stdout_csv", text=csv_text)
            with cur.copy("COPY (SELECT id, name, amount FROM copy_t WHERE id <= 3 ORDER BY id) TO STDOUT") as copy:
                rows = list(copy.rows())
            emit("copy_to_stdout_rows", rows=show(rows))

        # Binary format, both ways, typed.
        types = ["int4", "text", "numeric", "timestamptz", "bytea", "uuid", "jsonb", "int8[]"]
        conn.execute(
            "CREATE TABLE copy_b (i int4, t text, n numeric, ts timestamptz, b bytea, "
            "u uuid, j jsonb, a int8[])"
        )
        written = [
            (
                i,
                f"bin {i} ✓",
                Decimal(i) / 7 if i % 3 else Decimal("1e-20"),
                datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(hours=i),
                bytes(range(i % 256)),
                uuid.UUID(int=i),
                {"i": i, "list": [i, None]},
                [i, -i, 2**40],
            )
            for i in range(1, 1001)
        ]
        with conn.cursor() as cur:
            with cur.copy("COPY copy_b FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for r in written:
                    copy.write_row((*r[:6], Jsonb(r[6]), r[7]))
            emit("copy_from_stdin_binary", rowcount=cur.rowcount)
            with cur.copy("COPY (SELECT * FROM copy_b ORDER BY i) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(types)
                read = list(copy.rows())
            emit(
                "copy_to_stdout_binary",
                rowcount=cur.rowcount,
                count=len(read),
                equal_to_written=[tuple(r) for r in read] == [tuple(w) for w in written],
                first=show(read[0]),
                last=show(read[-1]),
            )

        # Bad data: the server's error ends the COPY; nothing is inserted.
        with conn.cursor() as cur:
            try:
                with cur.copy("COPY copy_t (id, name) FROM STDIN") as copy:
                    copy.write(b"6000\tfine\n")
                    copy.write(b"not-an-int\tbad\n")
                emit("copy_bad_data", error=None)
            except psycopg.Error as e:
                emit("copy_bad_data", error=error_fields(e))
        # An exception in the client aborts the COPY with CopyFail.
        with conn.cursor() as cur:
            try:
                with cur.copy("COPY copy_t (id, name) FROM STDIN") as copy:
                    copy.write_row((7000, "never committed"))
                    raise ValueError("client gave up")
            except Exception as e:  # noqa: BLE001
                fields = {"type": type(e).__name__, "text": str(e)}
                if isinstance(e, psycopg.Error):
                    fields["sqlstate"] = e.sqlstate
                emit("copy_client_abort", **fields)
        emit(
            "copy_after_failures",
            status=conn.info.transaction_status.name,
            row=conn.execute("SELECT count(*), max(id) FROM copy_t").fetchone(),
        )


# --- pipeline mode ------------------------------------------------------------


def pipeline_mode():
    with connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE pipe_t (x int PRIMARY KEY)")
        with conn.pipeline() as p:
            c_many = conn.cursor()
            c_many.executemany(
                "INSERT INTO pipe_t VALUES (%s) RETURNING x * 10", [(i,) for i in range(1, 6)],
                returning=True,
            )
            c_sum = conn.execute("SELECT sum(x) FROM pipe_t")
            c_prep = [conn.execute("SELECT %s::int + x FROM pipe_t WHERE x = 1", (i,)) for i in range(8)]
            p.sync()
            returned = []
            while True:
                returned.extend(c_many.fetchall())
                if not c_many.nextset():
                    break
            emit(
                "pipeline_ok",
                returned=show(returned),
                sum=show(c_sum.fetchone()),
                prepared=[c.fetchone()[0] for c in c_prep],
            )

        # A failing statement aborts the rest of its sync block, not earlier ones.
        cursors = {}
        try:
            with conn.pipeline() as p:
                cursors["first"] = conn.execute("INSERT INTO pipe_t VALUES (100) RETURNING x")
                p.sync()
                cursors["second"] = conn.execute("INSERT INTO pipe_t VALUES (200) RETURNING x")
                cursors["fails"] = conn.execute("SELECT 1 / 0")
                cursors["skipped"] = conn.execute("INSERT INTO pipe_t VALUES (300)")
            emit("pipeline_error", error=None)
        except psycopg.Error as e:
            emit("pipeline_error", error=error_fields(e))
        # psycopg raises the error as soon as it reads it, which may be while
        # issuing a later statement (then never sent) or only at the end of the
        # block (then sent and skipped by the server): timing, not protocol.
        # Either way that statement has no result, which is what is recorded.
        outcome = {}
        for name in ("first", "second", "fails", "skipped"):
            try:
                outcome[name] = show(cursors[name].fetchall())
            except (KeyError, psycopg.Error):
                outcome[name] = "no result"
        emit(
            "pipeline_after_error",
            cursors=outcome,
            status=conn.info.transaction_status.name,
            pipeline_status=conn.info.pipeline_status.name,
            table=show(conn.execute("SELECT array_agg(x ORDER BY x) FROM pipe_t").fetchone()),
        )

    # Pipeline inside an explicit transaction: the error rolls all of it back.
    with connect() as conn:
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO pipe_t VALUES (400)")
                conn.execute("INSERT INTO pipe_t VALUES (1)")  # duplicate key
                conn.execute("INSERT INTO pipe_t VALUES (500)")
            emit("pipeline_in_transaction", error=None)
        except psycopg.Error as e:
            emit(
                "pipeline_in_transaction",
                error=error_fields(e),
                status=conn.info.transaction_status.name,
            )
        conn.rollback()
        emit(
            "pipeline_in_transaction_after_rollback",
            status=conn.info.transaction_status.name,
            table=show(conn.execute("SELECT array_agg(x ORDER BY x) FROM pipe_t").fetchone()),
        )
        conn.rollback()


# --- server-side cursors ------------------------------------------------------


def server_side_cursor():
    with connect() as conn:
        query = "SELECT g, md5(g::text) FROM generate_series(1, 10000) g ORDER BY g"
        with conn.transaction():
            with conn.cursor(name="pgw_big") as cur:
                cur.itersize = 700
                cur.execute(query)
                declared = conn.execute(
                    "SELECT name, statement, is_holdable, is_binary, is_scrollable FROM pg_cursors"
                ).fetchall()
                h = hashlib.sha256()
                count = total = 0
                for g, m in cur:
                    count += 1
                    total += g
                    h.update(f"{g}:{m};".encode())
                emit(
                    "named_cursor_iterate",
                    declared=show(declared),
                    count=count,
                    sum=total,
                    sha256=h.hexdigest(),
                )
            with conn.cursor(name="pgw_batches", binary=True) as cur:
                cur.execute(query)
                batches = []
                last = None
                while rows := cur.fetchmany(1500):
                    batches.append(len(rows))
                    last = rows[-1]
                emit("named_cursor_fetchmany", batches=batches, last=show(last))
            with conn.cursor(name="pgw_scroll", scrollable=True) as cur:
                cur.execute(query)
                cur.scroll(9995, mode="absolute")
                tail = cur.fetchall()
                cur.scroll(-3)
                back = cur.fetchone()
                cur.scroll(0, mode="absolute")
                first = cur.fetchone()
                emit("named_cursor_scroll", tail=show(tail), back=show(back), first=show(first))
        # A WITH HOLD cursor outlives the transaction that declared it.
        with conn.cursor(name="pgw_hold", withhold=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 2500) g")
            conn.commit()
            status = conn.info.transaction_status.name
            rows = cur.fetchall()
            emit("named_cursor_withhold", status_after_commit=status, count=len(rows), last=show(rows[-1]))
        conn.commit()


# --- LISTEN / NOTIFY ----------------------------------------------------------


def listen_notify():
    with connect(autocommit=True) as listener, connect(autocommit=True) as notifier:
        listener.execute("LISTEN pgw_chan")
        listener.execute("LISTEN \"pgw other\"")
        notifier_pid = notifier.execute("SELECT pg_backend_pid()").fetchone()[0]
        # Clients ignore their own notifications by comparing the sender's pid
        # with the pid BackendKeyData gave them: the two must agree.
        emit("backend_pid_matches_server", same=notifier.info.backend_pid == notifier_pid)
        notifier.execute("NOTIFY pgw_chan, 'hello'")
        notifier.execute("SELECT pg_notify('pgw other', 'payload with ✓ and ''quotes''')")
        with notifier.transaction():
            notifier.execute("NOTIFY pgw_chan, 'in transaction 1'")
            notifier.execute("NOTIFY pgw_chan, 'in transaction 2'")
        with notifier.transaction():
            notifier.execute("NOTIFY pgw_chan, 'rolled back'")
            raise psycopg.Rollback()  # a rolled-back NOTIFY is never delivered
        notifier.execute("NOTIFY pgw_chan")  # empty payload
        got = []
        for n in listener.notifies(timeout=10, stop_after=5):
            got.append(
                {"channel": n.channel, "payload": n.payload, "from_notifier": n.pid == notifier_pid}
            )
        emit("notifies_received", notifications=got)

        # A notification arriving while the listener runs a query reaches its handler.
        handled = []

        def handler(n):
            handled.append((n.channel, n.payload))

        listener.add_notify_handler(handler)
        notifier.execute("NOTIFY pgw_chan, 'during query'")
        deadline = time.monotonic() + 10
        while not handled and time.monotonic() < deadline:
            listener.execute("SELECT pg_sleep(0.05)")
        listener.remove_notify_handler(handler)
        emit("notify_handler", handled=handled)

        listener.execute("UNLISTEN *")
        notifier.execute("NOTIFY pgw_chan, 'after unlisten'")
        late = [(n.channel, n.payload) for n in listener.notifies(timeout=0.5)]
        emit("after_unlisten", notifications=late)


# --- errors and notices -------------------------------------------------------


def errors_and_notices():
    with connect() as conn:
        notices = []
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
        )
        cases = {
            "division_by_zero": ("SELECT 1 / 0", None),
            "division_by_zero_extended": ("SELECT %s::int / 0", (1,)),
            "syntax_error": ("SELEC 1", None),
            "undefined_table": ("SELECT * FROM no_such_table", None),
            "raise_exception": (
                "DO $$ BEGIN RAISE EXCEPTION 'custom failure %', 42 "
                "USING ERRCODE = 'P0042', DETAIL = 'a detail', HINT = 'a hint'; END $$",
                None,
            ),
        }
        for name, (sql, params) in cases.items():
            try:
                conn.execute(sql, params)
                emit("error", case=name, error=None)
            except psycopg.Error as e:
                emit(
                    "error",
                    case=name,
                    error=error_fields(e),
                    status=conn.info.transaction_status.name,
                )
            # In a transaction, later statements fail until the rollback.
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as e:
                emit("error_in_failed_transaction", case=name, error=error_fields(e))
            conn.rollback()
            emit("after_rollback", case=name, status=conn.info.transaction_status.name)

        conn.execute("CREATE TABLE err_t (id int CONSTRAINT err_t_pk PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO err_t VALUES (1, 1)")
        conn.commit()
        for name, sql in (
            ("unique_violation", "INSERT INTO err_t VALUES (1, 2)"),
            ("not_null_violation", "INSERT INTO err_t VALUES (2, NULL)"),
        ):
            try:
                conn.execute(sql)
            except psycopg.Error as e:
                emit("error", case=name, error=error_fields(e))
            conn.rollback()

        conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'note %', 1; RAISE WARNING 'careful'; "
            "RAISE INFO 'for your information'; END $$"
        )
        conn.execute("SET client_min_messages = 'debug1'")
        conn.execute("DO $$ BEGIN RAISE DEBUG 'debug message'; END $$")
        conn.rollback()
        emit("notices", notices=notices)

    # A cancel request (sent on its own connection) stops a running query.
    with connect(autocommit=True) as conn, connect(autocommit=True) as monitor:
        marker = "SELECT pg_sleep(60) /* pgw-cancel-me */"
        # Postgres' process id for this session (not conn.info.backend_pid, which
        # through a proxy is the key the proxy handed out).
        server_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        outcome = {}

        def run():
            try:
                conn.execute(marker)
                outcome["error"] = None
            except psycopg.Error as e:
                outcome["error"] = error_fields(e)

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            active = monitor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE pid = %s AND query = %s AND state = 'active'",
                (server_pid, marker),
            ).fetchone()[0]
            if active:
                break
            time.sleep(0.02)
        started = time.monotonic()
        conn.cancel_safe()
        t.join(30)
        emit(
            "cancel",
            error=outcome.get("error"),
            within_10s=time.monotonic() - started < 10,
            usable_after=conn.execute("SELECT 'still usable'").fetchone()[0],
        )


def main():
    for fn in (
        session_parameters,
        prepared_statements,
        binary_results,
        copy_text_and_binary,
        pipeline_mode,
        server_side_cursor,
        listen_notify,
        errors_and_notices,
    ):
        step(fn)
    emit("done", failed_steps=FAILED_STEPS)
    sys.stdout.flush()
    sys.exit(1 if FAILED_STEPS else 0)


if __name__ == "__main__":
    main()
