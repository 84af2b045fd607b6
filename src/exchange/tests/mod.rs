//! Exchanges driven by `simulate::run`: a scripted upstream answers, the client's view is
//! asserted, and every run is also held to every invariant (`simulate::check`).

use super::*;
use crate::simulate::{self, Canned, Run, AUTH, CDN, UPSTREAM};
use std::collections::HashMap;

const D: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn config(extra: &[(&str, &str)]) -> Config {
    Config::from_variables(|k| {
        let defaults = [
            ("upstream", UPSTREAM),
            ("upstream_auth", AUTH),
            ("upstream_cdn", CDN),
        ];
        extra
            .iter()
            .chain(defaults.iter())
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap()
}

fn incoming(
    method: Method,
    path_query: &str,
    headers: &[(&'static str, &'static str)],
) -> Incoming {
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_query.to_string(), None),
    };
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:3000"));
    for (k, v) in headers {
        h.insert(*k, HeaderValue::from_static(v));
    }
    Incoming {
        method,
        path,
        query,
        headers: h,
        scheme: Some("http".into()),
        authority: None,
        now: 1_700_000_000,
        random: fresh_random(),
    }
}

/// Each request's own random bytes, as the adapter draws them.
fn fresh_random() -> [u8; 32] {
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = [0x5a; 32];
    r[..8].copy_from_slice(&n.to_le_bytes());
    r
}

/// Runs one exchange against a scripted upstream and checks every invariant.
fn drive(
    cfg: &Config,
    req: Incoming,
    body: &[u8],
    upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    drive_stored(cfg, req, body, &mut HashMap::new(), upstream)
}

/// `drive`, with a key-value store kept between runs.
fn drive_stored(
    cfg: &Config,
    req: Incoming,
    body: &[u8],
    store: &mut HashMap<String, Vec<u8>>,
    upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    let run = simulate::run_with_store(cfg.clone(), req.clone(), body, store, upstream);
    if let Err(e) = simulate::check(cfg, &req, &run) {
        panic!("invariant broken: {e}\n{run:?}");
    }
    run
}

/// Answers by request path (and query, when the key has one); 404 otherwise.
fn by_path(
    table: Vec<(&'static str, Canned)>,
) -> impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure> {
    move |r| {
        let pq = r.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
        let origin = format!(
            "{}://{}",
            r.uri().scheme_str().unwrap_or(""),
            r.uri().authority().map(|a| a.as_str()).unwrap_or("")
        );
        let found = table.iter().find(|(k, _)| {
            let key = k.strip_prefix(&origin).unwrap_or(k);
            key == pq || (!key.contains('?') && key == r.uri().path())
        });
        Ok(found
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| Canned::new(404)))
    }
}

fn header<'a>(run: &'a Run, name: &str) -> &'a str {
    run.reply
        .head()
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn status(run: &Run) -> u16 {
    run.reply.status().as_u16()
}

fn error_code(run: &Run) -> String {
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

/// A token request with Basic credentials.
fn token_get(query: &str) -> Incoming {
    let path = format!("/token?{query}");
    let mut req = incoming(Method::GET, &path, &[]);
    req.headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"),
    );
    req
}

fn bearer(realm: &str, scope: &str) -> Canned {
    Canned::new(401).header(
        "www-authenticate",
        format!("Bearer realm=\"{realm}\",service=\"reg\",scope=\"{scope}\""),
    )
}

fn blob_redirect(policy: &str, location: &'static str) -> (Config, Run) {
    let cfg = config(&[("blob_redirect", policy)]);
    let req = incoming(
        Method::GET,
        &format!("/v2/web/blobs/{D}"),
        &[
            ("authorization", "Bearer tok"),
            ("range", "bytes=5-"),
            ("cookie", "c=1"),
        ],
    );
    let run = drive(&cfg, req, b"", move |r| {
        Ok(match r.uri().authority().map(|a| a.as_str()) {
            Some("127.0.0.1:5000") => Canned::new(307)
                .header("location", location)
                .header("link", "</v2/web/tags/list>; rel=\"next\"")
                .body("<a href=\"...\">Temporary Redirect</a>"),
            _ => Canned::new(206)
                .header("content-range", "bytes 5-9/10")
                .header("link", "<http://127.0.0.3:5002/x>; rel=\"next\"")
                .body("56789"),
        })
    });
    (cfg, run)
}

const TABLE: &str = r#"[
    {"name": "hub", "host": "hub.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "library": true, "mirrors": ["docker.io"]},
    {"name": "ghcr", "host": "images.example.com", "path": "ghcr", "upstream": "http://127.0.0.5:5005",
     "auth": "http://127.0.0.5:5005"},
    {"name": "quay", "host": "images.example.com", "path": "quay", "upstream": "http://127.0.0.6:5006"},
    {"name": "mirror", "upstream": "http://127.0.0.7:5007", "mirrors": ["ghcr.io"]},
    {"name": "own", "host": "own.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "username": "robot", "password": "s3cret", "public": true}
]"#;

fn table() -> Config {
    config(&[("routes", TABLE)])
}

fn at(host: &'static str, method: Method, path_query: &str) -> Incoming {
    let mut req = incoming(method, path_query, &[]);
    req.headers.insert("host", HeaderValue::from_static(host));
    req
}

fn manifest_ok() -> Canned {
    Canned::new(200)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header("docker-content-digest", D)
        .body("{}")
}

const INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BLOB: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

mod cached;
mod listings;
mod own_credentials;
mod push;
mod redirects;
mod registry;
mod routes;
mod token_endpoint;
mod users;
