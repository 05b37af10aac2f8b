//! The other examples: approvals, calls, health checks, files, polling, hooks, guards, exec.

use std::time::Duration;

use serde_json::json;

use crate::support::{Server, example, exec, input, job_server, keys, ok, status, step};

#[tokio::test]
async fn change_approval_times_out_into_its_catch() {
    let inputs =
        input(json!({"request": "req-42", "requester": "ana", "approval_timeout": "300ms"}));
    let run = exec(&example("change-approval"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["status"], "succeeded");
    assert_eq!(
        run.json["output"],
        json!({"request": "req-42", "approved": false, "escalated": true})
    );
    assert_eq!(step(&run, "announce")["status"], "succeeded");
    assert_eq!(step(&run, "decision")["status"], "failed");
    assert_eq!(step(&run, "escalate")["status"], "succeeded");
    assert_eq!(step(&run, "record")["status"], "skipped");
    assert!(
        run.elapsed >= Duration::from_millis(300),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn order_intake_calls_its_sub_workflows() {
    let event = json!({"order": "o-17", "lines": [{"sku": "a", "qty": 2, "price": 10}, {"sku": "b", "qty": 1, "price": 5}]});
    let run = exec(&example("order-intake"), &["--event", &event.to_string()]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"order": "o-17", "total": 30.0, "tax": 5.0})
    );
    assert_eq!(
        step(&run, "invoice")["output"],
        json!({"net": 25, "tax": 5.0, "total": 30.0})
    );
    assert_eq!(step(&run, "audit")["status"], "succeeded");
    assert!(
        step(&run, "audit")["output"]["execution"].is_string(),
        "wait: false gives the child's id: {}",
        run.json
    );

    // The called workflow runs on its own too; its required input is checked.
    let run = exec(
        &example("compute-invoice"),
        &[
            "--input",
            r#"{"lines":[{"qty":3,"price":2}],"tax_rate":0.5}"#,
        ],
    )
    .await;
    assert_eq!(
        run.json["output"],
        json!({"net": 6, "tax": 3.0, "total": 9.0})
    );
    let run = exec(&example("compute-invoice"), &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lines"),
        "{}",
        run.json
    );
    let run = exec(
        &example("audit-trail"),
        &["--input", r#"{"kind":"manual","reference":"r-1"}"#],
    )
    .await;
    assert_eq!(
        run.json["output"],
        json!({"kind": "manual", "reference": "r-1"})
    );
}

#[tokio::test]
async fn health_check_classifies_the_service() {
    for (answer, health, announced) in [
        (200, "up", false),
        (503, "degraded", true),
        (500, "down", true),
    ] {
        let server = Server::start(move |_, _| status(answer)).await;
        let inputs =
            input(json!({"url": format!("{}/healthz", server.base), "service": "billing"}));
        let run = exec(&example("service-health-check"), &["--input", &inputs]).await;
        assert_eq!(run.code, 0, "{}", run.json);
        assert_eq!(
            run.json["output"],
            json!({"service": "billing", "health": health, "announced": announced}),
            "status {answer}"
        );
        assert_eq!(step(&run, "probe")["output"]["status"], answer);
        assert_eq!(step(&run, "classify")["status"], "succeeded");
    }
    // Nobody listening: the probe fails, its catch marks the service down.
    let inputs = input(json!({"url": "http://127.0.0.1:9/healthz"}));
    let run = exec(&example("service-health-check"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["health"], "down");
    assert_eq!(step(&run, "probe")["status"], "failed");
    assert_eq!(step(&run, "classify")["status"], "skipped");
}

#[tokio::test]
async fn log_rotation_archives_and_truncates_the_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.log"), "line 1\nline 2\n").unwrap();
    let inputs = input(json!({"dir": dir.path().display().to_string()}));
    let run = exec(&example("log-rotation"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["rotated"], true);
    assert_eq!(run.json["output"]["bytes"], 14);
    let archive = run.json["output"]["archive"]
        .as_str()
        .expect("archive path")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(&archive).unwrap(),
        "line 1\nline 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("app.log")).unwrap(),
        ""
    );
    let journal = std::fs::read_to_string(dir.path().join("rotations.txt")).unwrap();
    assert!(
        journal.ends_with(&format!("app.log -> {archive} (14 bytes)\n")),
        "{journal}"
    );

    // Second run: nothing new, the guard returns early.
    let run = exec(&example("log-rotation"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.json["output"], json!({"rotated": false, "bytes": 0}));
    assert!(run.json["steps"].get("archive").is_none(), "{}", run.json);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rotations.txt"))
            .unwrap()
            .lines()
            .count(),
        1
    );

    // No log at all: file.read fails.
    let empty = tempfile::tempdir().unwrap();
    let run = exec(
        &example("log-rotation"),
        &[
            "--input",
            &input(json!({"dir": empty.path().display().to_string()})),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json["error"]["step"], "current");
}

#[tokio::test]
async fn job_poll_loops_until_the_job_is_done() {
    let server = Server::start(job_server(3)).await;
    let inputs = input(json!({"api": server.base, "poll_every": "20ms"}));
    let run = exec(&example("job-poll"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"job": "job-9", "state": "done", "result": {"rows": 1234}})
    );
    assert_eq!(server.requests("GET", "/jobs/job-9").len(), 3);
    assert_eq!(
        server.requests("POST", "/jobs")[0].body,
        json!({"report": "daily-usage"})
    );
    assert_eq!(step(&run, "wait_done")["status"], "succeeded");
}

#[tokio::test]
async fn job_poll_fails_when_the_job_outlasts_max() {
    let server = Server::start(job_server(usize::MAX)).await;
    let inputs = input(json!({"api": server.base, "poll_every": "10ms"}));
    let run = exec(&example("job-poll"), &["--input", &inputs]).await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(run.json["error"]["step"], "wait_done");
    assert_eq!(
        server.requests("GET", "/jobs/job-9").len(),
        20,
        "max: 20 polls"
    );
}

#[tokio::test]
async fn nightly_export_notifies_on_failure() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/archive" => status(500),
        _ => ok(json!({"ok": true})),
    })
    .await;
    let inputs =
        input(json!({"api": server.base, "notify": format!("{}/hooks/notify", server.base)}));
    let run = exec(&example("nightly-export"), &["--input", &inputs]).await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(run.json["error"]["step"], "export");
    assert_eq!(step(&run, "export")["attempts"], 2);
    assert_eq!(server.requests("POST", "/archive").len(), 2);
    let notes = server.requests("POST", "/hooks/notify");
    assert_eq!(notes.len(), 1, "on_failure ran once");
    assert_eq!(notes[0].body["step"], "export");
    assert!(
        notes[0].body["text"]
            .as_str()
            .unwrap()
            .starts_with("nightly-export failed at step export: "),
        "{}",
        notes[0].body
    );

    // Success: no notification.
    let server = Server::start(|request, _| match request.path.as_str() {
        "/archive" => ok(json!({"id": "arc-1"})),
        _ => ok(json!({})),
    })
    .await;
    let inputs =
        input(json!({"api": server.base, "notify": format!("{}/hooks/notify", server.base)}));
    let run = exec(&example("nightly-export"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"], json!({"archived": "arc-1"}));
    assert!(server.requests("POST", "/hooks/notify").is_empty());
    assert_eq!(server.requests("POST", "/archive")[0].body["kwh"], 12.5);
}

#[tokio::test]
async fn firmware_rollout_verifies_the_flashed_image() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/devices/dev-1/flash" => ok(json!({"accepted": true})),
        "/devices/dev-1/version" => ok(json!({"image": "fw-2.0"})),
        _ => status(404),
    })
    .await;
    let inputs = input(json!({"api": server.base}));
    let run = exec(
        &example("firmware-rollout"),
        &[
            "--event",
            r#"{"device":"dev-1","image":"fw-2.0"}"#,
            "--input",
            &inputs,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"device": "dev-1", "image": "fw-2.0"})
    );
    assert_eq!(
        server.requests("POST", "/devices/dev-1/flash")[0].body,
        json!({"image": "fw-2.0"})
    );

    let run = exec(
        &example("firmware-rollout"),
        &[
            "--event",
            r#"{"device":"dev-1","image":"fw-3.0"}"#,
            "--input",
            &inputs,
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(
        run.json["error"]["message"],
        "device dev-1 reports fw-2.0 after flashing fw-3.0"
    );
}

#[tokio::test]
async fn door_guard_returns_early_for_allowed_badges() {
    let run = exec(
        &example("door-access-guard"),
        &["--event", r#"{"badge":"b-101","door":"north"}"#],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"badge": "b-101", "door": "north", "access": "granted"})
    );
    assert_eq!(
        keys(&run.json["steps"]),
        ["guard"],
        "nothing after the return ran"
    );

    let run = exec(
        &example("door-access-guard"),
        &["--event", r#"{"badge":"b-666","door":"north"}"#],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["access"], "denied");
    assert_eq!(step(&run, "guard")["status"], "skipped");
    assert_eq!(step(&run, "audit")["status"], "succeeded");
    assert_eq!(step(&run, "alert")["status"], "succeeded");
}

#[tokio::test]
async fn disk_usage_runs_df_only_when_allowed() {
    let run = exec(
        &example("disk-usage"),
        &[
            "--allow-exec",
            "--input",
            r#"{"path":"/","limit_percent":101}"#,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    let percent = run.json["output"]["percent"]
        .as_i64()
        .expect("an integer percent");
    assert!((0..=100).contains(&percent), "{}", run.json);
    assert_eq!(run.json["output"]["over_limit"], false);
    assert_eq!(step(&run, "warn")["status"], "skipped");

    let run = exec(
        &example("disk-usage"),
        &[
            "--allow-exec",
            "--input",
            r#"{"path":"/","limit_percent":0}"#,
        ],
    )
    .await;
    assert_eq!(run.json["output"]["over_limit"], true);
    assert_eq!(step(&run, "warn")["status"], "succeeded");

    let run = exec(&example("disk-usage"), &[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json["error"]["step"], "df");
    assert!(
        run.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
}

#[tokio::test]
async fn github_webhook_deploys_only_the_main_branch() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/deploys" => ok(json!({"id": "dep-5"})),
        _ => status(404),
    })
    .await;
    let inputs = input(json!({"deploy_api": server.base}));
    let push = json!({"ref": "refs/heads/main", "after": "abc123", "repository": {"full_name": "acme/reactor"}});
    let run = exec(
        &example("github-push-webhook"),
        &["--event", &push.to_string(), "--input", &inputs],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"deployed": true, "branch": "main", "deploy": "dep-5"})
    );
    let deploys = server.requests("POST", "/deploys");
    assert_eq!(
        deploys[0].body,
        json!({"repository": "acme/reactor", "commit": "abc123"})
    );
    assert!(deploys[0].headers.contains_key("idempotency-key"));

    let push = json!({"ref": "refs/heads/feature/x", "after": "def456", "repository": {"full_name": "acme/reactor"}});
    let run = exec(
        &example("github-push-webhook"),
        &["--event", &push.to_string(), "--input", &inputs],
    )
    .await;
    assert_eq!(run.code, 0);
    assert_eq!(
        run.json["output"],
        json!({"deployed": false, "branch": "feature/x", "reason": "not the deploy branch"})
    );
    assert_eq!(server.requests("POST", "/deploys").len(), 1);
}
