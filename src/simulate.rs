//! Exchanges without a runtime: a scripted driver that plays the adapter's part, generators
//! of hostile clients and upstreams, and the invariants every exchange must keep. Used by the
//! unit tests and by the fuzz targets (`tests/fuzz`, feature `simulate`).

use crate::config::Config;
use crate::exchange::{Exchange, Incoming, Step, Write};
use crate::headers;
use crate::origin::Origin;
use crate::reply::{ClientBody, ClientResponse};
use crate::routes::{BlobRedirect, Route};
use crate::upstream_failure::Failure;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::collections::HashMap;

/// An upstream's answer to one request.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Canned {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    fn head(&self) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        for (k, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                r.headers_mut().append(n, v);
            }
        }
        r
    }
}

/// Everything one exchange did.
#[derive(Debug)]
pub struct Run {
    /// Every request the exchange sent upstream, in order.
    pub sent: Vec<Request<Vec<u8>>>,
    pub reply: ClientResponse,
    /// The route that served the request, if one did.
    pub route: Option<Route>,
    /// The bytes the client receives: made bytes, or the streamed upstream body.
    pub body: Vec<u8>,
    pub cause: Option<String>,
    /// The pull event's log line, for a manifest GET.
    pub pull: Option<String>,
}

/// Steps an exchange may take before it counts as looping.
const MAX_STEPS: usize = 40;

/// Plays the adapter with an empty key-value store (see `run_with_store`).
pub fn run(
    config: Config,
    req: Incoming,
    request_body: &[u8],
    upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    run_with_store(config, req, request_body, &mut HashMap::new(), upstream)
}

/// Plays the adapter: answers each `Send` with `upstream`, each read with the canned body
/// (cut at the limit as a failure), keeps `store` as the key-value store, and returns what
/// the client got. Variables read on demand (`users`) are unset: see `run_full`.
pub fn run_with_store(
    config: Config,
    req: Incoming,
    request_body: &[u8],
    store: &mut HashMap<String, Vec<u8>>,
    upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    run_full(config, req, request_body, store, |_| None, upstream)
}

/// A store write, as the adapter performs it.
fn apply(store: &mut HashMap<String, Vec<u8>>, w: Write) {
    match w {
        Write::Set(k, v) => {
            store.insert(k, v);
        }
        Write::Delete(k) => {
            store.remove(&k);
        }
        Write::Create { key, value } => {
            store.entry(key).or_insert(value);
        }
        Write::Count {
            key,
            now,
            repository,
            user,
            mark,
        } => {
            let slot = store.get(&key).map(Vec::as_slice);
            if let Some(counted) = crate::pull_stats::add(slot, now, &repository, &user, &mark) {
                store.insert(key, counted);
            }
        }
        Write::Merge { key, entry, ways } => {
            let bucket = store.get(&key).map(Vec::as_slice);
            if let Some(b) = crate::cache::merge(bucket, &entry, 0, ways) {
                store.insert(key, b);
            }
        }
    }
}

