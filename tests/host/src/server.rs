//! The HTTP front end, after Spin's trigger: hyper serving HTTP/1.1, and HTTP/2 to a client
//! that opens with its preface (hyper-util's `auto` builder, as Spin's server uses); one tokio
//! task per connection, one fresh instance per request, bodies streamed both ways.

use crate::app::{App, ComponentHandler};
use crate::routes::{self, Match};
use crate::spin_costs::{pays, Cost};
use anyhow::{bail, Context, Result};
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// What an HTTP/2 client sends first (RFC 9113 3.4), without an HTTP/1.1 Upgrade.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub async fn serve(app: Arc<App>, listener: TcpListener) -> Result<()> {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(conn) => conn,
            // Per-connection failures (e.g. the client already reset) must not stop the server.
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(app, stream, client).await {
                eprintln!("connection from {client}: {e:#}");
            }
        });
    }
}

/// A TLS ClientHello meets hyper's parser, as in Spin: a 400 and the connection closed.
/// A request `handle` refuses as Spin's trigger does (no usable Host) closes the connection
/// with no answer, as Spin's service error does.
async fn serve_connection(app: Arc<App>, stream: TcpStream, client: SocketAddr) -> Result<()> {
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { handle(app, req, client).await }
    });
    let h2 = opens_with_h2_preface(&stream).await?;
    let io = TokioIo::new(stream);
    if h2 {
        http2::Builder::new(Spawner)
            .serve_connection(io, service)
            .await
            .context("HTTP/2 connection error")
    } else {
        http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .await
            .context("HTTP/1.1 connection error")
    }
}

/// Whether the client's first bytes are HTTP/2's preface. Looks without reading, so that
/// hyper reads them again; a client that sends the preface in pieces is waited for (`peek`
/// gives back what it already has at once, hence the pauses, longer each time).
async fn opens_with_h2_preface(stream: &TcpStream) -> Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Runs HTTP/2's stream tasks on tokio, as hyper-util's `TokioExecutor` does for Spin.
#[derive(Clone, Copy)]
struct Spawner;

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

