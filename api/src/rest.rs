//! The REST door: each handler reads the caller and the request, calls the one operation in
//! [`crate::app`], and answers JSON or an RFC 9457 problem.

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::app::{App, ConfirmRequest, CreateRoom, Join, SealRequest, UploadUrlRequest};
use crate::auth::{self, Claims};
use crate::error::ApiError;

/// The caller, from `Authorization: Bearer <token>`.
pub struct Caller(pub Claims);

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        app.tokens.verify_header(header).map(Caller)
    }
}

/// A JSON body whose rejections (bad JSON, wrong types, too large) are problems naming the cause.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

/// A body that may be left out entirely (no `Content-Type`, nothing sent).
pub struct OptionalBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|l| l == "0")
            || (!req.headers().contains_key(header::CONTENT_TYPE)
                && !req.headers().contains_key(header::TRANSFER_ENCODING)
                && !req.headers().contains_key(header::CONTENT_LENGTH));
        if empty {
            return Ok(OptionalBody(T::default()));
        }
        Body::<T>::from_request(req, state)
            .await
            .map(|Body(v)| OptionalBody(v))
    }
}

fn json_problem(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(format!(
            "the request body is larger than {} bytes",
            crate::MAX_BODY_BYTES
        ));
    }
    ApiError::bad_request(rejection.body_text())
}

/// Path segments, read as strings so that a bad one is answered by the id validator by name.
type Ids = Path<(String, String)>;

fn path_problem(rejection: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/rooms", post(create_room))
        .route("/api/rooms/{room}/invites", post(invite))
        .route("/api/join", post(join))
        .route(
            "/api/rooms/{room}/recordings",
            post(start_recording).get(list_recordings),
        )
        .route(
            "/api/recordings/{id}/chunks/{seq}/upload-url",
            post(upload_url),
        )
        .route("/api/recordings/{id}/chunks/{seq}/confirm", post(confirm))
        .route("/api/recordings/{id}/stop", post(stop))
        .route("/api/recordings/{id}/tracks/complete", post(seal))
        .route("/api/recordings/{id}", get(status))
        .merge(crate::studio::router())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()).into_response() })
}

async fn create_room(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    OptionalBody(req): OptionalBody<CreateRoom>,
) -> Result<Response, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth::check_admin(&app.config.admin_key, header)?;
    let created = app.create_room(req)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn invite(
    State(app): State<App>,
    Caller(claims): Caller,
    room: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(path_problem)?;
    Ok((StatusCode::CREATED, Json(app.invite(&claims, &room)?)).into_response())
}

async fn join(
    State(app): State<App>,
    Caller(claims): Caller,
    OptionalBody(req): OptionalBody<Join>,
) -> Result<Response, ApiError> {
    Ok((StatusCode::CREATED, Json(app.join(&claims, req)?)).into_response())
}

async fn start_recording(
    State(app): State<App>,
    Caller(claims): Caller,
    room: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(path_problem)?;
    crate::app::same_room(&claims, &room)?;
    Ok((
        StatusCode::CREATED,
        Json(app.start_recording(&claims).await?),
    )
        .into_response())
}

async fn list_recordings(
    State(app): State<App>,
    Caller(claims): Caller,
    room: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(path_problem)?;
    Ok(Json(app.list(&claims, &room).await?).into_response())
}

async fn upload_url(
    State(app): State<App>,
    Caller(claims): Caller,
    ids: Result<Ids, axum::extract::rejection::PathRejection>,
    Body(req): Body<UploadUrlRequest>,
) -> Result<Response, ApiError> {
    let Path((id, seq)) = ids.map_err(path_problem)?;
    Ok(Json(app.upload_url(&claims, &id, &seq, req).await?).into_response())
}

async fn confirm(
    State(app): State<App>,
    Caller(claims): Caller,
    ids: Result<Ids, axum::extract::rejection::PathRejection>,
    Body(req): Body<ConfirmRequest>,
) -> Result<Response, ApiError> {
    let Path((id, seq)) = ids.map_err(path_problem)?;
    Ok(Json(app.confirm(&claims, &id, &seq, req).await?).into_response())
}

async fn stop(
    State(app): State<App>,
    Caller(claims): Caller,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_problem)?;
    let stopped = app.stop(&claims, &id).await?;
    let status = if stopped.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stopped)).into_response())
}

async fn seal(
    State(app): State<App>,
    Caller(claims): Caller,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    Body(req): Body<SealRequest>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_problem)?;
    Ok(Json(app.seal(&claims, &id, req).await?).into_response())
}

async fn status(
    State(app): State<App>,
    Caller(claims): Caller,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_problem)?;
    Ok(Json(app.status(&claims, &id).await?).into_response())
}
