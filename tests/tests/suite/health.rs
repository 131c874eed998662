//! Health, readiness and the container `healthcheck` subcommands.

use std::time::Duration;

use tests::{Stack, StackOptions, eventually};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_gl-coordinator");

#[tokio::test]
async fn health_reports_each_dependency_and_ready_follows_them() {
    let stack = Stack::start(StackOptions { workers: 0, ..StackOptions::default() }).await;
    eventually(Duration::from_secs(20), "every dependency is ok", || async {
        let (status, body) = stack.call(reqwest::Method::GET, "/health", None).await;
        status == 200 && body["status"] == "healthy"
    })
    .await;
    let (status, body) = stack.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["checks"], serde_json::json!({"database": "ok", "queue": "ok", "redis": "ok"}));
    assert_eq!((body["service"].as_str(), body["version"].is_string()), (Some("greenlang-orchestrator"), true));
    let (status, _) = stack.call(reqwest::Method::GET, "/ready", None).await;
    assert_eq!(status, 200);

    let port = stack.coordinators[0].addr.port();
    let check = |port: u16| {
        let env = stack.env();
        async move {
            tokio::process::Command::new(COORDINATOR)
                .arg("healthcheck")
                .envs(env)
                .env("GL_ORCHESTRATOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .output()
                .await
                .expect("runs")
                .status
                .code()
        }
    };
    assert_eq!(check(port).await, Some(0));
    assert_eq!(check(tests::free_port()).await, Some(1), "nothing listens there");
    stack.shutdown().await;
}

#[tokio::test]
async fn without_rabbitmq_the_service_is_alive_but_not_ready() {
    let closed = tests::free_port();
    let stack = Stack::start(StackOptions {
        workers: 0,
        settings: vec![("AMQP_URL", format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"))],
        ..StackOptions::default()
    })
    .await;
    let (status, body) = stack.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200, "liveness does not depend on the broker");
    assert_eq!((body["status"].as_str(), body["checks"]["queue"].as_str()), (Some("degraded"), Some("unavailable")));
    let response = stack.http.get(format!("{}/ready", stack.base())).send().await.expect("answers");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    stack.shutdown().await;
}

#[tokio::test]
async fn an_exhausted_database_pool_answers_503_with_retry_after_never_a_hang() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        settings: vec![("DB_POOL_SIZE", "2".into()), ("DB_POOL_MAX_OVERFLOW", "0".into())],
        ..StackOptions::default()
    })
    .await;
    // Every connection the coordinator may open ends up waiting on this table lock.
    let db = stack.database().await;
    let mut blocker = db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE dag_workflows IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.expect("lock");
    let blocked: Vec<_> = (0..4)
        .map(|i| {
            let (http, url) = (stack.http.clone(), format!("{}/dags/blocked-{i}", stack.base()));
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    eventually(Duration::from_secs(20), "the pool's connections wait on the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'greenlang-orchestrator' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db)
        .await
        .unwrap_or(0);
        waiting >= 2
    })
    .await;
    let started = std::time::Instant::now();
    let another = {
        let (http, url) = (stack.http.clone(), format!("{}/dags/another", stack.base()));
        tokio::spawn(async move { http.get(url).send().await })
    };
    // While it waits for a connection, the scrape (which needs none) shows it pending.
    let metrics = format!("http://{}/metrics", stack.coordinators[0].addr);
    eventually(Duration::from_secs(3), "gl_db_pool_pending_connections counts the waiting call", || async {
        let text = stack.http.get(&metrics).send().await.expect("scrape").text().await.expect("text");
        text.lines()
            .filter_map(|l| l.strip_prefix("gl_db_pool_pending_connections{service=\"orchestrator-service\"} "))
            .any(|v| v.trim().parse::<i64>().is_ok_and(|n| n >= 1))
    })
    .await;
    let response = another.await.expect("task").expect("answers");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert!(started.elapsed() < Duration::from_secs(15), "refused within the acquire timeout, not hung");
    blocker.rollback().await.expect("unlock");
    for request in blocked {
        let status = request.await.expect("task").expect("answered");
        assert!(status == 404 || status == 503, "every waiting request ends: {status}");
    }
    let (status, _) = stack.call(reqwest::Method::GET, "/dags/another", None).await;
    assert_eq!(status, 404, "served again once connections are free");
    stack.shutdown().await;
}
