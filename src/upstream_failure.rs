//! Why an upstream request produced no response, in plain words: the client hears which
//! upstream failed and how; the log also hears where (the origin), which clients never see.

use crate::error::OciError;
use crate::origin::Origin;
use http::StatusCode;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host name does not resolve.
    Dns,
    /// Nothing listens there.
    Refused,
    /// No connection, no answer or no next byte within `upstream_timeout`, or not all of a
    /// body the proxy reads whole.
    Timeout,
    Tls,
    /// The runtime refused the destination (Spin's `allowed_outbound_hosts`).
    Denied,
    /// The connection ended before a whole response.
    Reset,
    /// A body the proxy reads was larger than it reads.
    TooLarge,
    /// An answer no HTTP client takes as final (a status outside 200-599, a protocol switch
    /// nobody asked for), in the proxy's words (for the log).
    Malformed(String),
    /// Anything else, in the runtime's words (for the log).
    Other(String),
    /// The client's own body stopped arriving for the timeout (it goes upstream as it comes),
    /// or did not all arrive within it (it is read whole first).
    ClientStalled,
    /// The client's own body failed (a reset, malformed chunks), in the runtime's words.
    ClientBody(String),
}

/// Which upstream a request went to: the words a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Registry,
    TokenService,
    BlobStorage,
}

impl Role {
    fn words(self) -> &'static str {
        match self {
            Role::Registry => "the upstream registry",
            Role::TokenService => "the upstream token service",
            Role::BlobStorage => "the upstream blob storage",
        }
    }
}

impl Failure {
    /// The client's error for this failure of a request to `role` at `origin`.
    pub fn to_error(&self, role: Role, origin: Option<&Origin>, timeout: Duration) -> OciError {
        let who = role.words();
        let at = origin.map(|o| o.to_string()).unwrap_or_default();
        let host = origin.map(|o| o.host.clone()).unwrap_or_default();
        let secs = timeout.as_secs_f64();
        let gateway = StatusCode::BAD_GATEWAY;
        let (status, message, cause) = match self {
            Failure::Dns => (
                gateway,
                format!("{who} is unreachable: its host name does not resolve"),
                format!("cannot resolve {host}"),
            ),
            Failure::Refused => (
                gateway,
                format!("{who} is unreachable: connection refused"),
                format!("connection refused by {at}"),
            ),
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("{who} did not answer within {secs} s"),
                format!("timed out after {secs} s waiting for {at}"),
            ),
            Failure::Tls => (
                gateway,
                format!("{who} is unreachable: the TLS handshake failed"),
                format!("TLS handshake with {at} failed"),
            ),
            Failure::Denied => (
                gateway,
                format!("{who} is not in the component's allowed_outbound_hosts"),
                format!("{at} is not in allowed_outbound_hosts"),
            ),
            Failure::Reset => (
                gateway,
                format!("{who} closed the connection before answering"),
                format!("connection to {at} closed early"),
            ),
            Failure::TooLarge => (
                gateway,
                format!("{who} sent a larger body than the proxy reads"),
                format!("body from {at} too large"),
            ),
            Failure::Malformed(words) => (
                gateway,
                format!("{who} sent a malformed answer"),
                format!("{at}: {words}"),
            ),
            Failure::Other(words) => (
                gateway,
                format!("{who} is unreachable"),
                format!("{at}: {words}"),
            ),
            Failure::ClientStalled => (
                StatusCode::REQUEST_TIMEOUT,
                format!("the request's body did not arrive within {secs} s"),
                format!("client body not received within {secs} s"),
            ),
            Failure::ClientBody(words) => (
                StatusCode::BAD_REQUEST,
                "the request's body could not be read".to_string(),
                format!("client body failed: {words}"),
            ),
        };
        OciError::unavailable(status, message).because(cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_for_the_client_and_the_origin_for_the_log() {
        let o = Origin::parse("https://registry-1.docker.io").unwrap();
        let e = Failure::Dns.to_error(Role::Registry, Some(&o), Duration::from_secs(25));
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert!(e.message.contains("does not resolve") && !e.message.contains("docker.io"));
        assert_eq!(
            e.cause.as_deref(),
            Some("cannot resolve registry-1.docker.io")
        );
        let e = Failure::Timeout.to_error(Role::TokenService, Some(&o), Duration::from_secs(25));
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            e.message,
            "the upstream token service did not answer within 25 s"
        );
        assert!(e.cause.unwrap().contains("timed out after 25 s"));
        let e = Failure::Refused.to_error(Role::BlobStorage, Some(&o), Duration::from_secs(1));
        assert!(!String::from_utf8(e.json()).unwrap().contains("docker.io"));
    }
}