/// `run_with_store`, with `variables` answering the variables read on demand.
pub fn run_full(
    config: Config,
    req: Incoming,
    request_body: &[u8],
    store: &mut HashMap<String, Vec<u8>>,
    variables: impl Fn(&str) -> Option<String>,
    mut upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    let (mut ex, mut step) = Exchange::start(config, req);
    let mut sent = Vec::new();
    let mut last: Option<Canned> = None;
    for _ in 0..MAX_STEPS {
        for w in ex.take_writes() {
            apply(store, w);
        }
        // A streamed request carries the client's body.
        if let Step::Stream(r) = step {
            let (parts, ()) = r.into_parts();
            step = Step::Send(Request::from_parts(parts, request_body.to_vec()));
        }
        step = match step {
            Step::Load(keys) => ex.on_loaded(keys.iter().map(|k| store.get(k).cloned()).collect()),
            Step::Variables(names) => ex.on_variables(names.iter().map(|n| variables(n)).collect()),
            Step::ReadRequest { limit } if request_body.len() > limit => {
                ex.on_failure(Failure::TooLarge)
            }
            Step::ReadRequest { .. } => ex.on_request_body(request_body.to_vec()),
            Step::Send(r) => {
                let answer = upstream(&r);
                sent.push(r);
                match answer {
                    Ok(c) => {
                        let head = c.head();
                        last = Some(c);
                        ex.on_response(head)
                    }
                    Err(f) => {
                        last = None;
                        ex.on_failure(f)
                    }
                }
            }
            Step::Stream(_) => unreachable!("made a Send above"),
            Step::ReadResponse { limit } => match last.take() {
                Some(c) if c.body.len() > limit => ex.on_failure(Failure::TooLarge),
                Some(c) => ex.on_body(c.body),
                None => ex.on_failure(Failure::Reset),
            },
            Step::Reply(reply) => {
                for w in ex.take_deferred() {
                    apply(store, w);
                }
                let body = match reply.body() {
                    ClientBody::None => Vec::new(),
                    ClientBody::Bytes(b) | ClientBody::Stored(b) => b.clone(),
                    ClientBody::Upstream => last.map(|c| c.body).unwrap_or_default(),
                };
                return Run {
                    sent,
                    reply,
                    route: ex.route().cloned(),
                    body,
                    cause: ex.cause().map(String::from),
                    pull: ex.pull_event(),
                };
            }
        };
    }
    panic!("the exchange did not finish within {MAX_STEPS} steps");
}

// ------------------------------------------------------------------------------------------
// Invariants

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

