//! The least a Spin component does to proxy a request: read one variable (the upstream), send
//! the method, path and headers there, and stream the answer back. What the proxy spends per
//! request above this is its own.

use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;

#[spin_sdk::http_component]
fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let upstream = spin_sdk::variables::get("upstream").unwrap_or_default();
    let (scheme, authority) = match upstream.split_once("://") {
        Some(("https", a)) => (Scheme::Https, a.trim_end_matches('/').to_string()),
        Some((_, a)) => (Scheme::Http, a.trim_end_matches('/').to_string()),
        None => return fail(out),
    };
    let headers = Fields::new();
    for (name, value) in req.headers().entries() {
        if name != "host" {
            let _ = headers.append(&name, &value);
        }
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
    let _ = answer.set_status_code(resp.status());
    if matches!(method, Method::Head) {
        return ResponseOutparam::set(out, answer);
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

fn fail(out: ResponseOutparam) {
    let answer = OutgoingResponse::new(Fields::new());
    let _ = answer.set_status_code(502);
    ResponseOutparam::set(out, answer);
}
