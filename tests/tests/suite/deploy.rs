//! The deployment files agree with the code: the ConfigMap holds exactly the settings the
//! binaries read (less the secrets and per-pod ones), and the compose file is complete.

use std::collections::BTreeSet;

use engine::config::{PREFIX, SETTINGS};
use serde_json::Value;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(tests::repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_configmap_keys_are_exactly_the_settings_the_binaries_read() {
    let configmap = yaml("deploy/k8s/base/configmap.yaml");
    let keys: BTreeSet<String> = configmap["data"].as_object().expect("data").keys().cloned().collect();
    // Secrets live in the Secret; the rest are per pod or optional (see the ConfigMap's header).
    let elsewhere = [
        "DATABASE_URL",
        "AMQP_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "RESULT_KEYS",
        "CONFIG_FILE",
        "WORKER_ID",
        "AGENTS_FILE",
    ];
    let mut expected: BTreeSet<String> =
        SETTINGS.iter().filter(|(k, _)| !elsewhere.contains(k)).map(|(k, _)| format!("{PREFIX}{k}")).collect();
    expected.extend(["LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"].map(String::from));
    assert_eq!(keys, expected);
    for (key, value) in configmap["data"].as_object().expect("data") {
        assert!(value.is_string(), "{key} must be a quoted string");
    }
    // The values are ones the binaries accept.
    let env = configmap["data"].as_object().expect("data").iter().filter(|(k, _)| k.starts_with(PREFIX));
    let env: Vec<(String, String)> = env.map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect();
    engine::config::Settings::load(env, None).expect("the ConfigMap's values are valid settings");
}

#[test]
fn the_compose_file_names_an_image_or_build_for_every_service_and_valid_dependencies() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    for wanted in [
        "postgres",
        "rabbitmq",
        "redis",
        "migrate",
        "coordinator-1",
        "coordinator-2",
        "worker-1",
        "worker-2",
        "prometheus",
        "grafana",
        "tempo",
    ] {
        assert!(services.contains_key(wanted), "compose lacks {wanted}");
    }
    for (name, service) in services {
        assert!(service.get("image").is_some() || service.get("build").is_some(), "{name} has neither image nor build");
        if let Some(ports) = service.get("ports").and_then(Value::as_array) {
            for port in ports {
                let text = port.as_str().expect("ports are strings");
                let host = text.rsplit(':').nth(1).expect("host:container");
                assert!(
                    host.parse::<u16>().is_ok() && text.rsplit(':').next().is_some_and(|c| c.parse::<u16>().is_ok()),
                    "{name}: {text}"
                );
            }
        }
        let dependencies: Vec<String> = match service.get("depends_on") {
            Some(Value::Array(list)) => list.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect(),
            Some(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for d in dependencies {
            assert!(services.contains_key(&d), "{name} depends on unknown service {d}");
        }
    }
    for coordinator in ["coordinator-1", "coordinator-2"] {
        let migrate = &services[coordinator]["depends_on"]["migrate"]["condition"];
        assert_eq!(migrate, "service_completed_successfully", "{coordinator} waits for the migration");
    }
}
