//! The Spin side: read the variables, turn WASI HTTP values into `http` ones and back, perform
//! the steps the exchange asks for, and move body bytes. It decides nothing about a response.

use crate::config::Config;
use crate::exchange::{Exchange, Incoming, Step, Write};
use crate::log::{self, Entry};
use crate::reply::{ClientBody, ClientResponse};
use crate::upstream_failure::Failure;
use spin_sdk::http::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, Method as WasiMethod, OutgoingBody,
    OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};
use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::{http_error_code, IncomingBody, RequestOptions};
use std::time::{Duration, Instant, SystemTime};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

/// Most bytes one read or splice moves. Upstream bodies are spliced (the runtime hands its
/// buffers from one stream to the other) and never flushed per chunk (the next splice overlaps
/// the sending): measured against copying 64 KiB through guest memory with a flush each, 27%
/// less CPU per GiB and 4 concurrent pulls 0.61 → 0.75 of direct, for about 1 MB more RSS per
/// concurrent pull; one blocking splice per chunk instead of a non-blocking one and a wait on
/// either side, 5% less CPU per GiB (tests/bench/speed.py). Hyper reads at most about 400 KiB
/// at a time, so a larger figure changes nothing (1 MiB measured the same).
const COPY_BYTES: u64 = 256 << 10;

/// The most of an upstream body the client does not get (a challenge, an error page, a
/// redirect) read to its end anyway: the runtime's connection pool (hyper's, in Spin as in the
/// test host) closes a connection whose response was dropped before its end, and the next
/// request to that upstream pays a new connection and TLS handshake. Such bodies are small; a
/// larger one costs more to read than a new connection.
const RELEASE_BYTES: u64 = 64 << 10;
/// How long the rest of such a body is waited for: a slow or stalling upstream costs this.
const RELEASE_WAIT: Duration = Duration::from_millis(100);
/// How long a response cut short stays open after its last byte: the runtime sends what it
/// holds only once it finds the body waiting, and cutting it sooner loses even the head.
const CUT_WAIT: Duration = Duration::from_millis(100);

/// What the log line reports about one request.
struct Served {
    status: u16,
    bytes: u64,
    /// Why the body stopped short, when it did.
    problem: Option<String>,
}

#[spin_sdk::http_component]
fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let started = Instant::now();
    let method = method_from_wasi(&req.method());
    let path_query = req.path_with_query().unwrap_or_else(|| "/".into());
    let path = path_query.split('?').next().unwrap_or("/").to_string();
    let head_only = method == http::Method::HEAD;
    let config = Config::from_variables(|name| spin_sdk::variables::get(name).ok());
    let (served, upstream, cause, after) = match config {
        Ok(config) => serve(config, req, out, method.clone(), &path_query),
        Err(e) => {
            let served = write(
                out,
                Exchange::unconfigured(&e, head_only),
                None,
                crate::config::DEFAULT_TIMEOUT,
            );
            let cause = Some(format!("spin-registry-proxy: {e}"));
            (served, None, cause, After::default())
        }
    };
    let cause = served.problem.or(cause);
    let mut lines = log::line(&Entry {
        method: method.as_str(),
        path: &path,
        status: served.status,
        upstream_status: upstream,
        bytes: served.bytes,
        elapsed: started.elapsed(),
        cause: cause.as_deref(),
    });
    if let Some(event) = after.pull_event {
        lines.push('\n');
        lines.push_str(&event);
    }
    write_log(&lines);
    // After the client has its answer: it waits for none of this.
    if !after.writes.is_empty() {
        let mut store = KeyValue::default();
        store.write(after.writes, 0);
    }
}

/// What is left to do once the client has its answer: the pull event to log, and the writes
/// that wait (the pull counts).
#[derive(Default)]
struct After {
    pull_event: Option<String>,
    writes: Vec<Write>,
}

