//! `mixdown-api selftest`: does this install work? Run by the chart's `helm test` Pod, from the API
//! image, with the API's storage settings and credentials; it checks what a recording needs, in
//! the order a recording needs it:
//!
//! 1. `presign`: a PUT URL for a probe object under `{keyPrefix}/selftest/`, made for the public
//!    endpoint exactly as a browser's chunk URL is (length and content type signed);
//! 2. `put`: a few bytes PUT to that URL with plain HTTP, as a browser does;
//! 3. `head`: the object seen through the endpoint the API itself uses, with the right size (as a
//!    chunk confirm checks it);
//! 4. `delete`: the probe deleted, and a second HEAD finds it gone;
//! 5. `socket.io`: an Engine.IO v4 long-polling handshake with the API (`GET
//!    /socket.io/?EIO=4&transport=polling` answers an open packet with a session id), then a
//!    socket.io connect to namespace `/`. Connecting needs a participant's token, which the test
//!    Pod does not have (it holds no signing key), so the namespace answering with its refusal
//!    (`44`, "unauthenticated: no token") is the expected answer: the request reached the API's
//!    socket.io server and its handshake check, on the session the open packet made.
//!
//! Every step prints one line with its timing. A failed storage step skips the storage steps after
//! it (the probe is still deleted when it was written); the socket.io step runs either way, so one
//! run names every part that does not work. Exit 1 names the failed steps.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::{SelftestArgs, StorageConfig};
use crate::storage::Storage;

/// Runs every step, writing one line each to `out`; true when all passed.
pub async fn run(args: &SelftestArgs, out: &mut dyn Write) -> bool {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let mut report = Report {
        out,
        failed: Vec::new(),
        steps: 0,
        started: Instant::now(),
    };
    storage_steps(&args.storage.config(), timeout, &mut report).await;
    socket_io_step(&args.api_url, timeout, &mut report).await;
    report.finish()
}

struct Report<'a> {
    out: &'a mut dyn Write,
    failed: Vec<&'static str>,
    steps: usize,
    started: Instant,
}

impl Report<'_> {
    fn line(&mut self, status: &str, step: &str, detail: &str, since: Option<Instant>) {
        let timing = since
            .map(|t| format!(" ({} ms)", t.elapsed().as_millis()))
            .unwrap_or_default();
        let _ = writeln!(self.out, "{status:<4} {step:<9} {detail}{timing}");
        let _ = self.out.flush();
    }

    fn ok(&mut self, step: &'static str, since: Instant, detail: &str) {
        self.steps += 1;
        self.line("ok", step, detail, Some(since));
    }

    fn fail(&mut self, step: &'static str, since: Instant, detail: &str) {
        self.steps += 1;
        self.failed.push(step);
        self.line("FAIL", step, detail, Some(since));
    }

    fn skip(&mut self, step: &'static str, why: &str) {
        self.line("skip", step, why, None);
    }

    fn finish(self) -> bool {
        let took = self.started.elapsed().as_millis();
        if self.failed.is_empty() {
            let _ = writeln!(
                self.out,
                "mixdown-api selftest: passed, {} steps in {took} ms",
                self.steps
            );
            true
        } else {
            let _ = writeln!(
                self.out,
                "mixdown-api selftest: FAILED at {} (see its line above), in {took} ms",
                self.failed.join(", ")
            );
            false
        }
    }
}

