"""psycopg 3 against tables whose sensitive columns pgwarden encrypts.

Usage: psycopg_encrypted.py CONNINFO

The integration test runs this twice: through pgwarden, on a database whose
`ssn`, `card` and `every_type` columns are bytea holding envelopes, and
directly to Postgres, on a database where the same columns have their real
types. An application must not be able to tell the two apart, so the
transcripts (one JSON object per line on stdout) must be identical.

Covers parameters in text and binary, server-side prepared statements,
binary results, pipeline mode, executemany, equality search, NULLs, every
logical type through psycopg's own adapters, and COPY in both directions.
A step that raises is recorded and the script goes on; the exit status is 0
only when every step ran to its end.
"""

import datetime
import json
import sys
import traceback
import uuid
from decimal import Decimal

import psycopg
from psycopg.types.json import Json, Jsonb

CONNINFO = sys.argv[1]
FAILED = []


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, sort_keys=True, ensure_ascii=False, default=repr))


def show(value):
    if isinstance(value, (list, tuple)):
        return [show(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return f"{type(value).__name__}:{value!r}"


def step(fn):
    try:
        fn()
    except Exception as e:  # recorded, then the next step runs
        FAILED.append(fn.__name__)
        emit(fn.__name__, error=type(e).__name__, sqlstate=getattr(e, "sqlstate", None),
             message=str(e), trace=traceback.format_exc().splitlines()[-3:])


conn = psycopg.connect(CONNINFO, autocommit=True)
conn.execute("SET TimeZone = 'UTC'")

PEOPLE = [("Ann", "123-45-6789", "4111 1111 1111 1111"),
          ("Bob", "987-65-4321", "5500 0000 0000 0004"),
          ("Cy", None, None)]


def insert_with_parameters():
    cur = conn.cursor()
    for name, ssn, card in PEOPLE:
        cur.execute("INSERT INTO customers (name, ssn, card) VALUES (%s, %s, %s) RETURNING name, ssn, card",
                    (name, ssn, card))
        emit("insert", row=show(cur.fetchone()))
    # Binary parameters.
    cur.execute("INSERT INTO customers (name, ssn, card) VALUES (%b, %b, %b) RETURNING ssn",
                ("Dee", "555-55-5555", "3400 0000 0000 009"))
    emit("insert_binary", row=show(cur.fetchone()))


def executemany_and_prepared():
    cur = conn.cursor()
    cur.executemany("INSERT INTO customers (name, ssn, card) VALUES (%s, %s, %s)",
                    [(f"P{i}", f"{i:03d}-00-0000", f"card {i}") for i in range(20)])
    for i in (3, 7, 3, 7, 11, 3):  # the same query again and again: prepared
        cur.execute("SELECT name, card FROM customers WHERE ssn = %s", (f"{i:03d}-00-0000",), prepare=True)
        emit("prepared", rows=show(cur.fetchall()))


def equality_search():
    cur = conn.cursor()
    for sql, params in [
        ("SELECT name FROM customers WHERE ssn = %s ORDER BY name", ("987-65-4321",)),
        ("SELECT name FROM customers WHERE ssn IN (%s, %s) ORDER BY name", ("123-45-6789", "555-55-5555")),
        ("SELECT name FROM customers WHERE ssn <> %s AND name < 'D' ORDER BY name", ("123-45-6789",)),
        ("SELECT name FROM customers WHERE ssn IS NULL ORDER BY name", ()),
        ("SELECT count(*) FROM customers WHERE ssn = '123-45-6789'", ()),
    ]:
        cur.execute(sql, params)
        emit("search", sql=sql, rows=show(cur.fetchall()))


def binary_results():
    cur = conn.cursor(binary=True)
    cur.execute("SELECT name, ssn, card FROM customers WHERE name IN ('Ann', 'Cy') ORDER BY name")
    emit("binary", rows=show(cur.fetchall()),
         types=[d.type_code for d in cur.description])


def pipeline_mode():
    with conn.pipeline():
        cur = conn.cursor()
        for i in range(5):
            conn.execute("INSERT INTO customers (name, ssn) VALUES (%s, %s)", (f"Q{i}", f"pipe-{i}"))
        cur.execute("SELECT name, ssn FROM customers WHERE name LIKE 'Q%%' ORDER BY name")
        rows = cur.fetchall()
    emit("pipeline", rows=show(rows))


EVERY_TYPE = [
    ("t", "héllo 'wörld'"),
    ("vc", "varchar"),
    ("c", "ab"),
    ("i2", -7),
    ("i4", 2147483647),
    ("i8", -9223372036854775808),
    ("num", Decimal("12.34")),
    ("f4", 1.5),
    ("f8", -0.25),
    ("b", True),
    ("d", datetime.date(2024, 2, 29)),
    ("ts", datetime.datetime(2024, 2, 29, 13, 14, 15, 500000)),
    ("tstz", datetime.datetime(2024, 2, 29, 13, 14, 15, tzinfo=datetime.timezone.utc)),
    ("u", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("j", Json({"b": 1, "a": [1, 2]})),
    ("jb", Jsonb({"b": 1, "a": [1, 2]})),
    ("by", b"\x00\x01\xfe\xff"),
]


def every_type():
    cols = ", ".join(c for c, _ in EVERY_TYPE)
    for row_id, placeholder in ((1, "%s"), (2, "%b"), (3, "%t")):
        marks = ", ".join(placeholder for _ in EVERY_TYPE)
        conn.execute(f"INSERT INTO every_type (id, {cols}) VALUES ({row_id}, {marks})",
                     [v for _, v in EVERY_TYPE])
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute(f"SELECT id, {cols} FROM every_type ORDER BY id")
        emit("every_type", binary=binary, rows=show(cur.fetchall()),
             types=[d.type_code for d in cur.description])
    for col, value in EVERY_TYPE:
        if col == "j":
            continue  # Postgres has no json = json
        cur = conn.execute(f"SELECT count(*) FROM every_type WHERE {col} = %s", (value,))
        emit("every_type_equal", col=col, count=cur.fetchone()[0])


def copy_in_and_out():
    cur = conn.cursor()
    with cur.copy("COPY customers (name, ssn, card) FROM STDIN") as copy:
        copy.write_row(("Eve", "111-11-1111", "tab\there"))
        copy.write_row(("Fay", None, "back\\slash"))
    with cur.copy("COPY customers (name, ssn, card) FROM STDIN (FORMAT csv)") as copy:
        copy.write('Gil,222-22-2222,"comma, quote ""x"""\n')
    rows = []
    with cur.copy("COPY (SELECT name, ssn, card FROM customers WHERE name IN ('Eve', 'Fay', 'Gil') "
                  "ORDER BY name) TO STDOUT") as copy:
        for row in copy.rows():
            rows.append(row)
    emit("copy_out", rows=show(rows))
    cur.execute("SELECT name FROM customers WHERE ssn = %s", ("222-22-2222",))
    emit("copy_search", rows=show(cur.fetchall()))


for fn in (insert_with_parameters, executemany_and_prepared, equality_search, binary_results,
           pipeline_mode, every_type, copy_in_and_out):
    step(fn)
emit("done", failed=FAILED)
sys.exit(1 if FAILED else 0)