/// Seconds since the Unix epoch, by the runtime's clock.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One line to stderr in one write: `eprintln!` writes the newline separately, and lines of
/// concurrent requests then run into each other. Straight to the stream, in one call where the
/// line fits the 4096 bytes a call may carry: std's stderr makes five calls into the runtime
/// for a line (a pollable, check-write, write, flush, the pollable's drop), about 0.9 µs each
/// on Spin.
fn write_log(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    let stderr = wasi::cli::stderr::get_stderr();
    for chunk in bytes.chunks(4096) {
        if stderr.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
}

/// Drives the exchange; returns what was sent, the last upstream status, the error cause and
/// what is left to do.
fn serve(
    config: Config,
    req: IncomingRequest,
    out: ResponseOutparam,
    method: http::Method,
    path_query: &str,
) -> (Served, Option<u16>, Option<String>, After) {
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_query.to_string(), None),
    };
    let now = now_secs();
    let mut random = [0u8; 32];
    for (i, b) in wasi::random::random::get_random_bytes(32)
        .into_iter()
        .take(32)
        .enumerate()
    {
        random[i] = b;
    }
    let incoming = Incoming {
        method,
        path,
        query,
        headers: headers_from_wasi(&req.headers()),
        scheme: req.scheme().map(|s| scheme_name(&s)),
        authority: req.authority(),
        now,
        random,
    };
    let mut request = Some(req);
    let (mut exchange, mut step) = Exchange::start(config, incoming);
    // The upstream response whose body a later step may read or stream.
    let mut last: Option<Upstream> = None;
    let mut store = KeyValue::default();
    loop {
        store.write(exchange.take_writes(), now);
        step = match step {
            Step::Load(keys) => exchange.on_loaded(store.load(&keys)),
            Step::Variables(names) => exchange.on_variables(
                names
                    .iter()
                    .map(|n| spin_sdk::variables::get(n).ok())
                    .collect(),
            ),
            Step::ReadRequest { limit } => {
                let body = request.take().and_then(|r| r.consume().ok());
                let from = Sender::Client(exchange.timeout());
                match body.map(|b| read_all(b, limit, from)) {
                    Some(Ok(bytes)) => exchange.on_request_body(bytes),
                    Some(Err(f)) => exchange.on_failure(f),
                    None => exchange.on_failure(Failure::Other("no request body".into())),
                }
            }
            Step::Send(request) => {
                release(last.take());
                let head_only = request.method() == http::Method::HEAD;
                match send(request, exchange.timeout()) {
                    Ok(response) => {
                        let head = head_from_wasi(&response);
                        last = Some(Upstream {
                            response,
                            head_only,
                        });
                        exchange.on_response(head)
                    }
                    Err(f) => exchange.on_failure(f),
                }
            }
            Step::Stream(request_head) => {
                release(last.take());
                let body = request.take().and_then(|r| r.consume().ok());
                let head_only = request_head.method() == http::Method::HEAD;
                match send_streaming(request_head, body, exchange.timeout()) {
                    Ok(response) => {
                        let head = head_from_wasi(&response);
                        last = Some(Upstream {
                            response,
                            head_only,
                        });
                        exchange.on_response(head)
                    }
                    Err(f) => exchange.on_failure(f),
                }
            }
            Step::ReadResponse { limit } => {
                let timeout = exchange.timeout();
                match last
                    .take()
                    .map(|u| read_response(u.response, limit, timeout))
                {
                    Some(Ok(body)) => exchange.on_body(body),
                    Some(Err(f)) => exchange.on_failure(f),
                    None => exchange.on_failure(Failure::Other("no response to read".into())),
                }
            }
            Step::Reply(response) => {
                let upstream = exchange.upstream_status.map(|s| s.as_u16());
                let cause = exchange.cause().map(String::from);
                let after = After {
                    pull_event: exchange.pull_event(),
                    writes: exchange.take_deferred(),
                };
                let timeout = exchange.timeout();
                return (
                    write(out, response, last.take(), timeout),
                    upstream,
                    cause,
                    after,
                );
            }
        };
    }
}

/// An upstream response, and whether it answers a HEAD (its body is empty by definition).
struct Upstream {
    response: IncomingResponse,
    head_only: bool,
}

/// Lets go of an upstream response the client does not get, read to its end when that is small
/// and (nearly) there, so that its connection goes back to the pool.
fn release(upstream: Option<Upstream>) {
    let Some(Upstream {
        response,
        head_only: false,
    }) = upstream
    else {
        return;
    };
    let declared = response.headers().get("content-length");
    let too_long = declared
        .first()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > RELEASE_BYTES);
    if too_long {
        return;
    }
    let Ok(body) = response.consume() else { return };
    let Ok(stream) = body.stream() else { return };
    let deadline = wasi::clocks::monotonic_clock::subscribe_duration(nanos(RELEASE_WAIT));
    let mut left = RELEASE_BYTES;
    loop {
        match stream.read(left) {
            Ok(chunk) if chunk.is_empty() => {
                if !ready_before(&stream.subscribe(), &deadline) {
                    return;
                }
            }
            Ok(chunk) => {
                left = left.saturating_sub(chunk.len() as u64);
                if left == 0 {
                    return;
                }
            }
            // The end (the connection is free again), or a failure that closed it.
            Err(_) => return,
        }
    }
}

/// Spin's `default` key-value store, opened on first use. A store that cannot be opened or
/// read is a store that knows nothing: the exchange then asks the upstream.
#[derive(Default)]
struct KeyValue(Option<Option<store::Bucket>>);

