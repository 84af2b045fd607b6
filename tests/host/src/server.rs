//! The HTTP/1.1 front end, after `wasmtime serve`: one tokio task per connection,
//! one fresh instance per request, bodies streamed both ways.

use crate::app::{App, ComponentHandler};
use crate::routes::{self, Match};
use crate::spin_costs::{pays, Cost};
use anyhow::{Context, Result};
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// First byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn serve(app: Arc<App>, listener: TcpListener) -> Result<()> {
    let local = listener.local_addr()?;
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
            if let Err(e) = serve_connection(app, stream, client, local).await {
                eprintln!("connection from {client}: {e}");
            }
        });
    }
}

async fn serve_connection(
    app: Arc<App>,
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
) -> Result<()> {
    // hyper would answer a TLS ClientHello with a 400 at best; close at once
    // so an https client fails fast instead of waiting on a plain-HTTP port.
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE {
        return Ok(());
    }
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(app, req, client, local).await) }
    });
    http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .context("HTTP/1.1 connection error")
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    client: SocketAddr,
    local: SocketAddr,
) -> Response<HyperOutgoingBody> {
    let path = req.uri().path().to_string();
    if pays(Cost::Trigger) {
        tracing::info!("Processing request on path '{path}'");
    }
    let Some((matched, handler)) = routes::best_match(&app.routes, &path)
        .and_then(|(i, m)| Some((m, app.handlers.get(i)?.clone())))
    else {
        return text_response(StatusCode::NOT_FOUND, "Not Found\n");
    };
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
        return empty_response(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let req = match spin_request(req, &matched, client, local) {
        Ok(req) => req,
        Err(e) => {
            eprintln!("bad request for {path}: {e:#}");
            return text_response(StatusCode::BAD_REQUEST, "Bad Request\n");
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
    match run_component(&handler, req).instrument(execute).await {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!("component {:?} failed on {path}: {e:#}", handler.id);
            empty_response(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Gives the request what Spin's HTTP trigger gives it: an absolute `http://` URI
/// with the Host header's authority, and the `spin-*` headers.
fn spin_request(
    req: Request<Incoming>,
    matched: &Match<'_>,
    client: SocketAddr,
    local: SocketAddr,
) -> Result<Request<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let host = match parts.headers.get(HOST) {
        Some(h) => h.to_str().context("Host header is not text")?.to_string(),
        None => local.to_string(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let full_url = format!("http://{host}{path_and_query}");
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(host.as_str())
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

/// Spin's own error answers (a component that failed, a request it would not pass on) have no
/// body.
fn empty_response(status: StatusCode) -> Response<HyperOutgoingBody> {
    let body = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

fn text_response(status: StatusCode, text: &'static str) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