async fn handle(
    app: Arc<App>,
    mut req: Request<Incoming>,
    client: SocketAddr,
) -> Result<Response<HyperOutgoingBody>> {
    // Spin's hyper refuses a target with bytes outside ASCII as it parses it (this host's
    // `http` takes them): a 400 with no body, and the connection closed.
    if !req
        .uri()
        .path_and_query()
        .is_none_or(|pq| pq.as_str().is_ascii())
    {
        let mut resp = own_response(StatusCode::BAD_REQUEST, "");
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    strip_service_chaining_host(&mut req);
    let path = req.uri().path().to_string();
    if pays(Cost::Trigger) {
        tracing::info!("Processing request on path '{path}'");
    }
    if let Some(well_known) = path.strip_prefix("/.well-known/spin/") {
        return Ok(match well_known {
            "health" => own_response(StatusCode::OK, "OK"),
            _ => own_response(StatusCode::NOT_FOUND, ""),
        });
    }
    let Some((matched, handler)) = routes::best_match(&app.routes, &path)
        .and_then(|(i, m)| Some((m, app.handlers.get(i)?.clone())))
    else {
        return Ok(own_response(StatusCode::NOT_FOUND, ""));
    };
    let authority = request_authority(&req)?;
    if pays(Cost::Trigger) {
        tracing::trace!(
            counter.spin.request_count = 1,
            trigger_type = "http",
            component_id = &*handler.id
        );
    }
    // Spin copies every header value out as UTF-8 text before it runs the component
    // (`prepare_request_headers`), and answers 500 without running it when one is not.
    if req
        .headers()
        .values()
        .any(|v| std::str::from_utf8(v.as_bytes()).is_err())
    {
        eprintln!("Error processing request on {path}: a header value is not UTF-8");
        return Ok(own_response(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }
    let req = match spin_request(req, authority, &matched, client) {
        Ok(req) => req,
        Err(e) => {
            eprintln!("Error processing request on {path}: {e:#}");
            return Ok(own_response(StatusCode::INTERNAL_SERVER_ERROR, ""));
        }
    };
    // The spans Spin's trigger opens per request (`#[instrument]` on its handler and executor).
    let span = tracing::info_span!(
        "spin_trigger_http.handle_http_request",
        otel.kind = "server",
        url.path = %path,
    );
    let execute = tracing::info_span!(parent: &span, "spin_trigger_http.execute_wasm",
        otel.name = %format_args!("execute_wasm_component {}", handler.id));
    Ok(
        match run_component(&handler, req).instrument(execute).await {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("component {:?} failed on {path}: {e:#}", handler.id);
                own_response(StatusCode::INTERNAL_SERVER_ERROR, "")
            }
        },
    )
}

/// Spin's trigger takes a Host naming `*.spin.internal` (its service chaining) away.
fn strip_service_chaining_host(req: &mut Request<Incoming>) {
    let chaining = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .is_some_and(|a| a.host().ends_with(".spin.internal"));
    if chaining {
        req.headers_mut().remove(HOST);
    }
}

/// The request's authority as Spin's trigger finds it (`set_req_uri`): the Host header or the
/// target's own (HTTP/2's `:authority`, an absolute-form target), the same where both are
/// given. Where it fails, Spin's service fails, and hyper closes the connection unanswered.
fn request_authority(req: &Request<Incoming>) -> Result<Authority> {
    // CONNECT's target is an authority alone: Spin's trigger panics making a URI of it without
    // a path, and the connection closes unanswered.
    if req.uri().path_and_query().is_none() {
        bail!("the request's target has no path");
    }
    let from_host = req
        .headers()
        .get(HOST)
        .map(|h| -> Result<Authority> {
            let text = h.to_str().context("'Host' header is not valid UTF-8")?;
            text.parse()
                .context("'Host' header contains an invalid authority")
        })
        .transpose()?;
    match (from_host, req.uri().authority()) {
        (None, None) => bail!("no 'Host' header present in request"),
        (Some(a), None) => Ok(a),
        (None, Some(a)) => Ok(a.clone()),
        (Some(a), Some(b)) if a == *b => Ok(a),
        _ => bail!("authority in 'Host' header does not match authority in URI"),
    }
}

/// Gives the request what Spin's HTTP trigger gives it: an absolute `http://` URI with its
/// authority, and the `spin-*` headers (whose URL names the Host header, or `localhost`).
fn spin_request(
    req: Request<Incoming>,
    authority: Authority,
    matched: &Match<'_>,
    client: SocketAddr,
) -> Result<Request<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let host = match parts.headers.get(HOST) {
        Some(h) => h.to_str().context("Host header is not text")?.to_string(),
        None => "localhost".to_string(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let full_url = format!("http://{host}{path_and_query}");
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query.as_str())
        .build()
        .context("cannot form the request URL")?;

    let route = matched.route;
    let headers = [
        ("spin-full-url", full_url.as_str()),
        ("spin-path-info", matched.path_info),
        ("spin-matched-route", route.raw.as_str()),
        ("spin-base-path", "/"),
        ("spin-raw-component-route", route.raw.as_str()),
        ("spin-component-route", route.component_route()),
        ("spin-client-addr", &client.to_string()),
    ];
    // Appended, as Spin does: a client's own `spin-*` headers come first.
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).with_context(|| format!("invalid {name}"))?;
        parts.headers.append(HeaderName::from_static(name), value);
    }
    if pays(Cost::Trigger) {
        rebuild_headers(&mut parts.headers);
    }
    Ok(Request::from_parts(parts, body))
}

/// Spin's trigger hands the guest a header map rebuilt from strings: every header copied out
/// as a `String` pair, the map cleared, and each parsed back in order.
fn rebuild_headers(headers: &mut http::HeaderMap) {
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), value)
        })
        .collect();
    headers.clear();
    headers.extend(pairs.into_iter().filter_map(|(name, value)| {
        Some((
            name.parse::<HeaderName>().ok()?,
            HeaderValue::from_str(&value).ok()?,
        ))
    }));
}

async fn run_component(
    handler: &ComponentHandler,
    req: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>> {
    let mut store = handler.new_store()?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = handler.pre().clone();
    let id = handler.id.clone();

    // The guest keeps running after it has sent the response head, to stream the
    // body, so it runs in its own task and reports its own failure.
    let guest = tokio::spawn(
        async move {
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                store.data_mut().metrics.instantiated();
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            }
            .await;
            if let Err(e) = result {
                eprintln!("component {id:?} trapped: {e:?}");
            }
            if let Ok(used) = store.get_fuel().map(|f| u64::MAX - f) {
                let metrics = &store.data().metrics;
                let (calls, memory) = (metrics.host_calls, metrics.memory());
                eprintln!("guest fuel {id}: {used} host calls: {calls} memory: {memory}");
            }
        }
        .in_current_span(),
    );

    match receiver.await {
        Ok(Ok(resp)) => {
            if pays(Cost::Trigger) {
                // Spin's executor waits for the guest in a second task once the response is out.
                tokio::spawn(async move {
                    let _ = guest.await;
                });
            }
            Ok(resp)
        }
        Ok(Err(code)) => anyhow::bail!("component responded with error {code:?}"),
        Err(_) => anyhow::bail!("component returned without setting a response"),
    }
}

/// Spin's own answers: its errors (a component that failed, a request it would not pass on)
/// have no body; its health check says "OK".
fn own_response(status: StatusCode, body: &'static str) -> Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(hyper::body::Bytes::from_static(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}