impl KeyValue {
    fn bucket(&mut self) -> Option<&store::Bucket> {
        self.0.get_or_insert_with(store::Bucket::open).as_ref()
    }

    fn load(&mut self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let bucket = self.bucket();
        keys.iter().map(|k| bucket.and_then(|b| b.get(k))).collect()
    }

    fn write(&mut self, writes: Vec<Write>, now: u64) {
        if writes.is_empty() {
            return;
        }
        let Some(bucket) = self.bucket() else { return };
        for w in writes {
            match w {
                Write::Set(k, v) => bucket.set(&k, &v),
                Write::Delete(k) => bucket.delete(&k),
                Write::Merge { key, entry, ways } => bucket.update(&key, |current| {
                    if crate::cache::holds(current, &entry) {
                        return None;
                    }
                    crate::cache::merge(current, &entry, now, ways)
                }),
                Write::Create { key, value } => {
                    bucket.update(&key, |current| current.is_none().then(|| value.clone()))
                }
                Write::Count {
                    key,
                    now,
                    repository,
                    user,
                    mark,
                } => bucket.count(&key, |current| {
                    crate::pull_stats::add(current, now, &repository, &user, &mark)
                }),
            }
        }
    }
}

/// The store through `wasi:keyvalue@0.2.0-draft2`, which every Spin since 3.0 links (on each
/// store it ships: SQLite, Redis, Azure Cosmos DB, AWS DynamoDB): its compare-and-swap makes a
/// bucket's read-merge-write lose nothing to a concurrent writer.
#[cfg(feature = "wasi-keyvalue")]
mod store {
    use crate::create_lock;
    use spin_sdk::wit::wasi::keyvalue::{atomics, store};

    pub struct Bucket(store::Bucket);

    impl Bucket {
        pub fn open() -> Option<Self> {
            store::open("default").ok().map(Self)
        }

        pub fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.get(key).ok().flatten()
        }

        pub fn set(&self, key: &str, value: &[u8]) {
            let _ = self.0.set(key, value);
        }

        pub fn delete(&self, key: &str) {
            let _ = self.0.delete(key);
        }

        /// Replaces the value at `key` with `change(current)` (`None`: it holds the change
        /// already), atomically; a kept entry given up after 16 lost races only costs a
        /// request later.
        pub fn update(&self, key: &str, change: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>) {
            self.merge(key, 16, change);
        }

        /// As `update`, for as long as other writers win (each lost race is another's
        /// success): counts are exact.
        pub fn count(&self, key: &str, add: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>) {
            self.merge(key, 1000, add);
        }

        /// The loop ends when a swap succeeds or when the value read holds the change: Spin
        /// 4.0.2 on Redis reports every swap as failed, the ones that wrote too, so only the
        /// value read back tells. `change` must therefore see its own change in a value.
        fn merge(
            &self,
            key: &str,
            tries: usize,
            change: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>,
        ) {
            let Ok(mut cas) = atomics::Cas::new(&self.0, key) else {
                // A store without compare-and-swap: read, change, write.
                if let Some(v) = change(self.get(key).as_deref()) {
                    self.set(key, &v);
                }
                return;
            };
            let mut errors = 0;
            for _ in 0..tries {
                let Ok(current) = cas.current() else { return };
                let Some(value) = change(current.as_deref()) else {
                    return;
                };
                if current.is_none() {
                    // A swap over an absent value compares nothing on Spin's SQLite store: the
                    // key is made under the lock, then read again (another creator's value,
                    // made first, is merged into).
                    self.create(key, &value);
                    cas = match atomics::Cas::new(&self.0, key) {
                        Ok(c) => c,
                        Err(_) => return,
                    };
                    continue;
                }
                cas = match atomics::swap(cas, &value) {
                    Ok(()) => return,
                    Err(atomics::CasError::CasFailed(newer)) => newer,
                    // Whether it wrote is unknown: read again, a few times.
                    Err(atomics::CasError::StoreError(_)) if errors < 2 => {
                        errors += 1;
                        match atomics::Cas::new(&self.0, key) {
                            Ok(c) => c,
                            Err(_) => return,
                        }
                    }
                    Err(atomics::CasError::StoreError(_)) => return,
                };
            }
        }

