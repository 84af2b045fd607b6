//! Route tables: hosts, paths, mirrors, and which registry a login is for.

use super::*;

#[test]
fn routes_by_host_path_and_ns() {
    let cfg = table();
    for (host, path, want) in [
        (
            "hub.example.com",
            "/v2/alpine/manifests/3",
            "http://127.0.0.1:5000/v2/library/alpine/manifests/3",
        ),
        (
            "images.example.com",
            "/v2/ghcr/owner/app/manifests/1",
            "http://127.0.0.5:5005/v2/owner/app/manifests/1",
        ),
        (
            "images.example.com",
            "/v2/quay/owner/app/manifests/1",
            "http://127.0.0.6:5006/v2/owner/app/manifests/1",
        ),
        (
            "any.example.com",
            "/v2/owner/app/manifests/1?ns=ghcr.io",
            "http://127.0.0.7:5007/v2/owner/app/manifests/1",
        ),
        (
            "hub.example.com",
            "/v2/library/alpine/manifests/3?ns=docker.io",
            "http://127.0.0.1:5000/v2/library/alpine/manifests/3",
        ),
    ] {
        let run = drive(
            &cfg,
            at(host, Method::GET, path),
            b"",
            |_| Ok(manifest_ok()),
        );
        assert_eq!(status(&run), 200, "{host}{path}");
        assert_eq!(run.sent[0].uri().to_string(), want);
    }
    for (host, path) in [
        ("unknown.example.com", "/v2/x/manifests/1"),
        ("images.example.com", "/v2/other/x/manifests/1"),
        ("any.example.com", "/v2/x/manifests/1?ns=evil.example"),
        ("any.example.com", "/v2/x/manifests/1"),
    ] {
        let run = drive(&cfg, at(host, Method::GET, path), b"", |_| {
            panic!("no request")
        });
        assert_eq!(status(&run), 404, "{host}{path}");
    }
}

