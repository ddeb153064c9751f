//! The one place ingest failures become HTTP answers.
//!
//! Senders treat 4xx as permanent (PagerDuty drops the webhook and counts it towards disabling
//! the subscription; StatusGator counts any non-200), so a 4xx is only for requests that will
//! never succeed. Anything the relay itself could not do right now is 503, which both senders
//! retry.

use hyper::StatusCode;

use crate::normalize::NormalizeError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no source is configured at this path")]
    NotFound,
    #[error("only POST is accepted here")]
    MethodNotAllowed,
    #[error("missing or wrong token")]
    Unauthorized,
    #[error("X-PagerDuty-Signature header is missing or malformed")]
    SignatureMalformed,
    #[error("invalid webhook signature")]
    SignatureMismatch,
    #[error("unsupported Content-Type {0:?}: send application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the {0}-byte limit")]
    PayloadTooLarge(usize),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u128),
    #[error(transparent)]
    Invalid(#[from] NormalizeError),
    #[error("the event could not be stored; retry later")]
    Unavailable(#[source] StoreError),
    #[error("the relay's store is over its disk budget; retry later")]
    DiskBudget,
    #[error("the relay's disk is almost full; retry later")]
    DiskFull,
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::NotFound => StatusCode::NOT_FOUND,
            IngestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngestError::SignatureMalformed => StatusCode::BAD_REQUEST,
            IngestError::SignatureMismatch => StatusCode::FORBIDDEN,
            IngestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::PayloadTooLarge(_)
            | IngestError::Invalid(NormalizeError::TooManyMessages { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::BodyRead(_) | IngestError::Invalid(_) => StatusCode::BAD_REQUEST,
            IngestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::Unavailable(_) | IngestError::DiskBudget | IngestError::DiskFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A stable machine-readable name for the error, beside the human message.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::NotFound => "not_found",
            IngestError::MethodNotAllowed => "method_not_allowed",
            IngestError::Unauthorized => "unauthorized",
            IngestError::SignatureMalformed => "signature_malformed",
            IngestError::SignatureMismatch => "signature_mismatch",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::PayloadTooLarge(_) => "payload_too_large",
            IngestError::BodyRead(_) => "body_read",
            IngestError::BodyTimeout(_) => "body_timeout",
            IngestError::Invalid(NormalizeError::Empty) => "empty_body",
            IngestError::Invalid(NormalizeError::NotUtf8(_)) => "invalid_utf8",
            IngestError::Invalid(NormalizeError::Json(_)) => "malformed_json",
            IngestError::Invalid(NormalizeError::Form(_)) => "malformed_form",
            IngestError::Invalid(NormalizeError::Shape(_)) => "unrecognized_payload",
            IngestError::Invalid(NormalizeError::TooManyMessages { .. }) => "too_many_messages",
            IngestError::Unavailable(_) => "store_unavailable",
            IngestError::DiskBudget => "disk_budget",
            IngestError::DiskFull => "disk_full",
        }
    }
}
