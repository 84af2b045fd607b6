//! Exchanges driven by `simulate::run`: a scripted upstream answers, the client's view is
//! asserted, and every run is also held to every invariant (`simulate::check`).

use super::*;
use crate::simulate::{self, Canned, Run, AUTH, CDN, UPSTREAM};
use std::collections::HashMap;

const D: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn config(extra: &[(&str, &str)]) -> Config {
    Config::from_variables(|k| {
        let defaults = [
            ("upstream", UPSTREAM),
            ("upstream_auth", AUTH),
            ("upstream_cdn", CDN),
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
    h.insert("host", HeaderValue::from_static("127.0.0.1:3000"));
    for (k, v) in headers {
        h.insert(*k, HeaderValue::from_static(v));
    }
    Incoming {
        method,
        path,
        query,
        headers: h,
        scheme: Some("http".into()),
        authority: None,
        now: 1_700_000_000,
    }
}

/// Runs one exchange against a scripted upstream and checks every invariant.
fn drive(
    cfg: &Config,
    req: Incoming,
    body: &[u8],
    upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    drive_stored(cfg, req, body, &mut HashMap::new(), upstream)
}

/// `drive`, with a key-value store kept between runs.
fn drive_stored(
    cfg: &Config,
    req: Incoming,
    body: &[u8],
    store: &mut HashMap<String, Vec<u8>>,
    upstream: impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure>,
) -> Run {
    let run = simulate::run_with_store(cfg.clone(), req.clone(), body, store, upstream);
    if let Err(e) = simulate::check(cfg, &req, &run) {
        panic!("invariant broken: {e}\n{run:?}");
    }
    run
}

/// Answers by request path (and query, when the key has one); 404 otherwise.
fn by_path(
    table: Vec<(&'static str, Canned)>,
) -> impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure> {
    move |r| {
        let pq = r.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
        let origin = format!(
            "{}://{}",
            r.uri().scheme_str().unwrap_or(""),
            r.uri().authority().map(|a| a.as_str()).unwrap_or("")
        );
        let found = table.iter().find(|(k, _)| {
            let key = k.strip_prefix(&origin).unwrap_or(k);
            key == pq || (!key.contains('?') && key == r.uri().path())
        });
        Ok(found
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| Canned::new(404)))
    }
}

fn header<'a>(run: &'a Run, name: &str) -> &'a str {
    run.reply
        .head()
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn status(run: &Run) -> u16 {
    run.reply.status().as_u16()
}

fn error_code(run: &Run) -> String {
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

/// A token request with Basic credentials.
fn token_get(query: &str) -> Incoming {
    let path = format!("/token?{query}");
    let mut req = incoming(Method::GET, &path, &[]);
    req.headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"),
    );
    req
}

fn bearer(realm: &str, scope: &str) -> Canned {
    Canned::new(401).header(
        "www-authenticate",
        format!("Bearer realm=\"{realm}\",service=\"reg\",scope=\"{scope}\""),
    )
}

#[test]
fn base_challenge_names_the_proxy_realm() {
    let cfg = config(&[]);
    let run = drive(&cfg, incoming(Method::GET, "/v2/", &[]), b"", |_| {
        Ok(bearer(&format!("{AUTH}/token"), ""))
    });
    assert_eq!(status(&run), 401);
    assert_eq!(
        header(&run, "www-authenticate"),
        r#"Bearer realm="http://127.0.0.1:3000/token",service="127.0.0.1:3000""#
    );
}

#[test]
fn manifest_head_maps_name_and_keeps_only_allowed_headers() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let req = incoming(
        Method::HEAD,
        "/v2/web/manifests/1.0?ns=127.0.0.1:5000&x=1",
        &[
            ("accept", "application/vnd.oci.image.index.v1+json"),
            ("cookie", "session=1"),
            ("referer", "https://evil.example"),
            ("authorization", "Bearer upstream-token"),
            ("accept-encoding", "gzip"),
        ],
    );
    let run = drive(&cfg, req, b"", |_| {
        Ok(Canned::new(200)
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .header("content-length", "527")
            .header("docker-content-digest", D)
            .header("set-cookie", "a=b")
            .header("strict-transport-security", "max-age=1"))
    });
    let [sent] = run.sent.as_slice() else {
        panic!("{:?}", run.sent)
    };
    assert_eq!(sent.method(), Method::HEAD);
    assert_eq!(
        sent.uri().to_string(),
        "http://127.0.0.1:5000/v2/team/app/web/manifests/1.0"
    );
    let mut names: Vec<_> = sent.headers().keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(names, ["accept", "accept-encoding", "authorization"]);
    assert_eq!(sent.headers()["accept-encoding"], "identity");
    assert_eq!(status(&run), 200);
    assert_eq!(header(&run, "content-length"), "527");
    assert_eq!(header(&run, "docker-content-digest"), D);
    assert_eq!(header(&run, "set-cookie"), "");
    assert_eq!(header(&run, "strict-transport-security"), "");
}

#[test]
fn every_401_carries_the_proxy_challenge() {
    let cfg = config(&[("repository_prefix", "team")]);
    let challenges: [&[u8]; 5] = [
        b"Basic realm=\"quay.io\", Bearer realm=\"http://127.0.0.1:5000/v2/auth\",service=\"quay.io\",scope=\"repository:team/web:pull\"",
        b"Bearer realm=\"\xc3\xa9\"",
        b"Bearer realm=\"http://127.0.0.1:5000/v2/auth\",scope=\"repository:other/x:pull\"",
        b"garbage,,,",
        b"",
    ];
    for c in challenges {
        let req = incoming(Method::GET, "/v2/web/manifests/1.0", &[]);
        let run = drive(&cfg, req, b"", |_| {
            let mut answer = Canned::new(401)
                .header("content-encoding", "gzip")
                .header("etag", "\"x\"")
                .body(b"\x1f\x8bnot json");
            if !c.is_empty() {
                answer = answer.header("www-authenticate", c);
            }
            Ok(answer)
        });
        assert_eq!(status(&run), 401);
        assert_eq!(
            header(&run, "www-authenticate"),
            r#"Bearer realm="http://127.0.0.1:3000/token",service="127.0.0.1:3000",scope="repository:web:pull""#,
            "{}",
            String::from_utf8_lossy(c)
        );
        assert_eq!(error_code(&run), "UNAUTHORIZED");
        assert_eq!(header(&run, "content-encoding"), "");
        assert_eq!(header(&run, "etag"), "");
    }
}

#[test]
fn basic_upstreams_get_a_basic_challenge_and_credentials_pass_through() {
    let cfg = config(&[]);
    let run = drive(&cfg, incoming(Method::GET, "/v2/", &[]), b"", |_| {
        Ok(Canned::new(401).header("www-authenticate", "Basic realm=\"upstream-realm\""))
    });
    assert_eq!(
        header(&run, "www-authenticate"),
        r#"Basic realm="127.0.0.1:3000""#
    );
    let req = incoming(
        Method::GET,
        "/v2/",
        &[("authorization", "Basic YWxpY2U6czNjcmV0")],
    );
    let run = drive(&cfg, req, b"", |r| {
        assert_eq!(r.headers()["authorization"], "Basic YWxpY2U6czNjcmV0");
        Ok(Canned::new(200))
    });
    assert_eq!(status(&run), 200);
    // The token endpoint mints nothing for a Basic upstream.
    let req = token_get("service=x&scope=repository:web:pull");
    let run = drive(&cfg, req, b"", |_| {
        Ok(Canned::new(401).header("www-authenticate", "Basic realm=\"upstream-realm\""))
    });
    assert_eq!(status(&run), 400);
    assert!(!String::from_utf8_lossy(&run.body).contains("YWxp"));
}

#[test]
fn docker_hub_library_in_path() {
    let cfg = config(&[("upstream", "https://registry-1.docker.io")]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/alpine/manifests/3", &[]),
        b"",
        |_| Ok(Canned::new(200)),
    );
    assert_eq!(
        run.sent[0].uri().to_string(),
        "https://registry-1.docker.io/v2/library/alpine/manifests/3"
    );
}

fn blob_redirect(policy: &str, location: &'static str) -> (Config, Run) {
    let cfg = config(&[("blob_redirect", policy)]);
    let req = incoming(
        Method::GET,
        &format!("/v2/web/blobs/{D}"),
        &[
            ("authorization", "Bearer tok"),
            ("range", "bytes=5-"),
            ("cookie", "c=1"),
        ],
    );
    let run = drive(&cfg, req, b"", move |r| {
        Ok(match r.uri().authority().map(|a| a.as_str()) {
            Some("127.0.0.1:5000") => Canned::new(307)
                .header("location", location)
                .header("link", "</v2/web/tags/list>; rel=\"next\"")
                .body("<a href=\"...\">Temporary Redirect</a>"),
            _ => Canned::new(206)
                .header("content-range", "bytes 5-9/10")
                .header("link", "<http://127.0.0.3:5002/x>; rel=\"next\"")
                .body("56789"),
        })
    });
    (cfg, run)
}

#[test]
fn pass_hands_the_cdn_redirect_to_the_client() {
    let (_, run) = blob_redirect("pass", "http://127.0.0.3:5002/blob?sig=1");
    assert_eq!(status(&run), 307);
    assert_eq!(header(&run, "location"), "http://127.0.0.3:5002/blob?sig=1");
    assert_eq!(header(&run, "content-length"), "0");
    assert_eq!(header(&run, "link"), "");
    assert_eq!(run.sent.len(), 1);
}

#[test]
fn follow_fetches_the_cdn_without_credentials_and_keeps_range() {
    let (_, run) = blob_redirect("follow", "http://127.0.0.3:5002/blob?sig=1");
    assert_eq!(status(&run), 206);
    assert_eq!(run.body, b"56789");
    let cdn = &run.sent[1];
    assert_eq!(cdn.uri().to_string(), "http://127.0.0.3:5002/blob?sig=1");
    let mut names: Vec<_> = cdn.headers().keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(names, ["accept-encoding", "range"]);
    assert_eq!(header(&run, "docker-content-digest"), D);
    assert_eq!(header(&run, "link"), "");
}

#[test]
fn redirects_outside_configuration_are_refused() {
    for target in [
        "http://127.0.0.4:6666/steal",
        "http://127.0.0.1:5000@127.0.0.4:6666/x",
        "http://user:pw@127.0.0.3:5002/x",
        "ftp://127.0.0.3/x",
    ] {
        let (_, run) = blob_redirect("follow", target);
        assert_eq!(status(&run), 502, "{target}");
        assert_eq!(run.sent.len(), 1, "{target}");
        assert!(!String::from_utf8_lossy(&run.body).contains("127.0.0."));
    }
}

#[test]
fn relative_redirect_is_followed_on_the_upstream_with_credentials() {
    let cfg = config(&[]);
    let req = incoming(
        Method::GET,
        &format!("/v2/web/blobs/{D}"),
        &[("authorization", "Bearer tok")],
    );
    let run = drive(
        &cfg,
        req,
        b"",
        by_path(vec![
            (
                "/v2/web/blobs/sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                Canned::new(302).header("location", "/artifacts-downloads/x?token=opaque%2Bsig"),
            ),
            ("/artifacts-downloads/x?token=opaque%2Bsig", Canned::new(200).body("blob")),
        ]),
    );
    assert_eq!(status(&run), 200);
    assert_eq!(run.body, b"blob");
    assert_eq!(run.sent[1].headers()["authorization"], "Bearer tok");
}

#[test]
fn redirect_loops_end() {
    let cfg = config(&[]);
    let req = incoming(Method::GET, &format!("/v2/web/blobs/{D}"), &[]);
    let run = drive(&cfg, req, b"", |_| {
        Ok(Canned::new(302).header("location", "/again"))
    });
    assert_eq!(status(&run), 502);
    assert_eq!(run.sent.len(), 6);
}

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
                Canned::new(200).body("{}"),
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
fn writes_are_refused_without_contacting_the_upstream() {
    let cfg = config(&[]);
    for (m, p) in [
        (Method::PUT, "/v2/web/manifests/1"),
        (Method::POST, "/v2/web/blobs/uploads/"),
        (Method::DELETE, "/v2/"),
        (Method::PATCH, "/v2/web/blobs/uploads/x"),
        (Method::PUT, "/token"),
    ] {
        let run = drive(&cfg, incoming(m.clone(), p, &[]), b"x", |_| {
            panic!("{m} {p} reached the upstream")
        });
        assert_eq!(status(&run), 405);
        assert!(header(&run, "allow").starts_with("GET, HEAD"));
        assert_eq!(error_code(&run), "UNSUPPORTED");
    }
}

#[test]
fn tags_list_body_and_link_in_client_names_and_head_length_matches() {
    let cfg = config(&[("repository_prefix", "team")]);
    let answer = || {
        by_path(vec![(
            "/v2/team/web/tags/list?n=2",
            Canned::new(200)
                .header("content-type", "application/json")
                .header("content-length", "45")
                .header("etag", "\"e\"")
                .header("link", "</v2/team/web/tags/list?last=b&n=2>; rel=\"next\"")
                .body(r#"{"name":"team/web","tags":["a","b"]}"#),
        )])
    };
    let get = drive(
        &cfg,
        incoming(Method::GET, "/v2/web/tags/list?n=2", &[]),
        b"",
        answer(),
    );
    assert_eq!(get.body, br#"{"name":"web","tags":["a","b"]}"#);
    assert_eq!(
        header(&get, "link"),
        "</v2/web/tags/list?last=b&n=2>; rel=\"next\""
    );
    assert_eq!(header(&get, "etag"), "");
    let head = drive(
        &cfg,
        incoming(Method::HEAD, "/v2/web/tags/list?n=2", &[]),
        b"",
        answer(),
    );
    assert_eq!(head.sent[0].method(), Method::GET);
    assert_eq!(
        header(&head, "content-length"),
        header(&get, "content-length")
    );
}

#[test]
fn listings_the_proxy_cannot_read_are_never_passed_raw() {
    let cfg = config(&[("repository_prefix", "team")]);
    for path in ["/v2/_catalog", "/v2/web/tags/list"] {
        let run = drive(
            &cfg,
            incoming(Method::GET, path, &[("accept-encoding", "gzip")]),
            b"",
            |r| {
                assert_eq!(r.headers()["accept-encoding"], "identity");
                Ok(Canned::new(200)
                    .header("content-encoding", "gzip")
                    .body(b"\x1f\x8b\x08\x00compressed"))
            },
        );
        assert_eq!(status(&run), 502, "{path}");
        assert_eq!(error_code(&run), "UNAVAILABLE");
    }
}

#[test]
fn catalog_through_a_prefix() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/_catalog?n=2", &[]),
        b"",
        |r| {
            assert_eq!(r.uri().query(), Some("n=2&last=team%2Fapp%2F"));
            Ok(Canned::new(200)
                .header(
                    "link",
                    "</v2/_catalog?last=team%2Fapp%2Fb&n=2>; rel=\"next\"",
                )
                .body(r#"{"repositories":["team/app/a","team/app/b"]}"#))
        },
    );
    assert_eq!(run.body, br#"{"repositories":["a","b"]}"#);
    assert_eq!(
        header(&run, "link"),
        "</v2/_catalog?last=b&n=2>; rel=\"next\""
    );
}

#[test]
fn catalog_on_docker_hub_is_unsupported_without_a_request() {
    let cfg = config(&[("upstream", "https://registry-1.docker.io")]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/_catalog", &[]),
        b"",
        |_| panic!("no request expected"),
    );
    assert_eq!(status(&run), 404);
}

#[test]
fn upstream_error_bodies_are_replaced() {
    let cfg = config(&[("repository_prefix", "team/app")]);
    let body = r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"team/app/web"}}]}"#;
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/web/manifests/1", &[]),
        b"",
        |_| {
            Ok(Canned::new(404)
                .header("content-type", "application/json; charset=utf-8")
                .body(body))
        },
    );
    assert_eq!(status(&run), 404);
    assert_eq!(error_code(&run), "NAME_UNKNOWN");
    assert!(!String::from_utf8_lossy(&run.body).contains("team/app"));
    assert_eq!(
        run.cause.as_deref(),
        Some("upstream answered 404 Not Found")
    );
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/web/manifests/1", &[]),
        b"",
        |_| {
            Ok(Canned::new(429)
            .header("retry-after", "37")
            .body(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"see https://www.docker.com/increase-rate-limit"}]}"#))
        },
    );
    assert_eq!(status(&run), 429);
    assert_eq!(header(&run, "retry-after"), "37");
    assert_eq!(error_code(&run), "TOOMANYREQUESTS");
    assert!(!String::from_utf8_lossy(&run.body).contains("docker.com"));
}

