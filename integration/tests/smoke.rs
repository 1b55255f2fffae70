#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

use pgwarden_integration::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_through_the_proxy_matches_the_same_query_direct() {
    let env = TestEnv::start().await;
    let sql = "SELECT g, md5(g::text) FROM generate_series(1, 100) g";
    let via = env.proxy_client().await.simple_query(sql).await.unwrap();
    let direct = env.direct_client().await.simple_query(sql).await.unwrap();
    assert_eq!(format!("{via:?}"), format!("{direct:?}"));
}
