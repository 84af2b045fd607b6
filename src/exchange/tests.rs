use super::*;

const D: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const UP: &str = "http://127.0.0.1:5000";

fn config(extra: &[(&str, &str)]) -> Config {
    Config::from_variables(|k| {
        let defaults = [
            ("upstream", UP),
            ("upstream_auth", "http://127.0.0.2:5001"),
            ("upstream_cdn", "http://127.0.0.3:5002"),
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
    h.insert("host", HeaderValue::from_static("images.example.com:3000"));
    for (k, v) in headers {
        h.append(*k, HeaderValue::from_static(v));
    }
    Incoming {
        method,
        path,
        query,
        headers: h,
        scheme: Some("http".into()),
        authority: None,
    }
}

fn start(cfg: Config, req: Incoming) -> (Exchange, Step) {
    Exchange::start(cfg, req, Vec::new())
}

fn sent(step: Step) -> Request<Vec<u8>> {
    match step {
        Step::Send(r) => r,
        other => panic!("expected Send, got {other:?}"),
    }
}

fn streamed(step: Step) -> Response<()> {
    match step {
        Step::Stream(r) => r,
        other => panic!("expected Stream, got {other:?}"),
    }
}

fn responded(step: Step) -> Response<Vec<u8>> {
    match step {
        Step::Respond(r) => r,
        other => panic!("expected Respond, got {other:?}"),
    }
}

fn upstream(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(*k, HeaderValue::from_static(v));
    }
    r
}

fn header<'a, B>(r: &'a Response<B>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn error_code(r: &Response<Vec<u8>>) -> String {
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

#[test]
fn base_challenge_names_the_proxy_realm() {
    let (mut ex, step) = start(config(&[]), incoming(Method::GET, "/v2/", &[]));
    let req = sent(step);
    assert_eq!(req.uri(), "http://127.0.0.1:5000/v2/");
    let head = upstream(
        401,
        &[(
            "www-authenticate",
            r#"Bearer realm="http://127.0.0.2:5001/token",service="registry.example""#,
        )],
    );
    let r = responded(ex.on_response(head));
    assert_eq!(error_code(&r), "UNAUTHORIZED");
    assert_eq!(
        header(&r, "www-authenticate"),
        r#"Bearer realm="http://images.example.com:3000/token",service="images.example.com:3000""#
    );
}

#[test]
fn manifest_head_maps_name_keeps_head_accept_and_drops_runtime_headers() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let req = incoming(
        Method::HEAD,
        "/v2/web/manifests/1.0?ns=docker.io",
        &[
            ("accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"),
            ("authorization", "Bearer abc"),
            ("spin-full-url", "http://images.example.com:3000/v2/web/manifests/1.0"),
            ("connection", "keep-alive"),
        ],
    );
    let (mut ex, step) = start(cfg, req);
    let up = sent(step);
    assert_eq!(up.method(), Method::HEAD);
    assert_eq!(
        up.uri(),
        "http://127.0.0.1:5000/v2/team/app/web/manifests/1.0"
    );
    assert_eq!(up.headers()["accept"], "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json");
    assert_eq!(up.headers()["authorization"], "Bearer abc");
    assert!(
        up.headers().get("spin-full-url").is_none() && up.headers().get("connection").is_none()
    );
    let head = upstream(
        401,
        &[(
            "www-authenticate",
            r#"Bearer realm="http://127.0.0.2:5001/token",service="reg",scope="repository:team/app/web:pull",error="insufficient_scope""#,
        )],
    );
    let r = responded(ex.on_response(head));
    assert!(r.body().is_empty(), "HEAD has no body");
    let c = challenge::parse(header(&r, "www-authenticate"));
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].param("realm"),
        Some("http://images.example.com:3000/token")
    );
    assert_eq!(c[0].param("scope"), Some("repository:web:pull"));
    assert_eq!(c[0].param("error"), Some("insufficient_scope"));
}