/// Checks every invariant of one exchange; the error names the one broken.
pub fn check(config: &Config, req: &Incoming, run: &Run) -> Result<(), String> {
    let fail = |name: &str, detail: String| Err(format!("{name}: {detail}"));
    let token_post = req.method == Method::POST && req.path == crate::endpoint::TOKEN_PATH;
    let read_only = matches!(req.method, Method::GET | Method::HEAD) || token_post;
    // DESTINATIONS: no request reaches a host the serving route does not name.
    if !run.sent.is_empty() && run.route.is_none() {
        return fail("DESTINATIONS", "a request without a route".into());
    }
    for r in &run.sent {
        let Some(o) = origin_of(r.uri()) else {
            return fail("DESTINATIONS", format!("unparseable URI {}", r.uri()));
        };
        let Some(route) = &run.route else { continue };
        if !route.allows_destination(&o) {
            return fail("DESTINATIONS", format!("request to {o}"));
        }
        // STORAGE: a host a redirect led to never sees the client's credentials or the
        // route's; only an anonymous token its own realm issued.
        if !route.allows_realm(&o) {
            if let Some(a) = r.headers().get(header::AUTHORIZATION) {
                let own = route
                    .credentials
                    .as_ref()
                    .and_then(crate::upstream_token::authorization);
                let clients = req.headers.get_all(header::AUTHORIZATION);
                let basic = a.as_bytes().starts_with(b"Basic");
                if basic || own.as_ref() == Some(a) || clients.iter().any(|c| c == a) {
                    return fail("STORAGE", format!("credentials sent to {o}"));
                }
            }
        }
        // USERS: on a route for the proxy's users, the client's Authorization (their token,
        // or their password) never leaves the proxy.
        if route.access == crate::routes::RouteAccess::Users {
            let clients = req.headers.get_all(header::AUTHORIZATION);
            let theirs = r.headers().get(header::AUTHORIZATION);
            if theirs.is_some_and(|a| clients.iter().any(|c| c == a)) {
                return fail("USERS", format!("the client's Authorization sent to {o}"));
            }
        }
        // READ_ONLY: nothing but reads (and the token form to a realm) goes upstream, but on
        // a route that takes writes, never one open to everyone, the client's own write.
        let method_ok = matches!(*r.method(), Method::GET | Method::HEAD)
            || (*r.method() == Method::POST && token_post);
        let takes_writes =
            route.access != crate::routes::RouteAccess::Public && (route.push || route.delete);
        let its_write = takes_writes && *r.method() == req.method && !token_post;
        if !its_write && !(method_ok && (read_only || takes_writes)) {
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
    }
    let head = run.reply.head();
    let status = head.status();
    let h = head.headers();
    // R1: only allowlisted headers reach the client.
    if let Some(n) = h.keys().find(|n| !headers::is_client_response_header(n)) {
        return fail("R1_HEADERS", format!("{n}"));
    }
    // R2: a 401 carries exactly the proxy's challenge; nothing else carries one.
    let challenges: Vec<_> = h.get_all(header::WWW_AUTHENTICATE).iter().collect();
    if status == StatusCode::UNAUTHORIZED {
        let [only] = challenges.as_slice() else {
            return fail("R2_CHALLENGE", format!("{} challenges", challenges.len()));
        };
        let parsed = crate::challenge::parse(only.to_str().unwrap_or(""));
        let public = crate::public_url::public_origin(
            config,
            &req.headers,
            req.scheme.as_deref(),
            req.authority.as_deref(),
        )
        .map_err(|e| format!("R2_CHALLENGE: 401 without a public origin: {e}"))?;
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
    } else if !challenges.is_empty() {
        return fail("R2_CHALLENGE", format!("challenge on a {status}"));
    }
    // R3: Location only on redirects, and the only header that may name another host.
    let location = h.get(header::LOCATION);
    let made = !read_only && matches!(status.as_u16(), 201 | 202 | 204);
    if location.is_some() && !status.is_redirection() && !made {
        return fail("R3_LOCATION", format!("Location on a {status}"));
    }
    // WRITE_LOCATION: a write's Location is the client's: the public origin (or relative).
    if let (true, Some(l)) = (made, location) {
        let public = crate::public_url::public_origin(
            config,
            &req.headers,
            req.scheme.as_deref(),
            req.authority.as_deref(),
        )
        .map(|o| o.to_string())
        .unwrap_or_default();
        let l = l.to_str().unwrap_or("");
        if !l.starts_with(&format!("{public}/v2/")) {
            return fail("WRITE_LOCATION", format!("{l} is not on {public}"));
        }
    }
    let pass_redirect = location.is_some()
        && run
            .route
            .as_ref()
            .is_some_and(|r| r.blob_redirect == BlobRedirect::Pass)
        && req.path.contains("/blobs/");
    // NAMES: no upstream origin in a client-facing header or a body the proxy made, unless the
    // client itself sent that text (an echo of its own path is not a leak).
    let sent_by_client = format!(
        "{} {} {:?}",
        req.path,
        req.query.as_deref().unwrap_or(""),
        req.headers
    );
    let texts: Vec<String> = upstream_texts(config)
        .into_iter()
        .filter(|t| !sent_by_client.contains(t.as_str()))
        .collect();
    for (n, v) in h {
        if n == header::LOCATION && pass_redirect {
            continue;
        }
        let v = String::from_utf8_lossy(v.as_bytes());
        if let Some(t) = texts.iter().find(|t| v.contains(t.as_str())) {
            return fail("NAMES", format!("{n}: {v} names {t}"));
        }
    }
    if let ClientBody::Bytes(b) = run.reply.body() {
        let text = body_text(b);
        if let Some(t) = texts.iter().find(|t| text.contains(t.as_str())) {
            return fail("NAMES", format!("body names {t}"));
        }
        // R5: a made body carries its own length and none of the upstream's entity headers.
        if h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) != Some(&b.len().to_string())
        {
            return fail("R5_MADE_BODY", "Content-Length differs".into());
        }
        for n in ["content-encoding", "etag", "docker-content-digest"] {
            if h.contains_key(n) {
                return fail("R5_MADE_BODY", format!("{n} on a made body"));
            }
        }
    }
    if let ClientBody::Stored(b) = run.reply.body() {
        // The upstream's bytes read whole: their exact length.
        if h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) != Some(&b.len().to_string())
        {
            return fail("R5_STORED_BODY", "Content-Length differs".into());
        }
    }
    // R6: errors are OCI error JSON.
    if status.is_client_error() || status.is_server_error() {
        match run.reply.body() {
            ClientBody::Bytes(b) => {
                let v: serde_json::Value = serde_json::from_slice(b)
                    .map_err(|_| format!("R6_ERRORS: {status} body is not JSON"))?;
                if v["errors"][0]["code"].as_str().is_none() {
                    return fail("R6_ERRORS", format!("{status} body is not an OCI error"));
                }
            }
            ClientBody::Upstream | ClientBody::Stored(_) => {
                return fail("R6_ERRORS", format!("{status} with the upstream's body"))
            }
            ClientBody::None => {}
        }
    }
    // R7: HEAD answers carry no body.
    let head_only = req.method == Method::HEAD;
    if head_only != (*run.reply.body() == ClientBody::None) {
        return fail(
            "R7_HEAD",
            format!("{:?} for {}", run.reply.body(), req.method),
        );
    }
    // NO_WRITES: a write on a route that takes none sends nothing upstream (checked above)
    // and gets no success.
    let takes_writes = run
        .route
        .as_ref()
        .is_some_and(|r| r.access != crate::routes::RouteAccess::Public && (r.push || r.delete));
    // A CORS preflight is the proxy's own answer: nothing went upstream (checked above).
    let preflight = req.method == Method::OPTIONS && run.sent.is_empty();
    if !read_only && !takes_writes && !preflight && status.is_success() {
        return fail("READ_ONLY", format!("{} answered {status}", req.method));
    }
    // CORS: only a listed origin is told it may read, and never `*`.
    let allowed = h.get("access-control-allow-origin");
    if let Some(a) = allowed {
        let listed = config.routes.0.iter().any(|r| {
            r.cors
                .iter()
                .any(|o| o.to_string().as_bytes() == a.as_bytes())
        });
        let sent = req.headers.get(header::ORIGIN) == Some(a);
        if !listed || !sent {
            return fail("CORS", format!("allow-origin {a:?}"));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Generators

/// Choices drawn from bytes: the fuzzer's input, or a seeded generator's output. Runs out
/// gracefully (zeros), so every input is a valid exchange.
pub struct Source<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Source<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let v = (usize::from(self.byte()) << 8) | usize::from(self.byte());
        v % n
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    pub fn chance(&mut self, in_256: u8) -> bool {
        self.byte() < in_256
    }

    /// Raw bytes, for text a hostile peer makes up.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.byte()).collect()
    }
}

