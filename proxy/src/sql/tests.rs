use pgwarden_config::{Classification, Column, ColumnMode, LogicalType};

use super::rewrite::{bytea_literal, replace_literals};
use super::*;

fn registry() -> Registry {
    let col = |name: &str, ty, mode, key: &str| Column {
        name: name.into(),
        logical_type: ty,
        mode,
        key: key.into(),
        classification: Classification::Restricted,
        compliance: vec![],
    };
    Registry::new(&[
        col("public.customers.ssn", LogicalType::Text, ColumnMode::Deterministic, "pii"),
        col("public.customers.card", LogicalType::Text, ColumnMode::Randomized, "pci"),
        col("public.customers.age", LogicalType::Int4, ColumnMode::Deterministic, "pii"),
        col("public.people.ssn", LogicalType::Text, ColumnMode::Deterministic, "pii"),
        col("billing.cards.pan", LogicalType::Text, ColumnMode::Deterministic, "other"),
    ])
}

fn ok(sql: &str) -> Analysis {
    analyze(sql, &registry()).unwrap_or_else(|e| panic!("{sql}: refused: {e}"))
}

fn refused(sql: &str) -> String {
    match analyze(sql, &registry()) {
        Ok(a) => panic!("{sql}: accepted: {a:?}"),
        Err(e) => e.to_string(),
    }
}

fn literal_texts(a: &Analysis, sql: &str) -> Vec<(String, String, String)> {
    a.literals
        .iter()
        .map(|l| (l.column.name.clone(), l.value.clone(), sql[l.range.clone()].to_string()))
        .collect()
}

#[test]
fn statements_that_name_no_registered_table_skip_the_parser() {
    let a = ok("SELECT * FROM orders WHERE note LIKE '%x%' ORDER BY 1");
    assert!(a.is_untouched());
    // Not even parsed: garbage that names no registered table passes through.
    assert!(ok("THIS IS NOT SQL").is_untouched());
}

#[test]
fn plain_reads_of_encrypted_columns_are_accepted() {
    for sql in [
        "SELECT * FROM customers",
        "SELECT ssn, card AS c FROM customers c",
        "SELECT c.ssn FROM public.customers AS c JOIN people p ON p.ssn = c.ssn",
        "WITH x AS (SELECT ssn FROM customers) SELECT * FROM x",
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn = $1)",
        "SELECT ssn, count(*) FROM customers GROUP BY ssn",
        "SELECT DISTINCT ssn FROM customers",
        "SELECT * FROM customers WHERE card IS NOT NULL AND ssn IS NULL",
    ] {
        let a = ok(sql);
        assert!(a.tables.contains(&"public.customers".to_string()), "{sql}: {a:?}");
    }
}

#[test]
fn equality_literals_and_parameters_on_deterministic_columns_are_marked_for_encryption() {
    let sql =
        "SELECT * FROM customers WHERE ssn = '123-45-6789' AND age <> -42 OR ssn IN ($2, 'x')";
    let a = ok(sql);
    assert_eq!(
        literal_texts(&a, sql),
        vec![
            ("public.customers.ssn".into(), "123-45-6789".into(), "'123-45-6789'".into()),
            ("public.customers.age".into(), "-42".into(), "-42".into()),
            ("public.customers.ssn".into(), "x".into(), "'x'".into()),
        ]
    );
    assert_eq!(a.params.len(), 1);
    assert_eq!(a.params[0].index, 1);
}

#[test]
fn insert_values_update_and_delete_mark_values_for_their_columns() {
    let sql = "INSERT INTO customers (id, ssn, card, age) VALUES (1, '1-2', $1, DEFAULT), \
               (2, NULL, E'a\\'b', '7' :: int4[]), (3, '2001-01-01'::timestamp with time zone, $3, 1) \
               ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn, card = $2 RETURNING ssn";
    let a = ok(sql);
    let lits = literal_texts(&a, sql);
    assert_eq!(lits[0], ("public.customers.ssn".into(), "1-2".into(), "'1-2'".into()));
    assert_eq!(lits[1].1, "a'b");
    assert_eq!(lits[2], ("public.customers.age".into(), "7".into(), "'7' :: int4[]".into()));
    assert_eq!(lits[3].2, "'2001-01-01'::timestamp with time zone");
    assert_eq!(lits[4], ("public.customers.age".into(), "1".into(), "1".into()));
    let params: Vec<(usize, &str)> =
        a.params.iter().map(|p| (p.index, p.column.name.as_str())).collect();
    assert_eq!(
        params,
        vec![
            (0, "public.customers.card"),
            (2, "public.customers.card"),
            (1, "public.customers.card")
        ]
    );

    let a = ok("UPDATE customers SET ssn = $1, name = upper(name) WHERE ssn = 'old'");
    assert_eq!(a.params.len(), 1);
    assert_eq!(a.literals.len(), 1);
    let a = ok("DELETE FROM customers WHERE ssn IN ('a', 'b') RETURNING card");
    assert_eq!(a.literals.len(), 2);
}