#[test]
fn quay_style_multi_challenge_becomes_one_bearer() {
    let (mut ex, step) = start(
        config(&[]),
        incoming(Method::GET, "/v2/a/manifests/latest", &[]),
    );
    sent(step);
    let head = upstream(
        401,
        &[(
            "www-authenticate",
            r#"Basic realm="quay.io", Bearer scope="repository:a:pull",service="quay.io",realm="http://127.0.0.1:5000/v2/auth""#,
        )],
    );
    let r = responded(ex.on_response(head));
    assert!(!String::from_utf8_lossy(r.body()).contains("quay"));
    assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 1);
    let c = challenge::parse(header(&r, "www-authenticate"));
    assert_eq!((c.len(), c[0].scheme.as_str()), (1, "bearer"));
    assert_eq!(
        c[0].param("realm"),
        Some("http://images.example.com:3000/token")
    );
}

#[test]
fn basic_upstream_challenge_gets_a_route_scope() {
    let (mut ex, step) = start(
        config(&[]),
        incoming(Method::HEAD, "/v2/private/x/manifests/1", &[]),
    );
    sent(step);
    let r = responded(ex.on_response(upstream(
        401,
        &[("www-authenticate", r#"Basic realm="Registry Realm""#)],
    )));
    let c = challenge::parse(header(&r, "www-authenticate"));
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(c[0].param("scope"), Some("repository:private/x:pull"));
}

#[test]
fn docker_hub_library_in_path() {
    let cfg = config(&[("upstream", "https://registry-1.docker.io")]);
    let (_, step) = start(cfg, incoming(Method::GET, "/v2/alpine/manifests/3.20", &[]));
    assert_eq!(
        sent(step).uri(),
        "https://registry-1.docker.io/v2/library/alpine/manifests/3.20"
    );
}

fn blob_redirect(policy: &str) -> (Exchange, Step) {
    let cfg = config(&[("blob_redirect", policy)]);
    let req = incoming(
        Method::GET,
        &format!("/v2/a/blobs/{D}"),
        &[("authorization", "Bearer secret"), ("range", "bytes=100-")],
    );
    let (mut ex, step) = start(cfg, req);
    sent(step);
    let step = ex.on_response(upstream(
        307,
        &[(
            "location",
            "http://127.0.0.3:5002/docker/registry/v2/blobs/x/data",
        )],
    ));
    (ex, step)
}

#[test]
fn pass_hands_the_cdn_redirect_to_the_client() {
    let (_, step) = blob_redirect("pass");
    let r = streamed(step);
    assert_eq!(r.status(), 307);
    assert_eq!(
        header(&r, "location"),
        "http://127.0.0.3:5002/docker/registry/v2/blobs/x/data"
    );
}

#[test]
fn follow_fetches_the_cdn_without_credentials_and_keeps_range() {
    let (mut ex, step) = blob_redirect("follow");
    let cdn = sent(step);
    assert_eq!(
        cdn.uri(),
        "http://127.0.0.3:5002/docker/registry/v2/blobs/x/data"
    );
    assert!(cdn.headers().get("authorization").is_none());
    assert_eq!(cdn.headers()["range"], "bytes=100-");
    let r = streamed(ex.on_response(upstream(
        206,
        &[
            ("content-range", "bytes 100-199/200"),
            ("content-length", "100"),
        ],
    )));
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 100-199/200");
    assert_eq!(header(&r, "docker-content-digest"), D);
}

#[test]
fn follow_refuses_hosts_not_configured() {
    let cfg = config(&[("blob_redirect", "follow")]);
    let (mut ex, step) = start(cfg, incoming(Method::GET, &format!("/v2/a/blobs/{D}"), &[]));
    sent(step);
    let r = responded(ex.on_response(upstream(
        302,
        &[("location", "https://storage.evil.example/x")],
    )));
    assert_eq!(r.status(), 502);
    assert!(String::from_utf8_lossy(r.body()).contains("https://storage.evil.example"));
}

#[test]
fn relative_redirect_is_followed_on_the_upstream_with_credentials() {
    // Artifact Registry answers blob GETs with a relative 302 to /artifacts-downloads/...
    let (mut ex, step) = start(
        config(&[]),
        incoming(
            Method::GET,
            &format!("/v2/a/blobs/{D}"),
            &[("authorization", "Bearer t")],
        ),
    );
    sent(step);
    let next = sent(ex.on_response(upstream(
        302,
        &[("location", "/artifacts-downloads/namespaces/p/x?sig=1")],
    )));
    assert_eq!(
        next.uri(),
        "http://127.0.0.1:5000/artifacts-downloads/namespaces/p/x?sig=1"
    );
    assert_eq!(next.headers()["authorization"], "Bearer t");
    let r = streamed(ex.on_response(upstream(200, &[("content-length", "5")])));
    assert_eq!(r.status(), 200);
}

#[test]
fn redirect_loops_end() {
    let (mut ex, step) = start(
        config(&[]),
        incoming(Method::GET, &format!("/v2/a/blobs/{D}"), &[]),
    );
    let mut step = step;
    for _ in 0..=MAX_HOPS {
        sent(step);
        step = ex.on_response(upstream(307, &[("location", "/again")]));
    }
    assert_eq!(responded(step).status(), 502);
}

#[test]
fn token_get_discovers_realm_and_maps_scopes() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let req = incoming(
        Method::GET,
        "/token?account=alice&service=images.example.com%3A3000&scope=repository%3Aweb%3Apull&scope=repository%3Adb%3Apull",
        &[("authorization", "Basic YWxpY2U6czNjcmV0")],
    );
    let (mut ex, step) = start(cfg, req);
    let probe = sent(step);
    assert_eq!(probe.uri(), "http://127.0.0.1:5000/v2/");
    assert!(probe.headers().get("authorization").is_none());
    let t = sent(ex.on_response(upstream(
        401,
        &[(
            "www-authenticate",
            r#"Bearer realm="http://127.0.0.2:5001/token",service="reg""#,
        )],
    )));
    assert_eq!(t.method(), Method::GET);
    assert_eq!(
        t.uri(),
        "http://127.0.0.2:5001/token?account=alice&service=reg&scope=repository%3Ateam%2Fapp%2Fweb%3Apull&scope=repository%3Ateam%2Fapp%2Fdb%3Apull"
    );
    assert_eq!(t.headers()["authorization"], "Basic YWxpY2U6czNjcmV0");
    let r = streamed(ex.on_response(upstream(200, &[("content-type", "application/json")])));
    assert_eq!(r.status(), 200);
}

#[test]
fn token_post_form_goes_to_the_realm_as_a_form() {
    let cfg = config(&[("repository_prefix", "p")]);
    let body = b"grant_type=password&username=alice&password=s3cret&scope=repository%3Aweb%3Apull&service=x&client_id=containerd-client".to_vec();
    let (mut ex, step) = Exchange::start(cfg, incoming(Method::POST, "/token", &[]), body);
    sent(step);
    let t = sent(ex.on_response(upstream(
        401,
        &[(
            "www-authenticate",
            r#"Bearer realm="http://127.0.0.2:5001/token",service="reg""#,
        )],
    )));
    assert_eq!(t.method(), Method::POST);
    assert_eq!(
        t.headers()["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form = String::from_utf8(t.body().clone()).unwrap();
    assert_eq!(form, "grant_type=password&username=alice&password=s3cret&client_id=containerd-client&service=reg&scope=repository%3Ap%2Fweb%3Apull");
}

#[test]
fn token_never_contacts_an_unconfigured_realm() {
    let (mut ex, step) = start(
        config(&[]),
        incoming(
            Method::GET,
            "/token?scope=repository%3Aa%3Apull",
            &[("authorization", "Basic eDp5")],
        ),
    );
    sent(step);
    let r = responded(ex.on_response(upstream(
        401,
        &[(
            "www-authenticate",
            r#"Bearer realm="http://127.0.0.4:9/token""#,
        )],
    )));
    assert_eq!(r.status(), 502);
    assert!(String::from_utf8_lossy(r.body()).contains("127.0.0.4"));
}

#[test]
fn basic_upstream_login_wraps_credentials_and_unwraps_them_upstream() {
    let req = incoming(
        Method::GET,
        "/token?account=alice",
        &[("authorization", "Basic YWxpY2U6czNjcmV0")],
    );
    let (mut ex, step) = start(config(&[]), req);
    sent(step);
    let check = sent(ex.on_response(upstream(
        401,
        &[("www-authenticate", r#"Basic realm="Registry Realm""#)],
    )));
    assert_eq!(check.uri(), "http://127.0.0.1:5000/v2/");
    assert_eq!(check.headers()["authorization"], "Basic YWxpY2U6czNjcmV0");
    let r = responded(ex.on_response(upstream(200, &[])));
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    let token = v["token"].as_str().unwrap().to_string();

    let auth: &'static str = Box::leak(format!("Bearer {token}").into_boxed_str());
    let (_, step) = start(
        config(&[]),
        incoming(
            Method::GET,
            "/v2/private/x/manifests/1",
            &[("authorization", auth)],
        ),
    );
    assert_eq!(
        sent(step).headers()["authorization"],
        "Basic YWxpY2U6czNjcmV0"
    );
}

#[test]
fn basic_upstream_wrong_password_is_unauthorized_with_our_challenge() {
    let (mut ex, step) = start(
        config(&[]),
        incoming(Method::GET, "/token", &[("authorization", "Basic eDp5")]),
    );
    sent(step);
    sent(ex.on_response(upstream(401, &[("www-authenticate", r#"Basic realm="R""#)])));
    let r = responded(ex.on_response(upstream(401, &[("www-authenticate", r#"Basic realm="R""#)])));
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r), "UNAUTHORIZED");
    assert!(
        header(&r, "www-authenticate").contains("realm=\"http://images.example.com:3000/token\"")
    );
}

#[test]
fn anonymous_token_for_open_upstreams() {
    let (mut ex, step) = start(config(&[]), incoming(Method::GET, "/token", &[]));
    sent(step);
    let r = responded(ex.on_response(upstream(200, &[])));
    assert_eq!(r.status(), 200);
    let (_, step) = start(
        config(&[]),
        incoming(
            Method::GET,
            "/v2/a/manifests/1",
            &[("authorization", "Bearer anonymous")],
        ),
    );
    assert!(sent(step).headers().get("authorization").is_none());
}

#[test]
fn writes_are_refused_without_contacting_the_upstream() {
    for (m, p) in [
        (Method::PUT, "/v2/a/manifests/1"),
        (Method::DELETE, &*format!("/v2/a/blobs/{D}")),
        (Method::POST, "/v2/a/blobs/uploads/"),
        (Method::GET, "/v2/a/blobs/uploads/abc"),
        (Method::PATCH, "/v2/a/blobs/uploads/abc"),
    ] {
        let (_, step) = start(config(&[]), incoming(m.clone(), p, &[]));
        let r = responded(step);
        assert_eq!(r.status(), 405, "{m} {p}");
        assert_eq!(header(&r, "allow"), "GET, HEAD");
        assert_eq!(error_code(&r), "UNSUPPORTED");
    }
}

#[test]
fn tags_list_body_and_link_in_client_names() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let (mut ex, step) = start(cfg, incoming(Method::GET, "/v2/web/tags/list?n=2", &[]));
    assert_eq!(
        sent(step).uri(),
        "http://127.0.0.1:5000/v2/team/app/web/tags/list?n=2"
    );
    let head = upstream(
        200,
        &[
            ("content-type", "application/json"),
            (
                "link",
                r#"</v2/team/app/web/tags/list?last=b&n=2>; rel="next""#,
            ),
            ("content-length", "41"),
        ],
    );
    match ex.on_response(head) {
        Step::ReadBody { limit } => assert_eq!(limit, listing::MAX_LISTING_BYTES),
        other => panic!("{other:?}"),
    }
    let r = responded(ex.on_body(br#"{"name":"team/app/web","tags":["a","b"]}"#.to_vec()));
    assert_eq!(r.body(), br#"{"name":"web","tags":["a","b"]}"#);
    assert_eq!(header(&r, "content-length"), r.body().len().to_string());
    assert_eq!(
        header(&r, "link"),
        r#"</v2/web/tags/list?last=b&n=2>; rel="next""#
    );
}

#[test]
fn catalog_through_a_prefix() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let (mut ex, step) = start(cfg, incoming(Method::GET, "/v2/_catalog?n=2", &[]));
    assert_eq!(
        sent(step).uri(),
        "http://127.0.0.1:5000/v2/_catalog?n=2&last=team%2Fapp%2F"
    );
    let head = upstream(
        200,
        &[("link", r#"</v2/_catalog?last=team%2Fapps&n=2>; rel="next""#)],
    );
    assert!(matches!(ex.on_response(head), Step::ReadBody { .. }));
    let r = responded(ex.on_body(br#"{"repositories":["team/app/z","team/apps"]}"#.to_vec()));
    assert_eq!(r.body(), br#"{"repositories":["z"]}"#);
    assert!(
        r.headers().get("link").is_none(),
        "the last page has no next link"
    );
}

#[test]
fn catalog_on_docker_hub_is_unsupported_without_a_request() {
    let cfg = config(&[("upstream", "https://registry-1.docker.io")]);
    let r = responded(start(cfg, incoming(Method::GET, "/v2/_catalog", &[])).1);
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (404, "UNSUPPORTED")
    );
}

#[test]
fn rate_limits_pass_through_with_retry_after() {
    let (mut ex, step) = start(config(&[]), incoming(Method::GET, "/v2/a/manifests/1", &[]));
    sent(step);
    let r = streamed(ex.on_response(upstream(
        429,
        &[("retry-after", "30"), ("content-type", "application/json")],
    )));
    assert_eq!(
        (r.status().as_u16(), header(&r, "retry-after")),
        (429, "30")
    );
}

#[test]
fn failures_name_the_upstream() {
    let (mut ex, step) = start(config(&[]), incoming(Method::GET, "/v2/a/manifests/1", &[]));
    sent(step);
    let r = responded(ex.on_failure(Failure::Timeout("HttpResponseTimeout".into())));
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(&r), "UNAVAILABLE");
    assert!(String::from_utf8_lossy(r.body()).contains(UP));
    let (mut ex, step) = start(
        config(&[]),
        incoming(Method::HEAD, "/v2/a/manifests/1", &[]),
    );
    sent(step);
    let r = responded(ex.on_failure(Failure::Unreachable("ConnectionRefused".into())));
    assert_eq!(r.status(), 502);
    assert!(r.body().is_empty(), "HEAD has no body");
}

#[test]
fn unknown_paths_and_bad_names_are_oci_errors() {
    let r = responded(start(config(&[]), incoming(Method::GET, "/favicon.ico", &[])).1);
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (404, "UNSUPPORTED")
    );
    let r = responded(
        start(
            config(&[]),
            incoming(Method::GET, "/v2/UPPER/manifests/1", &[]),
        )
        .1,
    );
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (400, "NAME_INVALID")
    );
}

#[test]
fn home_page_or_redirect() {
    let r = responded(start(config(&[]), incoming(Method::GET, "/", &[])).1);
    assert_eq!(r.status(), 200);
    assert!(String::from_utf8_lossy(r.body()).contains("docker pull images.example.com:3000/"));
    let r = responded(
        start(
            config(&[("home", "https://example.com/docs")]),
            incoming(Method::GET, "/", &[]),
        )
        .1,
    );
    assert_eq!(
        (r.status().as_u16(), header(&r, "location")),
        (302, "https://example.com/docs")
    );
}

#[test]
fn token_scopes_with_invalid_names_are_refused_before_any_request() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let req = incoming(
        Method::GET,
        "/token?scope=repository%3A..%2F..%2Fother%2Foutside%3Apull",
        &[],
    );
    let r = responded(start(cfg, req).1);
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (400, "NAME_INVALID")
    );
}