        /// Writes `value` at `key` if it is still absent, under `create_lock`. A lock not
        /// taken in time leaves the plain write, as before the lock: the change is read back
        /// either way.
        fn create(&self, key: &str, value: &[u8]) {
            let owner = wasi::random::random::get_random_u64();
            let taken = create_lock::take(self, owner);
            if self.get(key).is_none() {
                self.set(key, value);
            }
            if taken {
                create_lock::release(self, owner);
            }
        }
    }

    impl create_lock::LockStore for Bucket {
        type Cas = atomics::Cas;

        fn watch(&self, key: &str) -> Option<(atomics::Cas, Option<Vec<u8>>)> {
            let cas = atomics::Cas::new(&self.0, key).ok()?;
            let current = cas.current().ok()?;
            Some((cas, current))
        }

        fn swap(&self, cas: atomics::Cas, value: &[u8]) {
            let _ = atomics::swap(cas, value);
        }

        fn get(&self, key: &str) -> Option<Vec<u8>> {
            Bucket::get(self, key)
        }

        fn set(&self, key: &str, value: &[u8]) {
            Bucket::set(self, key, value)
        }

        fn increment(&self, key: &str) -> Option<i64> {
            atomics::increment(&self.0, key, 1).ok()
        }

        fn now_secs(&self) -> u64 {
            super::now_secs()
        }

        fn pause(&self) {
            super::wait(std::time::Duration::from_millis(1));
        }
    }
}

#[cfg(not(feature = "wasi-keyvalue"))]
mod store {
    use spin_sdk::key_value::Store;

    pub struct Bucket(Store);

    impl Bucket {
        pub fn open() -> Option<Self> {
            Store::open_default().ok().map(Self)
        }

        pub fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.get(key).ok().flatten()
        }

        pub fn set(&self, key: &str, value: &[u8]) {
            let _ = self.0.set(key, value);
        }

        pub fn delete(&self, key: &str) {
            let _ = self.0.delete(key);
        }

        /// Read, change, write; read back and change once more if a concurrent write undid it.
        pub fn update(&self, key: &str, change: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>) {
            for _ in 0..2 {
                let Some(value) = change(self.get(key).as_deref()) else {
                    return;
                };
                self.set(key, &value);
            }
        }

        /// As `update`: a count read back without its mark is added again.
        pub fn count(&self, key: &str, add: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>) {
            self.update(key, add);
        }
    }
}

fn method_from_wasi(m: &WasiMethod) -> http::Method {
    match m {
        WasiMethod::Get => http::Method::GET,
        WasiMethod::Head => http::Method::HEAD,
        WasiMethod::Post => http::Method::POST,
        WasiMethod::Put => http::Method::PUT,
        WasiMethod::Delete => http::Method::DELETE,
        WasiMethod::Connect => http::Method::CONNECT,
        WasiMethod::Options => http::Method::OPTIONS,
        WasiMethod::Trace => http::Method::TRACE,
        WasiMethod::Patch => http::Method::PATCH,
        WasiMethod::Other(s) => {
            http::Method::from_bytes(s.as_bytes()).unwrap_or(http::Method::OPTIONS)
        }
    }
}

fn method_to_wasi(m: &http::Method) -> WasiMethod {
    match *m {
        http::Method::GET => WasiMethod::Get,
        http::Method::HEAD => WasiMethod::Head,
        http::Method::POST => WasiMethod::Post,
        _ => WasiMethod::Other(m.to_string()),
    }
}

fn scheme_name(s: &Scheme) -> String {
    match s {
        Scheme::Http => "http".into(),
        Scheme::Https => "https".into(),
        Scheme::Other(o) => o.clone(),
    }
}

fn headers_from_wasi(fields: &Fields) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields.entries() {
        let name = http::HeaderName::from_bytes(name.as_bytes());
        let value = http::HeaderValue::from_bytes(&value);
        if let (Ok(n), Ok(v)) = (name, value) {
            map.append(n, v);
        }
    }
    map
}

/// In one call to the runtime; should it refuse one (a hop-by-hop name), field by field, the
/// refused ones left out rather than failing the request.
fn headers_to_wasi(map: &http::HeaderMap) -> Fields {
    let list: Vec<(String, Vec<u8>)> = map
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    if let Ok(fields) = Fields::from_list(&list) {
        return fields;
    }
    let fields = Fields::new();
    for (name, value) in map {
        let _ = fields.append(name.as_str(), value.as_bytes());
    }
    fields
}