#[test]
fn failures_are_plain_words_and_the_origin_goes_to_the_log_only() {
    let cfg = config(&[("upstream_timeout", "25")]);
    for (failure, code, words) in [
        (Failure::Dns, 502, "does not resolve"),
        (Failure::Refused, 502, "connection refused"),
        (Failure::Timeout, 504, "did not answer within 25 s"),
    ] {
        let run = drive(
            &cfg,
            incoming(Method::GET, "/v2/web/manifests/1", &[]),
            b"",
            |_| Err(failure.clone()),
        );
        assert_eq!(status(&run), code);
        let body = String::from_utf8_lossy(&run.body).into_owned();
        assert!(
            body.contains(words) && !body.contains("127.0.0.1:5000"),
            "{body}"
        );
        assert!(
            run.cause.as_deref().unwrap().contains("127.0.0.1"),
            "{:?}",
            run.cause
        );
    }
}

#[test]
fn unknown_paths_and_bad_names_are_oci_errors() {
    let cfg = config(&[]);
    for (p, code) in [
        ("/favicon.ico", 404),
        ("/v2/A/manifests/1", 400),
        ("/v2/a/../b/manifests/1", 400),
        ("/v2/a/blobs/latest", 400),
    ] {
        let run = drive(&cfg, incoming(Method::GET, p, &[]), b"", |_| {
            panic!("no request")
        });
        assert_eq!(status(&run), code, "{p}");
    }
}

