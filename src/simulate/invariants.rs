//! The invariants every exchange keeps, whatever the client and the upstream send: one
//! function per rule, each named for the rule its error names.

use super::Run;
use crate::config::Config;
use crate::exchange::Incoming;
use crate::headers;
use crate::origin::Origin;
use crate::reply::ClientBody;
use crate::routes::{BlobRedirect, Route, RouteAccess};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};

/// Checks every invariant of one exchange; the error names the one broken.
pub fn check(config: &Config, req: &Incoming, run: &Run) -> Result<(), String> {
    let ex = Checked::new(config, req, run);
    ex.destinations()?;
    for r in &run.sent {
        ex.sent(r)?;
    }
    ex.response_headers()?;
    ex.challenge()?;
    ex.location()?;
    ex.names()?;
    ex.made_bodies()?;
    ex.errors()?;
    ex.head_has_no_body()?;
    ex.no_writes()?;
    ex.cors()
}

fn fail<T>(rule: &str, detail: impl std::fmt::Display) -> Result<T, String> {
    Err(format!("{rule}: {detail}"))
}

/// One exchange and what the rules derive from its request.
struct Checked<'a> {
    config: &'a Config,
    req: &'a Incoming,
    run: &'a Run,
    /// A POST of the token endpoint's form: a read, though not a GET.
    token_post: bool,
    read_only: bool,
    status: StatusCode,
    h: &'a HeaderMap,
}

impl<'a> Checked<'a> {
    fn new(config: &'a Config, req: &'a Incoming, run: &'a Run) -> Self {
        let token_post = req.method == Method::POST && req.path == crate::endpoint::TOKEN_PATH;
        let head = run.reply.head();
        Self {
            config,
            req,
            run,
            token_post,
            read_only: matches!(req.method, Method::GET | Method::HEAD) || token_post,
            status: head.status(),
            h: head.headers(),
        }
    }

    fn public_origin(&self) -> Result<Origin, String> {
        crate::public_url::public_origin(
            self.config,
            &self.req.headers,
            self.req.scheme.as_deref(),
            self.req.authority.as_deref(),
        )
        .map_err(|e| e.to_string())
    }

    fn takes_writes(route: &Route) -> bool {
        route.access != RouteAccess::Public && (route.push || route.delete)
    }

    /// DESTINATIONS: nothing goes upstream without a route.
    fn destinations(&self) -> Result<(), String> {
        if !self.run.sent.is_empty() && self.run.route.is_none() {
            return fail("DESTINATIONS", "a request without a route");
        }
        Ok(())
    }

    /// What one upstream request may be: to a host the route names, with whose credentials,
    /// which method, which headers.
    fn sent(&self, r: &Request<Vec<u8>>) -> Result<(), String> {
        let Some(o) = origin_of(r.uri()) else {
            return fail("DESTINATIONS", format!("unparseable URI {}", r.uri()));
        };
        let Some(route) = &self.run.route else {
            return Ok(());
        };
        if !route.allows_destination(&o) {
            return fail("DESTINATIONS", format!("request to {o}"));
        }
        let clients = self.req.headers.get_all(header::AUTHORIZATION);
        let theirs = r.headers().get(header::AUTHORIZATION);
        // STORAGE: a host a redirect led to never sees the client's credentials or the
        // route's; only an anonymous token its own realm issued.
        if let (false, Some(a)) = (route.allows_realm(&o), theirs) {
            let own = route
                .credentials
                .as_ref()
                .and_then(crate::upstream_token::authorization);
            let basic = a.as_bytes().starts_with(b"Basic");
            if basic || own.as_ref() == Some(a) || clients.iter().any(|c| c == a) {
                return fail("STORAGE", format!("credentials sent to {o}"));
            }
        }
        // USERS: on a route for the proxy's users, the client's Authorization (their token,
        // or their password) never leaves the proxy; on any route, a token the proxy signs.
        if route.access == RouteAccess::Users
            && theirs.is_some_and(|a| clients.iter().any(|c| c == a))
        {
            return fail("USERS", format!("the client's Authorization sent to {o}"));
        }
        let signed_here = theirs
            .and_then(|a| crate::token::bearer_token(Some(a)))
            .is_some_and(crate::proxy_token::is_own);
        if signed_here {
            return fail("USERS", format!("a token the proxy signs sent to {o}"));
        }
        // READ_ONLY: nothing but reads (and the token form to a realm) goes upstream, but on
        // a route that takes writes, never one open to everyone, the client's own write.
        let method_ok = matches!(*r.method(), Method::GET | Method::HEAD)
            || (*r.method() == Method::POST && self.token_post);
        let takes_writes = Self::takes_writes(route);
        let its_write = takes_writes && *r.method() == self.req.method && !self.token_post;
        if !its_write && !(method_ok && (self.read_only || takes_writes)) {
            return fail("READ_ONLY", format!("{} {} sent", r.method(), r.uri()));
        }
        // REQUEST_HEADERS: only allowlisted headers leave.
        if let Some(name) = r
            .headers()
            .keys()
            .find(|n| !headers::is_upstream_request_header(n))
        {
            return fail("REQUEST_HEADERS", format!("{name} sent to {o}"));
        }
        Ok(())
    }

