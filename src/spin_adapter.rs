//! The Spin side: read the variables, turn WASI HTTP values into `http` ones and back,
//! perform the upstream requests the exchange asks for, and move body bytes host-side.

use crate::config::Config;
use crate::error::OciError;
use crate::exchange::{Exchange, Failure, Incoming, Step};
use spin_sdk::http::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, Method as WasiMethod, OutgoingBody,
    OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};
use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::{IncomingBody, RequestOptions};
use std::time::{Duration, Instant};

/// Bytes copied per read. Copying through guest memory and flushing each chunk keeps one chunk
/// in flight per body; a host-side splice held the runtime's receive buffers until the client
/// took the bytes (measured: about 1 MB more per concurrent pull, at no better throughput).
const COPY_BYTES: u64 = 64 << 10;

#[spin_sdk::http_component]
fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let started = Instant::now();
    let method = method_from_wasi(&req.method());
    let path_query = req.path_with_query().unwrap_or_else(|| "/".into());
    let path = path_query.split('?').next().unwrap_or("/").to_string();
    let (status, upstream, bytes) = serve(req, out, method.clone(), &path_query);
    log(&crate::log::line(
        method.as_str(),
        &path,
        status,
        upstream,
        bytes,
        started.elapsed(),
    ));
}

/// One line to stderr in one write: `eprintln!` writes the newline separately, and lines of
/// concurrent requests then run into each other.
fn log(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn config() -> Result<Config, String> {
    let config = Config::from_variables(|name| spin_sdk::variables::get(name).ok());
    config.map_err(|e| e.to_string())
}

/// Returns the status sent, the last upstream status and the body bytes sent.
fn serve(
    req: IncomingRequest,
    out: ResponseOutparam,
    method: http::Method,
    path_query: &str,
) -> (u16, Option<u16>, u64) {
    let head_only = method == http::Method::HEAD;
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            log(&format!("spin-registry-proxy: {e}"));
            let r = OciError::config(e).response(head_only);
            return (respond(out, r, head_only), None, 0);
        }
    };
    let timeout = config.upstream_timeout;
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_query.to_string(), None),
    };
    let incoming = Incoming {
        method,
        path,
        query,
        headers: headers_from_wasi(&req.headers()),
        scheme: req.scheme().map(|s| scheme_name(&s)),
        authority: req.authority(),
    };
    let body = if incoming.wants_body() {
        match read_request_body(req, crate::token::MAX_FORM_BYTES) {
            Some(b) => b,
            None => {
                let e = OciError::new(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "UNSUPPORTED",
                    "token request too large",
                );
                return (respond(out, e.response(head_only), head_only), None, 0);
            }
        }
    } else {
        Vec::new()
    };
    let (mut exchange, mut step) = Exchange::start(config, incoming, body);
    // The upstream response whose body a later step may read or stream.
    let mut last: Option<IncomingResponse> = None;
    loop {
        let upstream = exchange.upstream_status.map(|s| s.as_u16());
        step = match step {
            Step::Send(request) => {
                last = None;
                match send(request, timeout) {
                    Ok(resp) => {
                        let head = head_from_wasi(&resp);
                        last = Some(resp);
                        exchange.on_response(head)
                    }
                    Err(f) => exchange.on_failure(f),
                }
            }
            Step::ReadBody { limit } => match last.take().map(|r| read_response_body(r, limit)) {
                Some(Ok(body)) => exchange.on_body(body),
                Some(Err(f)) => exchange.on_failure(f),
                None => exchange.on_failure(Failure::Unreachable("no response to read".into())),
            },
            Step::Respond(r) => {
                let bytes = if head_only { 0 } else { r.body().len() as u64 };
                return (respond(out, r, head_only), upstream, bytes);
            }
            Step::Stream(head) => {
                let status = head.status().as_u16();
                let bytes = stream(out, head, last.take(), head_only);
                return (status, upstream, bytes);
            }
        };
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

/// Fields the runtime refuses (hop-by-hop names) are left out rather than failing the request.
fn headers_to_wasi(map: &http::HeaderMap) -> Fields {
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
    let detail = format!("{code:?}");
    match code {
        ErrorCode::HttpRequestDenied => Failure::Denied(detail),
        ErrorCode::DnsTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => Failure::Timeout(detail),
        _ => Failure::Unreachable(detail),
    }
}

fn send(request: http::Request<Vec<u8>>, timeout: Duration) -> Result<IncomingResponse, Failure> {
    let (parts, body) = request.into_parts();
    let bad =
        |what: &str| Failure::Unreachable(format!("could not build the upstream request: {what}"));
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
    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let _ = options.set_connect_timeout(Some(nanos));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));

    let future = outgoing_handler::handle(req, Some(options)).map_err(failure)?;
    if !body.is_empty() {
        let stream = outgoing_body.write().map_err(|()| bad("body stream"))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Failure::Unreachable(format!("sending the request body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing_body, None).map_err(failure)?;
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(resp))) => Ok(resp),
        Some(Ok(Err(code))) => Err(failure(code)),
        _ => Err(Failure::Unreachable("no response".into())),
    }
}