fn head_from_wasi(resp: &IncomingResponse) -> http::Response<()> {
    let mut head = http::Response::new(());
    *head.status_mut() =
        http::StatusCode::from_u16(resp.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    *head.headers_mut() = headers_from_wasi(&resp.headers());
    head
}

fn failure(code: ErrorCode) -> Failure {
    match code {
        ErrorCode::DnsTimeout | ErrorCode::DnsError(_) | ErrorCode::DestinationNotFound => {
            Failure::Dns
        }
        ErrorCode::ConnectionRefused => Failure::Refused,
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => Failure::Timeout,
        ErrorCode::TlsProtocolError
        | ErrorCode::TlsCertificateError
        | ErrorCode::TlsAlertReceived(_) => Failure::Tls,
        ErrorCode::HttpRequestDenied => Failure::Denied,
        ErrorCode::ConnectionTerminated | ErrorCode::HttpResponseIncomplete => Failure::Reset,
        other => Failure::Other(format!("{other:?}")),
    }
}

fn stream_failure(e: StreamError) -> Failure {
    match e {
        StreamError::LastOperationFailed(err) => match http_error_code(&err) {
            Some(code) => failure(code),
            None => Failure::Other(err.to_debug_string()),
        },
        StreamError::Closed => Failure::Reset,
    }
}

/// How long a client's body may take to stream upstream: the runtime's first-byte timeout
/// runs from the request's start, so `upstream_timeout` there failed every push that took
/// longer to send (a 250 MB layer at 10 MB/s); the answer is timed from the body's end instead.
const SENDING_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// The runtime's request for `parts`, with the timeouts, and its body (still to be written).
fn outgoing(
    parts: &http::request::Parts,
    timeout: Duration,
    first_byte: Duration,
) -> Result<(OutgoingRequest, OutgoingBody, RequestOptions), Failure> {
    let bad = |what: &str| Failure::Other(format!("could not build the request: {what}"));
    let req = OutgoingRequest::new(headers_to_wasi(&parts.headers));
    req.set_method(&method_to_wasi(&parts.method))
        .map_err(|()| bad("method"))?;
    let scheme = match parts.uri.scheme_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    req.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    req.set_authority(authority.as_deref())
        .map_err(|()| bad("authority"))?;
    let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string());
    req.set_path_with_query(pq.as_deref())
        .map_err(|()| bad("path"))?;
    let outgoing_body = req.body().map_err(|()| bad("body"))?;
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(nanos(timeout)));
    let _ = options.set_first_byte_timeout(Some(nanos(first_byte)));
    let _ = options.set_between_bytes_timeout(Some(nanos(timeout)));
    Ok((req, outgoing_body, options))
}

