//! `reactor-hub serve` as a process: zero configuration, configuration errors (exit 2),
//! `/healthz` without a token, graceful stop on SIGTERM and recovery after a restart.

mod api_support;

use std::process::Command;
use std::time::Duration;

use api_support::{BIN, Hub, Place, free_port};
use serde_json::json;

#[test]
fn help_documents_flags_file_keys_and_env() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--data",
        "--listen",
        "--database",
        "--config",
        "REACTOR_DATABASE_URL",
        "REACTOR_LIMITS__MAX_BODY",
        "hub.toml",
        "127.0.0.1:8090",
        "token create",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from --help:\n{text}"
        );
    }
    let output = Command::new(BIN)
        .args(["token", "create", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("--role") && text.contains("--data"), "{text}");
}

#[test]
fn bad_configuration_exits_2_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        "listen = \"nowhere\"\n[limits]\nmax_body = 0\nbogus = 1\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("bogus"), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");

    let output = Command::new(BIN)
        .args(["serve", "--listen", "not-an-address", "--data"])
        .arg(dir.path())
        .env("REACTOR_RETENTION__MAX_AGE", "soon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("listen (from flag --listen)"), "{stderr}");
    assert!(stderr.contains("REACTOR_RETENTION__MAX_AGE"), "{stderr}");

    let output = Command::new(BIN)
        .args([
            "serve",
            "--database",
            "mysql://root@127.0.0.1/test",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("database"));
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_config_serves_healthz_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    // No flags but --listen: the data folder defaults to ./reactor-data.
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env_remove("REACTOR_DATA")
        .env_remove("REACTOR_DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = api_support::client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dir.path().join("reactor-data/hub.db").is_file());
    let api = client
        .get(format!("http://127.0.0.1:{port}/api/v1/workflows"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_a_restart_resumes_executions() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let mut hub = Hub::start(place.clone(), &[]).await;
    hub.send_yaml(
        "POST",
        "/api/v1/workflows",
        "reactor: 1\nname: nap\nsteps:\n  - sleep: 2s\n  - return: rested\n",
    )
    .await
    .expect(201);
    let run = hub
        .post_json("/api/v1/workflows/nap/run", json!({}))
        .await
        .expect(202);
    let id = run.body["execution"].as_str().unwrap().to_string();
    let status = hub.terminate();
    assert!(status.success(), "exit {status:?}: {}", hub.logs());
    let logs = hub.logs();
    let order: Vec<usize> = [
        "stopping: HTTP server and triggers first",
        "checkpointing running executions",
        "reactor-hub stopped",
    ]
    .iter()
    .map(|line| {
        logs.find(line)
            .unwrap_or_else(|| panic!("{line} not logged:\n{logs}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{logs}");

    let hub = Hub::spawn(place, hub.admin.clone(), &[]);
    hub.healthy(Duration::from_secs(30)).await;
    let done = hub.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], "rested");
}
