//! The one door every response goes out by: `finish` applies the response rules to whatever
//! an exchange wants to answer (a registry's answer, a redirect, a token, an error, the home
//! page), so no branch can answer on its own. `ClientResponse` has no other constructor.
//!
//! The rules, each an invariant `invariants.rs` checks on randomized exchanges:
//! - **R1 headers**: only allowlisted headers reach the client (`headers::client_response`).
//! - **R2 challenge**: a 401 carries exactly one `WWW-Authenticate`, the proxy's own; no other
//!   status carries one.
//! - **R3 location**: only a redirect, or a write's answer (201, 202, 204), carries `Location`,
//!   and only the one the exchange chose.
//! - **R4 links**: a `Link` target names an API endpoint in client names on the public origin
//!   (or relative), or the link is dropped.
//! - **R5 made bodies**: a body the proxy made carries its own type and length and none of the
//!   upstream's entity headers (encoding, digest, ETag, range); a body it kept or read whole
//!   carries its exact length.
//! - **R6 errors**: an error status carries the proxy's OCI error JSON, never an upstream body.
//! - **R7 HEAD**: a HEAD response has no body and the length the GET would have; a 204 or
//!   304 has no body either, and a 204 no length.
//! - **R8 CORS**: `Access-Control-*` only for an origin the route lists, echoed (never `*`:
//!   the answers are for logged-in users), with the headers a registry UI reads exposed.
//! - **R9 rendering**: every answer is `nosniff` and sandboxed by the proxy's own
//!   `Content-Security-Policy`, whatever type and policy the upstream gave its body.

use crate::challenge;
use crate::endpoint::Endpoint;
use crate::error::OciError;
use crate::headers;
use crate::listing;
use crate::names::NameMap;
use crate::origin::Origin;
use crate::upstream_error;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

/// What the rules need to know about the request.
pub struct Context<'a> {
    /// Unknown only when the request's own Host could not be read.
    pub public: Option<&'a Origin>,
    /// containerd's `ns`, when it sent one: the proxy's realm carries it back.
    pub ns: Option<&'a str>,
    /// The upstream registry, whose Link targets are mapped.
    pub upstream: Option<&'a Origin>,
    pub names: &'a NameMap,
    pub endpoint: Option<&'a Endpoint>,
    pub head_only: bool,
    /// Several routes serve the request's host: a challenge's realm names its scope.
    pub shared_host: bool,
    /// The request writes (a push): its answer may carry the `Location` of what it made.
    pub write: bool,
    /// The web page origin the route lets read its answers (CORS), if the request came from
    /// one; for a preflight, the methods it may use too.
    pub cors: Option<Cors<'a>>,
    /// Whether the route (or, with none yet, a route of the host) lets any page read it: its
    /// answers then vary by `Origin`, whoever asks.
    pub cors_listed: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Cors<'a> {
    pub origin: &'a HeaderValue,
    /// A preflight's answer: the methods the page may use.
    pub preflight: Option<&'static str>,
}

/// The request headers a registry UI sends (simple ones aside).
const CORS_REQUEST_HEADERS: &str =
    "Authorization, Accept, Content-Type, Content-Range, Range, If-None-Match";

/// What a registry UI reads of an answer besides the simple headers.
const CORS_EXPOSED: &str = "Docker-Content-Digest, Link, WWW-Authenticate, Location, Range, \
                            Docker-Upload-UUID, Content-Length";

/// The headers that let a page on the allowed origin read an answer (or make the request a
/// preflight asks about).
fn cors_headers(cors: Cors, h: &mut HeaderMap) {
    if let Some(methods) = cors.preflight {
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static(methods),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(CORS_REQUEST_HEADERS),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
    }
    h.insert("access-control-allow-origin", cors.origin.clone());
    h.insert(
        "access-control-allow-credentials",
        HeaderValue::from_static("true"),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(CORS_EXPOSED),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// What an exchange wants to answer.
#[derive(Debug)]
pub struct Draft {
    pub status: StatusCode,
    /// Headers offered for the client: an upstream's (filtered here) or the proxy's own.
    pub headers: HeaderMap,
    pub body: DraftBody,
    /// Where a redirect sends the client. A `Location` among `headers` never passes.
    pub location: Option<url::Url>,
}

#[derive(Debug)]
pub enum DraftBody {
    /// The last upstream response's body, streamed untouched.
    Upstream,
    /// A body the proxy made, with its media type (`None` for an empty body).
    Made {
        bytes: Vec<u8>,
        content_type: Option<&'static str>,
    },
    /// The upstream's own body, read in full (a manifest, kept or being kept): its entity
    /// headers are its own.
    Stored(Vec<u8>),
    /// The length of such a body, for a HEAD: answered without its bytes.
    StoredLength(u64),
}

impl Draft {
    /// An upstream response, body and all.
    pub fn upstream(head: Response<()>) -> Self {
        let (parts, ()) = head.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: DraftBody::Upstream,
            location: None,
        }
    }

    /// A body of the proxy's making.
    pub fn made(status: StatusCode, bytes: Vec<u8>, content_type: &'static str) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: DraftBody::Made {
                bytes,
                content_type: Some(content_type),
            },
            location: None,
        }
    }

    pub fn error(e: &OciError) -> Self {
        Self::made(e.status, e.json(), "application/json")
    }

    /// A redirect to `location`, with an empty body.
    pub fn redirect(status: StatusCode, location: url::Url) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: DraftBody::Made {
                bytes: Vec::new(),
                content_type: None,
            },
            location: Some(location),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// A response the rules have been applied to; only `finish` makes one.