fn wait(d: Duration) {
    wasi::clocks::monotonic_clock::subscribe_duration(nanos(d)).block();
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Waits for the upstream's answer to a request whose body has been written, `timeout` at most.
fn response(
    future: spin_sdk::wit::wasi::http0_2_0::types::FutureIncomingResponse,
    timeout: Duration,
) -> Result<IncomingResponse, Failure> {
    if !ready_within(&future.subscribe(), timeout) {
        return Err(Failure::Timeout);
    }
    match future.get() {
        Some(Ok(Ok(resp))) => Ok(resp),
        Some(Ok(Err(code))) => Err(failure(code)),
        _ => Err(Failure::Other("no response".into())),
    }
}

fn send(request: http::Request<Vec<u8>>, timeout: Duration) -> Result<IncomingResponse, Failure> {
    let (parts, body) = request.into_parts();
    let bad = |what: &str| Failure::Other(format!("could not build the request: {what}"));
    let (req, outgoing_body, options) = outgoing(&parts, timeout, timeout)?;
    let future = outgoing_handler::handle(req, Some(options)).map_err(failure)?;
    if !body.is_empty() {
        let stream = outgoing_body.write().map_err(|()| bad("body stream"))?;
        write_unflushed(&stream, &body, timeout).map_err(|(_, b)| b.upstream_failure())?;
        flush_request_body(&stream, timeout)?;
    }
    OutgoingBody::finish(outgoing_body, None).map_err(failure)?;
    response(future, timeout)
}

/// Sends a request whose body is the client's, moved by the runtime as it comes (a pushed
/// blob of any size in bounded memory). The client stopping short fails the request: the
/// upstream never takes part of a body for the whole.
fn send_streaming(
    request: http::Request<()>,
    body: Option<IncomingBody>,
    timeout: Duration,
) -> Result<IncomingResponse, Failure> {
    let (parts, ()) = request.into_parts();
    let bad = |what: &str| Failure::Other(format!("could not build the request: {what}"));
    let (req, outgoing_body, options) = outgoing(&parts, timeout, SENDING_LIMIT)?;
    let future = outgoing_handler::handle(req, Some(options)).map_err(failure)?;
    let input = body
        .as_ref()
        .map(|b| b.stream().map_err(|()| bad("client body")))
        .transpose()?;
    if let Some(input) = input {
        let output = outgoing_body.write().map_err(|()| bad("body stream"))?;
        let pump = Pump::new(&input, &output, timeout, false);
        loop {
            match pump.next(COPY_BYTES) {
                Ok(Some(_)) => {}
                // The runtime closes a body with a Content-Length once it has every byte.
                Ok(None) | Err(Stuck::Output(Blocked::Stream(StreamError::Closed))) => break,
                Err(Stuck::Output(b)) => return Err(b.upstream_failure()),
                Err(Stuck::Input(None)) => return Err(Failure::ClientStalled),
                Err(Stuck::Input(Some(e))) => return Err(stream_failure(e)),
            }
        }
        drop(pump);
        flush_request_body(&output, timeout)?;
    }
    OutgoingBody::finish(outgoing_body, None).map_err(failure)?;
    response(future, timeout)
}

/// Waits for a request body's bytes to leave. With a Content-Length the runtime closes the
/// body once it has every byte, as soon as the upstream's connection has taken them: a flush
/// then meets a closed stream, which is no failure (the answer says whether it was). Failing
/// there dropped the request as it was answered, a 502 that only timing decided.
fn flush_request_body(output: &OutputStream, timeout: Duration) -> Result<(), Failure> {
    match flush_within(output, timeout) {
        Ok(()) | Err(Blocked::Stream(StreamError::Closed)) => Ok(()),
        Err(b) => Err(b.upstream_failure()),
    }
}

/// Why bytes stopped going out on a stream.
enum Blocked {
    Stream(StreamError),
    /// Its reader took nothing for the timeout.
    Stalled,
}

impl Blocked {
    /// An upstream that stops taking a request's body is one that does not answer in time.
    fn upstream_failure(self) -> Failure {
        match self {
            Blocked::Stream(e) => stream_failure(e),
            Blocked::Stalled => Failure::Timeout,
        }
    }

    /// Why a client's answer stopped short, for the log.
    fn client_problem(self, timeout: Duration) -> String {
        match self {
            Blocked::Stream(e) => format!("client went away: {e:?}"),
            Blocked::Stalled => format!("client took nothing for {timeout:?}"),
        }
    }
}

/// The bytes `output` takes now, waiting for room `timeout` at most. The runtime waits for a
/// reader without end: a client that stops reading a blob held its instance, and the
/// upstream's connection, for as long as it kept its own open.
fn room(output: &OutputStream, timeout: Duration) -> Result<u64, Blocked> {
    loop {
        match output.check_write() {
            Ok(0) if !ready_within(&output.subscribe(), timeout) => return Err(Blocked::Stalled),
            Ok(0) => {}
            Ok(n) => return Ok(n),
            Err(e) => return Err(Blocked::Stream(e)),
        }
    }
}

/// Which side of a splice failed or held it up.
enum Stuck {
    /// The writing side: its reader failed or took nothing for the timeout.
    Output(Blocked),
    /// The reading side failed, or (`None`) sent nothing for the timeout.
    Input(Option<StreamError>),
}

/// Moves bytes from `input` to `output` as the runtime has them, without copying them through
/// guest memory, waiting for the side that holds them up `timeout` at most. Never the
/// runtime's blocking splice: after writing it waits for the reader to take the bytes, without
/// end. A chunk already there takes one call, as that does; one still to come, three.
struct Pump<'a> {
    input: &'a InputStream,
    output: &'a OutputStream,
    input_ready: wasi::io::poll::Pollable,
    output_ready: wasi::io::poll::Pollable,
    timeout: Duration,
    /// Whether the runtime times the input itself (an upstream's body, by its between-bytes
    /// timeout): then waiting for it takes no clock of ours.
    input_timed: bool,
}

impl<'a> Pump<'a> {
    fn new(
        input: &'a InputStream,
        output: &'a OutputStream,
        timeout: Duration,
        input_timed: bool,
    ) -> Self {
        Pump {
            input,
            output,
            input_ready: input.subscribe(),
            output_ready: output.subscribe(),
            timeout,
            input_timed,
        }
    }

    /// Up to `most` bytes moved; `None` once the input has ended.
    fn next(&self, most: u64) -> Result<Option<u64>, Stuck> {
        let mut input_waited = false;
        loop {
            match self.output.splice(self.input, most) {
                Ok(0) => {}
                Ok(n) => return Ok(Some(n)),
                // Either side: the writing side's stream answers for itself.
                Err(e) => {
                    return match self.output.check_write() {
                        Err(e) => Err(Stuck::Output(Blocked::Stream(e))),
                        Ok(_) if matches!(e, StreamError::Closed) => Ok(None),
                        Ok(_) => Err(Stuck::Input(Some(e))),
                    }
                }
            }
            // Nothing moved: the input had nothing yet, or (once it has) the output no room.
            if !input_waited {
                if self.input_timed {
                    self.input_ready.block();
                } else if !ready_within(&self.input_ready, self.timeout) {
                    return Err(Stuck::Input(None));
                }
                input_waited = true;
            } else if ready_within(&self.output_ready, self.timeout) {
                input_waited = false;
            } else {
                return Err(Stuck::Output(Blocked::Stalled));
            }
        }
    }
}

