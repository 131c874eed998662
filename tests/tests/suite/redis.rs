//! Redis, for real: the lock contract, the DAG cache and its invalidation, and an outage in the
//! middle of a 200-execution run (the service keeps executing under the PostgreSQL limiter,
//! reports the fallback, and returns to Redis).

use std::time::Duration;

use coordinator::locks::{Locks, check_contract};
use coordinator::redis::Redis;
use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface};
use serde_json::json;
use tests::{
    OwnRedis, REDIS, RunningPeak, Stack, StackOptions, assert_limited_run_ends_well, eventually, limited_stack,
};

async fn client(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("url")).build().expect("client");
    client.init().await.expect("Redis answers");
    client
}

#[tokio::test]
async fn redis_locks_keep_the_same_contract_as_the_in_memory_twin() {
    let prefix = format!("gltest:{}:", uuid::Uuid::new_v4().simple());
    let redis = Redis::connect(REDIS, &prefix).expect("client");
    eventually(Duration::from_secs(10), "Redis answers", || async { redis.holder(uuid::Uuid::nil()).await.is_ok() })
        .await;
    check_contract(&redis).await;
    assert!(redis.lock_key(uuid::Uuid::nil()).starts_with(&format!("{prefix}lock:")));
}

#[tokio::test]
async fn dag_definitions_are_cached_and_invalidated_and_a_stale_entry_never_starts_an_execution() {
    let stack = Stack::start(StackOptions::default()).await;
    let redis = client(REDIS).await;
    let key = format!("{}dag:default:cached", stack.redis_prefix());
    stack.create_dag(json!({"dag_id": "cached", "name": "v1", "nodes": {"a": {"agent_id": "echo"}}})).await;
    let (_, first) = stack.call(reqwest::Method::GET, "/dags/cached", None).await;
    let cached: Option<String> = redis.get(&key).await.expect("get");
    let cached: serde_json::Value = serde_json::from_str(&cached.expect("a read fills the cache")).expect("JSON");
    assert_eq!(cached["dag_hash"], first["dag"]["dag_hash"]);
    assert!(redis.ttl::<i64, _>(&key).await.expect("ttl") > 0, "cache entries expire");

    let (status, _) = stack.call(reqwest::Method::PUT, "/dags/cached", Some(json!({"name": "v2"}))).await;
    assert_eq!(status, 200);
    assert_eq!(redis.get::<Option<String>, _>(&key).await.expect("get"), None, "an update drops the entry");
    let (_, second) = stack.call(reqwest::Method::GET, "/dags/cached", None).await;
    assert_eq!(second["dag"]["name"], "v2");
    assert_ne!(second["dag"]["dag_hash"], first["dag"]["dag_hash"]);

    // An invalidation that never arrived (Redis was unreachable from that replica): the stale v1
    // is in the cache, yet an execution pins the definition the database holds now.
    let stale = serde_json::to_string(&cached).expect("text");
    let _: () = redis.set(&key, stale, None, None, false).await.expect("set");
    let id = stack.execute("cached", json!({})).await;
    assert_eq!(stack.execution(&id).await["dag_hash"], second["dag"]["dag_hash"]);

    let (status, _) = stack.call(reqwest::Method::DELETE, "/dags/cached", None).await;
    assert_eq!(status, 200);
    assert_eq!(redis.get::<Option<String>, _>(&key).await.expect("get"), None, "a delete drops the entry");
    let (status, _) = stack.call(reqwest::Method::GET, "/dags/cached", None).await;
    assert_eq!(status, 404);
    stack.shutdown().await;
}

