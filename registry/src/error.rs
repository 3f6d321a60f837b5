//! The registry's one error enum and the one place that maps it to HTTP status, OCI code and message.

use std::fmt;

use bytes::Bytes;
use http::StatusCode;

use crate::storage::StorageError;

/// Everything a request can fail with. Internal causes are logged, never sent to the client.
#[derive(Debug)]
pub enum RegistryError {
    /// Blob unknown to the registry (404).
    BlobUnknown,
    /// Blob upload invalid (400), with a reason.
    BlobUploadInvalid(String),
    /// Upload session unknown (404).
    BlobUploadUnknown,
    /// Digest malformed or not matching the content (400).
    DigestInvalid(String),
    /// A manifest references a blob or manifest that is not in the repository (400).
    ManifestBlobUnknown(String),
    /// Manifest invalid (400), with a reason.
    ManifestInvalid(String),
    /// Manifest unknown (404).
    ManifestUnknown,
    /// Manifest larger than the limit (413).
    ManifestTooLarge,
    /// Repository name invalid (400).
    NameInvalid,
    /// Repository unknown (404).
    NameUnknown,
    /// Tag invalid (400).
    TagInvalid,
    /// Length does not match content (400).
    SizeInvalid(String),
    /// Operation unsupported (405), e.g. deletes when disabled.
    Unsupported(String),
    /// Chunk out of order or range unsatisfiable (416). Carries the headers to send.
    RangeInvalid {
        /// Current upload offset (for upload ranges), sent as `Range: 0-<offset-1>`.
        upload_offset: Option<u64>,
        /// Blob size (for read ranges), sent as `Content-Range: bytes */<size>`.
        blob_size: Option<u64>,
    },
    /// Request malformed in a way no OCI code covers (400).
    BadRequest(String),
    /// Route or method not found (404 / 405).
    NotFound,
    /// Method not allowed on an existing route (405).
    MethodNotAllowed,
    /// The storage is full (507); the message says how much is free.
    StorageFull(String),
    /// A mirror's remote cannot answer now (503 `UNAVAILABLE`), with the remote's `Retry-After` if it gave one.
    Unavailable {
        /// What went wrong.
        message: String,
        /// `Retry-After`, passed on.
        retry_after: Option<String>,
    },
    /// Too many requests: the remote's limit, or berth's own limit on remote fetches (429 `TOOMANYREQUESTS`).
    TooManyRequests {
        /// What was limited.
        message: String,
        /// `Retry-After`, passed on.
        retry_after: Option<String>,
    },
    /// Access refused (403 `DENIED`), with a reason.
    Denied(String),
    /// A namespace (`?ns=`) that no mirror answers (404 `NAME_UNKNOWN`).
    NamespaceUnknown(String),
    /// Anything else (500); the cause is logged.
    Internal(String),
}

impl RegistryError {
    /// Status, OCI code and message for this error.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        use RegistryError::*;
        match self {
            BlobUnknown => (
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry".into(),
            ),
            BlobUploadInvalid(m) => (
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("blob upload invalid: {m}"),
            ),
            BlobUploadUnknown => (
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                "blob upload unknown to registry".into(),
            ),
            DigestInvalid(m) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID", m.clone()),
            ManifestBlobUnknown(m) => (
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!("manifest references unknown blob or manifest {m}"),
            ),
            ManifestInvalid(m) => (
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("manifest invalid: {m}"),
            ),
            ManifestUnknown => (
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown to registry".into(),
            ),
            ManifestTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                "manifest is larger than the limit".into(),
            ),
            NameInvalid => (
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "invalid repository name".into(),
            ),
            NameUnknown => (
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry".into(),
            ),
            TagInvalid => (StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag".into()),
            SizeInvalid(m) => (StatusCode::BAD_REQUEST, "SIZE_INVALID", m.clone()),
            Unsupported(m) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", m.clone()),
            RangeInvalid { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "requested range not satisfiable".into(),
            ),
            BadRequest(m) => (StatusCode::BAD_REQUEST, "UNSUPPORTED", m.clone()),
            NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", "no route".into()),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "method not allowed".into(),
            ),
            StorageFull(m) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "DENIED",
                format!("{m}; uploads are refused until space is freed (delete images, then collect garbage)"),
            ),
            Unavailable { message, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                message.clone(),
            ),
            TooManyRequests { message, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                message.clone(),
            ),
            Denied(m) => (StatusCode::FORBIDDEN, "DENIED", m.clone()),
            NamespaceUnknown(ns) => (
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("namespace {ns:?} is not mirrored by this registry"),
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal error".into(),
            ),
        }
    }

    /// The OCI error JSON body.
    pub fn body(&self) -> Bytes {
        let (_, code, message) = self.parts();
        let v = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
        Bytes::from(v.to_string())
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (status, code, message) = self.parts();
        match self {
            RegistryError::Internal(cause) => write!(f, "{status} {code}: {cause}"),
            _ => write!(f, "{status} {code}: {message}"),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Full(m) => RegistryError::StorageFull(m),
            e => RegistryError::Internal(e.to_string()),
        }
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::Internal(e.to_string())
    }
}