async fn storage_steps(config: &StorageConfig, timeout: Duration, report: &mut Report<'_>) {
    let t = Instant::now();
    let storage = match Storage::new(config) {
        Ok(storage) => storage,
        Err(e) => {
            report.fail("presign", t, &e.to_string());
            for step in ["put", "head", "delete"] {
                report.skip(step, "nothing to upload to");
            }
            return;
        }
    };
    let key = storage
        .layout
        .selftest(&format!("probe-{}.txt", uuid::Uuid::new_v4().simple()));
    let body = format!("mixdown-api selftest probe {}\n", jiff::Timestamp::now()).into_bytes();
    let len = body.len() as u64;
    let presigned = storage.presign_put(
        &key,
        "text/plain",
        len,
        timeout.max(Duration::from_secs(60)),
    );
    report.ok(
        "presign",
        t,
        &format!(
            "PUT of {len} bytes to {key} in bucket {:?} at {}",
            config.bucket, config.public_endpoint
        ),
    );

    let t = Instant::now();
    let client = match http_client(timeout) {
        Ok(client) => client,
        Err(e) => {
            report.fail("put", t, &e);
            return;
        }
    };
    let mut put = client.put(&presigned.url).body(body);
    for (name, value) in &presigned.headers {
        put = put.header(name, value);
    }
    match put.send().await {
        Ok(answer) if answer.status().is_success() => {
            let status = answer.status();
            report.ok(
                "put",
                t,
                &format!("{len} bytes to the presigned URL: {status}"),
            );
        }
        Ok(answer) => {
            let status = answer.status();
            let text = answer.text().await.unwrap_or_default();
            report.fail(
                "put",
                t,
                &format!(
                    "storage at {} answered {status}: {}",
                    config.public_endpoint,
                    s3_error(&text)
                ),
            );
            report.skip("head", "nothing was uploaded");
            report.skip("delete", "nothing was uploaded");
            return;
        }
        Err(e) => {
            report.fail(
                "put",
                t,
                &format!(
                    "no answer from storage at {}: {}",
                    config.public_endpoint,
                    chain(&e.without_url())
                ),
            );
            report.skip("head", "nothing was uploaded");
            report.skip("delete", "nothing was uploaded");
            return;
        }
    }

    let t = Instant::now();
    match tokio::time::timeout(timeout, storage.size(&key)).await {
        Ok(Ok(Some(size))) if size == len => report.ok(
            "head",
            t,
            &format!("{key} is there, {size} bytes, at {}", config.endpoint),
        ),
        Ok(Ok(Some(size))) => report.fail(
            "head",
            t,
            &format!("{key} has {size} bytes at {}; {len} were uploaded", config.endpoint),
        ),
        Ok(Ok(None)) => report.fail(
            "head",
            t,
            &format!(
                "{key} is not there at {}, though the PUT to {} succeeded: the two endpoints do not reach the same bucket",
                config.endpoint, config.public_endpoint
            ),
        ),
        Ok(Err(e)) => report.fail("head", t, &e.to_string()),
        Err(_) => report.fail(
            "head",
            t,
            &format!("no answer from storage at {} in {timeout:?}", config.endpoint),
        ),
    }

    // Deleted even when the HEAD failed: the probe was written, and must not stay.
    let t = Instant::now();
    let deleted = tokio::time::timeout(timeout, async {
        storage.delete(&key).await?;
        storage.size(&key).await
    })
    .await;
    match deleted {
        Ok(Ok(None)) => report.ok("delete", t, &format!("{key} deleted; a HEAD finds it gone")),
        Ok(Ok(Some(_))) => report.fail(
            "delete",
            t,
            &format!("{key} is still there after its DELETE was answered"),
        ),
        Ok(Err(e)) => report.fail("delete", t, &e.to_string()),
        Err(_) => report.fail(
            "delete",
            t,
            &format!(
                "no answer from storage at {} in {timeout:?}",
                config.endpoint
            ),
        ),
    }
}

async fn socket_io_step(api_url: &str, timeout: Duration, report: &mut Report<'_>) {
    let t = Instant::now();
    match socket_io_handshake(api_url, timeout).await {
        Ok(detail) => report.ok("socket.io", t, &detail),
        Err(why) => report.fail("socket.io", t, &why),
    }
}