/// The value of `gl_orchestrator_lock_backend{backend=...}` on one coordinator.
async fn backend_gauge(http: &reqwest::Client, addr: std::net::SocketAddr, backend: &str) -> Option<i64> {
    let text = http.get(format!("http://{addr}/metrics")).send().await.ok()?.text().await.ok()?;
    let line = format!("gl_orchestrator_lock_backend{{backend=\"{backend}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse().ok())
}

async fn all_on(stack: &Stack, backend: &str) -> bool {
    for c in &stack.coordinators {
        if backend_gauge(&stack.http, c.addr, backend).await != Some(1) {
            return false;
        }
    }
    true
}

async fn count(db: &sqlx::PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM dag_executions WHERE status = $1")
        .bind(status)
        .fetch_one(db)
        .await
        .unwrap_or(0)
}

#[tokio::test]
async fn redis_stopped_half_way_then_restarted_keeps_the_limit_and_the_order() {
    let mut redis = OwnRedis::start();
    let stack = limited_stack(vec![("REDIS_URL", redis.url())]).await;
    eventually(Duration::from_secs(20), "every coordinator locks through Redis", || all_on(&stack, "redis")).await;
    let db = stack.database().await;
    let sampler = RunningPeak::start(db.clone());
    // Submitted at once, half through each coordinator.
    let submissions: Vec<_> = (0..200)
        .map(|i| {
            let url = format!("http://{}/api/v1/orchestrator/dags/limited/execute", stack.coordinators[i % 2].addr);
            let http = stack.http.clone();
            tokio::spawn(async move {
                let body: serde_json::Value =
                    http.post(url).json(&json!({})).send().await.expect("accepted").json().await.expect("JSON");
                body["execution_id"].as_str().expect("execution_id").to_owned()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for submission in submissions {
        ids.push(submission.await.expect("submitted"));
    }

    // While Redis is up, a running execution's lock names its lease: `<epoch>:<owner>`.
    let cli = client(&redis.url()).await;
    eventually(Duration::from_secs(30), "a running execution's lock mirrors its lease", || async {
        let lease: Option<(uuid::Uuid, i64, String)> = sqlx::query_as(
            "SELECT execution_id, lease_epoch, lease_owner FROM dag_executions
             WHERE status = 'running' AND lease_owner IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&db)
        .await
        .unwrap_or(None);
        let Some((id, epoch, owner)) = lease else { return false };
        let key = format!("{}lock:{id}", stack.redis_prefix());
        cli.get::<Option<String>, _>(key).await.ok().flatten() == Some(format!("{epoch}:{owner}"))
    })
    .await;
    let _ = cli.quit().await;

    eventually(Duration::from_secs(120), "half the executions complete", || async {
        count(&db, "completed").await >= 100
    })
    .await;
    redis.shutdown();
    eventually(Duration::from_secs(30), "the gauge shows the PostgreSQL fallback", || all_on(&stack, "postgres")).await;
    let (_, health) = stack.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let completed_at_outage = count(&db, "completed").await;
    eventually(Duration::from_secs(120), "executions keep completing without Redis", || async {
        count(&db, "completed").await >= completed_at_outage + 30
    })
    .await;
    redis.restart();
    eventually(Duration::from_secs(30), "the gauge shows the return to Redis", || all_on(&stack, "redis")).await;

    assert_limited_run_ends_well(&stack, &ids, sampler).await;
    stack.shutdown().await;
}

/// Redis paused (`kill -STOP` of a server of the test's own) under load for longer than every
/// deadline: Redis calls time out, locks fall back to PostgreSQL, executions go on completing and
/// the service stays ready; SIGTERM ends a coordinator and a worker within their grace period.
#[tokio::test]
async fn redis_paused_mid_run_degrades_and_hangs_nothing() {
    let redis = OwnRedis::start();
    let pid = redis.pid().expect("running");
    let figures = tests::pause_drill(tests::PauseDrill {
        what: "Redis",
        pids: Box::new(move || vec![pid]),
        settings: vec![("REDIS_URL", redis.url())],
        unready_while_paused: false,
        coordinator_exe: env!("CARGO_BIN_EXE_gl-coordinator"),
        worker_exe: env!("CARGO_BIN_EXE_gl-worker"),
    })
    .await;
    assert!(figures.unready_after.is_none());
    drop(redis);
}