pub const UPSTREAM: &str = "http://127.0.0.1:5000";
pub const AUTH: &str = "http://127.0.0.2:5001";
pub const CDN: &str = "http://127.0.0.3:5002";
pub const EVIL: &str = "http://127.0.0.4:6666";
const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A route table of every routing kind: by host (Docker Hub rules, mirroring docker.io), by
/// path (`team/...`, with an upstream prefix), and a credentialed public route on 127.0.0.1.
const TABLE: &str = r#"[
    {"name": "hub", "host": "images.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "cdn": "http://127.0.0.3:5002", "library": true,
     "mirrors": ["docker.io"], "blob_redirect": "BLOB"},
    {"name": "teams", "path": "team", "upstream": "http://127.0.0.5:5005",
     "auth": "http://127.0.0.2:5001", "cdn": "http://127.0.0.3:5002", "prefix": "app",
     "push": true, "delete": true, "deny": ["team/secret*"], "cors": ["https://ui.example.com"]},
    {"name": "users", "host": "users.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "username": "robot", "password": "s3cret",
     "access": "users", "push": true},
    {"name": "own", "host": "127.0.0.1", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "cdn": "http://127.0.0.3:5002",
     "username": "robot", "password": "s3cret", "public": true, "blob_redirect": "BLOB"}
]"#;