/// Flushes `output` and waits for the flush to complete, `timeout` at most.
fn flush_within(output: &OutputStream, timeout: Duration) -> Result<(), Blocked> {
    output.flush().map_err(Blocked::Stream)?;
    room(output, timeout).map(|_| ())
}

/// Whether `pollable` is ready within `timeout`.
fn ready_within(pollable: &wasi::io::poll::Pollable, timeout: Duration) -> bool {
    ready_before(
        pollable,
        &wasi::clocks::monotonic_clock::subscribe_duration(nanos(timeout)),
    )
}

/// Whether `pollable` is ready before the clock's `deadline` is: one deadline made once bounds
/// several waits in all.
fn ready_before(pollable: &wasi::io::poll::Pollable, deadline: &wasi::io::poll::Pollable) -> bool {
    wasi::io::poll::poll(&[pollable, deadline]).contains(&0)
}

/// Whose body a read takes, and how long all of it may take. The runtime times an upstream's
/// between bytes only, and a client's not at all; but a body read whole is the client's wait
/// for its answer, so one that drips (a byte every few seconds, each in time) holds the
/// instance no longer than one that stops (a thousand stalled token forms took every instance
/// Spin has).
#[derive(Clone, Copy)]
enum Sender {
    Upstream(Duration),
    Client(Duration),
}

fn read_all(body: IncomingBody, limit: usize, from: Sender) -> Result<Vec<u8>, Failure> {
    let (Sender::Upstream(timeout) | Sender::Client(timeout)) = from;
    let failed = |e: StreamError| match (from, e) {
        (Sender::Upstream(_), e) => stream_failure(e),
        (Sender::Client(_), StreamError::LastOperationFailed(err)) => {
            Failure::ClientBody(err.to_debug_string())
        }
        (Sender::Client(_), StreamError::Closed) => Failure::ClientBody("closed".into()),
    };
    let late = || match from {
        Sender::Upstream(_) => Failure::Timeout,
        Sender::Client(_) => Failure::ClientStalled,
    };
    let stream = body.stream().map_err(|()| match from {
        Sender::Upstream(_) => Failure::Other("body unavailable".into()),
        Sender::Client(_) => Failure::ClientBody("body unavailable".into()),
    })?;
    let deadline = wasi::clocks::monotonic_clock::subscribe_duration(nanos(timeout));
    let mut out = Vec::new();
    loop {
        match stream.read(COPY_BYTES) {
            Ok(chunk) if chunk.is_empty() => {
                if !ready_before(&stream.subscribe(), &deadline) {
                    return Err(late());
                }
            }
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > limit {
                    return Err(Failure::TooLarge);
                }
            }
            Err(StreamError::Closed) => return Ok(out),
            Err(e) => return Err(failed(e)),
        }
    }
}

fn read_response(
    resp: IncomingResponse,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let body = resp
        .consume()
        .map_err(|()| Failure::Other("body unavailable".into()))?;
    read_all(body, limit, Sender::Upstream(timeout))
}

/// Sends the response: the head, then its bytes or the upstream body streamed.
fn write(
    out: ResponseOutparam,
    r: ClientResponse,
    upstream: Option<Upstream>,
    timeout: Duration,
) -> Served {
    let (head, body) = r.into_parts();
    let status = head.status().as_u16();
    let expected = head
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let resp = OutgoingResponse::new(headers_to_wasi(head.headers()));
    let _ = resp.set_status_code(status);
    let served = |bytes, problem| Served {
        status,
        bytes,
        problem,
    };
    if body == ClientBody::None {
        // A HEAD keeps the GET's Content-Length, so its body is never taken: the runtime
        // would check a taken body against that length.
        ResponseOutparam::set(out, resp);
        release(upstream);
        return served(0, None);
    }
    let Ok(outgoing_body) = resp.body() else {
        return served(0, Some("response body unavailable".into()));
    };
    ResponseOutparam::set(out, resp);
    let Ok(output) = outgoing_body.write() else {
        return served(0, Some("response body unavailable".into()));
    };
    let (copied, unused) = match body {
        ClientBody::Bytes(bytes) | ClientBody::Stored(bytes) => (
            write_all(&output, &bytes, timeout)
                .map(|()| bytes.len() as u64)
                .map_err(|(n, b)| (n as u64, b.client_problem(timeout))),
            upstream,
        ),
        ClientBody::Upstream => {
            // A 304's `Content-Length` may be its 200's; neither it nor a 204 has a body.
            let declared = expected.filter(|_| !matches!(status, 204 | 304));
            let response = upstream.map(|u| u.response);
            (copy_upstream(response, &output, declared, timeout), None)
        }
        ClientBody::None => (Ok(0), upstream),
    };
    match copied {
        Ok(n) => {
            drop(output);
            let _ = OutgoingBody::finish(outgoing_body, None);
            // After the client has its answer: it waits for none of this.
            release(unused);
            served(n, None)
        }
        // A client that closes once it has every byte it was promised has not failed.
        Err((n, _)) if Some(n) == expected => served(n, None),
        // Not finishing the body makes the runtime cut the response: the client sees a
        // failed transfer, never a short blob that looks whole. The head and what did come
        // go out first, or the client reads an empty reply.
        Err((n, problem)) => {
            if flush_within(&output, CUT_WAIT).is_ok() {
                wait(CUT_WAIT);
            }
            served(n, Some(problem))
        }
    }
}

