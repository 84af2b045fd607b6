//! What a client learns from an upstream's error: its status and spec code, never its words.
//!
//! Upstream messages and details name upstream repositories (distribution's NAME_UNKNOWN detail
//! holds `<prefix>/x`), projects (Artifact Registry's 403) or storage (an S3 `AccessDenied`
//! XML names the bucket). The client gets the spec's description of the code and its own
//! repository name instead.

use crate::endpoint::Endpoint;
use crate::error::{ErrorCode, OciError};
use http::StatusCode;

/// Largest upstream error body read to learn its code.
pub const MAX_ERROR_BODY: usize = 64 << 10;

/// The first error of an OCI error body, read once for its code and its message.
fn first_error(body: &[u8]) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v.get_mut("errors")?.get_mut(0)?.take())
}

/// Its code, if it is one the spec defines.
fn code_of(error: &serde_json::Value) -> Option<ErrorCode> {
    ErrorCode::parse(error.get("code")?.as_str()?)
}

/// Whether the registry said it has the manifest, in a type the request's `Accept` does not
/// name (distribution: "OCI manifest found, but accept header does not support OCI
/// manifests"): the one 404 a client's user can act on (a newer client), said in the proxy's
/// words.
fn not_accepted(error: &serde_json::Value) -> bool {
    let message = error["message"].as_str().unwrap_or_default();
    message.to_ascii_lowercase().contains("accept header")
}

/// The code a status stands for on this endpoint, for bodies without one (HEAD, HTML, XML).
fn code_for_status(status: StatusCode, endpoint: &Endpoint) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Denied,
        404 => match endpoint {
            Endpoint::Blob { .. } => ErrorCode::BlobUnknown,
            Endpoint::Manifest { .. } => ErrorCode::ManifestUnknown,
            Endpoint::Tags { .. } => ErrorCode::NameUnknown,
            // A registry without the referrers API answers its router's bare 404. oras-go
            // (oras, notation) falls back to the `sha256-<hex>` tag on any 404 but
            // NAME_UNKNOWN, which it takes for a missing repository and stops.
            Endpoint::Referrers { .. } => ErrorCode::Unsupported,
            _ => ErrorCode::Unsupported,
        },
        405 => ErrorCode::Unsupported,
        429 => ErrorCode::TooManyRequests,
        s if s >= 500 => ErrorCode::Unavailable,
        _ => ErrorCode::Unknown,
    }
}

/// The client's error for an upstream error response (`body` is `None` for a HEAD or a body
/// that could not be read). The status passes as it came; 401 and 403 keep their codes.
pub fn client_error(status: StatusCode, body: Option<&[u8]>, endpoint: &Endpoint) -> OciError {
    let by_status = code_for_status(status, endpoint);
    let error = body.and_then(first_error);
    let code = match by_status {
        ErrorCode::Unauthorized | ErrorCode::Denied | ErrorCode::TooManyRequests => by_status,
        _ => error.as_ref().and_then(code_of).unwrap_or(by_status),
    };
    let mut message = match endpoint.name() {
        Some(name) => format!("{}: {name}", code.description()),
        None => code.description().to_string(),
    };
    if code == ErrorCode::ManifestUnknown && error.as_ref().is_some_and(not_accepted) {
        message.push_str(
            " (the registry has it in a media type this request's Accept header does not name)",
        );
    }
    OciError::new(status, code, message).because(format!("upstream answered {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Endpoint {
        Endpoint::Manifest {
            name: "web".into(),
            reference: "1.0".into(),
        }
    }

    #[test]
    fn a_manifest_in_a_type_the_client_does_not_accept_says_so_in_the_proxy_s_words() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"OCI manifest found, but accept header does not support OCI manifests"}]}"#;
        let e = client_error(StatusCode::NOT_FOUND, Some(body), &manifest());
        assert_eq!(e.code, ErrorCode::ManifestUnknown);
        assert!(e.message.ends_with(": web (the registry has it in a media type this request's Accept header does not name)"), "{}", e.message);
        let plain = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"1.0"}}]}"#;
        let e = client_error(StatusCode::NOT_FOUND, Some(plain), &manifest());
        assert!(e.message.ends_with(": web"), "{}", e.message);
    }

    #[test]
    fn distribution_name_unknown_loses_its_detail() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"team/app/web"}}]}"#;
        let e = client_error(StatusCode::NOT_FOUND, Some(body), &manifest());
        assert_eq!(e.code, ErrorCode::NameUnknown);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let json = String::from_utf8(e.json()).unwrap();
        assert!(!json.contains("team/app"), "{json}");
        assert!(
            json.contains("repository name not known to registry: web"),
            "{json}"
        );
    }

    #[test]
    fn words_never_pass() {
        let ar = br#"{"errors":[{"code":"DENIED","message":"Permission \"artifactregistry.repositories.downloadArtifacts\" denied on resource \"projects/my-project-123/locations/europe-west1/repositories/containers\""}]}"#;
        let e = client_error(StatusCode::FORBIDDEN, Some(ar), &manifest());
        assert_eq!(e.code, ErrorCode::Denied);
        assert!(!String::from_utf8(e.json()).unwrap().contains("my-project"));
        let s3 = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><BucketName>prod-registry</BucketName></Error>";
        let blob = Endpoint::Blob {
            name: "web".into(),
            digest: "sha256:00".into(),
        };
        let e = client_error(StatusCode::FORBIDDEN, Some(s3), &blob);
        assert!(!String::from_utf8(e.json())
            .unwrap()
            .contains("prod-registry"));
        let e = client_error(StatusCode::NOT_FOUND, None, &blob);
        assert_eq!(e.code, ErrorCode::BlobUnknown);
    }

    #[test]
    fn unknown_codes_fall_back_to_the_status() {
        let body = br#"{"errors":[{"code":"X_SECRET_up.example","message":"m"}]}"#;
        let e = client_error(StatusCode::SERVICE_UNAVAILABLE, Some(body), &Endpoint::Base);
        assert_eq!(e.code, ErrorCode::Unavailable);
        let rate = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. https://www.docker.com/increase-rate-limit"}]}"#;
        let e = client_error(StatusCode::TOO_MANY_REQUESTS, Some(rate), &manifest());
        assert_eq!(e.code, ErrorCode::TooManyRequests);
        assert!(!String::from_utf8(e.json()).unwrap().contains("docker.com"));
    }
}