    /// R1: only allowlisted headers reach the client. R9: every answer is sandboxed and
    /// `nosniff`, by the proxy's policy alone.
    fn response_headers(&self) -> Result<(), String> {
        if let Some(n) = self
            .h
            .keys()
            .find(|n| !headers::is_client_response_header(n))
        {
            return fail("R1_HEADERS", n);
        }
        let policies: Vec<_> = self
            .h
            .get_all(header::CONTENT_SECURITY_POLICY)
            .iter()
            .collect();
        let sniffing: Vec<_> = self
            .h
            .get_all(header::X_CONTENT_TYPE_OPTIONS)
            .iter()
            .collect();
        match (policies.as_slice(), sniffing.as_slice()) {
            ([p], [n]) if *p == headers::CONTENT_SECURITY_POLICY && *n == "nosniff" => Ok(()),
            _ => fail("R9_RENDERING", format!("{policies:?} {sniffing:?}")),
        }
    }

    /// R2: a 401 carries exactly the proxy's challenge; nothing else carries one.
    fn challenge(&self) -> Result<(), String> {
        let challenges: Vec<_> = self.h.get_all(header::WWW_AUTHENTICATE).iter().collect();
        if self.status != StatusCode::UNAUTHORIZED {
            if !challenges.is_empty() {
                return fail("R2_CHALLENGE", format!("challenge on a {}", self.status));
            }
            return Ok(());
        }
        let [only] = challenges.as_slice() else {
            return fail("R2_CHALLENGE", format!("{} challenges", challenges.len()));
        };
        let public = self
            .public_origin()
            .or_else(|e| fail("R2_CHALLENGE", format!("401 without a public origin: {e}")))?;
        let parsed = crate::challenge::parse(only.to_str().unwrap_or(""));
        let ours = match parsed.as_slice() {
            [c] if c.scheme == "bearer" => {
                let realm = c.param("realm").unwrap_or_default();
                let token = format!("{public}/token");
                // Only containerd's `ns` and the challenge's own scope may follow.
                let known = |(k, v): (std::borrow::Cow<str>, std::borrow::Cow<str>)| {
                    k == "ns"
                        || (k == crate::challenge::CHALLENGE_SCOPE && c.param("scope") == Some(&v))
                };
                let query = realm.strip_prefix(&token).and_then(|r| r.strip_prefix('?'));
                let with_query =
                    query.is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).all(known));
                (realm == token || with_query) && c.param("service") == Some(&public.authority())
            }
            [c] if c.scheme == "basic" => c.param("realm") == Some(&public.authority()),
            _ => false,
        };
        if !ours {
            return fail("R2_CHALLENGE", format!("{only:?}"));
        }
        Ok(())
    }

    /// A write's success, which may say where the written thing is.
    fn made(&self) -> bool {
        !self.read_only && matches!(self.status.as_u16(), 201 | 202 | 204)
    }

    /// R3: Location only on redirects and writes; WRITE_LOCATION: a write's Location is the
    /// client's: the public origin.
    fn location(&self) -> Result<(), String> {
        let Some(l) = self.h.get(header::LOCATION) else {
            return Ok(());
        };
        if !self.status.is_redirection() && !self.made() {
            return fail("R3_LOCATION", format!("Location on a {}", self.status));
        }
        if self.made() {
            let public = self
                .public_origin()
                .map(|o| o.to_string())
                .unwrap_or_default();
            let l = l.to_str().unwrap_or("");
            if !l.starts_with(&format!("{public}/v2/")) {
                return fail("WRITE_LOCATION", format!("{l} is not on {public}"));
            }
        }
        Ok(())
    }

    /// NAMES: no upstream origin in a client-facing header or a body the proxy made, unless
    /// the client itself sent that text (an echo of its own path is not a leak), and but for
    /// a blob redirect passed on by design.
    fn names(&self) -> Result<(), String> {
        let req = self.req;
        let pass_redirect = self
            .run
            .route
            .as_ref()
            .is_some_and(|r| r.blob_redirect == BlobRedirect::Pass)
            && req.path.contains("/blobs/");
        let sent_by_client = format!(
            "{} {} {:?}",
            req.path,
            req.query.as_deref().unwrap_or(""),
            req.headers
        );
        let texts: Vec<String> = upstream_texts(self.config)
            .into_iter()
            .filter(|t| !sent_by_client.contains(t.as_str()))
            .collect();
        for (n, v) in self.h {
            if n == header::LOCATION && pass_redirect {
                continue;
            }
            let v = String::from_utf8_lossy(v.as_bytes());
            if let Some(t) = texts.iter().find(|t| v.contains(t.as_str())) {
                return fail("NAMES", format!("{n}: {v} names {t}"));
            }
        }
        if let ClientBody::Bytes(b) = self.run.reply.body() {
            let text = body_text(b);
            if let Some(t) = texts.iter().find(|t| text.contains(t.as_str())) {
                return fail("NAMES", format!("body names {t}"));
            }
        }
        Ok(())
    }

    /// R5: a made body carries its own length and none of the upstream's entity headers; a
    /// stored one, read whole, its exact length.
    fn made_bodies(&self) -> Result<(), String> {
        let length = self
            .h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok());
        match self.run.reply.body() {
            ClientBody::Bytes(b) => {
                if length != Some(&b.len().to_string()) {
                    return fail("R5_MADE_BODY", "Content-Length differs");
                }
                for n in ["content-encoding", "etag", "docker-content-digest"] {
                    if self.h.contains_key(n) {
                        return fail("R5_MADE_BODY", format!("{n} on a made body"));
                    }
                }
            }
            ClientBody::Stored(b) if length != Some(&b.len().to_string()) => {
                return fail("R5_STORED_BODY", "Content-Length differs");
            }
            _ => {}
        }
        Ok(())
    }

    /// R6: errors are OCI error JSON, and every status is one a client takes as final.
    fn errors(&self) -> Result<(), String> {
        let status = self.status;
        if !(200..=599).contains(&status.as_u16()) {
            return fail("R6_ERRORS", format!("{status} is no final HTTP status"));
        }
        if !status.is_client_error() && !status.is_server_error() {
            return Ok(());
        }
        match self.run.reply.body() {
            ClientBody::Bytes(b) => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) else {
                    return fail("R6_ERRORS", format!("{status} body is not JSON"));
                };
                if v["errors"][0]["code"].as_str().is_none() {
                    return fail("R6_ERRORS", format!("{status} body is not an OCI error"));
                }
            }
            ClientBody::Upstream | ClientBody::Stored(_) => {
                return fail("R6_ERRORS", format!("{status} with the upstream's body"))
            }
            ClientBody::None => {}
        }
        Ok(())
    }

    /// R7: HEAD answers carry no body, nor do 1xx, 204 and 304, and only they; a 204 tells no
    /// length.
    fn head_has_no_body(&self) -> Result<(), String> {
        let status = self.status.as_u16();
        let bodiless = self.req.method == Method::HEAD || matches!(status, 100..=199 | 204 | 304);
        if bodiless != (*self.run.reply.body() == ClientBody::None) {
            let body = self.run.reply.body();
            return fail(
                "R7_HEAD",
                format!("{body:?} for {} answered {status}", self.req.method),
            );
        }
        let length = self.run.reply.head().headers().get(header::CONTENT_LENGTH);
        if matches!(status, 100..=199 | 204) && length.is_some() {
            return fail("R7_HEAD", format!("{status} with a Content-Length"));
        }
        Ok(())
    }

    /// NO_WRITES: a write on a route that takes none sends nothing upstream (`sent`) and gets
    /// no success; a CORS preflight is the proxy's own answer, with nothing sent.
    fn no_writes(&self) -> Result<(), String> {
        let takes_writes = self.run.route.as_ref().is_some_and(Self::takes_writes);
        let preflight = self.req.method == Method::OPTIONS && self.run.sent.is_empty();
        if !self.read_only && !takes_writes && !preflight && self.status.is_success() {
            return fail(
                "READ_ONLY",
                format!("{} answered {}", self.req.method, self.status),
            );
        }
        Ok(())
    }

    /// CORS: only a listed origin is told it may read, and never `*`.
    fn cors(&self) -> Result<(), String> {
        let Some(a) = self.h.get("access-control-allow-origin") else {
            return Ok(());
        };
        let listed = self.config.routes.0.iter().any(|r| {
            r.cors
                .iter()
                .any(|o| o.to_string().as_bytes() == a.as_bytes())
        });
        let sent = self.req.headers.get(header::ORIGIN) == Some(a);
        if !listed || !sent {
            return fail("CORS", format!("allow-origin {a:?}"));
        }
        Ok(())
    }
}

