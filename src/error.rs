//! Errors in the OCI distribution error shape: `{"errors":[{"code","message","detail"}]}`.

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// One error a client will see, with the HTTP status that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
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
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A path the distribution API does not define (the spec has no code for it).
    pub fn no_route(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "UNSUPPORTED", message)
    }

    pub fn unsupported(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "UNSUPPORTED", message)
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message)
    }

    pub fn unavailable(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "UNAVAILABLE", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
    }

    pub fn json(&self) -> Vec<u8> {
        let body = Body {
            errors: [Entry {
                code: self.code,
                message: &self.message,
                detail: serde_json::Value::Null,
            }],
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The full response; `head_only` leaves the body out (HEAD) but keeps its length.
    pub fn response(&self, head_only: bool) -> Response<Vec<u8>> {
        let body = self.json();
        let mut resp = Response::new(Vec::new());
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !head_only {
            *resp.body_mut() = body;
        }
        resp
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = OciError::unsupported(StatusCode::METHOD_NOT_ALLOWED, "read-only \"proxy\"");
        let v: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert_eq!(v["errors"][0]["message"], "read-only \"proxy\"");
        assert!(v["errors"][0].get("detail").is_some());
    }

    #[test]
    fn head_response_keeps_length_but_no_body() {
        let e = OciError::no_route("nope");
        let r = e.response(true);
        assert!(r.body().is_empty());
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            e.json().len().to_string().as_str()
        );
    }
}
