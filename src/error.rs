//! Errors in the OCI distribution error shape: `{"errors":[{"code","message","detail"}]}`.

use http::StatusCode;
use serde::Serialize;

/// The distribution spec's error codes, and distribution's two generic ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    Unknown,
}

const CODES: [(ErrorCode, &str, &str); 16] = [
    (
        ErrorCode::BlobUnknown,
        "BLOB_UNKNOWN",
        "blob unknown to registry",
    ),
    (
        ErrorCode::BlobUploadInvalid,
        "BLOB_UPLOAD_INVALID",
        "blob upload invalid",
    ),
    (
        ErrorCode::BlobUploadUnknown,
        "BLOB_UPLOAD_UNKNOWN",
        "blob upload unknown to registry",
    ),
    (
        ErrorCode::DigestInvalid,
        "DIGEST_INVALID",
        "provided digest did not match uploaded content",
    ),
    (
        ErrorCode::ManifestBlobUnknown,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest references a manifest or blob unknown to registry",
    ),
    (
        ErrorCode::ManifestInvalid,
        "MANIFEST_INVALID",
        "manifest invalid",
    ),
    (
        ErrorCode::ManifestUnknown,
        "MANIFEST_UNKNOWN",
        "manifest unknown to registry",
    ),
    (
        ErrorCode::NameInvalid,
        "NAME_INVALID",
        "invalid repository name",
    ),
    (
        ErrorCode::NameUnknown,
        "NAME_UNKNOWN",
        "repository name not known to registry",
    ),
    (
        ErrorCode::SizeInvalid,
        "SIZE_INVALID",
        "provided length did not match content length",
    ),
    (
        ErrorCode::Unauthorized,
        "UNAUTHORIZED",
        "authentication required",
    ),
    (
        ErrorCode::Denied,
        "DENIED",
        "requested access to the resource is denied",
    ),
    (
        ErrorCode::Unsupported,
        "UNSUPPORTED",
        "the operation is unsupported",
    ),
    (
        ErrorCode::TooManyRequests,
        "TOOMANYREQUESTS",
        // Only an upstream's limit makes one: its own words (Docker Hub's name the pull limit)
        // never pass, so these say whose it is.
        "too many requests: the upstream registry's rate limit is reached",
    ),
    (ErrorCode::Unavailable, "UNAVAILABLE", "service unavailable"),
    (ErrorCode::Unknown, "UNKNOWN", "unknown error"),
];

impl ErrorCode {
    fn entry(self) -> (ErrorCode, &'static str, &'static str) {
        CODES
            .into_iter()
            .find(|(c, _, _)| *c == self)
            .unwrap_or(CODES[CODES.len() - 1])
    }

    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// The spec's description of the code: what the proxy says instead of an upstream's words.
    pub fn description(self) -> &'static str {
        self.entry().2
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        CODES
            .into_iter()
            .find(|(_, name, _)| *name == code)
            .map(|(c, _, _)| c)
    }
}

/// One error a client will see, with the HTTP status that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub status: StatusCode,
    pub code: ErrorCode,
    /// Shown to the client: client names only, never an upstream origin or a credential.
    pub message: String,
    /// For the log only: what the client may not see (the upstream origin, the runtime's words).
    pub cause: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: &'a str,
    detail: serde_json::Value,
}

impl OciError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// Adds what only the log may say.
    pub fn because(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// A path the distribution API does not define (the spec has no code for it).
    pub fn no_route(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::Unsupported, message)
    }

    pub fn unsupported(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorCode::Unsupported, message)
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, message)
    }

    pub fn unavailable(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorCode::Unavailable, message)
    }

    /// Authenticated, and not allowed: a route's deny list, or a user without the grant.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// A variable is missing or malformed: the operator's to fix.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unknown,
            message,
        )
    }

    /// The proxy itself went wrong (a bug, not the operator's configuration).
    pub fn internal(cause: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unknown,
            "internal error in the registry proxy",
        )
        .because(cause)
    }

    pub fn json(&self) -> Vec<u8> {
        let body = Body {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
                detail: serde_json::Value::Null,
            }],
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code.as_str(),
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = OciError::unsupported(StatusCode::METHOD_NOT_ALLOWED, "read-only \"proxy\"")
            .because("never shown");
        let v: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert_eq!(v["errors"][0]["message"], "read-only \"proxy\"");
        assert!(v["errors"][0].get("detail").is_some());
        assert!(!String::from_utf8(e.json()).unwrap().contains("never shown"));
    }

    #[test]
    fn codes_round_trip() {
        for (code, name, _) in CODES {
            assert_eq!(code.as_str(), name);
            assert_eq!(ErrorCode::parse(name), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOT_A_CODE"), None);
        assert_eq!(ErrorCode::parse("name_unknown"), None);
    }
}