#[derive(Debug)]
pub struct ClientResponse {
    head: Response<()>,
    body: ClientBody,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientBody {
    /// A HEAD response: the head alone, its `Content-Length` the GET's.
    None,
    /// A body of the proxy's making.
    Bytes(Vec<u8>),
    /// The upstream's own body, read in full (a manifest the proxy keeps).
    Stored(Vec<u8>),
    /// The last upstream response's body, streamed.
    Upstream,
}

impl ClientResponse {
    pub fn head(&self) -> &Response<()> {
        &self.head
    }

    pub fn body(&self) -> &ClientBody {
        &self.body
    }

    pub fn status(&self) -> StatusCode {
        self.head.status()
    }

    pub fn into_parts(self) -> (Response<()>, ClientBody) {
        (self.head, self.body)
    }
}

fn rewrite_links(ctx: &Context, offered: &HeaderMap, out: &mut HeaderMap) {
    let (Some(upstream), Some(public)) = (ctx.upstream, ctx.public) else {
        return;
    };
    for v in offered.get_all(header::LINK) {
        let Ok(v) = v.to_str() else { continue };
        let rewritten = crate::link::rewrite(v, |t| {
            listing::client_link_target(t, upstream, public, ctx.names)
        });
        if let Some(hv) = rewritten.and_then(|r| HeaderValue::from_str(&r).ok()) {
            out.append(header::LINK, hv);
        }
    }
}

/// The scope a client needs for the endpoint, for a challenge whose upstream named none usable.
fn endpoint_scope(endpoint: Option<&Endpoint>) -> Option<String> {
    match endpoint? {
        Endpoint::Catalog => Some("registry:catalog:*".into()),
        r => r.name().map(|n| format!("repository:{n}:pull")),
    }
}

/// Applies the rules (see the module documentation) to `draft`.
pub fn finish(ctx: &Context, draft: Draft) -> ClientResponse {
    let Draft {
        mut status,
        headers: offered,
        mut body,
        location,
    } = draft;
    // R6: whatever an upstream said in an error body stays home.
    if status.is_client_error() || status.is_server_error() {
        if let DraftBody::Upstream = body {
            let e = match ctx.endpoint {
                Some(r) => upstream_error::client_error(status, None, r),
                None => OciError::unavailable(status, "upstream error"),
            };
            body = DraftBody::Made {
                bytes: e.json(),
                content_type: Some("application/json"),
            };
        }
    }
    // R2 needs a public origin; a 401 without one cannot name a realm.
    if status == StatusCode::UNAUTHORIZED && ctx.public.is_none() {
        status = StatusCode::BAD_REQUEST;
    }
    // R1
    let mut h = headers::client_response(&offered);
    // R4
    rewrite_links(ctx, &offered, &mut h);
    // R5
    let mut stored = false;
    let bytes = match body {
        DraftBody::Upstream => None,
        // A 304 of the proxy's own has no body, nor a length to tell.
        DraftBody::Stored(_) | DraftBody::StoredLength(_) if status == StatusCode::NOT_MODIFIED => {
            stored = true;
            Some(Vec::new())
        }
        DraftBody::Stored(bytes) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            stored = true;
            Some(bytes)
        }
        // Only a HEAD is answered with a length alone; a GET would get no bytes, said so.
        DraftBody::StoredLength(length) => {
            let length = if ctx.head_only { length } else { 0 };
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            stored = true;
            Some(Vec::new())
        }
        DraftBody::Made {
            bytes,
            content_type,
        } => {
            for name in headers::ENTITY {
                let range_of_416 =
                    name == "content-range" && status == StatusCode::RANGE_NOT_SATISFIABLE;
                if !range_of_416 {
                    h.remove(name);
                }
            }
            h.remove(header::CONTENT_TYPE);
            if let Some(t) = content_type {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Some(bytes)
        }
    };
    // R2
    if let (StatusCode::UNAUTHORIZED, Some(public)) = (status, ctx.public) {
        // An admin's endpoint takes Basic credentials alone: a Bearer challenge would send a
        // client for a token it refuses, and a browser would never ask for a login.
        let mut c = if ctx.endpoint.is_some_and(Endpoint::is_admin) {
            challenge::basic(public)
        } else {
            let realm = match ctx.ns {
                Some(ns) => format!("{public}{}?ns={ns}", crate::endpoint::TOKEN_PATH),
                None => format!("{public}{}", crate::endpoint::TOKEN_PATH),
            };
            challenge::proxy_challenge(
                &challenge::from_headers(&offered),
                &realm,
                public,
                ctx.names,
                endpoint_scope(ctx.endpoint),
            )
        };
        if ctx.shared_host {
            challenge::name_scope_in_realm(&mut c);
        }
        if let Ok(v) = HeaderValue::from_str(&c.render()) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
    }
    // R3
    let made = ctx.write && matches!(status.as_u16(), 201 | 202 | 204);
    if status.is_redirection() || made {
        if let Some(v) = location.and_then(|l| HeaderValue::from_str(l.as_str()).ok()) {
            h.insert(header::LOCATION, v);
        }
    }
    // R9
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(headers::CONTENT_SECURITY_POLICY),
    );
    // R8
    if let Some(cors) = ctx.cors {
        cors_headers(cors, &mut h);
    } else if ctx.cors_listed {
        // The answer differs by `Origin`: a shared cache must not give this one to a page
        // the route lets read.
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    // R7: nor does a status that has none by definition (an upstream's 204 or 304 may send one
    // anyway); a 204 has no length to tell either (RFC 9110 8.6).
    let no_content = status == StatusCode::NO_CONTENT || status.is_informational();
    if no_content {
        h.remove(header::CONTENT_LENGTH);
    }
    let bodiless = ctx.head_only || no_content || status == StatusCode::NOT_MODIFIED;
    let body = match (bodiless, bytes) {
        (true, _) => ClientBody::None,
        (false, Some(b)) if stored => ClientBody::Stored(b),
        (false, Some(b)) => ClientBody::Bytes(b),
        (false, None) => ClientBody::Upstream,
    };
    let mut head = Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = h;
    ClientResponse { head, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(public: &'a Origin, upstream: &'a Origin, names: &'a NameMap) -> Context<'a> {
        Context {
            public: Some(public),
            ns: None,
            upstream: Some(upstream),
            names,
            endpoint: None,
            head_only: false,
            shared_host: false,
            write: false,
            cors: None,
            cors_listed: false,
        }
    }

    fn upstream_head(status: u16, pairs: &[(&'static str, &'static str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in pairs {
            r.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        r
    }

    #[test]
    fn made_bodies_drop_upstream_entity_headers() {
        let (p, u, n) = (
            Origin::parse("https://images.example.com").unwrap(),
            Origin::parse("http://127.0.0.1:5000").unwrap(),
            NameMap::default(),
        );
        let head = upstream_head(
            401,
            &[
                ("content-encoding", "gzip"),
                ("etag", "\"x\""),
                ("docker-content-digest", "sha256:00"),
                ("content-length", "999"),
            ],
        );
        // A non-ASCII challenge value is no header value `http` accepts; build from bytes.
        let mut head = head;
        head.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_bytes(b"Bearer realm=\"\xe9\"").unwrap(),
        );
        let r = finish(&ctx(&p, &u, &n), Draft::upstream(head));
        let h = r.head().headers();
        assert!(h.get("content-encoding").is_none() && h.get("etag").is_none());
        assert!(h.get("docker-content-digest").is_none());
        let ClientBody::Bytes(b) = r.body() else {
            panic!("{r:?}")
        };
        assert_eq!(h["content-length"], b.len().to_string().as_str());
        assert_eq!(
            h["www-authenticate"],
            "Bearer realm=\"https://images.example.com/token\",service=\"images.example.com\""
        );
    }

    #[test]
    fn location_only_on_redirects_and_only_the_chosen_one() {
        let (p, u, n) = (
            Origin::parse("https://images.example.com").unwrap(),
            Origin::parse("http://127.0.0.1:5000").unwrap(),
            NameMap::default(),
        );
        let head = upstream_head(
            200,
            &[
                ("location", "http://127.0.0.1:5000/x"),
                ("content-location", "http://127.0.0.1:5000/x"),
            ],
        );
        let r = finish(&ctx(&p, &u, &n), Draft::upstream(head));
        assert!(r.head().headers().get("location").is_none());
        assert!(r.head().headers().get("content-location").is_none());
        let target = url::Url::parse("https://cdn.example/blob?sig=1").unwrap();
        let r = finish(
            &ctx(&p, &u, &n),
            Draft::redirect(StatusCode::TEMPORARY_REDIRECT, target),
        );
        assert_eq!(
            r.head().headers()["location"],
            "https://cdn.example/blob?sig=1"
        );
        assert_eq!(r.head().headers()["content-length"], "0");
    }

    #[test]
    fn head_keeps_the_length_without_a_body() {
        let (p, u, n) = (
            Origin::parse("http://127.0.0.1:3000").unwrap(),
            Origin::parse("http://127.0.0.1:5000").unwrap(),
            NameMap::default(),
        );
        let mut c = ctx(&p, &u, &n);
        c.head_only = true;
        let e = OciError::no_route("nope");
        let r = finish(&c, Draft::error(&e));
        assert_eq!(*r.body(), ClientBody::None);
        assert_eq!(
            r.head().headers()["content-length"],
            e.json().len().to_string().as_str()
        );
    }
}
