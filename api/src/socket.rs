//! The socket.io door (namespace `/`): the handshake checks the token (`auth: {token}`), a socket
//! joins its room's channel and gets the room's snapshot, and client events call the same
//! operations as REST, answering with an ack (`{ok, ...}` or `{error: {code, message}}`).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::app::{App, room_of};
use crate::auth::Claims;
use crate::error::ApiError;

/// Installs the handlers of namespace `/`.
pub fn install(io: &SocketIo, app: App) {
    let for_auth = app.clone();
    io.ns(
        "/",
        (move |socket: SocketRef| on_connect(socket, app.clone())).with(
            move |socket: SocketRef, TryData(auth): TryData<Value>| {
                authenticate(socket, auth.ok(), for_auth.clone())
            },
        ),
    );
}

/// Why a handshake was refused; the client gets it as `connect_error` with this message.
#[derive(Debug)]
struct Refused(ApiError);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code(), self.0)
    }
}

async fn authenticate(socket: SocketRef, auth: Option<Value>, app: App) -> Result<(), Refused> {
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str);
    let verified = match token {
        None => Err(ApiError::Unauthenticated(
            "no token: connect with `auth: {token}`".into(),
        )),
        Some(token) => app.tokens.verify(token).and_then(|claims| {
            claims.require_member()?;
            Ok(claims)
        }),
    };
    match verified {
        Ok(claims) => {
            socket.extensions.insert(Arc::new(claims));
            Ok(())
        }
        Err(e) => {
            app.metrics.handshakes_refused.inc();
            Err(Refused(e))
        }
    }
}

async fn on_connect(socket: SocketRef, app: App) {
    let Some(claims) = socket.extensions.get::<Arc<Claims>>() else {
        // Not reachable: the middleware only lets authenticated sockets through.
        let _ = socket.disconnect();
        return;
    };
    app.metrics.sockets_connected.inc();
    tracing::debug!(room = %claims.room, participant = %claims.participant(), sid = %socket.id, "socket connected");

    // Join and snapshot under the book's lock: the watches emit under it too, so this socket
    // hears the snapshot, then every change after it, once.
    {
        let book = app.book.lock().await;
        socket.join(room_of(&claims.room));
        for out in book.snapshot(&claims.room) {
            let (event, payload) = app.event_of(&out);
            if socket.emit(event, &payload).is_ok() {
                app.metrics.emitted(event);
            }
        }
    }

    let (a, c) = (app.clone(), claims.clone());
    socket.on("start_recording", async move |ack: AckSender| {
        reply(ack, a.start_recording(&c).await);
    });
    let (a, c) = (app.clone(), claims.clone());
    socket.on(
        "recording_stopped",
        async move |TryData(data): TryData<Value>, ack: AckSender| {
            let result = match recording_id(data.ok()) {
                Ok(id) => a.stop(&c, &id).await,
                Err(e) => Err(e),
            };
            reply(ack, result);
        },
    );
    let (a, c) = (app.clone(), claims.clone());
    socket.on(
        "request_processing_status",
        async move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            let result = match recording_id(data.ok()) {
                Ok(id) => a.status(&c, &id).await.map_err(|e| (id, e)),
                Err(e) => Err((String::new(), e)),
            };
            let payload = match &result {
                Ok(status) => status.clone(),
                Err((id, e)) => {
                    let mut v = e.ack();
                    v["recordingId"] = json!(id);
                    v
                }
            };
            if socket.emit("processing-status-response", &payload).is_ok() {
                a.metrics.emitted("processing-status-response");
            }
            let _ = ack.send(&payload);
        },
    );
    let (a, c) = (app.clone(), claims.clone());
    socket.on(
        "upload_complete",
        async move |TryData(data): TryData<Value>, ack: AckSender| {
            let result = match seal_request(data.ok()) {
                Ok((id, req)) => a.seal(&c, &id, req).await,
                Err(e) => Err(e),
            };
            reply(ack, result);
        },
    );
    let a = app.clone();
    socket.on_disconnect(async move || {
        a.metrics.sockets_connected.dec();
    });
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordingRef {
    recording_id: String,
}

fn recording_id(data: Option<Value>) -> Result<String, ApiError> {
    let data = data.ok_or_else(|| ApiError::bad_request("send `{recordingId}`"))?;
    serde_json::from_value::<RecordingRef>(data)
        .map(|r| r.recording_id)
        .map_err(|e| ApiError::bad_request(format!("send `{{recordingId}}` as a string: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SealData {
    recording_id: String,
    chunk_count: u32,
    #[serde(default)]
    recorder_started_at: Option<f64>,
    #[serde(default)]
    clock_error_ms: Option<f64>,
}

fn seal_request(data: Option<Value>) -> Result<(String, crate::app::SealRequest), ApiError> {
    let data = data.ok_or_else(|| ApiError::bad_request("send `{recordingId, chunkCount}`"))?;
    serde_json::from_value::<SealData>(data)
        .map(|d| {
            (
                d.recording_id,
                crate::app::SealRequest {
                    chunk_count: d.chunk_count,
                    recorder_started_at: d.recorder_started_at,
                    clock_error_ms: d.clock_error_ms,
                },
            )
        })
        .map_err(|e| {
            ApiError::bad_request(format!(
                "send `{{recordingId, chunkCount, recorderStartedAt?, clockErrorMs?}}`, a string, a whole number and two numbers: {e}"
            ))
        })
}

fn reply<T: serde::Serialize>(ack: AckSender, result: Result<T, ApiError>) {
    let payload = match result {
        Ok(value) => serde_json::to_value(value).unwrap_or_else(|_| json!({"ok": true})),
        Err(e) => e.ack(),
    };
    let _ = ack.send(&payload);
}
