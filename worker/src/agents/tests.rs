use super::*;

fn call(params: Value, input: Value, attempt: u32) -> Call {
    Call {
        execution_id: "e".into(),
        node_id: "n".into(),
        attempt,
        kind: TaskKind::Run,
        idempotency_key: format!("e:n:{attempt}:run"),
        clock: "2026-01-01T00:00:00Z".into(),
        params: params.as_object().cloned().unwrap_or_default(),
        input,
    }
}

#[tokio::test]
async fn built_ins_behave_as_documented() {
    let r = Registry::default();
    assert_eq!(r.run("noop", &call(json!({}), json!({}), 1)).await, Ok(Map::new()));
    let echoed = r.run("echo", &call(json!({}), json!({"a": 1}), 1)).await.expect("echo");
    assert_eq!(Value::Object(echoed), json!({"a": 1}));
    let flaky = call(json!({"failures": 2}), json!({}), 2);
    assert_eq!(r.run("flaky", &flaky).await.map_err(|e| e.error_type), Err("TransientError".to_owned()));
    let third = r.run("flaky", &call(json!({"failures": 2}), json!({}), 3)).await.expect("third attempt");
    assert_eq!(third.get("attempt"), Some(&json!(3)));
    let failed = r.run("fail", &call(json!({"error_type": "ValueError"}), json!({}), 1)).await;
    assert_eq!(failed.map_err(|e| e.error_type), Err("ValueError".to_owned()));
    let missing = r.run("nope", &call(json!({}), json!({}), 1)).await.expect_err("unknown agent");
    assert_eq!((missing.error_type.as_str(), missing.retryable), ("agent_not_found", false));
    let not_object = r.run("echo", &call(json!({}), json!([1]), 1)).await.expect_err("array output");
    assert_eq!(not_object.error_type, "invalid_output");
}

#[tokio::test]
async fn emissions_are_quantity_times_factor() {
    let r = Registry::default();
    let activities = json!({"activities": [
        {"scope": 1, "activity": "diesel_l", "quantity": 1000},
        {"scope": 2, "activity": "electricity_kwh", "quantity": 5000},
        {"scope": 1, "activity": "diesel_l", "quantity": 500}]});
    let scope1 = r
        .run("emission_factor", &call(json!({"scope": 1, "factors": {"diesel_l": 0.002}}), activities.clone(), 1))
        .await;
    let scope1 = scope1.expect("scope 1");
    assert_eq!(scope1.get("tco2e"), Some(&json!(3.0)));
    let unknown = r.run("emission_factor", &call(json!({"scope": 2, "factors": {}}), activities, 1)).await;
    assert_eq!(unknown.map_err(|e| e.error_type), Err("UnknownActivity".to_owned()));
    let total = r
        .run("sum", &call(json!({}), json!({"_input": {}, "s1": {"tco2e": 3.0}, "s2": {"tco2e": 1.5}}), 1))
        .await
        .expect("sum");
    assert_eq!(total.get("total"), Some(&json!(4.5)));
}

#[tokio::test]
async fn command_agents_read_stdin_and_write_stdout() {
    let r = Registry::default().with("cat", sh("cat")).with("boom", sh("exit 3"));
    let out = r.run("cat", &call(json!({"k": 1}), json!({"x": 2}), 1)).await.expect("cat");
    assert_eq!(out.get("input"), Some(&json!({"x": 2})));
    assert_eq!(
        r.run("boom", &call(json!({}), json!({}), 1)).await.map_err(|e| e.error_type),
        Err("CommandError".to_owned())
    );
}

fn sh(script: &str) -> External {
    External::Command { program: "/bin/sh".into(), args: vec!["-c".into(), script.into()], pass_env: vec![] }
}

