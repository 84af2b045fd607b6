//! Hostile clients and upstreams, drawn from bytes (the fuzzer's input, or `Seeded`): the
//! configurations, requests and upstream answers `exchange` plays against each other.

use super::Canned;
use crate::config::Config;
use crate::exchange::Incoming;
use crate::upstream_failure::Failure;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

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
    let choices: [&[u8]; 10] = [
        b"/artifacts-downloads/x?token=1",
        b"/\\127.0.0.4:6666/x",
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
            Failure::ClientStalled,
            Failure::ClientBody("StreamError::Closed".into()),
        ]));
    }
    let status = src.pick(&[
        200u16, 200, 200, 206, 301, 302, 307, 304, 400, 401, 401, 403, 404, 416, 429, 500, 503,
        101, 204, 600, 999,
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