#[test]
fn an_escaped_echo_of_the_client_s_path_is_not_the_upstream_s_name() {
    // JSON spells \x12 as \u0012: next to the client's "7.0.0.2:5001" that reads as the realm's
    // authority, though the proxy said nothing the client did not send (found by fuzzing).
    let cfg = config(&[]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/\u{12}7.0.0.2:5001", &[]),
        b"",
        |_| panic!("no request"),
    );
    assert_eq!(status(&run), 404);
}

#[test]
fn hostile_host_headers_get_a_400_and_no_page() {
    let cfg = config(&[]);
    for host in ["[<img src=x onerror=alert(1)>]", "a\",realm=\"evil", "x/y"] {
        let mut req = incoming(Method::GET, "/", &[]);
        req.headers
            .insert("host", HeaderValue::from_str(host).unwrap());
        let run = drive(&cfg, req, b"", |_| panic!("no request"));
        assert_eq!(status(&run), 400, "{host}");
        assert!(!String::from_utf8_lossy(&run.body).contains("<img"));
    }
}

#[test]
fn home_page_escapes_and_home_redirects() {
    let cfg = config(&[]);
    let run = drive(&cfg, incoming(Method::GET, "/", &[]), b"", |_| {
        panic!("no request")
    });
    assert_eq!(status(&run), 200);
    assert!(header(&run, "content-type").starts_with("text/html"));
    assert_eq!(
        header(&run, "content-security-policy"),
        "default-src 'none'"
    );
    let cfg = config(&[("home", "https://docs.example.com/registry")]);
    let run = drive(&cfg, incoming(Method::GET, "/", &[]), b"", |_| {
        panic!("no request")
    });
    assert_eq!(status(&run), 302);
    assert_eq!(
        header(&run, "location"),
        "https://docs.example.com/registry"
    );
}

#[test]
fn token_scopes_with_invalid_names_are_refused_before_any_request() {
    let cfg = config(&[("repository_prefix", "team")]);
    let req = incoming(Method::GET, "/token?scope=repository:../../x:pull", &[]);
    let run = drive(&cfg, req, b"", |_| panic!("no request"));
    assert_eq!(status(&run), 400);
    assert_eq!(error_code(&run), "NAME_INVALID");
}