fn origin_of(uri: &http::Uri) -> Option<Origin> {
    url::Url::parse(&uri.to_string())
        .ok()
        .as_ref()
        .and_then(Origin::of_url)
}

/// The upstream origins' texts, which no client-facing header or made body may contain.
fn upstream_texts(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for r in &config.routes.0 {
        out.push(r.upstream.authority());
        out.extend(r.auth.iter().map(Origin::authority));
        out.extend(
            r.cdn
                .iter()
                .filter(|c| !c.is_wildcard())
                .map(Origin::authority),
        );
    }
    out
}

/// What a made body says: the strings of a JSON body as a client decodes them (an escape such
/// as `\u0012` next to a client's `7.0.0.2` is not the text `127.0.0.2`), else its bytes.
fn body_text(body: &[u8]) -> String {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
                out.push(k.clone());
                strings(v, out);
            }),
            other => out.push(other.to_string()),
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut out = Vec::new();
            strings(&v, &mut out);
            out.join("\n")
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{self, Canned, Source, EVIL};

    /// A HEAD of a manifest on a generated configuration, answered 200, and what `check`
    /// says once `forge` has changed what it sent upstream.
    fn broken_by(forge: impl Fn(&mut Vec<Request<Vec<u8>>>)) -> Result<(), String> {
        let config = simulate::config(&mut Source::new(&[]));
        let mut req = simulate::incoming(&mut Source::new(&[])).0;
        req.method = Method::HEAD;
        req.path = "/v2/web/manifests/1".into();
        let mut run = simulate::run(config.clone(), req.clone(), b"", |_| Ok(Canned::new(200)));
        check(&config, &req, &run)?;
        forge(&mut run.sent);
        check(&config, &req, &run)
    }

    fn forged(
        method: Method,
        uri: &str,
        header: Option<(&'static str, &'static str)>,
    ) -> Request<Vec<u8>> {
        let mut r = Request::builder().method(method).uri(uri);
        if let Some((n, v)) = header {
            r = r.header(n, v);
        }
        r.body(Vec::new()).unwrap()
    }

    #[test]
    fn each_rule_on_upstream_requests_names_itself() {
        let up = |path: &str| format!("{}{path}", simulate::UPSTREAM);
        let cases: [(Request<Vec<u8>>, &str); 4] = [
            (
                forged(Method::GET, &format!("{EVIL}/v2/"), None),
                "DESTINATIONS",
            ),
            (
                forged(Method::DELETE, &up("/v2/web/manifests/1"), None),
                "READ_ONLY",
            ),
            (
                forged(Method::GET, &up("/v2/"), Some(("cookie", "a=b"))),
                "REQUEST_HEADERS",
            ),
            (
                forged(
                    Method::GET,
                    &format!("{}/blob", simulate::CDN),
                    Some(("authorization", "Basic eDp5")),
                ),
                "STORAGE",
            ),
        ];
        for (r, rule) in cases {
            let err = broken_by(|sent| sent.push(r.clone())).unwrap_err();
            assert!(err.starts_with(rule), "{rule}: {err}");
        }
    }
}
