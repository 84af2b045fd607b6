//! Pushes on a route that takes them, and web pages (CORS) on a route that lets them read.

use super::*;

const ROUTES: &str = r#"[
    {"name": "ro", "host": "ro.example.com", "upstream": "http://127.0.0.1:5000"},
    {"name": "rw", "host": "rw.example.com", "upstream": "http://127.0.0.1:5000",
     "prefix": "team", "push": true, "delete": true, "deny": ["secret"],
     "cors": ["https://ui.example.com"]}
]"#;
const UUID: &str = "6d1c3f0e-0000-4000-8000-000000000001";

fn cfg() -> Config {
    config(&[("routes", ROUTES)])
}

/// distribution's answers to a push, names in upstream form (prefix `team/`).
fn registry(r: &Request<Vec<u8>>) -> Result<Canned, Failure> {
    let path = r.uri().path().to_string();
    let session = format!("/v2/team/app/blobs/uploads/{UUID}?_state=s1");
    Ok(match (r.method().as_str(), path.as_str()) {
        ("POST", "/v2/team/app/blobs/uploads/") => Canned::new(202)
            .header("location", &session)
            .header("docker-upload-uuid", UUID)
            .header("range", "0-0"),
        ("PATCH", p) if p.ends_with(UUID) => Canned::new(202)
            .header("location", &session)
            .header("range", format!("0-{}", r.body().len() - 1)),
        ("PUT", p) if p.ends_with(UUID) => Canned::new(201)
            .header(
                "location",
                format!("http://127.0.0.1:5000/v2/team/app/blobs/{D}"),
            )
            .header("docker-content-digest", D),
        ("PUT", "/v2/team/app/manifests/1.0") => Canned::new(201)
            .header("location", format!("/v2/team/app/manifests/{D}"))
            .header("docker-content-digest", D),
        ("DELETE", _) => Canned::new(202),
        _ => Canned::new(404),
    })
}

fn write(host: &'static str, method: Method, path: &str, body: &[u8]) -> Run {
    let mut req = at(host, method, path);
    req.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    drive(&cfg(), req, body, registry)
}

#[test]
fn a_route_takes_no_write_unless_it_says_so() {
    for (method, path) in [
        (Method::POST, "/v2/app/blobs/uploads/"),
        (Method::PUT, "/v2/app/manifests/1.0"),
        (Method::DELETE, &*format!("/v2/app/manifests/{D}")),
        (Method::PATCH, &*format!("/v2/app/blobs/uploads/{UUID}")),
    ] {
        let run = write("ro.example.com", method.clone(), path, b"x");
        assert_eq!(status(&run), 405, "{method} {path}");
        assert!(run.sent.is_empty());
        assert_eq!(error_code(&run), "UNSUPPORTED");
    }
}

#[test]
fn an_upload_s_session_is_the_client_s_in_names_and_host() {
    let run = write(
        "rw.example.com",
        Method::POST,
        "/v2/app/blobs/uploads/",
        b"",
    );
    assert_eq!(status(&run), 202, "{run:?}");
    let session = format!("https://rw.example.com/v2/app/blobs/uploads/{UUID}?_state=s1");
    assert_eq!(header(&run, "location"), session);
    assert_eq!(header(&run, "docker-upload-uuid"), UUID);
    assert_eq!(header(&run, "range"), "0-0");
    // A chunk goes upstream as sent, to the upstream's name of the session.
    let chunk = format!("/v2/app/blobs/uploads/{UUID}?_state=s1");
    let mut req = at("rw.example.com", Method::PATCH, &chunk);
    req.headers
        .insert(header::CONTENT_RANGE, HeaderValue::from_static("0-9"));
    req.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let run = drive(&cfg(), req, b"0123456789", registry);
    assert_eq!(status(&run), 202, "{run:?}");
    let sent = &run.sent[0];
    assert_eq!(
        sent.uri().path(),
        format!("/v2/team/app/blobs/uploads/{UUID}")
    );
    assert_eq!(sent.uri().query(), Some("_state=s1"));
    assert_eq!(sent.body(), b"0123456789");
    assert_eq!(sent.headers()[header::CONTENT_RANGE], "0-9");
    assert_eq!(header(&run, "range"), "0-9");
    assert_eq!(header(&run, "location"), session);
    // The end: the blob's Location, in client names.
    let end = format!("/v2/app/blobs/uploads/{UUID}?_state=s2&digest={D}");
    let run = write("rw.example.com", Method::PUT, &end, b"");
    assert_eq!(status(&run), 201, "{run:?}");
    assert_eq!(
        header(&run, "location"),
        format!("https://rw.example.com/v2/app/blobs/{D}")
    );
    assert_eq!(header(&run, "docker-content-digest"), D);
}