#[test]
fn unsupported_uses_are_refused_naming_the_column() {
    for (sql, column) in [
        ("SELECT * FROM customers WHERE ssn LIKE '1%'", "public.customers.ssn"),
        ("SELECT * FROM customers WHERE age < 30", "public.customers.age"),
        ("SELECT * FROM customers ORDER BY ssn", "public.customers.ssn"),
        ("SELECT upper(ssn) FROM customers", "public.customers.ssn"),
        ("SELECT * FROM customers WHERE card = 'x'", "public.customers.card"),
        ("SELECT card, count(*) FROM customers GROUP BY card", "public.customers.card"),
        ("SELECT DISTINCT card FROM customers", "public.customers.card"),
        ("UPDATE customers SET age = age + 1", "public.customers.age"),
        ("INSERT INTO customers (ssn) VALUES (lower('X'))", "public.customers.ssn"),
        ("SELECT * FROM customers c JOIN billing.cards b ON b.pan = c.ssn", "billing.cards.pan"),
        ("SELECT * FROM customers WHERE ssn = card", "public.customers.ssn"),
    ] {
        let e = refused(sql);
        assert!(e.contains(column), "{sql}: {e}");
        assert!(e.contains("is encrypted"), "{sql}: {e}");
    }
}

#[test]
fn writes_the_proxy_cannot_analyse_are_refused() {
    for sql in [
        "INSERT INTO customers VALUES (1, 'x')",
        "INSERT INTO customers (ssn) SELECT ssn FROM people",
        "COPY customers FROM STDIN",
        "INSERT INTO customers (ssn) VALUES ('x') ; SELEC oops",
    ] {
        let e = refused(sql);
        assert!(!e.is_empty(), "{sql}");
    }
}

#[test]
fn refusals_never_repeat_the_values_in_the_statement() {
    let secret = "987-65-4321";
    for sql in [
        format!("SELECT * FROM customers WHERE ssn LIKE '{secret}'"),
        format!("INSERT INTO customers (ssn) VALUES (trim('{secret}'))"),
        format!("INSERT INTO customers VALUES ('{secret}')"),
        format!("INSERT INTO customers (ssn) VALUES ('{secret}' "),
    ] {
        let e = refused(&sql);
        assert!(!e.contains(secret), "{e}");
    }
}

#[test]
fn literals_are_replaced_in_place_and_the_rest_of_the_text_is_kept() {
    let sql = "SELECT  *\nFROM customers -- note\nWHERE ssn = 'ab' AND age = 7";
    let a = ok(sql);
    let sites = a.literals.iter().map(|l| (l.range.clone(), vec![0x50, 0x57])).collect();
    let out = replace_literals(sql, sites).unwrap();
    assert_eq!(
        out,
        "SELECT  *\nFROM customers -- note\nWHERE ssn = E'\\\\x5057'::bytea AND age = E'\\\\x5057'::bytea"
    );
    assert_eq!(bytea_literal(&[0, 255]), "E'\\\\x00ff'::bytea");
}

#[test]
fn multibyte_text_before_a_literal_keeps_ranges_right() {
    let sql = "SELECT 'ünïcødé', * FROM customers WHERE ssn = 'x'";
    let a = ok(sql);
    assert_eq!(&sql[a.literals[0].range.clone()], "'x'");
}

#[test]
fn copy_of_encrypted_columns_is_described_for_the_pipeline() {
    let a = ok("COPY customers (name, ssn) FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';')");
    let spec = a.copy.unwrap();
    assert_eq!((spec.format, spec.delimiter, spec.header), (CopyFormat::Csv, b';', true));
    assert_eq!((spec.quote, spec.escape, spec.null.as_slice()), (b'"', b'"', &b""[..]));
    let CopyDirection::In(fields) = spec.direction else { panic!("not COPY IN") };
    let names: Vec<Option<&str>> =
        fields.iter().map(|f| f.as_ref().map(|c| c.name.as_str())).collect();
    assert_eq!(names, [None, Some("public.customers.ssn")]);

    let spec = ok("COPY customers TO STDOUT").copy.unwrap();
    assert_eq!(
        (spec.format, spec.delimiter, spec.null.as_slice()),
        (CopyFormat::Text, b'\t', &b"\\N"[..])
    );
    assert!(matches!(&spec.direction, CopyDirection::Out(q) if q == "SELECT * FROM customers"));
    let spec =
        ok("COPY (SELECT name, ssn FROM customers WHERE ssn = 'x') TO STDOUT CSV").copy.unwrap();
    assert!(
        matches!(&spec.direction, CopyDirection::Out(q) if q.starts_with("SELECT name, ssn FROM customers"))
    );
    // A COPY of a table without encrypted columns needs nothing.
    assert!(ok("COPY orders FROM STDIN").copy.is_none());
}

