//! The API's error: a status, a stable code and a message that says which field was wrong.
//! REST renders it as `{"error": {"code": "...", "message": "..."}}`; gRPC as a status code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefabric_store::Error as StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// A failed compare-and-set: the key's revision now (0: absent), as `current_revision`.
    pub current_revision: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), current_revision: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match &e {
            StoreError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            StoreError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            StoreError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreError::Storage(_) | StoreError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let current = match &e {
            StoreError::Conflict { current, .. } => Some(*current),
            _ => None,
        };
        ApiError { current_revision: current, ..ApiError::new(status, code, e.to_string()) }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
            StatusCode::NOT_FOUND => tonic::Code::NotFound,
            StatusCode::CONFLICT => tonic::Code::FailedPrecondition,
            StatusCode::NOT_IMPLEMENTED => tonic::Code::Unimplemented,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let Some(rev) = self.current_revision {
            body["error"]["current_revision"] = rev.into();
        }
        (self.status, axum::Json(body)).into_response()
    }
}