/// Copies the upstream body to the client; on failure, the bytes the client got and why.
///
/// With a declared length the last byte waits until the upstream's body has ended right after
/// it. A body that runs on past the length it declared (an upstream sending `Content-Length`
/// beside chunked framing, which wins) would otherwise reach the client as whole: the runtime
/// refuses the bytes beyond the length only after the declared ones have left.
fn copy_upstream(
    upstream: Option<IncomingResponse>,
    output: &OutputStream,
    declared: Option<u64>,
    timeout: Duration,
) -> Result<u64, (u64, String)> {
    let Some(body) = upstream.and_then(|u| u.consume().ok()) else {
        return Ok(0);
    };
    let input: InputStream = body
        .stream()
        .map_err(|()| (0, "upstream body unavailable".to_string()))?;
    let held = declared.map_or(0, |n| n.min(1));
    let mut moved = 0u64;
    let pump = Pump::new(&input, output, timeout, true);
    loop {
        let left = declared.map_or(COPY_BYTES, |n| (n - held - moved).min(COPY_BYTES));
        if left == 0 {
            break;
        }
        match pump.next(left) {
            Ok(Some(n)) => moved += n,
            Ok(None) => break,
            Err(Stuck::Output(b)) => return Err((moved, b.client_problem(timeout))),
            Err(Stuck::Input(e)) => {
                let f = e.map_or(Failure::Timeout, stream_failure);
                return Err((moved, format!("upstream body interrupted: {f:?}")));
            }
        }
    }
    drop(pump);
    if let Some(n) = declared {
        let tail = read_to_end(&input, held + 1)
            .map_err(|f| (moved, format!("upstream body interrupted: {f:?}")))?;
        if moved + tail.len() as u64 != n {
            let got = moved + tail.len() as u64;
            let how = if got > n { "more" } else { "fewer" };
            return Err((
                moved,
                format!("upstream body has {how} bytes than its length {n}"),
            ));
        }
        write_unflushed(output, &tail, timeout)
            .map_err(|(_, b)| (moved, b.client_problem(timeout)))?;
        moved = n;
    }
    flush_within(output, timeout).map_err(|b| (moved, b.client_problem(timeout)))?;
    drop(input);
    drop(body);
    Ok(moved)
}

/// What is left of a stream, up to `most` bytes (more is not read: the caller only needs to
/// know there is more).
fn read_to_end(input: &InputStream, most: u64) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    while (out.len() as u64) < most {
        match input.blocking_read(most - out.len() as u64) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(stream_failure(e)),
        }
    }
    Ok(out)
}

/// Writes and flushes all of `bytes`, waiting for the reader to take them as needed; on
/// failure, how many bytes the runtime had accepted.
fn write_all(
    output: &OutputStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), (usize, Blocked)> {
    write_unflushed(output, bytes, timeout)?;
    flush_within(output, timeout).map_err(|b| (bytes.len(), b))
}

/// Writes all of `bytes` as the runtime makes room for them, without waiting for them to
/// leave: the next read overlaps their sending.
fn write_unflushed(
    output: &OutputStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), (usize, Blocked)> {
    let mut done = 0;
    while done < bytes.len() {
        let permit = room(output, timeout).map_err(|b| (done, b))?;
        let n = (bytes.len() - done).min(usize::try_from(permit).unwrap_or(usize::MAX));
        output
            .write(&bytes[done..done + n])
            .map_err(|e| (done, Blocked::Stream(e)))?;
        done += n;
    }
    Ok(())
}
