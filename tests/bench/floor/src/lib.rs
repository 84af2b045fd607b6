//! The least a Spin component does to proxy a request: read one variable (the upstream), send
//! the method, path and headers there, and stream the answer back. What the proxy spends per
//! request above this is its own.
//!
//! Under `/-/answer` it answers by itself instead (a 200 with three headers, nothing upstream),
//! doing only what the query names of what the proxy does to answer from its store: `log` (one
//! stderr line), `kv=N` (open the store, read N keys), `vars=N` (read N variables), `calls=N`
//! (N calls to the runtime's clock, the cheapest call there is). That is the
//! runtime's own price for those operations: the floor for an answer from the store.
//!
//! A forwarded request with an `X-Floor-As-Proxy` header also reads the proxy's `config`
//! variable and writes one stderr line once answered, as the proxy does for every request: the
//! floor for a request the proxy forwards.

use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;

#[spin_sdk::http_component]
fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let path = req.path_with_query().unwrap_or_default();
    if let Some(query) = path.strip_prefix("/-/answer") {
        let head = matches!(req.method(), Method::Head);
        return answer(query.trim_start_matches('?'), head, out);
    }
    let upstream = spin_sdk::variables::get("upstream").unwrap_or_default();
    let (scheme, authority) = match upstream.split_once("://") {
        Some(("https", a)) => (Scheme::Https, a.trim_end_matches('/').to_string()),
        Some((_, a)) => (Scheme::Http, a.trim_end_matches('/').to_string()),
        None => return fail(out),
    };
    let headers = Fields::new();
    let mut as_proxy = false;
    for (name, value) in req.headers().entries() {
        as_proxy |= name == "x-floor-as-proxy";
        if name != "host" {
            let _ = headers.append(&name, &value);
        }
    }
    if as_proxy {
        let _ = spin_sdk::variables::get("config");
    }
    let outgoing = OutgoingRequest::new(headers);
    let method: Method = req.method();
    let _ = outgoing.set_method(&method);
    let _ = outgoing.set_scheme(Some(&scheme));
    let _ = outgoing.set_authority(Some(&authority));
    let _ = outgoing.set_path_with_query(req.path_with_query().as_deref());
    let Ok(body) = outgoing.body() else {
        return fail(out);
    };
    let Ok(future) = outgoing_handler::handle(outgoing, None) else {
        return fail(out);
    };
    let _ = OutgoingBody::finish(body, None);
    future.subscribe().block();
    let Some(Ok(Ok(resp))) = future.get() else {
        return fail(out);
    };
    let answer = OutgoingResponse::new(resp.headers().clone());
    let status = resp.status();
    let _ = answer.set_status_code(status);
    if matches!(method, Method::Head) {
        ResponseOutparam::set(out, answer);
        if as_proxy {
            write_log(&format!("HEAD {} status={status} bytes=0", path));
        }
        return;
    }
    let Ok(answer_body) = answer.body() else {
        return;
    };
    ResponseOutparam::set(out, answer);
    let (Ok(incoming), Ok(output)) = (resp.consume(), answer_body.write()) else {
        return;
    };
    let Ok(input) = incoming.stream() else {
        return;
    };
    while output.blocking_splice(&input, 1 << 20).is_ok() {}
    drop(input);
    drop(output);
    let _ = OutgoingBody::finish(answer_body, None);
}

fn answer(query: &str, head: bool, out: ResponseOutparam) {
    let count = |name: &str| {
        query
            .split('&')
            .find_map(|kv| {
                kv.strip_prefix(name)?
                    .strip_prefix('=')?
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let mut seen = 0;
    for i in 0..count("vars") {
        // `config` as the proxy's spin.toml composes it (eleven variables, one read).
        let name = ["config", "upstream"][i % 2];
        seen += spin_sdk::variables::get(name).map_or(0, |v| v.len());
    }
    // `get=NAME`: reads that component variable (Spin resolves each application variable its
    // template names, one by one).
    for name in query.split('&').filter_map(|kv| kv.strip_prefix("get=")) {
        seen += spin_sdk::variables::get(name).map_or(0, |v| v.len());
    }
    // `calls=N`: N of the cheapest calls into the runtime (the wall clock): what a call costs
    // it beyond the guest's own work, to weigh how many the proxy makes.
    for _ in 0..count("calls") {
        seen += wasi::clocks::wall_clock::now().nanoseconds as usize & 1;
    }
    let keys = count("kv");
    if keys > 0 {
        // The interface the proxy reads its store through.
        if let Ok(bucket) = spin_sdk::wit::wasi::keyvalue::store::open("default") {
            for i in 0..keys {
                let value = bucket.get(&format!("floor-{i}")).ok().flatten();
                seen += value.map_or(0, |v| v.len());
            }
        }
    }
    if query.split('&').any(|kv| kv == "log") {
        write_log(&format!("HEAD /-/answer status=200 bytes=0 seen={seen}"));
    }
    let headers = Fields::new();
    let _ = headers.append(
        "content-type",
        b"application/vnd.oci.image.manifest.v1+json",
    );
    let _ = headers.append(
        "docker-content-digest",
        b"sha256:0000000000000000000000000000000000000000000000000000000000000000",
    );
    // A HEAD tells the length of what a GET would send (here, nothing).
    let _ = headers.append("content-length", if head { b"1024" } else { b"0" });
    let answer = OutgoingResponse::new(headers);
    let _ = answer.set_status_code(200);
    ResponseOutparam::set(out, answer);
}

fn fail(out: ResponseOutparam) {
    let answer = OutgoingResponse::new(Fields::new());
    let _ = answer.set_status_code(502);
    ResponseOutparam::set(out, answer);
}

/// One line to stderr in one call, as the proxy writes its log.
fn write_log(line: &str) {
    let stderr = wasi::cli::stderr::get_stderr();
    let _ = stderr.blocking_write_and_flush(format!("{line}\n").as_bytes());
}
