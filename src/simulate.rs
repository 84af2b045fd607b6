//! Exchanges without a runtime: a scripted driver that plays the adapter's part, generators
//! of hostile clients and upstreams, and the invariants every exchange must keep. Used by the
//! unit tests and by the fuzz targets (`tests/fuzz`, feature `simulate`).

mod generators;
mod invariants;

pub use generators::{
    canned, config, incoming, Seeded, Source, AUTH, CDN, EVIL, TOKEN_SECRET, UPSTREAM, USERS,
};
pub use invariants::check;

use crate::config::Config;
use crate::exchange::{Exchange, Incoming, Step, Write};
use crate::reply::{ClientBody, ClientResponse};
use crate::routes::Route;
use crate::upstream_failure::Failure;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
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
