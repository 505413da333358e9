//! The Pod status the pod runner reports, shaped like the kubelet's: what the Job controller
//! counts (phase), what `kubectl` shows (conditions, container states) and what the operator
//! reads (the terminated state's exit code, reason and termination message).
//!
//! Patches are strategic merge patches of the status subresource: conditions merge by `type`,
//! container statuses by `name`. A container state is one of waiting, running or terminated, so
//! each patch sets the other two to null, or the merge would keep them side by side.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::container::LOOPBACK;

/// The kubelet keeps at most this much of a termination message file.
pub(super) const MAX_MESSAGE_BYTES: usize = 4096;
/// With `FallbackToLogsOnError`, the kubelet uses at most this many of the last log lines...
pub(super) const FALLBACK_LOG_LINES: usize = 80;
/// ... and at most this many bytes of them.
pub(super) const FALLBACK_LOG_BYTES: usize = 2048;

pub(super) fn now() -> Value {
    time(Timestamp::now())
}

pub(super) fn time(t: Timestamp) -> Value {
    serde_json::to_value(Time(t)).unwrap_or(Value::Null)
}

/// Identifies the container in its status, and in patches (the merge key is `name`).
pub(super) struct ContainerId<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub pid: Option<u32>,
}

impl ContainerId<'_> {
    fn status(
        &self,
        ready: bool,
        restart_count: i32,
        state: Value,
        last_state: Option<&Value>,
    ) -> Value {
        let mut status = json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": ready,
            "started": ready,
            "restartCount": restart_count,
            "state": state,
        });
        if let Some(pid) = self.pid {
            status["containerID"] = json!(format!("mixdown://{pid}"));
        }
        if let Some(last) = last_state {
            status["lastState"] = json!({ "terminated": last });
        }
        status
    }
}

fn condition(type_: &str, status: bool, reason: Option<&str>) -> Value {
    let mut c = json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "lastTransitionTime": now(),
        "lastProbeTime": null,
    });
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    c
}

fn readiness(ready: bool, reason: Option<&str>) -> Value {
    json!([
        condition("Initialized", true, None),
        condition("ContainersReady", ready, reason),
        condition("Ready", ready, reason),
    ])
}

/// The container is waiting to start (its configuration cannot be built yet).
pub(super) fn waiting(id: &ContainerId<'_>, reason: &str, message: &str) -> Value {
    json!({ "status": {
        "phase": "Pending",
        "hostIP": LOOPBACK,
        "conditions": readiness(false, Some("ContainersNotReady")),
        "containerStatuses": [id.status(false, 0, json!({
            "waiting": { "reason": reason, "message": message },
            "running": null,
            "terminated": null,
        }), None)],
    }})
}

/// The container runs; `last` is the terminated state of the previous attempt after a restart.
pub(super) fn running(
    id: &ContainerId<'_>,
    start_time: &Value,
    started_at: &Value,
    restart_count: i32,
    last: Option<&Value>,
    pod_ip: &str,
) -> Value {
    json!({ "status": {
        "phase": "Running",
        "hostIP": LOOPBACK,
        "podIP": pod_ip,
        "podIPs": [{ "ip": pod_ip }],
        "startTime": start_time,
        "conditions": readiness(true, None),
        "containerStatuses": [id.status(true, restart_count, json!({
            "running": { "startedAt": started_at },
            "waiting": null,
            "terminated": null,
        }), last)],
    }})
}

/// What `state.terminated` holds after the process ended.
pub(super) fn terminated_state(
    exit_code: i32,
    message: &str,
    started_at: &Value,
    pid: Option<u32>,
) -> Value {
    let mut t = json!({
        "exitCode": exit_code,
        "reason": if exit_code == 0 { "Completed" } else { "Error" },
        "startedAt": started_at,
        "finishedAt": now(),
    });
    if !message.is_empty() {
        t["message"] = json!(message);
    }
    if let Some(pid) = pid {
        t["containerID"] = json!(format!("mixdown://{pid}"));
    }
    t
}