#[test]
fn a_mount_from_a_repository_the_route_serves_maps_and_any_other_falls_back_to_an_upload() {
    let mount = |from: &str| {
        let path = format!("/v2/app/blobs/uploads/?mount={D}&from={from}");
        let run = write("rw.example.com", Method::POST, &path, b"");
        run.sent[0].uri().query().unwrap_or("").to_string()
    };
    assert_eq!(
        mount("base/img"),
        format!("mount={}&from=team%2Fbase%2Fimg", D.replace(':', "%3A"))
    );
    // The route's deny list names it: a plain upload, which the spec lets a registry make.
    assert_eq!(mount("secret"), "");
    assert_eq!(mount("..%2Fx"), "");
    // One `from`, the first: a second would name a repository nobody checked.
    assert_eq!(
        mount("base/img&from=secret&_state=forged&x=1"),
        format!("mount={}&from=team%2Fbase%2Fimg", D.replace(':', "%3A"))
    );
}

#[test]
fn a_manifest_push_keeps_its_bytes_and_drops_the_kept_tag() {
    let cfg = cfg();
    let mut store = HashMap::new();
    let manifest =
        br#"{"schemaVersion":2,  "mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let pull = |store: &mut HashMap<String, Vec<u8>>| {
        let mut req = at("rw.example.com", Method::GET, "/v2/app/manifests/1.0");
        req.headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        let kept = || {
            Canned::new(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .header("content-length", "4")
                .header("docker-content-digest", D)
                .body("test")
        };
        drive_stored(&cfg, req, b"", store, |_| Ok(kept()))
            .sent
            .len()
    };
    assert_eq!(pull(&mut store), 1);
    assert_eq!(pull(&mut store), 0, "the tag is kept");
    let mut req = at("rw.example.com", Method::PUT, "/v2/app/manifests/1.0");
    req.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
    let run = drive_stored(&cfg, req, manifest, &mut store, registry);
    assert_eq!(status(&run), 201, "{run:?}");
    let sent = run.sent.last().unwrap();
    assert_eq!(sent.body(), manifest, "the client's bytes, untouched");
    assert_eq!(
        sent.headers()[header::CONTENT_TYPE],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        header(&run, "location"),
        format!("https://rw.example.com/v2/app/manifests/{D}")
    );
    assert_eq!(pull(&mut store), 1, "the pushed tag is asked for again");
}

#[test]
fn a_manifest_deleted_through_the_proxy_is_served_from_the_store_no_more() {
    let cfg = cfg();
    let mut store = HashMap::new();
    let deleted = std::cell::Cell::new(false);
    let ask = |host: &'static str, method: Method, path: &str, store: &mut HashMap<_, _>| {
        let mut req = at(host, method, path);
        req.headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        let run = drive_stored(&cfg, req, b"", store, |r| {
            if deleted.get() {
                return Ok(Canned::new(404));
            }
            let found = Canned::new(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .header("content-length", "4")
                .header("docker-content-digest", D);
            Ok(match r.method() {
                &Method::GET => found.body("test"),
                _ => found,
            })
        });
        (status(&run), run.sent.len())
    };
    let by_digest =
        |host, store: &mut _| ask(host, Method::GET, &format!("/v2/app/manifests/{D}"), store);
    // Another route to the registry, without the prefix.
    let tag_head = |store: &mut _| {
        ask(
            "ro.example.com",
            Method::HEAD,
            "/v2/team/app/manifests/1.0",
            store,
        )
    };
    assert_eq!(by_digest("rw.example.com", &mut store), (200, 1));
    assert_eq!(by_digest("rw.example.com", &mut store), (200, 0), "kept");
    assert_eq!(tag_head(&mut store), (200, 1));
    assert_eq!(tag_head(&mut store), (200, 0), "kept");
    let mut req = at(
        "rw.example.com",
        Method::DELETE,
        &format!("/v2/app/manifests/{D}"),
    );
    req.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    let run = drive_stored(&cfg, req, b"", &mut store, registry);
    assert_eq!(status(&run), 202, "{run:?}");
    deleted.set(true);
    assert_eq!(by_digest("rw.example.com", &mut store), (404, 1));
    // The registry untagged it: a tag another route kept before may name it.
    assert_eq!(tag_head(&mut store), (404, 1));
}

#[test]
fn an_upload_location_on_another_host_is_refused() {
    let run = drive(
        &cfg(),
        at("rw.example.com", Method::POST, "/v2/app/blobs/uploads/"),
        b"",
        |_| Ok(Canned::new(202).header("location", "https://storage.example.net/upload/abc?sig=1")),
    );
    assert_eq!(status(&run), 502, "{run:?}");
    assert!(header(&run, "location").is_empty());
}