#[test]
fn randomized_exchanges_keep_every_invariant() {
    let mut seeds = simulate::Seeded::new(0x5eed);
    for i in 0..10_000 {
        let data = seeds.fill(512);
        if let Err(e) = simulate::exchange(&data) {
            panic!("run {i}: {e}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Route tables

const TABLE: &str = r#"[
    {"name": "hub", "host": "hub.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "library": true, "mirrors": ["docker.io"]},
    {"name": "ghcr", "host": "images.example.com", "path": "ghcr", "upstream": "http://127.0.0.5:5005",
     "auth": "http://127.0.0.5:5005"},
    {"name": "quay", "host": "images.example.com", "path": "quay", "upstream": "http://127.0.0.6:5006"},
    {"name": "mirror", "upstream": "http://127.0.0.7:5007", "mirrors": ["ghcr.io"]},
    {"name": "own", "host": "own.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "username": "robot", "password": "s3cret", "public": true}
]"#;

fn table() -> Config {
    config(&[("routes", TABLE)])
}

fn at(host: &'static str, method: Method, path_query: &str) -> Incoming {
    let mut req = incoming(method, path_query, &[]);
    req.headers.insert("host", HeaderValue::from_static(host));
    req
}

fn manifest_ok() -> Canned {
    Canned::new(200)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header("docker-content-digest", D)
        .body("{}")
}

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
    assert_eq!(status(&run), 200);
    let asked = run.sent.last().unwrap();
    assert!(
        asked.headers().get(header::AUTHORIZATION).is_none(),
        "{run:?}"
    );
    assert!(!asked.uri().to_string().contains("alice"), "{run:?}");
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

/// The token realm of the credentialed route: counts the token requests it answers.
fn own_upstream(
    tokens: std::rc::Rc<std::cell::Cell<u32>>,
) -> impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure> {
    move |r| {
        let auth = r
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string());
        Ok(
            match (r.uri().authority().unwrap().as_str(), auth.as_deref()) {
                ("127.0.0.2:5001", Some("Basic cm9ib3Q6czNjcmV0")) => {
                    tokens.set(tokens.get() + 1);
                    Canned::new(200).body(r#"{"token":"own-token","expires_in":300}"#)
                }
                ("127.0.0.1:5000", Some("Bearer own-token")) => manifest_ok(),
                ("127.0.0.1:5000", _) => {
                    bearer("http://127.0.0.2:5001/token", "repository:app:pull")
                }
                _ => Canned::new(403),
            },
        )
    }
}

/// A GET on the credentialed route's host, against `own_upstream` and a store kept between
/// calls.
fn own_get(
    cfg: &Config,
    store: &mut HashMap<String, Vec<u8>>,
    tokens: &std::rc::Rc<std::cell::Cell<u32>>,
    path: &str,
) -> Run {
    let req = at("own.example.com", Method::GET, path);
    drive_stored(cfg, req, b"", store, own_upstream(tokens.clone()))
}

#[test]
fn a_credentialed_route_asks_its_realm_once_for_many_pulls() {
    let cfg = table();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut store = std::collections::HashMap::new();
    for i in 0..10 {
        let run = own_get(&cfg, &mut store, &tokens, "/v2/app/manifests/1");
        assert_eq!(status(&run), 200, "pull {i}");
        let sent = if i == 0 { 3 } else { 1 };
        assert_eq!(run.sent.len(), sent, "pull {i}: {:?}", run.sent);
        assert!(!format!("{:?}", run.reply).contains("own-token"));
    }
    assert_eq!(tokens.get(), 1);
    assert!(!format!("{store:?}").contains("s3cret"));
    // The token endpoint and /v2/ answer without the upstream.
    for path in ["/token?scope=repository:app:pull", "/v2/"] {
        let run = drive(&cfg, at("own.example.com", Method::GET, path), b"", |_| {
            panic!("no request")
        });
        assert_eq!(status(&run), 200, "{path}");
    }
}

#[test]
fn a_credentialed_route_s_tokens_for_any_names_keep_the_store_bounded() {
    // Anonymous clients name any repository they like; each name is a scope the route's
    // account gets a token for.
    let cfg = table();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut store = std::collections::HashMap::new();
    for i in 0..3000 {
        let path = format!("/v2/rand{i}/manifests/1");
        let run = own_get(&cfg, &mut store, &tokens, &path);
        assert_eq!(status(&run), 200, "{path}");
    }
    let own: Vec<_> = store.keys().filter(|k| k.contains("own-token")).collect();
    let buckets = crate::cache::Kind::OwnToken.buckets() as usize;
    assert!(own.len() <= buckets, "{}", own.len());
    assert!(store.len() < 3 * buckets, "{}", store.len());
}

#[test]
fn a_refused_stored_token_is_dropped_and_replaced_once() {
    let cfg = table();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut store = std::collections::HashMap::new();
    let req = at("own.example.com", Method::GET, "/v2/app/manifests/1");
    simulate::run_with_store(
        cfg.clone(),
        req.clone(),
        b"",
        &mut store,
        own_upstream(tokens.clone()),
    );
    for v in store.values_mut() {
        if String::from_utf8_lossy(v).contains("own-token") {
            *v = String::from_utf8_lossy(v)
                .replace("own-token", "revoked")
                .into_bytes();
        }
    }
    let run = simulate::run_with_store(
        cfg.clone(),
        req.clone(),
        b"",
        &mut store,
        own_upstream(tokens.clone()),
    );
    assert_eq!(status(&run), 200);
    assert_eq!(tokens.get(), 2);
    assert_eq!(run.sent.len(), 3);
    // A realm that refuses the credentials: an error, never a loop.
    let run = simulate::run(cfg.clone(), req, b"", |r| {
        Ok(match r.uri().authority().unwrap().as_str() {
            "127.0.0.2:5001" => Canned::new(401),
            _ => bearer("http://127.0.0.2:5001/token", ""),
        })
    });
    assert_eq!(status(&run), 502);
    assert_eq!(run.sent.len(), 2);
}

#[test]
fn a_redirect_target_that_wants_an_anonymous_token_gets_one() {
    // registry.k8s.io: every request is redirected to a regional Artifact Registry host,
    // which challenges for an anonymous token of its own.
    let cfg = config(&[("upstream_cdn", "http://*.pkg.test")]);
    let accept = "application/vnd.oci.image.index.v1+json";
    let req = incoming(
        Method::GET,
        "/v2/pause/manifests/3.9",
        &[("authorization", "Bearer client-token"), ("accept", accept)],
    );
    let run = drive(&cfg, req, b"", |r| {
        let auth = r
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string());
        Ok(
            match (r.uri().host().unwrap(), r.uri().path(), auth.as_deref()) {
                ("127.0.0.1", _, _) => Canned::new(307).header(
                    "location",
                    "http://us-west1.pkg.test/v2/k8s-artifacts-prod/images/pause/manifests/3.9",
                ),
                ("us-west1.pkg.test", "/v2/token", None) => {
                    Canned::new(200).body(r#"{"token":"ar-anonymous"}"#)
                }
                ("us-west1.pkg.test", _, Some("Bearer ar-anonymous")) => manifest_ok(),
                ("us-west1.pkg.test", _, _) => bearer(
                    "http://us-west1.pkg.test/v2/token",
                    "repository:k8s-artifacts-prod/images/pause:pull",
                ),
                _ => Canned::new(404),
            },
        )
    });
    assert_eq!(status(&run), 200, "{run:?}");
    assert_eq!(run.sent.len(), 4);
    assert!(run.sent[1..].iter().all(|r| r
        .headers()
        .get(header::AUTHORIZATION)
        .is_none_or(|v| v != "Bearer client-token")));
    // The other registry's API is asked what the client asked (the manifest types it takes).
    for asked in [&run.sent[1], &run.sent[3]] {
        assert_eq!(asked.headers()[header::ACCEPT], accept, "{asked:?}");
    }
    // A realm on a host the route may not reach: the client gets the proxy's challenge.
    let cfg = config(&[("upstream_cdn", "http://*.pkg.test")]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/pause/manifests/3.9", &[]),
        b"",
        |r| {
            Ok(match r.uri().host().unwrap() {
                "127.0.0.1" => Canned::new(307).header("location", "http://a.pkg.test/v2/x"),
                _ => bearer("http://127.0.0.4:6666/token", ""),
            })
        },
    );
    assert_eq!(status(&run), 401);
    assert_eq!(run.sent.len(), 2);
}

#[test]
fn quay_pages_tags_with_next_page() {
    let cfg = config(&[("repository_prefix", "org")]);
    let run = drive(
        &cfg,
        incoming(Method::GET, "/v2/app/tags/list?n=2&next_page=abc", &[]),
        b"",
        |r| {
            assert_eq!(r.uri().query(), Some("n=2&next_page=abc"));
            Ok(Canned::new(200)
                .header(
                    "link",
                    "</v2/org/app/tags/list?n=2&next_page=gAAAAB%3D>; rel=\"next\"",
                )
                .body(r#"{"name":"org/app","tags":["a","b"]}"#))
        },
    );
    assert_eq!(
        header(&run, "link"),
        "</v2/app/tags/list?n=2&next_page=gAAAAB%3D>; rel=\"next\""
    );
}

// ------------------------------------------------------------------------------------------
// The store

const INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BLOB: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A token-auth upstream (distribution and a realm on 127.0.0.2) whose blobs redirect to
/// signed storage URLs; counts what it is asked.
fn signed_upstream(
    count: std::rc::Rc<std::cell::Cell<u32>>,
) -> impl FnMut(&Request<Vec<u8>>) -> Result<Canned, Failure> {
    move |r| {
        count.set(count.get() + 1);
        let auth = r
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string());
        let digest = crate::cache::sha256(INDEX.as_bytes());
        Ok(
            match (
                r.uri().authority().unwrap().as_str(),
                r.uri().path(),
                auth.as_deref(),
            ) {
                ("127.0.0.2:5001", "/token", _) => {
                    Canned::new(200).body(r#"{"token":"anon-1","expires_in":300}"#)
                }
                ("127.0.0.1:5000", _, Some("Bearer anon-1"))
                    if r.uri().path().contains("/manifests/") =>
                {
                    Canned::new(200)
                        .header("content-type", OCI_INDEX)
                        .header("docker-content-digest", digest)
                        .header("content-length", INDEX.len().to_string())
                        .body(INDEX)
                }
                ("127.0.0.1:5000", p, Some("Bearer anon-1")) if p.contains("/blobs/") => {
                    Canned::new(307).header(
                        "location",
                        "http://127.0.0.3:5002/blob?X-Amz-Date=20991130T120000Z&X-Amz-Expires=600",
                    )
                }
                ("127.0.0.1:5000", _, _) => {
                    bearer("http://127.0.0.2:5001/token", "repository:app:pull")
                }
                _ => Canned::new(404),
            },
        )
    }
}

/// What docker does for a pull of `app:1` with one layer, against `cfg` and `store`:
/// returns the upstream requests it cost.
fn docker_pull(cfg: &Config, store: &mut std::collections::HashMap<String, Vec<u8>>) -> u32 {
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let digest = crate::cache::sha256(INDEX.as_bytes());
    let accept = "application/vnd.oci.image.index.v1+json";
    let mut step = |req: Incoming, want: u16| {
        let run = drive_stored(cfg, req.clone(), b"", store, signed_upstream(count.clone()));
        assert_eq!(status(&run), want, "{} {}: {run:?}", req.method, req.path);
        run
    };
    step(incoming(Method::GET, "/v2/", &[]), 401);
    let token = step(
        incoming(
            Method::GET,
            "/token?service=x&scope=repository:app:pull",
            &[],
        ),
        200,
    );
    let v: serde_json::Value = serde_json::from_slice(&token.body).unwrap();
    assert_eq!(v["token"], "anon-1");
    let bearer: &'static str =
        Box::leak(format!("Bearer {}", v["token"].as_str().unwrap()).into_boxed_str());
    let auth = [("authorization", bearer), ("accept", accept)];
    let head = step(incoming(Method::HEAD, "/v2/app/manifests/1", &auth), 200);
    assert_eq!(header(&head, "docker-content-digest"), digest);
    assert_eq!(header(&head, "content-length"), INDEX.len().to_string());
    let before = count.get();
    let get = step(
        incoming(Method::GET, &format!("/v2/app/manifests/{digest}"), &auth),
        200,
    );
    assert_eq!(get.body, INDEX.as_bytes());
    if count.get() == before {
        // From the store, as a registry answers.
        assert_eq!(header(&get, "etag"), format!("\"{digest}\""));
        assert_eq!(
            header(&get, "docker-distribution-api-version"),
            "registry/2.0"
        );
    }
    let blob = step(
        incoming(Method::GET, &format!("/v2/app/blobs/{BLOB}"), &auth),
        307,
    );
    assert!(header(&blob, "location").starts_with("http://127.0.0.3:5002/blob?"));
    count.get()
}

#[test]
fn a_warm_pull_costs_the_upstream_nothing() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    // Learn the realm, get a token, GET the manifest (for the HEAD by tag), the blob.
    assert_eq!(docker_pull(&cfg, &mut store), 4);
    assert_eq!(docker_pull(&cfg, &mut store), 0);
    assert!(!format!("{store:?}").contains("s3cret"));
    // With tags not kept, the tag goes upstream each time (a HEAD), the rest stays warm.
    let cfg = config(&[("tag_ttl", "0")]);
    let mut store = std::collections::HashMap::new();
    assert_eq!(docker_pull(&cfg, &mut store), 5);
    assert_eq!(docker_pull(&cfg, &mut store), 1);
}

#[test]
fn anonymous_tokens_are_handed_out_again_only_with_a_minute_left() {
    let token_requests = |expires_in: u64| {
        let cfg = config(&[]);
        let mut store = std::collections::HashMap::new();
        let asked = std::rc::Rc::new(std::cell::Cell::new(0));
        for _ in 0..2 {
            let asked = asked.clone();
            let req = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
            let run = simulate::run_with_store(cfg.clone(), req, b"", &mut store, move |r| {
                Ok(match r.uri().path() {
                    "/token" => {
                        asked.set(asked.get() + 1);
                        let body = format!(r#"{{"token":"t","expires_in":{expires_in}}}"#);
                        Canned::new(200).body(body)
                    }
                    _ => bearer("http://127.0.0.2:5001/token", "repository:app:pull"),
                })
            });
            assert_eq!(status(&run), 200);
        }
        asked.get()
    };
    assert_eq!(token_requests(300), 1);
    assert_eq!(token_requests(90), 1);
    // Kept, it would reach clients with under a minute left, which they use for a minute.
    assert_eq!(token_requests(60), 2);
}

#[test]
fn a_kept_tag_whose_manifest_gave_way_is_kept_again() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    assert_eq!(docker_pull(&cfg, &mut store), 4);
    // Another manifest took its slot; the tag is still kept, and the client's token is one the
    // proxy handed out anonymously: what the upstream says now is kept again.
    store.retain(|k, _| !k.starts_with("spin-registry-proxy:manifest:"));
    assert_eq!(docker_pull(&cfg, &mut store), 1);
    assert_eq!(docker_pull(&cfg, &mut store), 0);
}

#[test]
fn a_tag_is_kept_for_each_route_as_long_as_it_says() {
    // Two routes to one upstream share a store: what the one keeping tags for a day saw is
    // not served by the one that keeps them for a minute.
    let mut store = std::collections::HashMap::new();
    let day = config(&[("tag_ttl", "86400")]);
    assert_eq!(docker_pull(&day, &mut store), 4);
    assert_eq!(docker_pull(&day, &mut store), 0);
    let minute = config(&[("tag_ttl", "60")]);
    assert_eq!(docker_pull(&minute, &mut store), 1, "the tag went upstream");
    assert_eq!(docker_pull(&minute, &mut store), 0);
}

#[test]
fn the_store_keeps_nothing_a_client_with_credentials_got() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    let req = incoming(
        Method::HEAD,
        "/v2/app/manifests/1",
        &[
            ("authorization", "Bearer someone-s-token"),
            ("accept", OCI_INDEX),
        ],
    );
    let run = simulate::run_with_store(cfg.clone(), req, b"", &mut store, |r| {
        assert_eq!(
            r.method(),
            Method::HEAD,
            "a HEAD with credentials stays a HEAD"
        );
        Ok(Canned::new(200).header("content-type", OCI_INDEX))
    });
    assert_eq!(status(&run), 200);
    assert!(store.is_empty(), "{store:?}");
    // However warm the store, a client's own credentials are judged by the upstream.
    docker_pull(&cfg, &mut store);
    let digest = crate::cache::sha256(INDEX.as_bytes());
    let req = incoming(
        Method::GET,
        &format!("/v2/app/manifests/{digest}"),
        &[
            ("authorization", "Bearer expired-or-forged"),
            ("accept", OCI_INDEX),
        ],
    );
    let asked = std::rc::Rc::new(std::cell::Cell::new(0));
    let run = simulate::run_with_store(cfg, req, b"", &mut store, signed_upstream(asked.clone()));
    assert_eq!(asked.get(), 1);
    assert_eq!(status(&run), 401);
}

#[test]
fn kept_manifests_are_served_only_to_clients_that_accept_them() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    docker_pull(&cfg, &mut store);
    let digest = crate::cache::sha256(INDEX.as_bytes());
    let v2s2 = "application/vnd.docker.distribution.manifest.v2+json";
    let req = incoming(
        Method::GET,
        &format!("/v2/app/manifests/{digest}"),
        &[("accept", v2s2)],
    );
    let asked = std::rc::Rc::new(std::cell::Cell::new(0));
    let run = simulate::run_with_store(
        cfg.clone(),
        req,
        b"",
        &mut store,
        signed_upstream(asked.clone()),
    );
    assert_eq!(
        asked.get(),
        1,
        "served from the store to a client that does not take it"
    );
    assert_eq!(status(&run), 401);
    // A kept manifest whose bytes no longer hash to its digest is never served.
    for v in store.values_mut() {
        let text = String::from_utf8_lossy(v).into_owned();
        let bytes = crate::base64::encode(INDEX.as_bytes());
        if text.contains(&bytes) {
            *v = text
                .replace(&bytes, &crate::base64::encode(b"{}"))
                .into_bytes();
        }
    }
    let req = incoming(
        Method::GET,
        &format!("/v2/app/manifests/{digest}"),
        &[("accept", OCI_INDEX)],
    );
    let asked = std::rc::Rc::new(std::cell::Cell::new(0));
    simulate::run_with_store(cfg, req, b"", &mut store, signed_upstream(asked.clone()));
    assert_eq!(asked.get(), 1);
}

#[test]
fn follow_mode_goes_to_storage_directly_when_warm() {
    let cfg = config(&[
        ("blob_redirect", "follow"),
        ("upstream_cdn", "http://127.0.0.3:5002"),
    ]);
    let mut store = std::collections::HashMap::new();
    let auth = [("authorization", "Bearer anon-1")];
    let blob = |store: &mut std::collections::HashMap<String, Vec<u8>>| {
        // The realm's anonymous token first, so the blob request is an anonymous one.
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let t = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
        simulate::run_with_store(cfg.clone(), t, b"", store, signed_upstream(count.clone()));
        let before = count.get();
        let req = incoming(Method::GET, &format!("/v2/app/blobs/{BLOB}"), &auth);
        let run = simulate::run_with_store(cfg.clone(), req, b"", store, |r| {
            count.set(count.get() + 1);
            Ok(match r.uri().port_u16() {
                Some(5002) => Canned::new(200).body("blob bytes"),
                _ => signed_upstream(std::rc::Rc::new(std::cell::Cell::new(0)))(r)?,
            })
        });
        assert_eq!(run.body, b"blob bytes");
        count.get() - before
    };
    assert_eq!(blob(&mut store), 2);
    assert_eq!(blob(&mut store), 1);
}

#[test]
fn an_unreachable_store_costs_requests_never_answers() {
    let cfg = config(&[]);
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    // Every load finds nothing, every write is lost: as without a store.
    for _ in 0..2 {
        let req = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
        let run = simulate::run(cfg.clone(), req, b"", signed_upstream(count.clone()));
        assert_eq!(status(&run), 200);
    }
    assert_eq!(count.get(), 4);
}

#[test]
fn an_open_v2_seen_with_a_token_is_not_taken_for_an_open_registry() {
    // distribution with token auth: `/v2/` answers 200 to a bearer of a token, 401 otherwise.
    let upstream = |r: &Request<Vec<u8>>| {
        Ok(
            match (r.uri().path(), r.headers().get(header::AUTHORIZATION)) {
                ("/token", _) => Canned::new(200).body(r#"{"token":"t-1","expires_in":300}"#),
                ("/v2/", Some(_)) => Canned::new(200).body("{}"),
                _ => bearer("http://127.0.0.2:5001/token", ""),
            },
        )
    };
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    let run = simulate::run_with_store(
        cfg.clone(),
        incoming(Method::GET, "/v2/", &[("authorization", "Bearer t-1")]),
        b"",
        &mut store,
        upstream,
    );
    assert_eq!(status(&run), 200);
    // docker login: the token endpoint must still take the credentials to the realm.
    let login = incoming(
        Method::GET,
        "/token?service=x",
        &[("authorization", "Basic YWxpY2U6d3Jvbmc=")],
    );
    let run = simulate::run_with_store(cfg.clone(), login, b"", &mut store, upstream);
    assert_eq!(status(&run), 200, "{run:?}");
}

#[test]
fn a_manifest_cut_short_is_neither_kept_nor_served_as_whole() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    let req = incoming(Method::GET, "/v2/app/manifests/1", &[("accept", OCI_INDEX)]);
    let run = simulate::run_with_store(cfg, req, b"", &mut store, |_| {
        Ok(Canned::new(200)
            .header("content-type", OCI_INDEX)
            .header("content-length", INDEX.len().to_string())
            .body(&INDEX[..INDEX.len() / 2]))
    });
    assert_eq!(status(&run), 502, "{run:?}");
    assert!(store.is_empty(), "{store:?}");
}

#[test]
fn a_head_answered_from_a_get_keeps_the_length() {
    // distribution answers a manifest by digest whatever the Accept; the proxy turns an
    // anonymous HEAD into the GET it keeps.
    let digest = crate::cache::sha256(INDEX.as_bytes());
    let upstream = |r: &Request<Vec<u8>>| {
        let c = Canned::new(200)
            .header("content-type", OCI_INDEX)
            .header(
                "docker-content-digest",
                crate::cache::sha256(INDEX.as_bytes()),
            )
            .header("content-length", INDEX.len().to_string());
        Ok(if r.method() == Method::HEAD {
            c
        } else {
            c.body(INDEX)
        })
    };
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    let v2s2 = "application/vnd.docker.distribution.manifest.v2+json";
    for (accept, round) in [(OCI_INDEX, 1), (v2s2, 1), (v2s2, 2), (OCI_INDEX, 2)] {
        let path = format!("/v2/app/manifests/{digest}");
        let req = incoming(Method::HEAD, &path, &[("accept", accept)]);
        let run = simulate::run_with_store(cfg.clone(), req, b"", &mut store, upstream);
        assert_eq!(status(&run), 200, "{accept} {round}: {run:?}");
        assert_eq!(
            header(&run, "content-length"),
            INDEX.len().to_string(),
            "{accept} {round}: {run:?}"
        );
    }
}

#[test]
fn what_a_route_s_own_credentials_fetched_is_kept_for_that_route_alone() {
    let cfg = table();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut store = std::collections::HashMap::new();
    let digest = crate::cache::sha256(b"{}");
    // With a slash: the hub route does not add `library/`.
    let path = format!("/v2/team/app/manifests/{digest}");
    let mut req = at("own.example.com", Method::GET, &path);
    req.headers
        .insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    for round in 0..2 {
        let run = simulate::run_with_store(
            cfg.clone(),
            req.clone(),
            b"",
            &mut store,
            |r: &Request<Vec<u8>>| {
                let mut own = own_upstream(tokens.clone());
                let answer = own(r)?;
                Ok(match answer.status {
                    200 if r.uri().path().contains("/manifests/") => Canned::new(200)
                        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                        .header("content-length", "2")
                        .body("{}"),
                    _ => answer,
                })
            },
        );
        assert_eq!(status(&run), 200, "{round}: {run:?}");
        assert_eq!(run.sent.is_empty(), round == 1, "{round}: {:?}", run.sent);
    }
    // The same upstream through a route without credentials: not from the store.
    let mut anonymous = at("hub.example.com", Method::GET, &path);
    anonymous.headers = req.headers.clone();
    anonymous
        .headers
        .insert("host", HeaderValue::from_static("hub.example.com"));
    let run = simulate::run_with_store(cfg, anonymous, b"", &mut store, |_| {
        Ok(bearer("http://127.0.0.2:5001/token", "repository:app:pull"))
    });
    assert_eq!(status(&run), 401, "{run:?}");
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

/// The spec lets a registry page the referrers list with a `Link` whose query is its own
/// (`n`, `last`, `nextToken`, ...): it reaches the client, and comes back upstream, whole but
/// for containerd's `ns`. Dropping it made "next" the first page again: oras-go loops.
#[test]
fn referrers_pages_keep_their_query() {
    let cfg = config(&[("repository_prefix", "team")]);
    let index = |_: &Request<Vec<u8>>| {
        Ok(Canned::new(200)
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .header(
                "link",
                format!("</v2/team/web/referrers/{D}?n=1&nextToken=abc>; rel=\"next\""),
            )
            .body(INDEX))
    };
    let path = format!("/v2/web/referrers/{D}?artifactType=application%2Fx&n=1");
    let run = drive(&cfg, incoming(Method::GET, &path, &[]), b"", index);
    assert_eq!(status(&run), 200);
    assert_eq!(
        header(&run, "link"),
        format!("</v2/web/referrers/{D}?n=1&nextToken=abc>; rel=\"next\"")
    );
    assert_eq!(
        run.sent[0].uri().query(),
        Some("artifactType=application%2Fx&n=1")
    );
    let next = format!("/v2/web/referrers/{D}?n=1&nextToken=abc&ns=127.0.0.1:5000");
    let run = drive(&cfg, incoming(Method::GET, &next, &[]), b"", index);
    assert_eq!(status(&run), 200, "{:?}", run.cause);
    assert_eq!(run.sent[0].uri().query(), Some("n=1&nextToken=abc"));
}

/// A registry without the referrers API answers its router's 404 (distribution 2.8: plain
/// "404 page not found"). oras-go (oras, notation) falls back to the `sha256-<hex>` tag on
/// any 404 but NAME_UNKNOWN, which it takes for a missing repository and stops; a registry's
/// own NAME_UNKNOWN still passes as it came.
#[test]
fn a_registry_without_referrers_is_unsupported_not_name_unknown() {
    let cfg = config(&[("repository_prefix", "team")]);
    let path = format!("/v2/web/referrers/{D}");
    for method in [Method::GET, Method::HEAD] {
        for (ctype, body, code) in [
            (
                "text/plain; charset=utf-8",
                &b"404 page not found\n"[..],
                "UNSUPPORTED",
            ),
            (
                "application/json",
                &br#"{"errors":[{"code":"NOT_FOUND","message":"not found"}]}"#[..],
                "UNSUPPORTED",
            ),
            (
                "application/json",
                &br#"{"errors":[{"code":"NAME_UNKNOWN","message":"team/web"}]}"#[..],
                "NAME_UNKNOWN",
            ),
        ] {
            let run = drive(&cfg, incoming(method.clone(), &path, &[]), b"", |_| {
                Ok(Canned::new(404).header("content-type", ctype).body(body))
            });
            assert_eq!(status(&run), 404);
            if method == Method::GET {
                assert_eq!(error_code(&run), code, "{}", String::from_utf8_lossy(body));
            }
        }
    }
}

/// A credentialed route's realm is kept without end: when the registry moves it (the old one
/// fails, or the registry's 401 names another), it is learned again, once per request, and
/// kept anew; before, the route answered 502 until someone emptied the store.
#[test]
fn a_kept_realm_that_moved_is_learned_again() {
    let cfg = table();
    let mut store = HashMap::new();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    // Day 1: the realm is http://127.0.0.2:5001/token.
    let run = own_get(&cfg, &mut store, &tokens, "/v2/app/manifests/1");
    assert_eq!(status(&run), 200);
    // Day 2 (the kept token has ended): the registry now names /v2/token as its realm, and
    // the old one answers 404.
    let later = |store: &mut HashMap<String, Vec<u8>>| {
        let mut req = at("own.example.com", Method::GET, "/v2/app/manifests/1");
        req.now += 86_400;
        simulate::run_with_store(cfg.clone(), req, b"", store, |r| {
            let auth = r
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string());
            Ok(
                match (
                    r.uri().authority().unwrap().as_str(),
                    r.uri().path(),
                    auth.as_deref(),
                ) {
                    ("127.0.0.2:5001", "/v2/token", Some("Basic cm9ib3Q6czNjcmV0")) => {
                        Canned::new(200).body(r#"{"token":"new-token","expires_in":300}"#)
                    }
                    ("127.0.0.2:5001", _, _) => Canned::new(404),
                    ("127.0.0.1:5000", _, Some("Bearer new-token")) => manifest_ok(),
                    ("127.0.0.1:5000", _, _) => {
                        bearer("http://127.0.0.2:5001/v2/token", "repository:app:pull")
                    }
                    _ => Canned::new(403),
                },
            )
        })
    };
    for attempt in 0..3 {
        let run = later(&mut store);
        assert_eq!(
            status(&run),
            200,
            "attempt {attempt}: {:?} {:?}",
            run.cause,
            run.sent
        );
        // Old realm, registry (401), new realm, registry; then the kept token.
        let sent = if attempt == 0 { 4 } else { 1 };
        assert_eq!(run.sent.len(), sent, "attempt {attempt}: {:?}", run.sent);
    }
    // A kept realm that is down (5xx) has not moved: a 502, and nothing else asked.
    let mut store = HashMap::new();
    own_get(&cfg, &mut store, &tokens, "/v2/app/manifests/1");
    let mut req = at("own.example.com", Method::GET, "/v2/app/manifests/1");
    req.now += 86_400;
    let run = simulate::run_with_store(cfg.clone(), req, b"", &mut store, |_| Ok(Canned::new(503)));
    assert_eq!(status(&run), 502);
    assert_eq!(run.sent.len(), 1, "{:?}", run.sent);
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
    assert!(run.body.starts_with(br#"{"token":"q""#), "{run:?}");
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

/// A kept "/v2/ is open" ends when it was kept to end, however many token requests read it
/// (each wrote it again for another 5 minutes): an upstream that starts to challenge on /v2/
/// kept `docker login` (a token request with credentials and no scope) refused with a 400 for
/// as long as pulls continued.
#[test]
fn a_kept_open_v2_ends_whatever_the_traffic() {
    let cfg = config(&[]);
    let t0 = 1_700_000_000u64;
    let closed = |r: &Request<Vec<u8>>| -> Result<Canned, Failure> {
        Ok(
            match (r.uri().authority().unwrap().as_str(), r.uri().path()) {
                ("127.0.0.2:5001", "/token") => {
                    Canned::new(200).body(r#"{"token":"t","expires_in":30}"#)
                }
                _ => bearer("http://127.0.0.2:5001/token", ""),
            },
        )
    };
    let login = |store: &mut HashMap<String, Vec<u8>>| {
        let mut req = token_get("account=alice&client_id=docker&offline_token=true");
        req.now = t0 + 550;
        drive_stored(&cfg, req, b"", store, closed)
    };
    let open_v2 = |store: &mut HashMap<String, Vec<u8>>| {
        let mut req = incoming(Method::GET, "/v2/", &[]);
        req.now = t0;
        drive_stored(&cfg, req, b"", store, |_| Ok(Canned::new(200)));
    };
    // Without traffic in between, the kept answer has ended by t0 + 550: the login works.
    let mut quiet = HashMap::new();
    open_v2(&mut quiet);
    assert_eq!(status(&login(&mut quiet)), 200);
    // With two anonymous token requests in between, it has not.
    let mut busy = HashMap::new();
    open_v2(&mut busy);
    for dt in [200, 400] {
        let mut req = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
        req.now = t0 + dt;
        let run = drive_stored(&cfg, req, b"", &mut busy, closed);
        assert_eq!(status(&run), 200);
    }
    let run = login(&mut busy);
    assert_eq!(status(&run), 200, "{:?}", run.cause);
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

/// Docker Hub redirects blob GETs to `production.cloudfront.docker.com` too (Docker Hub release
/// notes, 2026-05-20; docker/docs allow-list). With `follow`, the `dockerhub` preset refuses it.
#[test]
fn the_dockerhub_preset_follows_docker_hub_s_cloudfront_storage() {
    let cfg = config(&[(
        "routes",
        r#"[{"name": "hub", "preset": "dockerhub", "blob_redirect": "follow"}]"#,
    )]);
    let req = incoming(Method::GET, &format!("/v2/alpine/blobs/{D}"), &[]);
    let run = drive(&cfg, req, b"", |r| {
        Ok(match r.uri().host().unwrap() {
            "registry-1.docker.io" => Canned::new(307).header(
                "location",
                "https://production.cloudfront.docker.com/registry-v2/docker/registry/v2/blobs/\
                 sha256/9f/9f86/data?Expires=1700000600&Signature=s&Key-Pair-Id=K",
            ),
            _ => Canned::new(200).body("blob"),
        })
    });
    assert_eq!(status(&run), 200, "{:?}", run.cause);
    assert_eq!(run.body, b"blob");
}

/// Docker Hub sends anonymous (and Personal plan) pulls to its R2 bucket
/// `docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com` (docker/docs
/// allow-list), which `upstream_cdn`, one origin, cannot also name: a Docker Hub upstream
/// follows to the `dockerhub` preset's storage as well. Another upstream does not.
#[test]
fn spin_toml_s_docker_hub_defaults_follow_anonymous_pulls_to_r2() {
    let cfg = Config::from_variables(|k| {
        [
            ("upstream", "https://registry-1.docker.io"),
            ("upstream_auth", "https://auth.docker.io"),
            ("upstream_cdn", "https://production.cloudflare.docker.com"),
            ("blob_redirect", "follow"),
        ]
        .iter()
        .find(|(n, _)| *n == k)
        .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let req = incoming(Method::GET, &format!("/v2/alpine/blobs/{D}"), &[]);
    let run = drive(&cfg, req, b"", |r| {
        Ok(match r.uri().host().unwrap() {
            "registry-1.docker.io" => Canned::new(307).header(
                "location",
                "https://docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com\
                 /registry-v2/docker/registry/v2/blobs/sha256/9f/9f86/data\
                 ?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20231114T221320Z\
                 &X-Amz-Expires=1200&X-Amz-Signature=s",
            ),
            _ => Canned::new(200).body("blob"),
        })
    });
    assert_eq!(status(&run), 200, "{:?}", run.cause);
    assert_eq!(run.body, b"blob");
    let other = config(&[("blob_redirect", "follow")]);
    let req = incoming(Method::GET, &format!("/v2/alpine/blobs/{D}"), &[]);
    let run = drive(&other, req, b"", |_| {
        Ok(Canned::new(307).header(
            "location",
            "https://docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com/x",
        ))
    });
    assert_eq!(status(&run), 502);
    assert_eq!(run.sent.len(), 1, "{:?}", run.sent);
}