/// The `token_secret` of generated configurations.
pub const TOKEN_SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The `users` variable of generated exchanges (`htpasswd -nbB alice s3cret`): alice pulls and
/// pushes `team/**` and `app` on the users route.
pub const USERS: &str = r#"[{"name": "alice", "admin": true,
    "password": "$2y$05$ha5H.1Gr3Cup2kRBdcj.GuJbnsrqMUFVViHZUMOn/79k9jPA70EMi",
    "access": [{"repositories": ["team/**", "app"], "actions": ["pull", "push"]}]}]"#;

pub fn config(src: &mut Source) -> Config {
    let upstream = src.pick(&[UPSTREAM, "https://registry-1.docker.io"]);
    let prefix = src.pick(&["", "team", "team/app"]);
    let redirect = src.pick(&["pass", "follow"]);
    let public = src.pick(&["", "", "https://images.example.com"]);
    let trust = src.pick(&["", "true"]);
    let home = src.pick(&["", "https://docs.example.com/registry"]);
    let table = if src.chance(128) {
        TABLE.replace("BLOB", redirect)
    } else {
        String::new()
    };
    // The table serves two hosts: one public URL would take every request for one of them.
    let public = if table.is_empty() { public } else { "" };
    let pairs = [
        ("routes", table.as_str()),
        ("upstream", upstream),
        ("upstream_auth", AUTH),
        ("upstream_cdn", CDN),
        ("repository_prefix", prefix),
        ("blob_redirect", redirect),
        ("public_url", public),
        ("trust_forwarded", trust),
        ("home", home),
        ("token_secret", TOKEN_SECRET),
    ];
    Config::from_variables(|k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .expect("generated configurations are valid")
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

fn name(src: &mut Source) -> String {
    src.pick(&[
        "web",
        "team/app/web",
        "library/alpine",
        "a/b/c",
        "../x",
        "A",
        "x%2F..",
        "private/secret",
    ])
    .to_string()
}

fn path(src: &mut Source) -> String {
    let n = name(src);
    match src.below(14) {
        0 => "/".into(),
        1 => "/token".into(),
        2 => "/v2/".into(),
        3 => "/v2/_catalog".into(),
        4 => format!(
            "/v2/{n}/manifests/{}",
            src.pick(&["1.0", DIGEST, "-bad", "sha256-abc"])
        ),
        5 => format!("/v2/{n}/blobs/{}", src.pick(&[DIGEST, "latest"])),
        6 => format!("/v2/{n}/tags/list"),
        7 => format!("/v2/{n}/referrers/{DIGEST}"),
        8 => format!(
            "/v2/{n}/blobs/uploads/{}",
            src.pick(&[
                "",
                "6d1c3f0e-0000?_state=x",
                "?mount=sha256:aa&from=team/secret"
            ])
        ),
        9 => "/favicon.ico".into(),
        10 => format!("/v2/{n}/manifests/1.0"),
        11 => format!("/v2/{n}/blobs/{DIGEST}"),
        12 => format!("/v2/{n}/tags/list"),
        _ => String::from_utf8_lossy(&src.bytes(20)).into_owned(),
    }
}

fn query(src: &mut Source) -> Option<String> {
    src.pick(&[
        None,
        Some("n=2&last=web"),
        Some("ns=docker.io"),
        Some("ns=ghcr.io"),
        Some("scope=repository:web:pull&service=x"),
        Some("scope=repository:web:pull&scope=repository:../x:pull"),
        Some("scope=registry:catalog:*&evil=1"),
        Some("artifactType=application%2Fx"),
        Some("n=1&last=team%2Fapp%2Fz&x=1"),
        Some("challenge_scope=repository%3Aghcr%2Fo%2Fa%3Apull&scope=repository:ghcr/o/a:pull&scope=repository:quay/b:pull"),
    ])
    .map(String::from)
}

fn request_headers(src: &mut Source) -> HeaderMap {
    let mut h = HeaderMap::new();
    let host: &[u8] = src.pick(&[
        b"127.0.0.1:3000".as_slice(),
        b"images.example.com",
        b"users.example.com",
        b"[<img src=x onerror=alert(1)>]",
        b"a\",realm=\"evil",
        b"\xc3\xa9.example",
        b"",
    ]);
    if let Ok(v) = HeaderValue::from_bytes(host) {
        if !host.is_empty() {
            h.insert(header::HOST, v);
        }
    }
    let optional: [(&str, &[u8]); 15] = [
        ("origin", b"https://ui.example.com"),
        ("access-control-request-method", b"PATCH"),
        ("content-length", b"7"),
        (
            "authorization",
            b"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.AAAA",
        ),
        ("x-forwarded-host", b"evil.example"),
        ("x-forwarded-proto", b"http"),
        ("authorization", b"Basic YWxpY2U6czNjcmV0"),
        ("authorization", b"Bearer anonymous"),
        ("authorization", b"Bearer eyJ.upstream.token"),
        ("accept-encoding", b"gzip"),
        ("cookie", b"session=secret"),
        ("range", b"bytes=10-"),
        ("accept", b"application/vnd.oci.image.index.v1+json"),
        ("cf-connecting-ip", b"203.0.113.9"),
        ("content-type", b"application/x-www-form-urlencoded"),
    ];
    for (n, v) in optional {
        if src.chance(60) {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(n, v);
            }
        }
    }
    h
}

pub fn incoming(src: &mut Source) -> (Incoming, Vec<u8>) {
    let method = src.pick(&[
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]);
    let req = Incoming {
        method,
        path: path(src),
        query: query(src),
        headers: request_headers(src),
        scheme: src.pick(&[Some("http".to_string()), Some("https".into()), None]),
        authority: None,
        now: 1_700_000_000,
        random: [0x5a; 32],
    };
    let body = src.pick(&[
        b"grant_type=password&username=alice&password=s3cret&scope=repository%3Aweb%3Apull&service=x"
            .to_vec(),
        b"grant_type=refresh_token&refresh_token=rt&service=x".to_vec(),
        Vec::new(),
        vec![b'a'; crate::token::MAX_FORM_BYTES + 1],
    ]);
    (req, body)
}

fn location(src: &mut Source) -> Vec<u8> {
    let choices: [&[u8]; 9] = [
        b"/artifacts-downloads/x?token=1",
        b"http://127.0.0.1:5000/v2/team/web/blobs/x",
        b"http://127.0.0.3:5002/blob?sig=1",
        b"http://127.0.0.4:6666/steal",
        b"http://127.0.0.1:5000@127.0.0.4:6666/x",
        b"http://u:p@127.0.0.3:5002/x",
        b"ftp://127.0.0.3/x",
        b"%%%",
        b"https://registry-1.docker.io/v2/x",
    ];
    src.pick(&choices).to_vec()
}

fn challenge(src: &mut Source) -> Vec<u8> {
    let choices: [&[u8]; 10] = [
        b"Bearer realm=\"http://127.0.0.2:5001/token\",service=\"reg\",scope=\"repository:team/web:pull\"",
        b"Bearer realm=\"http://127.0.0.1:5000/v2/auth\",service=\"reg\",error=\"insufficient_scope\"",
        b"Bearer realm=\"http://127.0.0.4:6666/token\",service=\"evil\"",
        b"Bearer realm=\"http://127.0.0.3:5002/token\",service=\"storage\"",
        b"Bearer realm=\"http://127.0.0.1:5000@127.0.0.4:6666/token\"",
        b"Basic realm=\"upstream\"",
        b"Basic realm=\"quay.io\", Bearer realm=\"http://127.0.0.1:5000/v2/auth\",scope=\"repository:x:pull http://127.0.0.1:5000\"",
        b"Bearer realm=\"\xe9\"",
        b"garbage ,,, ===",
        b"Bearer error=\"see http://127.0.0.2:5001\"",
    ];
    src.pick(&choices).to_vec()
}

pub fn canned(src: &mut Source) -> Result<Canned, Failure> {
    if src.chance(20) {
        return Err(src.pick(&[
            Failure::Dns,
            Failure::Refused,
            Failure::Timeout,
            Failure::Reset,
            Failure::Denied,
            Failure::Other("ErrorCode::InternalError(Some(\"http://127.0.0.1:5000\"))".into()),
        ]));
    }
    let status = src.pick(&[
        200u16, 200, 200, 206, 301, 302, 307, 304, 400, 401, 401, 403, 404, 416, 429, 500, 503,
    ]);
    let mut c = Canned::new(status);
    if status.to_string().starts_with('3') && src.chance(230) {
        c = c.header("location", location(src));
    }
    if status == 401 && src.chance(230) {
        c = c.header("www-authenticate", challenge(src));
    }
    let extra: [(&str, &[u8]); 12] = [
        ("content-type", b"application/json"),
        ("content-encoding", b"gzip"),
        ("etag", b"\"sha256:00\""),
        ("docker-content-digest", b"sha256:00"),
        ("set-cookie", b"a=b"),
        ("alt-svc", b"h3=\":443\""),
        ("content-location", b"http://127.0.0.1:5000/x"),
        ("location", b"http://127.0.0.1:5000/x"),
        (
            "link",
            b"<http://127.0.0.1:5000/v2/team/web/tags/list?n=1&last=a>; rel=\"next\"",
        ),
        (
            "link",
            b"<http://127.0.0.3:5002/x>; rel=\"next\", </v2/other/tags/list>; rel=\"next\"",
        ),
        (
            "link",
            b"</v2/team/web/tags/list>; anchor=\"http://127.0.0.1:5000/\"; rel=\"next\"",
        ),
        ("retry-after", b"30"),
    ];
    for (n, v) in extra {
        if src.chance(40) {
            c = c.header(n, v);
        }
    }
    let bodies: [&[u8]; 7] = [
        b"",
        b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"repository name not known\",\"detail\":{\"name\":\"team/app/web\",\"at\":\"http://127.0.0.1:5000\"}}]}",
        b"{\"name\":\"team/app/web\",\"tags\":[\"a\",\"b\"]}",
        b"{\"repositories\":[\"team/app/a\",\"other/b\",\"zzz\"]}",
        b"\x1f\x8b\x08\x00garbage",
        b"{\"token\":\"t\",\"access_token\":\"t\",\"expires_in\":60}",
        b"<Error><Code>AccessDenied</Code><Host>http://127.0.0.3:5002</Host></Error>",
    ];
    let mut body = src.pick(&bodies).to_vec();
    if src.chance(16) {
        body = src.bytes(64);
    }
    if src.chance(100) {
        // A length the store may keep the body by (or one that lies).
        let len = if src.chance(200) {
            body.len()
        } else {
            body.len() + 3
        };
        c = c.header("content-length", len.to_string());
    }
    if src.chance(60) {
        c = c.header("docker-content-digest", crate::digest::sha256(&body));
    }
    Ok(c.body(body))
}

/// Random exchanges on one configuration and one key-value store: requests, and the
/// upstream's answers; each checked.
pub fn exchange(data: &[u8]) -> Result<(), String> {
    let mut src = Source::new(data);
    let config = config(&mut src);
    let mut store = HashMap::new();
    for _ in 0..3 {
        let (req, body) = incoming(&mut src);
        let users = |n: &str| (n == "users").then(|| USERS.to_string());
        let run = run_full(
            config.clone(),
            req.clone(),
            &body,
            &mut store,
            users,
            |_| canned(&mut src),
        );
        check(&config, &req, &run).map_err(|e| format!("{e}\nrequest: {req:?}\nrun: {run:?}"))?;
    }
    Ok(())
}

/// A small deterministic generator (xorshift64*), for seeded runs without the fuzzer.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn fill(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }
}