#[test]
fn copy_the_proxy_cannot_rewrite_is_refused() {
    for sql in [
        "COPY customers (ssn) FROM '/tmp/data'",
        "COPY customers TO PROGRAM 'cat'",
        "COPY customers (ssn) TO STDOUT (FORMAT binary)",
        "COPY customers (ssn) FROM STDIN; SELECT 1",
        "COPY (SELECT lower(ssn) FROM customers) TO STDOUT",
        "COPY customers (ssn) FROM STDIN (FORCE_NULL (ssn), FORMAT csv)",
    ] {
        assert!(!refused(sql).is_empty(), "{sql}");
    }
}

fn names(columns: &[Arc<EncryptedColumn>]) -> Vec<&str> {
    columns.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn reads_count_every_column_a_statement_shows_or_filters_on_including_stars() {
    let reads = |sql: &str| names(&ok(sql).reads).join(" ");
    assert_eq!(reads("SELECT name FROM customers"), "");
    assert_eq!(
        reads("SELECT ssn FROM customers WHERE card IS NULL"),
        "public.customers.ssn public.customers.card"
    );
    assert_eq!(
        reads("SELECT * FROM customers"),
        "public.customers.age public.customers.card public.customers.ssn"
    );
    assert_eq!(
        reads("SELECT c.* FROM customers c JOIN orders o ON o.id = c.id"),
        "public.customers.age public.customers.card public.customers.ssn"
    );
    assert_eq!(reads("SELECT o.* FROM customers c JOIN orders o ON o.id = c.id"), "");
    assert_eq!(
        reads("SELECT * FROM orders WHERE id IN (SELECT id FROM people WHERE ssn = $1)"),
        "public.people.ssn"
    );
    assert_eq!(reads("DELETE FROM people WHERE id = 1 RETURNING *"), "public.people.ssn");
    assert_eq!(reads("COPY people TO STDOUT"), "public.people.ssn");
    assert_eq!(reads("COPY customers (id, card) TO STDOUT"), "public.customers.card");
    // Moving a value into its own column reads nothing out.
    assert_eq!(
        reads("INSERT INTO people (id, ssn) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn"),
        ""
    );
}

#[test]
fn writes_count_insert_targets_update_assignments_and_copy_from() {
    let writes = |sql: &str| names(&ok(sql).writes).join(" ");
    assert_eq!(
        writes("INSERT INTO customers (name, ssn) VALUES ('a', 'b')"),
        "public.customers.ssn"
    );
    assert_eq!(
        writes("UPDATE customers SET card = $1, name = 'x' WHERE ssn = $2"),
        "public.customers.card"
    );
    assert_eq!(
        writes("COPY customers (id, age, ssn) FROM STDIN"),
        "public.customers.age public.customers.ssn"
    );
    assert_eq!(writes("SELECT ssn FROM customers"), "");
    assert_eq!(writes("DELETE FROM customers WHERE ssn = 'x'"), "");
}

#[test]
fn unicode_escaped_identifiers_pass_in_reads_and_are_refused_in_writes() {
    // Results are guarded by their RowDescription; writes cannot be.
    assert!(ok(r#"SELECT * FROM U&"cust\006fmers""#).is_untouched());
    for sql in [
        r#"INSERT INTO U&"cust\006fmers" (ssn) VALUES ('123')"#,
        r#"UPDATE u&"cust\006fmers" SET ssn = '1'"#,
        r#"WITH x AS (DELETE FROM U&"cust\006fmers" RETURNING 1) SELECT * FROM x"#,
        r#"COPY U&"cust\006fmers" (ssn) FROM STDIN"#,
    ] {
        assert!(refused(sql).contains("Unicode-escaped"), "{sql}");
    }
}

#[test]
fn an_unqualified_name_of_a_table_registered_outside_public_is_refused() {
    // search_path could make `cards` mean billing.cards: never analysed as
    // something else.
    for sql in [
        "INSERT INTO cards (pan) VALUES ('4111111111111111')",
        "SELECT * FROM cards WHERE pan = '4111111111111111'",
        "UPDATE cards SET pan = 'x'",
        "COPY cards (pan) FROM STDIN",
        "SELECT c.ssn FROM customers c JOIN cards USING (ssn)",
        "DELETE FROM customers WHERE ssn IN (SELECT pan FROM cards)",
    ] {
        let e = refused(sql);
        assert!(e.contains("billing.cards") && e.contains("search_path"), "{sql}: {e}");
        assert!(!e.contains("4111"), "{sql}: {e}");
    }
    // Qualified, either way, it is analysed as usual.
    let a = ok("INSERT INTO billing.cards (pan) VALUES ('4111111111111111')");
    assert_eq!(a.literals.len(), 1);
    assert!(ok("SELECT * FROM public.cards WHERE pan = 'x'").literals.is_empty());
    // A column or alias of that name is not a table.
    assert!(ok("SELECT cards FROM customers").literals.is_empty());
}