#[test]
fn deletes_go_upstream_only_where_the_route_says_so() {
    let run = write(
        "rw.example.com",
        Method::DELETE,
        &format!("/v2/app/manifests/{D}"),
        b"",
    );
    assert_eq!(status(&run), 202, "{run:?}");
    assert_eq!(run.sent[0].method(), Method::DELETE);
    // By tag (distribution-spec 1.1, `end-9`): the registry answers for itself.
    let run = write(
        "rw.example.com",
        Method::DELETE,
        "/v2/app/manifests/1.0",
        b"",
    );
    assert_eq!(status(&run), 202, "{run:?}");
    assert_eq!(run.sent[0].uri().path(), "/v2/team/app/manifests/1.0");
}

#[test]
fn a_405_allows_what_the_route_takes_there() {
    let manifest = format!("/v2/app/manifests/{D}");
    let (rw, ro) = ("rw.example.com", "ro.example.com");
    // An upload's path takes writes alone: a GET there is no read (RFC 9110 10.2.1).
    let (start, session) = ("/v2/app/blobs/uploads/", "/v2/app/blobs/uploads/u1");
    for (host, method, path, allowed) in [
        (ro, Method::PUT, manifest.as_str(), "GET, HEAD"),
        (rw, Method::PATCH, &manifest, "GET, HEAD, PUT, DELETE"),
        (rw, Method::PUT, "/v2/app/tags/list", "GET, HEAD"),
        (rw, Method::PUT, start, "POST"),
        (rw, Method::POST, session, "GET, HEAD, PUT, PATCH, DELETE"),
        (ro, Method::GET, start, ""),
        (ro, Method::PATCH, session, ""),
        (rw, Method::DELETE, "/token", "GET, HEAD, POST"),
    ] {
        let run = drive(&cfg(), at(host, method.clone(), path), b"", |_| {
            Ok(Canned::new(500))
        });
        assert_eq!((status(&run), run.sent.len()), (405, 0), "{run:?}");
        assert_eq!(header(&run, "allow"), allowed, "{host} {method} {path}");
    }
}

#[test]
fn pages_of_listed_origins_read_and_no_other_does() {
    let preflight = |origin: &'static str| {
        let mut req = at("rw.example.com", Method::OPTIONS, "/v2/app/tags/list");
        req.headers
            .insert(header::ORIGIN, HeaderValue::from_static(origin));
        req.headers.insert(
            "access-control-request-method",
            HeaderValue::from_static("GET"),
        );
        req.headers.insert(
            "access-control-request-headers",
            HeaderValue::from_static("authorization"),
        );
        drive(&cfg(), req, b"", |_| panic!("a preflight goes nowhere"))
    };
    let run = preflight("https://ui.example.com");
    assert_eq!(status(&run), 204, "{run:?}");
    assert_eq!(
        header(&run, "access-control-allow-origin"),
        "https://ui.example.com"
    );
    assert_eq!(header(&run, "access-control-allow-credentials"), "true");
    assert!(header(&run, "access-control-allow-methods").contains("PATCH"));
    assert!(header(&run, "access-control-allow-headers").contains("Authorization"));
    let run = preflight("https://evil.example.com");
    assert_eq!(status(&run), 403);
    assert!(header(&run, "access-control-allow-origin").is_empty());
    // Its answers vary by Origin whoever asks: a shared cache keeps them apart.
    let run = drive(
        &cfg(),
        at("rw.example.com", Method::GET, "/v2/app/manifests/1.0"),
        b"",
        |_| Ok(manifest_ok()),
    );
    assert_eq!(header(&run, "vary"), "Origin");
    // An answer to a listed origin's page exposes what a registry UI reads.
    let mut req = at("rw.example.com", Method::GET, "/v2/app/manifests/1.0");
    req.headers.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://ui.example.com"),
    );
    let run = drive(&cfg(), req, b"", |_| Ok(manifest_ok()));
    assert_eq!(
        header(&run, "access-control-allow-origin"),
        "https://ui.example.com"
    );
    assert!(header(&run, "access-control-expose-headers").contains("Docker-Content-Digest"));
    // Another route does not list the page.
    let mut req = at("ro.example.com", Method::GET, "/v2/app/manifests/1.0");
    req.headers.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://ui.example.com"),
    );
    let run = drive(&cfg(), req, b"", |_| Ok(manifest_ok()));
    assert!(header(&run, "access-control-allow-origin").is_empty());
    assert!(header(&run, "vary").is_empty());
    // The admin's endpoints are no route's: no page reads them, on any host.
    for path in ["/-/stats", "/-/health"] {
        let mut req = at("rw.example.com", Method::GET, path);
        req.headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://ui.example.com"),
        );
        let run = drive(&cfg(), req, b"", |_| panic!("nothing upstream"));
        assert!(
            header(&run, "access-control-allow-origin").is_empty(),
            "{path}"
        );
    }
}
