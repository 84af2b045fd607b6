//! The token endpoint: realm discovery, scopes in upstream names, realm answers.

use super::*;

#[test]
fn token_get_discovers_realm_and_maps_scopes() {
    let cfg = config(&[("repository_prefix", "team")]);
    let req = token_get("service=127.0.0.1:3000&scope=repository:web:pull&evil=1");
    let run = drive(
        &cfg,
        req,
        b"",
        by_path(vec![
            ("/v2/", bearer("http://127.0.0.2:5001/token?x=1", "")),
            (
                "/token",
                Canned::new(200)
                    .header("content-type", "application/json")
                    .header("set-cookie", "s=1")
                    .body(r#"{"token":"jwt"}"#),
            ),
        ]),
    );
    assert_eq!(status(&run), 200);
    assert_eq!(run.body, br#"{"token":"jwt"}"#);
    assert_eq!(header(&run, "set-cookie"), "");
    let token = &run.sent[1];
    assert_eq!(
        token.uri().to_string(),
        "http://127.0.0.2:5001/token?x=1&service=reg&scope=repository%3Ateam%2Fweb%3Apull"
    );
    assert_eq!(token.headers()["authorization"], "Basic YWxpY2U6czNjcmV0");
}

#[test]
fn token_post_form_goes_to_the_realm_as_a_form() {
    let cfg = config(&[]);
    let req = incoming(Method::POST, "/token", &[]);
    let form = b"grant_type=password&username=alice&password=s3cret&scope=repository%3Aweb%3Apull&service=x&client_id=c";
    let run = drive(
        &cfg,
        req,
        form,
        by_path(vec![
            ("/v2/", bearer("http://127.0.0.1:5000/v2/auth", "")),
            ("/v2/auth", Canned::new(200).body(r#"{"access_token":"t"}"#)),
        ]),
    );
    assert_eq!(status(&run), 200);
    let post = &run.sent[1];
    assert_eq!(post.method(), Method::POST);
    assert_eq!(
        String::from_utf8_lossy(post.body()),
        "grant_type=password&username=alice&password=s3cret&client_id=c&service=reg&scope=repository%3Aweb%3Apull"
    );
}

#[test]
fn a_token_request_not_in_utf8_is_refused_never_sent_altered() {
    let cfg = config(&[]);
    let post = || incoming(Method::POST, "/token", &[]);
    let form: &[u8] =
        b"grant_type=password&username=alice&password=b%F6b&scope=repository%3Aweb%3Apull";
    let raw: &[u8] = b"grant_type=password&username=alice&password=b\xf6b";
    for (req, body) in [
        (post(), form),
        (post(), raw),
        (
            token_get("scope=repository:web:pull&account=b%F6b"),
            b"".as_slice(),
        ),
    ] {
        let run = drive(&cfg, req, body, |_| {
            Ok(bearer(&format!("{AUTH}/token"), ""))
        });
        assert_eq!(status(&run), 400);
        assert!(String::from_utf8_lossy(&run.body).contains("not UTF-8"));
        assert!(run.sent.is_empty());
    }
}

#[test]
fn a_client_body_that_stops_or_fails_is_no_413() {
    let put = format!("/v2/app/manifests/{}", crate::digest::sha256(b"x"));
    // The exchange once it asks for the body (a push route reads the store's secret first),
    // or its answer.
    let start = |method: &Method, path: &str, length: u64| {
        let cfg = match *method {
            Method::PUT => config(&[(
                "routes",
                r#"[{"name": "rw", "upstream": "http://127.0.0.1:5000", "push": true}]"#,
            )]),
            _ => config(&[]),
        };
        let mut req = incoming(method.clone(), path, &[]);
        req.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        let (mut ex, mut step) = Exchange::start(cfg, req);
        while let Step::Load(keys) = step {
            step = ex.on_loaded(vec![None; keys.len()]);
        }
        (ex, step)
    };
    for (method, path) in [(Method::POST, "/token"), (Method::PUT, put.as_str())] {
        for (failure, want) in [
            (Failure::ClientStalled, 408),
            (Failure::ClientBody("reset".into()), 400),
            (Failure::TooLarge, 413),
        ] {
            let (mut ex, step) = start(&method, path, 10);
            assert!(matches!(step, Step::ReadRequest { .. }), "{path}: {step:?}");
            let Step::Reply(r) = ex.on_failure(failure.clone()) else {
                panic!("{path}: no reply")
            };
            assert_eq!(r.status().as_u16(), want, "{path} {failure:?}");
        }
        // Declared longer than read: refused before a byte is asked for (`Expect: 100-continue`).
        let (_, step) = start(&method, path, 50_000_000);
        let Step::Reply(r) = step else {
            panic!("{path}: {step:?}")
        };
        assert_eq!(r.status().as_u16(), 413, "{path}");
    }
}

#[test]
fn token_never_contacts_an_unconfigured_realm() {
    let cfg = config(&[]);
    for realm in [
        "http://127.0.0.4:6666/token",
        "http://127.0.0.1:5000@127.0.0.4:6666/token",
        "http://127.0.0.3:5002/token",
        "not a url",
    ] {
        let req = token_get("scope=repository:web:pull");
        let run = drive(&cfg, req, b"", |_| Ok(bearer(realm, "")));
        assert_eq!(status(&run), 502, "{realm}");
        assert_eq!(run.sent.len(), 1, "{realm}");
    }
}

#[test]
fn token_realm_redirects_are_followed_only_within_configuration() {
    let cfg = config(&[]);
    let realm = format!("{AUTH}/token");
    let req = || token_get("scope=repository:web:pull");
    let run = drive(
        &cfg,
        req(),
        b"",
        by_path(vec![
            ("/v2/", bearer(&realm, "")),
            (
                "http://127.0.0.2:5001/token",
                Canned::new(307).header("location", "/v2/token"),
            ),
            (
                "http://127.0.0.2:5001/v2/token",
                Canned::new(200).body(r#"{"token":"t"}"#),
            ),
        ]),
    );
    assert_eq!(status(&run), 200);
    assert_eq!(
        run.sent[2].headers()["authorization"],
        "Basic YWxpY2U6czNjcmV0"
    );
    let run = drive(&cfg, req(), b"", |r| {
        Ok(match r.uri().path() {
            "/v2/" => bearer(&realm, ""),
            _ => Canned::new(302).header("location", "http://127.0.0.4:6666/token"),
        })
    });
    assert_eq!(status(&run), 502);
    assert_eq!(header(&run, "location"), "");
}

#[test]
fn a_realm_s_2xx_without_a_token_is_its_failure_not_its_words() {
    let cfg = config(&[]);
    let realm = format!("{AUTH}/token");
    let page = "<html>Log in to auth.127.0.0.2 for team-secret</html>";
    for credentials in [true, false] {
        let req = if credentials {
            token_get("scope=repository:web:pull")
        } else {
            incoming(Method::GET, "/token?scope=repository:web:pull", &[])
        };
        let run = drive(&cfg, req, b"", |r| {
            Ok(match r.uri().path() {
                "/v2/" => bearer(&realm, ""),
                _ => Canned::new(200)
                    .header("content-type", "text/html")
                    .body(page),
            })
        });
        assert_eq!(status(&run), 502, "credentials: {credentials}");
        let body = String::from_utf8_lossy(&run.body);
        assert!(
            body.contains("UNAVAILABLE") && !body.contains("secret"),
            "{body}"
        );
    }
}

#[test]
fn anonymous_token_only_without_credentials() {
    let cfg = config(&[]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/token?scope=repository:web:pull", &[]),
        b"",
        |_| Ok(Canned::new(200)),
    );
    assert_eq!(status(&run), 200);
    assert!(String::from_utf8_lossy(&run.body).contains("anonymous"));
}

#[test]
fn credentials_find_the_realm_of_a_private_repository_behind_an_open_v2() {
    let cfg = config(&[("repository_prefix", "team")]);
    let req = token_get("scope=repository:private/x:pull");
    let run = drive(
        &cfg,
        req,
        b"",
        by_path(vec![
            ("/v2/", Canned::new(200)),
            (
                "/v2/team/private/x/tags/list?n=1",
                bearer(&format!("{AUTH}/token"), "repository:team/private/x:pull"),
            ),
            (
                "http://127.0.0.2:5001/token",
                Canned::new(200).body(r#"{"token":"private"}"#),
            ),
        ]),
    );
    assert_eq!(status(&run), 200, "{run:?}");
    assert_eq!(run.body, br#"{"token":"private"}"#);
    assert_eq!(
        run.sent[2].headers()["authorization"],
        "Basic YWxpY2U6czNjcmV0"
    );
    // Nowhere for the credentials to go: an error, never an anonymous token.
    for body in [
        &b"grant_type=refresh_token&refresh_token=rt"[..],
        b"grant_type=password&username=a&password=b",
    ] {
        let run = drive(&cfg, incoming(Method::POST, "/token", &[]), body, |_| {
            Ok(Canned::new(200))
        });
        assert_eq!(status(&run), 400, "{}", String::from_utf8_lossy(body));
        assert!(!String::from_utf8_lossy(&run.body).contains("anonymous"));
    }
}

#[test]
fn token_scopes_with_invalid_names_are_refused_before_any_request() {
    let cfg = config(&[("repository_prefix", "team")]);
    let req = incoming(Method::GET, "/token?scope=repository:../../x:pull", &[]);
    let run = drive(&cfg, req, b"", |_| panic!("no request"));
    assert_eq!(status(&run), 400);
    assert_eq!(error_code(&run), "NAME_INVALID");
}

/// A token realm's 429 keeps its Retry-After, as the registry's does.
#[test]
fn a_realm_s_429_keeps_retry_after() {
    let cfg = config(&[]);
    let run = drive(
        &cfg,
        token_get("scope=repository:web:pull"),
        b"",
        by_path(vec![
            ("/v2/", bearer(&format!("{AUTH}/token"), "")),
            (
                "http://127.0.0.2:5001/token",
                Canned::new(429).header("retry-after", "30"),
            ),
        ]),
    );
    assert_eq!(status(&run), 429);
    assert_eq!(header(&run, "retry-after"), "30");
}

/// An open registry: the token endpoint hands anonymous clients the proxy's `anonymous` token
/// once `/v2/` and the repository ask for nothing. That answer is kept like a realm's token:
/// each anonymous token request cost the upstream a `tags/list` (load.py: token requests at
/// 0.19 of the registry's `/v2/`); now only the first in five minutes does.
#[test]
fn an_open_repository_s_anonymous_token_is_kept() {
    let cfg = config(&[]);
    let mut store = HashMap::new();
    let open = |_: &Request<Vec<u8>>| Ok(Canned::new(200).body("{}"));
    let ask = |store: &mut HashMap<String, Vec<u8>>| {
        let req = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
        let run = drive_stored(&cfg, req, b"", store, open);
        assert_eq!(status(&run), 200);
        let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
        assert_eq!(v["token"], "anonymous");
        run.sent.len()
    };
    assert_eq!(ask(&mut store), 2, "/v2/, then the repository");
    assert_eq!(ask(&mut store), 0);
    // A client with credentials still reaches the upstream, which alone judges them.
    let run = drive_stored(
        &cfg,
        token_get("scope=repository:app:pull"),
        b"",
        &mut store,
        open,
    );
    assert!(!run.sent.is_empty());
}