#[test]
fn path_routes_speak_client_names_with_their_path() {
    let cfg = table();
    let run = drive(
        &cfg,
        at(
            "images.example.com",
            Method::GET,
            "/v2/ghcr/owner/app/tags/list",
        ),
        b"",
        |_| {
            Ok(Canned::new(200)
                .header("link", "</v2/owner/app/tags/list?last=b&n=1>; rel=\"next\"")
                .body(r#"{"name":"owner/app","tags":["b"]}"#))
        },
    );
    assert_eq!(run.body, br#"{"name":"ghcr/owner/app","tags":["b"]}"#);
    assert_eq!(
        header(&run, "link"),
        "</v2/ghcr/owner/app/tags/list?last=b&n=1>; rel=\"next\""
    );
    let run = drive(
        &cfg,
        at(
            "images.example.com",
            Method::GET,
            "/v2/ghcr/owner/app/manifests/1",
        ),
        b"",
        |_| {
            Ok(bearer(
                "http://127.0.0.5:5005/token",
                "repository:owner/app:pull",
            ))
        },
    );
    // Several routes serve the host: the realm names the challenge's scope (containerd merges
    // it into later token requests; see `containerd_s_merged_challenge_scope_gives_way`).
    assert_eq!(
        header(&run, "www-authenticate"),
        "Bearer realm=\"https://images.example.com/token?challenge_scope=repository%3Aghcr%2Fowner%2Fapp%3Apull\",\
         service=\"images.example.com\",scope=\"repository:ghcr/owner/app:pull\""
    );
}

#[test]
fn base_of_a_path_only_domain_is_the_proxys_own() {
    let cfg = table();
    let run = drive(
        &cfg,
        at("images.example.com", Method::GET, "/v2/"),
        b"",
        |_| panic!("no request"),
    );
    assert_eq!(status(&run), 401);
    assert_eq!(
        header(&run, "www-authenticate"),
        r#"Bearer realm="https://images.example.com/token",service="images.example.com""#
    );
    // A login there is checked by no registry: the credentials go with each scoped request.
    let mut req = at(
        "images.example.com",
        Method::GET,
        "/token?service=images.example.com",
    );
    req.headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"),
    );
    let run = drive(&cfg, req, b"", |_| panic!("no request"));
    assert!(String::from_utf8_lossy(&run.body).contains("anonymous"));
    let mut again = at("images.example.com", Method::GET, "/v2/");
    again.headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer anonymous"),
    );
    let run = drive(&cfg, again, b"", |_| panic!("no request"));
    assert_eq!(status(&run), 200);
}

#[test]
fn token_requests_route_by_scope_and_never_span_two_routes() {
    let cfg = table();
    let run = drive(
        &cfg,
        at(
            "images.example.com",
            Method::GET,
            "/token?scope=repository:ghcr/owner/app:pull",
        ),
        b"",
        by_path(vec![
            ("/v2/", bearer("http://127.0.0.5:5005/token", "")),
            ("/token", Canned::new(200).body(r#"{"token":"g"}"#)),
        ]),
    );
    assert_eq!(status(&run), 200);
    assert_eq!(
        run.sent[1].uri().to_string(),
        "http://127.0.0.5:5005/token?service=reg&scope=repository%3Aowner%2Fapp%3Apull"
    );
    let two = "/token?scope=repository:ghcr/a:pull&scope=repository:quay/b:pull";
    let run = drive(
        &cfg,
        at("images.example.com", Method::GET, two),
        b"",
        |_| panic!("no request"),
    );
    assert_eq!(status(&run), 400);
    // containerd's mirror realm carries `ns`.
    let run = drive(
        &cfg,
        at(
            "any.example.com",
            Method::GET,
            "/v2/o/a/manifests/1?ns=ghcr.io",
        ),
        b"",
        |_| Ok(bearer("http://127.0.0.7:5007/token", "repository:o/a:pull")),
    );
    let challenge = header(&run, "www-authenticate");
    assert!(
        challenge.contains(r#"realm="https://any.example.com/token?ns=ghcr.io""#),
        "{challenge}"
    );
}

#[test]
fn a_login_reaches_no_registry_but_the_one_it_is_for() {
    // ghcr and quay share images.example.com (and the mirror route serves every host): a
    // client's one login for the host would reach each of them.
    let login = |cfg: &Config, path: &str| {
        let mut req = at("images.example.com", Method::GET, path);
        req.headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"),
        );
        drive(
            cfg,
            req,
            b"",
            by_path(vec![
                ("/v2/", bearer("http://127.0.0.5:5005/token", "")),
                ("/token", Canned::new(200).body(r#"{"token":"g"}"#)),
                ("/v2/o/a/manifests/1", manifest_ok()),
            ]),
        )
    };
    let scope = "/token?scope=repository:ghcr/o/a:pull&account=alice";
    let run = login(&table(), scope);
    // Refused with what the operator must set, never dropped for an anonymous token that
    // fails later as "denied" (it was a 200); the realm hears nothing of the client.
    assert_eq!(status(&run), 401);
    let message = String::from_utf8_lossy(&run.body).to_string();
    assert!(
        message.contains(r#"\"client_credentials\": true"#) && message.contains(r#"\"quay\""#),
        "{message}"
    );
    assert!(run
        .cause
        .as_deref()
        .unwrap_or("")
        .contains("client_credentials"));
    assert!(
        run.sent.iter().all(|r| r.uri().path() != "/token"
            && r.headers().get(header::AUTHORIZATION).is_none()
            && !r.uri().to_string().contains("alice")),
        "{run:?}"
    );
    // Without credentials, the same request gets its anonymous token.
    let anonymous = drive(
        &table(),
        at("images.example.com", Method::GET, scope),
        b"",
        by_path(vec![
            ("/v2/", bearer("http://127.0.0.5:5005/token", "")),
            ("/token", Canned::new(200).body(r#"{"token":"g"}"#)),
        ]),
    );
    assert_eq!(status(&anonymous), 200);
    let run = login(&table(), "/v2/quay/o/a/manifests/1");
    assert!(run
        .sent
        .iter()
        .all(|r| r.headers().get(header::AUTHORIZATION).is_none()));
    // The route that says the host's logins are its own gets them; the other still does not.
    let mine = TABLE.replace(
        r#""path": "ghcr","#,
        r#""path": "ghcr", "client_credentials": true,"#,
    );
    let cfg = config(&[("routes", &mine)]);
    let run = login(&cfg, scope);
    let asked = run.sent.last().unwrap();
    assert_eq!(
        asked.headers()[header::AUTHORIZATION],
        "Basic YWxpY2U6czNjcmV0"
    );
    let run = login(&cfg, "/v2/quay/o/a/manifests/1");
    assert!(run
        .sent
        .iter()
        .all(|r| r.headers().get(header::AUTHORIZATION).is_none()));
    // Alone on its host, a route takes the host's logins.
    let alone = r#"[{"name": "ghcr", "host": "images.example.com", "upstream": "http://127.0.0.5:5005",
                     "auth": "http://127.0.0.5:5005"},
                    {"name": "quay", "host": "quay.example.com", "upstream": "http://127.0.0.6:5006"}]"#;
    let run = login(
        &config(&[("routes", alone)]),
        "/token?scope=repository:o/a:pull",
    );
    let asked = run.sent.last().unwrap();
    assert_eq!(
        asked.headers()[header::AUTHORIZATION],
        "Basic YWxpY2U6czNjcmV0"
    );
}

/// containerd's mirror requests (`?ns=ghcr.io`, with the README's `hosts.toml`) carry the
/// mirrored registry's own names: a route with a path that also mirrors maps them without it,
/// in requests, challenges and token scopes alike.
#[test]
fn a_mirror_request_to_a_route_with_a_path_names_no_path() {
    let cfg = config(&[(
        "routes",
        r#"[{"name": "ghcr", "host": "images.example.com", "path": "ghcr",
             "upstream": "http://127.0.0.5:5005", "mirrors": ["ghcr.io"]}]"#,
    )]);
    let get = |path: &str| at("images.example.com", Method::GET, path);
    let run = drive(
        &cfg,
        get("/v2/owner/app/manifests/1?ns=ghcr.io"),
        b"",
        |_| Ok(manifest_ok()),
    );
    assert_eq!(status(&run), 200, "{}", String::from_utf8_lossy(&run.body));
    assert_eq!(
        run.sent[0].uri().to_string(),
        "http://127.0.0.5:5005/v2/owner/app/manifests/1"
    );
    let run = drive(
        &cfg,
        get("/v2/owner/app/manifests/1?ns=ghcr.io"),
        b"",
        |_| {
            Ok(bearer(
                "http://127.0.0.5:5005/token",
                "repository:owner/app:pull",
            ))
        },
    );
    let challenge = header(&run, "www-authenticate");
    assert!(
        challenge.contains(r#"scope="repository:owner/app:pull""#),
        "{challenge}"
    );
    let token = "/token?ns=ghcr.io&scope=repository:owner/app:pull";
    let run = drive(
        &cfg,
        get(token),
        b"",
        by_path(vec![
            ("/v2/", bearer("http://127.0.0.5:5005/token", "")),
            (
                "/token?service=reg&scope=repository%3Aowner%2Fapp%3Apull",
                Canned::new(200).body(r#"{"token":"t"}"#),
            ),
        ]),
    );
    assert_eq!(status(&run), 200, "{:?} {:?}", run.cause, run.sent);
    // Without `ns`, the path still names the route.
    let run = drive(&cfg, get("/v2/ghcr/owner/app/manifests/1"), b"", |_| {
        Ok(manifest_ok())
    });
    assert_eq!(
        run.sent[0].uri().to_string(),
        "http://127.0.0.5:5005/v2/owner/app/manifests/1"
    );
}

/// containerd and BuildKit keep one auth handler per host, built from its first Bearer
/// challenge, and merge that challenge's scope into every later token request
/// (`GetTokenScopes(ctx, ah.common.Scopes)`, sorted). On a host several path routes serve, a
/// `docker build` with `FROM images.example.com/ghcr/o/a` and `FROM images.example.com/quay/o/b`
/// then asks for scopes of both routes: the realm names the scope its challenge carried, and
/// that one gives way. A client asking for two routes' scopes on its own still gets a 400.
#[test]
fn containerd_s_merged_challenge_scope_gives_way() {
    let cfg = table();
    let run = drive(
        &cfg,
        at(
            "images.example.com",
            Method::HEAD,
            "/v2/ghcr/o/a/manifests/1",
        ),
        b"",
        |_| Ok(bearer("http://127.0.0.5:5005/token", "repository:o/a:pull")),
    );
    assert_eq!(status(&run), 401);
    let first = challenge::parse(header(&run, "www-authenticate"));
    let realm = first[0].param("realm").unwrap();
    let common = first[0].param("scope").unwrap();
    assert_eq!(common, "repository:ghcr/o/a:pull");
    let realm_path = realm.strip_prefix("https://images.example.com").unwrap();
    let quay = by_path(vec![
        (
            "http://127.0.0.6:5006/v2/",
            bearer("http://127.0.0.6:5006/token", ""),
        ),
        (
            "http://127.0.0.6:5006/token?service=reg&scope=repository%3Ao%2Fb%3Apull",
            Canned::new(200).body(r#"{"token":"q","expires_in":300}"#),
        ),
    ]);
    let merged = format!("{realm_path}&scope={common}&scope=repository:quay/o/b:pull");
    let run = drive(
        &cfg,
        at("images.example.com", Method::GET, &merged),
        b"",
        quay,
    );
    assert_eq!(status(&run), 200, "{:?} {:?}", run.cause, run.sent);
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    assert!(v["token"].as_str().unwrap().ends_with(".q"), "{run:?}");
    let own = "/token?scope=repository:ghcr/o/a:pull&scope=repository:quay/o/b:pull";
    let run = drive(
        &cfg,
        at("images.example.com", Method::GET, own),
        b"",
        |_| Ok(Canned::new(500)),
    );
    assert_eq!(status(&run), 400);
    assert!(run.sent.is_empty());
}

/// `Host: images.example.com.` (a fully qualified name) is the same host: routed, and
/// challenged with the realm of the name without its dot. It was a 400.
#[test]
fn a_fully_qualified_host_is_routed_as_the_host() {
    let run = drive(
        &table(),
        at(
            "images.example.com.",
            Method::GET,
            "/v2/ghcr/o/a/manifests/1",
        ),
        b"",
        |r| {
            assert_eq!(r.uri().host(), Some("127.0.0.5"));
            Ok(bearer("http://127.0.0.5:5005/token", "repository:o/a:pull"))
        },
    );
    assert_eq!(status(&run), 401, "{run:?}");
    let challenge = header(&run, "www-authenticate");
    assert!(
        challenge.contains(r#"realm="https://images.example.com/token"#),
        "{challenge}"
    );
}