/// The Pod is done: Succeeded when the container exited 0, Failed otherwise.
pub(super) fn finished(
    id: &ContainerId<'_>,
    restart_count: i32,
    terminated: Value,
    last: Option<&Value>,
) -> Value {
    let succeeded = terminated["exitCode"] == json!(0);
    json!({ "status": {
        "phase": if succeeded { "Succeeded" } else { "Failed" },
        "conditions": readiness(false, Some("PodCompleted")),
        "containerStatuses": [id.status(false, restart_count, json!({
            "terminated": terminated,
            "running": null,
            "waiting": null,
        }), last)],
    }})
}

/// The Pod failed before its container could start (an image the runner does not know, a program
/// that cannot be executed).
pub(super) fn failed_to_start(id: &ContainerId<'_>, reason: &str, message: &str) -> Value {
    json!({ "status": {
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "hostIP": LOOPBACK,
        "startTime": now(),
        "conditions": readiness(false, Some("ContainersNotReady")),
        "containerStatuses": [id.status(false, 0, json!({
            "terminated": {
                "exitCode": 128,
                "reason": reason,
                "message": message,
                "startedAt": null,
                "finishedAt": now(),
            },
            "running": null,
            "waiting": null,
        }), None)],
    }})
}

/// The termination message as the kubelet reports it: the file's first 4096 bytes; with
/// `FallbackToLogsOnError`, the end of the log when the file is empty and the container failed.
pub(super) fn termination_message(
    file: &[u8],
    log: &[u8],
    fallback_to_logs: bool,
    exit_code: i32,
) -> String {
    if !file.is_empty() || !fallback_to_logs || exit_code == 0 {
        return lossy_prefix(file, MAX_MESSAGE_BYTES);
    }
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(FALLBACK_LOG_LINES)..].join("\n");
    let bytes = tail.as_bytes();
    let start = bytes.len().saturating_sub(FALLBACK_LOG_BYTES);
    // Keep the end, starting on a character boundary.
    let start = (start..bytes.len())
        .find(|&i| tail.is_char_boundary(i))
        .unwrap_or(bytes.len());
    tail[start..].to_string()
}

fn lossy_prefix(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    // A multi-byte character cut at the limit decodes as a replacement character; drop it.
    text.trim_end_matches('\u{FFFD}').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_the_file_truncated() {
        assert_eq!(termination_message(b"done", b"log", true, 1), "done");
        let big = vec![b'a'; 5000];
        assert_eq!(
            termination_message(&big, b"", false, 0).len(),
            MAX_MESSAGE_BYTES
        );
    }

    #[test]
    fn message_falls_back_to_the_log_tail_on_error_only() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let message = termination_message(b"", log.as_bytes(), true, 2);
        assert!(message.starts_with("line 20\n"), "{message}");
        assert!(message.ends_with("line 99"), "{message}");
        assert_eq!(termination_message(b"", log.as_bytes(), true, 0), "");
        assert_eq!(termination_message(b"", log.as_bytes(), false, 2), "");
        let long = "é".repeat(3000);
        assert!(termination_message(b"", long.as_bytes(), true, 1).len() <= FALLBACK_LOG_BYTES);
    }

    #[test]
    fn finished_phase_follows_the_exit_code() {
        let id = ContainerId {
            name: "c",
            image: "i",
            pid: Some(7),
        };
        let ok = finished(&id, 0, terminated_state(0, "", &now(), Some(7)), None);
        assert_eq!(ok["status"]["phase"], "Succeeded");
        let state = &ok["status"]["containerStatuses"][0]["state"];
        assert_eq!(state["terminated"]["reason"], "Completed");
        assert!(state["running"].is_null());
        let failed = finished(&id, 0, terminated_state(3, "boom", &now(), None), None);
        assert_eq!(failed["status"]["phase"], "Failed");
        assert_eq!(
            failed["status"]["containerStatuses"][0]["state"]["terminated"]["message"],
            "boom"
        );
    }
}