/// The Engine.IO open, then a socket.io connect to `/`: what happened, or why it failed.
async fn socket_io_handshake(api_url: &str, timeout: Duration) -> Result<String, String> {
    let client = http_client(timeout)?;
    let base = format!(
        "{}/socket.io/?EIO=4&transport=polling",
        api_url.trim_end_matches('/')
    );

    let answer = client
        .get(&base)
        .send()
        .await
        .map_err(|e| format!("GET {base}: {}", chain(&e.without_url())))?;
    let status = answer.status();
    let text = answer.text().await.map_err(|e| {
        format!(
            "GET {base}: reading the answer: {}",
            chain(&e.without_url())
        )
    })?;
    let open = text
        .strip_prefix('0')
        .filter(|_| status.is_success())
        .and_then(|json| serde_json::from_str::<Value>(json).ok());
    let Some(sid) = open
        .as_ref()
        .and_then(|o| o.get("sid"))
        .and_then(Value::as_str)
    else {
        return Err(format!(
            "GET {base} answered {status} {:?}, not an Engine.IO open packet (`0{{\"sid\":...}}`): is this the API's address?",
            snippet(&text)
        ));
    };
    let session = format!("{base}&sid={sid}");

    // The socket.io connect to namespace `/`, without auth.
    post_packet(&client, &session, "40").await?;
    // Poll until the namespace answers; a ping on the way is answered, as a client must.
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut answered = None;
    while answered.is_none() && Instant::now() < deadline {
        let answer = client
            .get(&session)
            .send()
            .await
            .map_err(|e| format!("GET {base}&sid=…: {}", chain(&e.without_url())))?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "Engine.IO session {sid} opened, but polling it answered {status} {:?}",
                snippet(&text)
            ));
        }
        for packet in text.split('\u{1e}') {
            if packet == "2" {
                post_packet(&client, &session, "3").await?;
            } else if packet.starts_with("40") {
                answered = Some((true, "namespace / accepted the connect".to_string()));
            } else if let Some(refusal) = packet.strip_prefix("44") {
                let message = serde_json::from_str::<Value>(refusal)
                    .ok()
                    .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| refusal.to_string());
                answered = Some((
                    false,
                    format!(
                        "namespace / answered the connect, refusing it without a participant token as it must ({message})"
                    ),
                ));
            } else if packet.starts_with('1') {
                return Err(format!(
                    "Engine.IO session {sid} opened, but the API closed it before the socket.io connect to / was answered"
                ));
            }
            seen.push(packet.to_string());
        }
    }
    let Some((connected, detail)) = answered else {
        return Err(format!(
            "Engine.IO session {sid} opened, but the socket.io connect to / got no connect packet (`40`) or refusal (`44`) in {timeout:?}; packets: {:?}",
            snippet(&seen.join(" "))
        ));
    };
    if connected {
        let _ = post_packet(&client, &session, "41").await;
    }
    // Close the Engine.IO session rather than leave it to the ping timeout.
    let _ = post_packet(&client, &session, "1").await;
    Ok(format!("Engine.IO open packet (session {sid}); {detail}"))
}

async fn post_packet(client: &reqwest::Client, session: &str, packet: &str) -> Result<(), String> {
    let answer = client
        .post(session)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(packet.to_string())
        .send()
        .await
        .map_err(|e| format!("POST of packet {packet:?}: {}", chain(&e.without_url())))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        Err(format!(
            "POST of packet {packet:?} answered {status} {:?}",
            snippet(&text)
        ))
    }
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("making an HTTP client: {}", chain(&e)))
}

/// An error and its causes, in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// `Code: Message` of an S3 error document, or the start of whatever the body was.
fn s3_error(body: &str) -> String {
    let field = |name: &str| {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let end = body[start..].find(&format!("</{name}>"))? + start;
        Some(body[start..end].trim().to_string())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => format!("{:?}", snippet(body)),
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_are_read_from_their_document() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>"#;
        assert_eq!(
            s3_error(body),
            "NoSuchBucket: The specified bucket does not exist"
        );
        assert_eq!(s3_error("bad gateway"), "\"bad gateway\"");
    }
}
