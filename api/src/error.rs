//! One error type for every operation, whichever door it came in by: REST turns it into an
//! RFC 9457 `application/problem+json` response, socket.io into an ack `{error: {code, message}}`.
//!
//! Messages name what was wrong in the caller's terms. Internal failures (storage, the Kubernetes
//! API) are logged with their cause and answered with a generic message: internals never leak.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or one that is malformed, forged or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that may not do this (a guest stopping a recording, another room).
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed: bad JSON, a wrong type, an invalid id, an oversized chunk.
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than the server takes.
    #[error("{0}")]
    TooLarge(String),
    /// Nothing of that name in the caller's room (other rooms' recordings look the same).
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the world disagrees (a size mismatch, no chunks to process).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        /// The chunk at fault, when one is: the page uploads it again.
        chunk: Option<u32>,
    },
    /// Storage or the Kubernetes API failed; the cause is logged, not returned.
    #[error("{what} failed; try again")]
    Unavailable { what: &'static str },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
            chunk: None,
        }
    }

    /// A conflict about one chunk, named in the message and given as `chunk` in the answer.
    pub fn chunk_conflict(code: &'static str, chunk: u32, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
            chunk: Some(chunk),
        }
    }

    fn chunk(&self) -> Option<u32> {
        match self {
            ApiError::Conflict { chunk, .. } => *chunk,
            _ => None,
        }
    }

    /// Logs `cause` and answers the generic [`ApiError::Unavailable`].
    pub fn internal(what: &'static str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(%cause, "{what} failed");
        ApiError::Unavailable { what }
    }

    /// Stable, machine-readable code: the `code` of a socket.io ack error, and the last segment
    /// of the problem `type`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { code, .. } => code,
            ApiError::Unavailable { .. } => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The socket.io form: `{error: {code, message}}`.
    pub fn ack(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let Some(chunk) = self.chunk() {
            error["chunk"] = json!(chunk);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "type": format!("https://mixdown.dev/problems/{}", self.code()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "code": self.code(),
            "detail": self.to_string(),
        });
        if let Some(chunk) = self.chunk() {
            body["chunk"] = json!(chunk);
        }
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn problems_are_rfc9457_and_never_leak_causes() {
        let response =
            ApiError::internal("listing chunks", "dns error: secret.internal").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[axum::http::header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["status"], 503);
        assert_eq!(body["code"], "unavailable");
        assert!(!body.to_string().contains("secret.internal"), "{body}");

        let ack = ApiError::conflict("no_chunks", "recording r1 has no chunks").ack();
        assert_eq!(ack["error"]["code"], "no_chunks");
        assert_eq!(ack["error"]["message"], "recording r1 has no chunks");
        assert_eq!(ack["error"].get("chunk"), None);
        let ack = ApiError::chunk_conflict("chunk_missing", 7, "chunk 00000007 is missing").ack();
        assert_eq!(ack["error"]["chunk"], 7);
    }
}