#[tokio::test]
async fn a_command_sees_the_idempotency_key_and_none_of_the_workers_environment() {
    // cargo sets CARGO_MANIFEST_DIR for this test process; the child must not inherit it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let script = r#"printf '{"manifest": "%s", "path_set": "%s", "pkg": "%s"}' "${CARGO_MANIFEST_DIR:-unset}" "${PATH:+yes}" "${CARGO_PKG_NAME:-unset}""#;
    let passing = External::Command {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        pass_env: vec!["CARGO_PKG_NAME".into()],
    };
    let r = Registry::default().with("env", sh(script)).with("passing", passing).with("cat", sh("cat"));
    let out = r.run("env", &call(json!({}), json!({}), 1)).await.expect("env");
    assert_eq!(
        (out["manifest"].as_str(), out["path_set"].as_str(), out["pkg"].as_str()),
        (Some("unset"), Some("yes"), Some("unset"))
    );
    let out = r.run("passing", &call(json!({}), json!({}), 1)).await.expect("env");
    assert_eq!(out["pkg"], "worker", "a name in pass_env passes");
    let mut compensation = call(json!({}), json!({}), 2);
    compensation.kind = TaskKind::Compensate;
    compensation.idempotency_key = "e:n:2:compensate".into();
    let out = r.run("cat", &compensation).await.expect("cat");
    assert_eq!((&out["kind"], &out["idempotency_key"]), (&json!("compensate"), &json!("e:n:2:compensate")));
}

#[test]
fn the_idempotency_key_names_the_attempt_and_its_kind() {
    let task = TaskMessage {
        v: 1,
        execution_id: "e1".into(),
        node_id: "n".into(),
        attempt: 3,
        kind: TaskKind::Compensate,
        agent_id: "x".into(),
        params: Map::new(),
        input: json!({}),
        timeout_ms: 1000,
        clock: "2026-01-01T00:00:00Z".into(),
    };
    assert_eq!(Call::of(&task).idempotency_key, "e1:n:3:compensate");
}

#[tokio::test]
async fn a_command_over_the_output_cap_fails_and_its_whole_group_dies_with_the_call() {
    let r = Registry::default().with_output_cap(1024).with("big", sh("head -c 100000 /dev/zero | tr '\\0' a"));
    let big = r.run("big", &call(json!({}), json!({}), 1)).await.expect_err("too big");
    assert_eq!((big.error_type.as_str(), big.retryable), ("output_too_large", false));
    assert!(big.message.contains("printed 100000 bytes; the limit is 1024"), "{}", big.message);
    // A grandchild in the background, its pid written down; the call is dropped (a timeout).
    let file = std::env::temp_dir().join(format!("gl-group-{}", std::process::id()));
    let script = format!("sleep 30 & echo $! > {}; wait", file.display());
    let r = Registry::default().with("spawner", sh(&script));
    let c = call(json!({}), json!({}), 1);
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(500), r.run("spawner", &c)).await;
    assert!(dropped.is_err(), "the call was still running");
    let pid = std::fs::read_to_string(&file).expect("the grandchild's pid").trim().to_owned();
    let _ = std::fs::remove_file(&file);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Alive: it has a /proc entry that is not a zombie (a killed orphan waits for its reaper).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
    };
    while alive() {
        assert!(std::time::Instant::now() < deadline, "grandchild {pid} outlived its call");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_large_input_through_cat_neither_deadlocks_nor_breaks_a_command_that_ignores_it() {
    let r = Registry::default().with_output_cap(16 << 20).with("cat", sh("cat")).with("ignores", sh("echo '{}'"));
    let big = json!({"blob": "x".repeat(4 * 1024 * 1024)});
    let within = std::time::Duration::from_secs(30);
    let out = tokio::time::timeout(within, r.run("cat", &call(json!({}), big.clone(), 1))).await.expect("no deadlock");
    assert_eq!(out.expect("cat")["input"], big);
    for _ in 0..20 {
        let out = r.run("ignores", &call(json!({}), big.clone(), 1)).await;
        assert_eq!(out, Ok(Map::new()), "a child that never reads its input");
    }
}

#[test]
fn registry_file_is_validated() {
    assert!(Registry::from_yaml(Some("agents:\n  g: {type: http, url: 'http://x'}\n")).is_ok());
    assert!(Registry::from_yaml(Some("agents:\n  echo: {type: http, url: 'http://x'}\n")).is_err());
    assert!(Registry::from_yaml(Some("agents:\n  g: {type: ftp}\n")).is_err());
}