fn read_all(body: IncomingBody, limit: usize) -> Result<Vec<u8>, Failure> {
    let stream = body
        .stream()
        .map_err(|()| Failure::Unreachable("body unavailable".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > limit {
                    return Err(Failure::TooLarge);
                }
            }
            Err(wasi::io::streams::StreamError::Closed) => return Ok(out),
            Err(e) => return Err(Failure::Unreachable(format!("reading the body: {e:?}"))),
        }
    }
}

fn read_request_body(req: IncomingRequest, limit: usize) -> Option<Vec<u8>> {
    read_all(req.consume().ok()?, limit).ok()
}

fn read_response_body(resp: IncomingResponse, limit: usize) -> Result<Vec<u8>, Failure> {
    let body = resp
        .consume()
        .map_err(|()| Failure::Unreachable("body unavailable".into()))?;
    read_all(body, limit)
}

fn outgoing_response(head: &http::response::Parts) -> OutgoingResponse {
    let resp = OutgoingResponse::new(headers_to_wasi(&head.headers));
    let _ = resp.set_status_code(head.status.as_u16());
    resp
}

/// A HEAD response keeps the `Content-Length` of the GET it stands for, so it is sent without
/// taking its body: the runtime checks a taken body against that length.
fn send_head_only(out: ResponseOutparam, resp: OutgoingResponse, status: http::StatusCode) -> u16 {
    ResponseOutparam::set(out, resp);
    status.as_u16()
}

/// Writes a complete response; returns its status.
fn respond(out: ResponseOutparam, r: http::Response<Vec<u8>>, head_only: bool) -> u16 {
    let (parts, body) = r.into_parts();
    let resp = outgoing_response(&parts);
    if head_only {
        return send_head_only(out, resp, parts.status);
    }
    let Ok(outgoing_body) = resp.body() else {
        return parts.status.as_u16();
    };
    ResponseOutparam::set(out, resp);
    if !body.is_empty() {
        let Ok(stream) = outgoing_body.write() else {
            return parts.status.as_u16();
        };
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return parts.status.as_u16(); // the client went away
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing_body, None);
    parts.status.as_u16()
}

/// Sends `head`, then splices the upstream body into the response host-side.
/// Returns the bytes moved. A body cut short upstream is not finished, so the client sees
/// the failure instead of a short blob.
fn stream(
    out: ResponseOutparam,
    head: http::Response<()>,
    upstream: Option<IncomingResponse>,
    head_only: bool,
) -> u64 {
    let (parts, ()) = head.into_parts();
    let resp = outgoing_response(&parts);
    if head_only {
        send_head_only(out, resp, parts.status);
        return 0;
    }
    let Ok(outgoing_body) = resp.body() else {
        return 0;
    };
    ResponseOutparam::set(out, resp);
    let Some(source) = upstream.and_then(|u| u.consume().ok()) else {
        let _ = OutgoingBody::finish(outgoing_body, None);
        return 0;
    };
    let (Ok(input), Ok(output)) = (source.stream(), outgoing_body.write()) else {
        return 0;
    };
    let mut moved = 0u64;
    loop {
        let chunk = match input.blocking_read(COPY_BYTES) {
            Ok(c) => c,
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(e) => {
                log(&format!(
                    "spin-registry-proxy: body interrupted after {moved} bytes: {e:?}"
                ));
                return moved;
            }
        };
        if let Err(e) = write_all(&output, &chunk).and_then(|()| output.blocking_flush()) {
            log(&format!(
                "spin-registry-proxy: client went away after {moved} bytes: {e:?}"
            ));
            return moved;
        }
        moved += chunk.len() as u64;
    }
    drop(output);
    drop(input);
    let _ = OutgoingBody::finish(outgoing_body, None);
    moved
}

/// Writes all of `bytes`, waiting for the client to take them as needed.
fn write_all(
    output: &wasi::io::streams::OutputStream,
    mut bytes: &[u8],
) -> Result<(), wasi::io::streams::StreamError> {
    while !bytes.is_empty() {
        let permit = output.check_write()?;
        if permit == 0 {
            output.subscribe().block();
            continue;
        }
        let n = bytes
            .len()
            .min(usize::try_from(permit).unwrap_or(usize::MAX));
        output.write(&bytes[..n])?;
        bytes = &bytes[n..];
    }
    Ok(())
}
