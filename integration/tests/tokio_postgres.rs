//! tokio-postgres through the proxy, every result compared with the same
//! operation made directly to Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use pgwarden_integration::{copy_out, roles, TestEnv};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

fn simple_rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Both clients: through the proxy and direct.
async fn clients(env: &TestEnv) -> [Client; 2] {
    [env.proxy_client().await, env.direct_client().await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authentication_method_works_through_the_proxy() {
    let env = TestEnv::start().await;
    for user in [roles::SCRAM, roles::MD5, roles::PASSWORD, roles::TRUST, roles::SUPERUSER] {
        let c = pgwarden_integration::connect(&env.proxy_url(user, "postgres")).await;
        let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_match_direct() {
    let env = TestEnv::start().await;
    let mut results = Vec::new();
    for c in clients(&env).await {
        let simple = simple_rows(
            c.simple_query("SELECT 1 AS a, 'x' AS b; SELECT NULL::text, now() > '2000-01-01'")
                .await
                .unwrap(),
        );
        let stmt = c.prepare("SELECT $1::int8 * 2, $2::text || '!'").await.unwrap();
        let none: Option<String> = None;
        let null = c.query_one("SELECT $1::text IS NULL", &[&none]).await.unwrap();
        let row = c.query_one(&stmt, &[&21i64, &"hi"]).await.unwrap();
        results.push(format!(
            "{simple:?} {} {} {}",
            null.get::<_, bool>(0),
            row.get::<_, i64>(0),
            row.get::<_, String>(1)
        ));
    }
    assert_eq!(results[0], results[1]);
    assert!(results[0].ends_with("true 42 hi!"), "{}", results[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_of_many_types_match_direct() {
    let env = TestEnv::start().await;
    let sql = "SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, true, 'txt'::text, \
               'vc'::varchar, '\\xdeadbeef'::bytea, '2026-12-03'::date, \
               '2026-12-03 18:00:00'::timestamp, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, \
               '{\"k\": [1, 2]}'::jsonb, ARRAY[1, 2, 3]::int4[]";
    let mut out = Vec::new();
    for c in clients(&env).await {
        // tokio-postgres asks for binary results in the extended protocol.
        let row = c.query_one(sql, &[]).await.unwrap();
        let cols: Vec<String> = row.columns().iter().map(|c| c.type_().name().into()).collect();
        out.push(format!(
            "{cols:?} {} {} {} {} {} {} {} {} {:?} {:?} {:?}",
            row.get::<_, i16>(0),
            row.get::<_, i32>(1),
            row.get::<_, i64>(2),
            row.get::<_, f32>(3),
            row.get::<_, f64>(4),
            row.get::<_, bool>(5),
            row.get::<_, String>(6),
            row.get::<_, String>(7),
            row.get::<_, Vec<u8>>(8),
            row.get::<_, Vec<i32>>(13),
            row.columns()[11].type_() == &Type::UUID,
        ));
    }
    assert_eq!(out[0], out[1]);
    assert!(out[0].contains("[222, 173, 190, 239]"), "{}", out[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_return_in_order() {
    let env = TestEnv::start().await;
    let c = env.proxy_client().await;
    let stmt = c.prepare("SELECT $1::int4, pg_sleep(0.001)::text").await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection.
    let futures = (0..200).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move { c.query_one(stmt, &[&i]).await.unwrap().get::<_, i32>(0) }
    });
    let got = futures_util::future::join_all(futures).await;
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_reported_and_the_session_stays_usable() {
    let env = TestEnv::start().await;
    for c in clients(&env).await {
        let e = c.query("SELECT 1/0", &[]).await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), "22012");
        let e = c.batch_execute("SELECT nope").await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), "42703");
        let e = c.prepare("SELEC 1").await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), "42601");
        assert_eq!(c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_text_csv_and_binary_match_direct() {
    let env = TestEnv::start().await;
    let mut outs = Vec::new();
    for (i, mut c) in clients(&env).await.into_iter().enumerate() {
        let t = format!("copy_t{i}");
        c.batch_execute(&format!("CREATE TABLE {t} (a int, b text)")).await.unwrap();
        for (fmt, data) in
            [("text", "1\tone\n2\t\\N\n".to_string()), ("csv", "3,\"th,ree\"\n4,\n".to_string())]
        {
            let sink = c
                .copy_in::<_, Bytes>(&format!("COPY {t} FROM STDIN (FORMAT {fmt})"))
                .await
                .unwrap();
            pin_mut!(sink);
            sink.send(Bytes::from(data)).await.unwrap();
            assert_eq!(sink.finish().await.unwrap(), 2);
        }
        // Binary: copy the table out and back in.
        let binary = copy_out(&c, &format!("COPY {t} TO STDOUT (FORMAT binary)")).await;
        let sink =
            c.copy_in::<_, Bytes>(&format!("COPY {t} FROM STDIN (FORMAT binary)")).await.unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from(binary)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 4);

        // CopyFail: a sink dropped without finish() aborts the COPY.
        {
            let sink = c.copy_in::<_, Bytes>(&format!("COPY {t} FROM STDIN")).await.unwrap();
            pin_mut!(sink);
            sink.send(Bytes::from_static(b"99\tlost\n")).await.unwrap();
        }
        // COPY inside a rolled-back transaction leaves nothing.
        let tx = c.transaction().await.unwrap();
        {
            let sink = tx.copy_in::<_, Bytes>(&format!("COPY {t} FROM STDIN")).await.unwrap();
            pin_mut!(sink);
            sink.send(Bytes::from_static(b"100\trolled back\n")).await.unwrap();
            sink.finish().await.unwrap();
        }
        tx.rollback().await.unwrap();

        let out =
            copy_out(&c, &format!("COPY (SELECT * FROM {t} ORDER BY a, b) TO STDOUT (FORMAT csv)"))
                .await;
        outs.push(String::from_utf8(out).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0].lines().count(), 8, "{}", outs[0]);
    assert!(!outs[0].contains("lost") && !outs[0].contains("rolled back"), "{}", outs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_proxy_stops_a_running_query() {
    let env = TestEnv::start().await;
    let c = env.proxy_client().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "57014", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "cancel did not take effect");
    canceller.await.unwrap().unwrap();
    // The session survives a cancel.
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_a_wrong_secret_cancels_nothing() {
    use pgwarden_integration::wire::Wire;
    let env = TestEnv::start().await;
    let (mut victim, startup) = Wire::startup(env.proxy_addr, roles::TRUST, "postgres").await;
    let key = startup.iter().find(|m| m.tag == b'K').unwrap().body.clone();
    victim.send(&pgwarden_integration::wire::query("SELECT pg_sleep(1.5), 'done'")).await;
    let mut forged = key.clone();
    forged[7] ^= 1;
    let mut w = Wire::connect(env.proxy_addr).await;
    let mut packet = vec![0, 0, 0, 16, 4, 210, 22, 46];
    packet.extend(&forged);
    w.send(&packet).await;
    assert!(w.until_eof().await.is_empty(), "a cancel request gets no answer");
    let msgs = victim.until_ready(1).await;
    assert!(msgs.iter().all(|m| m.tag != b'E'), "forged cancel took effect: {msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_delivered_through_the_proxy() {
    let env = TestEnv::start().await;
    let (listener, mut conn) =
        tokio_postgres::connect(&env.proxy_url(roles::SCRAM, "postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        pin_mut!(stream);
        while let Some(Ok(msg)) = stream.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN pgwarden_events").await.unwrap();
    let notifier = env.proxy_client().await;
    notifier.batch_execute("NOTIFY pgwarden_events, 'hello'").await.unwrap();
    notifier.execute("SELECT pg_notify('pgwarden_events', $1)", &[&"second"]).await.unwrap();
    for want in ["hello", "second"] {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification not delivered")
            .unwrap();
        assert_eq!(got, ("pgwarden_events".to_string(), want.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_connections_get_their_own_answers() {
    let env = TestEnv::start().await;
    let url = env.proxy_url(roles::SCRAM, "postgres");
    let tasks: Vec<_> = (0..100i64)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = pgwarden_integration::connect(&url).await;
                let mut sum = 0i64;
                for j in 0..5i64 {
                    let r: i64 = c
                        .query_one("SELECT $1::int8 * 1000 + $2::int8", &[&i, &j])
                        .await
                        .unwrap()
                        .get(0);
                    sum += r;
                }
                (i, sum)
            })
        })
        .collect();
    for t in tasks {
        let (i, sum) = t.await.unwrap();
        assert_eq!(sum, i * 5000 + 10);
    }
    assert_eq!(env.wait_for_no_connections(Duration::from_secs(10)).await, 0);
    assert_eq!(env.handle.registered_cancel_keys(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_result_streams_through_unchanged() {
    let env = TestEnv::start().await;
    let sql = "SELECT g, md5(g::text) FROM generate_series(1, 1000000) g";
    let mut digests = Vec::new();
    for c in clients(&env).await {
        let rows = c.query_raw(sql, Vec::<i32>::new()).await.unwrap();
        pin_mut!(rows);
        let (mut n, mut acc) = (0u64, 0u64);
        while let Some(row) = rows.next().await {
            let row = row.unwrap();
            let g: i32 = row.get(0);
            let h: &str = row.get(1);
            acc = acc
                .wrapping_mul(31)
                .wrapping_add(g as u64 ^ h.len() as u64 ^ u64::from(h.as_bytes()[0]));
            n += 1;
        }
        digests.push((n, acc));
    }
    assert_eq!(digests[0].0, 1_000_000);
    assert_eq!(digests[0], digests[1]);
}
