//! The proxy's own users: logins, the tokens the proxy signs, who may pull what (route allow
//! and deny lists, users' grants), and who pulled it.

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const PREVIOUS: &str = "fedcba9876543210fedcba9876543210";
const ROUTES: &str = r#"[
    {"name": "private", "host": "priv.example.com", "upstream": "http://127.0.0.1:5000",
     "auth": "http://127.0.0.2:5001", "username": "robot", "password": "s3cret",
     "access": "users", "deny": ["team/secret*"], "push": true},
    {"name": "open", "host": "open.example.com", "upstream": "http://127.0.0.1:5000",
     "allow": ["library/*"], "deny": ["library/bad"]},
    {"name": "gate", "host": "gate.example.com", "upstream": "http://127.0.0.1:5000",
     "access": "users"}
]"#;
/// `htpasswd -nbB`: alice/s3cret (admin, team/**), bob/b0bpass (other/*), old/oldpass
/// (expired).
const USERS: &str = r#"[
    {"name": "alice", "password": "$2y$05$ha5H.1Gr3Cup2kRBdcj.GuJbnsrqMUFVViHZUMOn/79k9jPA70EMi",
     "admin": true, "access": [{"routes": ["private"], "repositories": ["team/**"],
                                "actions": ["pull", "push"]},
                               {"routes": ["gate"], "repositories": ["library/*"]}]},
    {"name": "bob", "password": "$2y$05$iEGiTSD8h5xXDVD2WYg.YeMim3X91CcPAxJ3VDT94U4QyIurMJyb6",
     "access": [{"routes": ["private"], "repositories": ["other/*"]}]},
    {"name": "old", "password": "$2y$05$QRRdCxCtXf3z1xJruLFVTO9w0.ssUHZCo7SUCUhb/eyDHrqjl91c.",
     "expires": "2020-01-01", "access": [{"repositories": ["**"]}]}
]"#;

fn cfg(previous: &str) -> Config {
    config(&[
        ("routes", ROUTES),
        ("token_secret", SECRET),
        ("token_secret_previous", previous),
    ])
}

/// The registry and realm behind the `private` route: its own account's token reads anything.
fn upstream(r: &Request<Vec<u8>>) -> Result<Canned, Failure> {
    let auth = r.headers().get(header::AUTHORIZATION);
    let auth = auth.map(|v| v.to_str().unwrap().to_string());
    Ok(match (r.uri().port_u16(), auth.as_deref()) {
        (Some(5001), Some("Basic cm9ib3Q6czNjcmV0")) => {
            Canned::new(200).body(r#"{"token":"route-token","expires_in":300}"#)
        }
        (Some(5000), Some("Bearer route-token")) if r.uri().path() == "/v2/_catalog" => {
            Canned::new(200).body(r#"{"repositories":["other/x","team/secrets","team/web"]}"#)
        }
        (Some(5000), Some("Bearer route-token")) => manifest_ok(),
        (Some(5000), _) if r.uri().path().starts_with("/v2/library/") => manifest_ok(),
        // As distribution challenges: the actions the request needs.
        (Some(5000), _) if r.method() == Method::POST => bearer(
            "http://127.0.0.2:5001/token",
            "repository:team/web:pull,push",
        ),
        (Some(5000), _) => bearer("http://127.0.0.2:5001/token", "repository:team/web:pull"),
        _ => Canned::new(404),
    })
}

/// An exchange with the `users` variable, every invariant checked.
fn drive_users(
    config: &Config,
    req: Incoming,
    body: &[u8],
    store: &mut HashMap<String, Vec<u8>>,
) -> Run {
    let run = simulate::run_full(
        config.clone(),
        req.clone(),
        body,
        store,
        |n| (n == "users").then(|| USERS.to_string()),
        upstream,
    );
    if let Err(e) = simulate::check(config, &req, &run) {
        panic!("invariant broken: {e}\n{run:?}");
    }
    run
}

fn with_auth(mut req: Incoming, value: &str) -> Incoming {
    req.headers
        .insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    req
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        crate::base64::encode(format!("{user}:{password}").as_bytes())
    )
}

/// A token for `scope` on the private route, as `user` logs in.
fn login(user: &str, password: &str, scope: &str) -> Run {
    let req = at(
        "priv.example.com",
        Method::GET,
        &format!("/token?service=priv.example.com&scope={scope}"),
    );
    drive_users(
        &cfg(""),
        with_auth(req, &basic(user, password)),
        b"",
        &mut HashMap::new(),
    )
}

fn token_of(run: &Run) -> String {
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn get(config: &Config, token: &str, path: &str, store: &mut HashMap<String, Vec<u8>>) -> Run {
    let req = at("priv.example.com", Method::GET, path);
    drive_users(
        config,
        with_auth(req, &format!("Bearer {token}")),
        b"",
        store,
    )
}

const MANIFEST: &str = "/v2/team/web/manifests/1.0";

#[test]
fn a_user_pulls_with_a_token_the_proxy_signs_and_the_upstream_sees_the_route_s_account() {
    let t = login("alice", "s3cret", "repository:team/web:pull");
    assert_eq!(status(&t), 200, "{t:?}");
    assert!(t.sent.is_empty(), "a login asks no upstream: {:?}", t.sent);
    let token = token_of(&t);
    assert!(!token.contains("s3cret") && token.starts_with("eyJ"));
    let mut store = HashMap::new();
    let run = get(&cfg(""), &token, MANIFEST, &mut store);
    assert_eq!(status(&run), 200, "{run:?}");
    assert!(run.sent.iter().all(|r| {
        let a = r
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap());
        a != Some(format!("Bearer {token}").as_str())
    }));
    assert!(run.sent.iter().any(|r| r
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|a| a == "Bearer route-token")));
    // containerd's form (POST) logs in the same way.
    let form = b"grant_type=password&username=alice&password=s3cret&scope=repository%3Ateam%2Fweb%3Apull&service=x";
    let req = at("priv.example.com", Method::POST, "/token");
    let run = drive_users(&cfg(""), req, form, &mut HashMap::new());
    assert_eq!(status(&run), 200, "{run:?}");
    // An /v2/ with the token is the proxy's own answer (docker login).
    let run = get(&cfg(""), &token, "/v2/", &mut HashMap::new());
    assert_eq!((status(&run), run.sent.len()), (200, 0));
}

/// A user's token shown to a route without users (another host, another registry): that
/// upstream sees no one, never the token, which it could replay at the proxy.
#[test]
fn a_user_s_token_never_reaches_another_route_s_upstream() {
    let token = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    let req = at(
        "open.example.com",
        Method::GET,
        "/v2/library/app/manifests/1.0",
    );
    let req = with_auth(req, &format!("Bearer {token}"));
    let run = drive_users(&cfg(""), req, b"", &mut HashMap::new());
    assert_eq!(status(&run), 200, "{run:?}");
    assert!(!run.sent.is_empty());
    for sent in &run.sent {
        assert_eq!(sent.headers().get(header::AUTHORIZATION), None, "{sent:?}");
    }
}

/// A `users` route without an account of its own: the upstream sees no one, never the user's
/// token.
#[test]
fn a_route_without_an_account_gates_an_open_registry() {
    let req = at(
        "gate.example.com",
        Method::GET,
        "/token?scope=repository:library/alpine:pull",
    );
    let t = drive_users(
        &cfg(""),
        with_auth(req, &basic("alice", "s3cret")),
        b"",
        &mut HashMap::new(),
    );
    let token = token_of(&t);
    let req = at(
        "gate.example.com",
        Method::GET,
        "/v2/library/alpine/manifests/1",
    );
    let run = drive_users(
        &cfg(""),
        with_auth(req, &format!("Bearer {token}")),
        b"",
        &mut HashMap::new(),
    );
    assert_eq!(status(&run), 200, "{run:?}");
    assert!(run
        .sent
        .iter()
        .all(|r| r.headers().get(header::AUTHORIZATION).is_none()));
}

#[test]
fn logins_are_refused_alike_and_nothing_goes_upstream() {
    for (user, password, words) in [
        ("alice", "wrong", "incorrect username or password"),
        ("nobody", "s3cret", "incorrect username or password"),
        ("old", "oldpass", "expired"),
    ] {
        let run = login(user, password, "repository:team/web:pull");
        assert_eq!(status(&run), 401, "{user}");
        assert!(
            String::from_utf8_lossy(&run.body).contains(words),
            "{user}: {run:?}"
        );
        assert!(run.sent.is_empty());
    }
    // Without credentials: a login is asked for.
    let req = at(
        "priv.example.com",
        Method::GET,
        "/token?scope=repository:team/web:pull",
    );
    let run = drive_users(&cfg(""), req, b"", &mut HashMap::new());
    assert_eq!(status(&run), 401);
    assert!(header(&run, "www-authenticate").contains("realm=\"https://priv.example.com/token\""));
}

#[test]
fn requests_without_a_good_token_never_reach_the_upstream() {
    let good = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let claims = String::from_utf8(crate::base64::decode_url(payload).unwrap()).unwrap();
    let forge = |claims: &str| {
        format!(
            "{head}.{}.{sig}",
            crate::base64::encode_url(claims.as_bytes())
        )
    };
    let mut altered_sig: Vec<char> = sig.chars().collect();
    altered_sig[5] = if altered_sig[5] == 'x' { 'y' } else { 'x' };
    let altered_sig: String = altered_sig.into_iter().collect();
    let none = crate::base64::encode_url(br#"{"alg":"none","typ":"JWT"}"#);
    let other_route = claims.replace(r#""route":"private""#, r#""route":"open""#);
    let other_host = claims.replace("priv.example.com", "evil.example.com");
    let rotated_out = {
        let mut c: crate::proxy_token::Claims = serde_json::from_str(&claims).unwrap();
        c.exp += 60;
        crate::proxy_token::sign(b"a secret rotated out of use long ago", &c)
    };
    for (what, token) in [
        (
            "altered signature",
            format!("{head}.{payload}.{altered_sig}"),
        ),
        (
            "altered claims",
            forge(&claims.replace("team/web", "team/db")),
        ),
        ("alg none", format!("{none}.{payload}.")),
        ("another route", forge(&other_route)),
        ("another host", forge(&other_host)),
        ("rotated-out key", rotated_out),
        ("garbage", "anonymous".to_string()),
    ] {
        let run = get(&cfg(""), &token, MANIFEST, &mut HashMap::new());
        assert_eq!(status(&run), 401, "{what}: {run:?}");
        assert!(run.sent.is_empty(), "{what}: {:?}", run.sent);
    }
    // Expired: after its lifetime (300 s by default).
    let mut late = at("priv.example.com", Method::GET, MANIFEST);
    late.now += 301;
    let run = drive_users(
        &cfg(""),
        with_auth(late, &format!("Bearer {good}")),
        b"",
        &mut HashMap::new(),
    );
    assert_eq!((status(&run), run.sent.len()), (401, 0));
    assert!(String::from_utf8_lossy(&run.body).contains("expired"));
    // No token at all.
    let run = drive_users(
        &cfg(""),
        at("priv.example.com", Method::GET, MANIFEST),
        b"",
        &mut HashMap::new(),
    );
    assert_eq!((status(&run), run.sent.len()), (401, 0));
}

#[test]
fn a_rotated_secret_still_checks_tokens_it_signed() {
    let token = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    // token_secret is now a new one; the one that signed the token is the previous.
    let rotated = config(&[
        ("routes", ROUTES),
        ("token_secret", PREVIOUS),
        ("token_secret_previous", SECRET),
    ]);
    let run = get(&rotated, &token, MANIFEST, &mut HashMap::new());
    assert_eq!(status(&run), 200, "{run:?}");
    let gone = config(&[("routes", ROUTES), ("token_secret", PREVIOUS)]);
    let run = get(&gone, &token, MANIFEST, &mut HashMap::new());
    assert_eq!((status(&run), run.sent.len()), (401, 0));
}

#[test]
fn a_user_is_denied_what_they_may_not_pull_and_the_store_never_answers_for_them() {
    let mut store = HashMap::new();
    let digest_path = format!("/v2/team/web/manifests/{D}");
    let alice = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    let mut req = at("priv.example.com", Method::GET, &digest_path);
    req.headers
        .insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let run = drive_users(
        &cfg(""),
        with_auth(req.clone(), &format!("Bearer {alice}")),
        b"",
        &mut store,
    );
    assert_eq!(status(&run), 200);
    // Kept now; bob, whose grants do not name team/web, asks for it.
    let bob = login("bob", "b0bpass", "repository:team/web:pull");
    assert_eq!(status(&bob), 200, "a token with what was granted: nothing");
    let bob = token_of(&bob);
    for path in [
        digest_path.as_str(),
        "/v2/team/web/manifests/1.0",
        "/v2/team/web/blobs/sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "/v2/team/web/tags/list",
        &format!("/v2/team/web/referrers/{D}"),
    ] {
        let mut r = at("priv.example.com", Method::GET, path);
        r.headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let run = drive_users(&cfg(""), with_auth(r, &format!("Bearer {bob}")), b"", &mut store);
        assert_eq!(status(&run), 403, "{path}: {run:?}");
        assert_eq!(error_code(&run), "DENIED");
        assert!(String::from_utf8_lossy(&run.body).contains("user bob may not pull team/web"));
        assert!(run.sent.is_empty(), "{path}");
    }
}

#[test]
fn a_route_s_deny_list_wins_for_everyone_before_anything_is_asked() {
    // Even a user whose grants name it (alice: team/**).
    let t = login("alice", "s3cret", "repository:team/secrets:pull");
    assert_eq!(status(&t), 403, "{t:?}");
    let open = |path: &str| {
        drive_users(
            &cfg(""),
            at("open.example.com", Method::GET, path),
            b"",
            &mut HashMap::new(),
        )
    };
    for path in [
        "/v2/library/bad/manifests/1",
        "/v2/team/web/manifests/1",
        "/token?scope=repository:library/bad:pull",
    ] {
        let run = open(path);
        assert_eq!(
            (status(&run), error_code(&run).as_str()),
            (403, "DENIED"),
            "{path}"
        );
        assert!(run.sent.is_empty(), "{path}");
        assert!(run.cause.is_some(), "{path}: the refusal is logged");
    }
    assert_eq!(status(&open("/v2/library/alpine/manifests/1")), 200);
}

#[test]
fn the_catalog_shows_a_user_what_they_may_pull() {
    let t = login("alice", "s3cret", "registry:catalog:*");
    let token = token_of(&t);
    let run = get(&cfg(""), &token, "/v2/_catalog", &mut HashMap::new());
    assert_eq!(status(&run), 200, "{run:?}");
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    // other/x is bob's; team/secrets is the route's deny list's.
    assert_eq!(v["repositories"], serde_json::json!(["team/web"]));
}

#[test]
fn every_manifest_get_is_a_pull_event_and_a_count() {
    let mut store = HashMap::new();
    let token = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    for _ in 0..3 {
        let run = get(&cfg(""), &token, MANIFEST, &mut store);
        let event: serde_json::Value = serde_json::from_str(run.pull.as_deref().unwrap()).unwrap();
        assert_eq!(event["user"], "alice");
        assert_eq!(event["repository"], "team/web");
        assert_eq!(event["route"], "private");
        assert_eq!(event["reference"], "1.0");
        assert_eq!(event["status"], 200);
    }
    let denied = get(&cfg(""), "nonsense", MANIFEST, &mut store);
    let event: serde_json::Value = serde_json::from_str(denied.pull.as_deref().unwrap()).unwrap();
    assert_eq!(
        (event["user"].as_str(), event["status"].as_u64()),
        (Some("anonymous"), Some(401))
    );
    // A HEAD is no pull (Docker Hub's rule).
    let head = at("priv.example.com", Method::HEAD, MANIFEST);
    let run = drive_users(
        &cfg(""),
        with_auth(head, &format!("Bearer {token}")),
        b"",
        &mut store,
    );
    assert!(run.pull.is_none());
    // The admin reads the counts.
    let stats = at("priv.example.com", Method::GET, "/-/stats");
    let run = drive_users(
        &cfg(""),
        with_auth(stats.clone(), &basic("alice", "s3cret")),
        b"",
        &mut store,
    );
    assert_eq!(status(&run), 200, "{run:?}");
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    assert_eq!(v["pulls"], 3);
    assert_eq!(v["days"][0]["repositories"]["private:team/web"], 3);
    assert_eq!(v["days"][0]["users"]["alice"], 3);
    // Only an admin.
    let run = drive_users(
        &cfg(""),
        with_auth(stats.clone(), &basic("bob", "b0bpass")),
        b"",
        &mut store,
    );
    assert_eq!(status(&run), 403);
    let run = drive_users(&cfg(""), stats, b"", &mut store);
    assert_eq!(status(&run), 401);
}

#[test]
fn health_asks_no_upstream_unless_an_admin_asks_it_to() {
    let run = drive_users(
        &cfg(""),
        at("priv.example.com", Method::GET, "/-/health"),
        b"",
        &mut HashMap::new(),
    );
    assert_eq!((status(&run), run.sent.len()), (200, 0));
    assert_eq!(
        run.body, br#"{"status":"ok"}"#,
        "nothing of the configuration"
    );
    let deep = at("priv.example.com", Method::GET, "/-/health?deep=1");
    let run = drive_users(&cfg(""), deep.clone(), b"", &mut HashMap::new());
    assert_eq!((status(&run), run.sent.len()), (401, 0));
    // Basic, the one login it takes: a browser asks for it, a client gets no token for it.
    assert_eq!(
        header(&run, "www-authenticate"),
        "Basic realm=\"priv.example.com\""
    );
    let shallow = at("priv.example.com", Method::GET, "/-/health?deep=false");
    let run = drive_users(&cfg(""), shallow, b"", &mut HashMap::new());
    assert_eq!((status(&run), run.sent.len()), (200, 0));
    let run = drive_users(
        &cfg(""),
        with_auth(deep, &basic("alice", "s3cret")),
        b"",
        &mut HashMap::new(),
    );
    assert_eq!(status(&run), 200, "{run:?}");
    assert_eq!(run.sent.len(), 3, "each route's registry once");
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    assert_eq!(v["routes"]["private"]["status"], "ok");
}

#[test]
fn only_a_user_whose_token_grants_push_pushes() {
    let upload = "/v2/team/web/blobs/uploads/";
    let scope = "repository:team/web:pull,push";
    let alice = token_of(&login("alice", "s3cret", scope));
    let req = at("priv.example.com", Method::POST, upload);
    let run = drive_users(
        &cfg(""),
        with_auth(req, &format!("Bearer {alice}")),
        b"",
        &mut HashMap::new(),
    );
    assert!(
        run.sent.iter().any(|r| r.method() == Method::POST),
        "{run:?}"
    );
    // The route's own account pushes, with a token for pull and push.
    assert!(run
        .sent
        .iter()
        .any(|r| r.uri().query().unwrap_or("").contains("push")));
    // bob may pull other/* and push nothing; alice's pull-only token pushes nothing either.
    let bob = token_of(&login("bob", "b0bpass", "repository:other/x:pull,push"));
    let pull_only = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    for (who, token, path) in [
        ("bob", bob, "/v2/other/x/blobs/uploads/"),
        ("alice", pull_only, upload),
    ] {
        let req = at("priv.example.com", Method::POST, path);
        let run = drive_users(
            &cfg(""),
            with_auth(req, &format!("Bearer {token}")),
            b"",
            &mut HashMap::new(),
        );
        assert_eq!(status(&run), 403, "{who}: {run:?}");
        assert!(String::from_utf8_lossy(&run.body).contains("may not push"));
        assert!(run.sent.is_empty());
    }
}

/// A cross-repository mount reads its `from`: the route's own token asks for pull there too,
/// one `scope` parameter each, or the registry refuses the mount (distribution: 401
/// `insufficient_scope` naming both) and containerd's push fails.
#[test]
fn a_mount_s_token_reads_the_repository_it_mounts_from() {
    let alice = token_of(&login(
        "alice",
        "s3cret",
        "repository:team/web:pull,push repository:team/base:pull",
    ));
    let path = format!(
        "/v2/team/web/blobs/uploads/?mount={}&from=team/base",
        crate::digest::sha256(b"x")
    );
    let req = with_auth(
        at("priv.example.com", Method::POST, &path),
        &format!("Bearer {alice}"),
    );
    let run = drive_users(&cfg(""), req, b"", &mut HashMap::new());
    let token = run
        .sent
        .iter()
        .find(|r| r.uri().port_u16() == Some(5001))
        .expect("a token request");
    let scopes: Vec<String> = url::form_urlencoded::parse(token.uri().query().unwrap().as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(
        scopes,
        ["repository:team/web:pull,push", "repository:team/base:pull"],
        "{run:?}"
    );
}

/// A pushed blob's body is the client's, streamed: it goes upstream once. With the route's
/// realm not known yet, `/v2/` says where to get a token first; the body never goes unsigned.
#[test]
fn a_streamed_chunk_goes_once_with_the_route_s_token() {
    let alice = token_of(&login("alice", "s3cret", "repository:team/web:pull,push"));
    let path = "/v2/team/web/blobs/uploads/6d1c3f0e-0000-4000-8000-000000000001?_state=x";
    let mut req = at("priv.example.com", Method::PATCH, path);
    req.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let req = with_auth(req, &format!("Bearer {alice}"));
    let run = drive_users(&cfg(""), req, b"bytes", &mut HashMap::new());
    let methods: Vec<_> = run
        .sent
        .iter()
        .map(|r| r.method().as_str().to_string())
        .collect();
    assert_eq!(methods, ["GET", "GET", "PATCH"], "{run:?}");
    let chunk = &run.sent[2];
    assert_eq!(chunk.body(), b"bytes");
    assert_eq!(chunk.headers()[header::AUTHORIZATION], "Bearer route-token");
}

/// The route's token is kept under the scope the realm was asked for: a challenge that asks
/// for less than the request's own scope (distribution challenges an upload's status GET for
/// `pull`) leaves nothing a later chunk would take for a push token. The chunk, streamed,
/// goes once, with a token for pull and push.
#[test]
fn a_route_token_is_kept_under_the_scope_it_was_asked_for() {
    let alice = token_of(&login("alice", "s3cret", "repository:team/web:pull,push"));
    let session = "/v2/team/web/blobs/uploads/6d1c3f0e-0000-4000-8000-000000000001?_state=x";
    // As distribution and its token server: the token names its scope, each request wants
    // its own actions.
    let upstream = |r: &Request<Vec<u8>>| -> Result<Canned, Failure> {
        let auth = r.headers().get(header::AUTHORIZATION);
        let auth = auth.map(|v| v.to_str().unwrap().to_string());
        let wants = if r.method() == Method::GET {
            "pull"
        } else {
            "pull,push"
        };
        Ok(match (r.uri().port_u16(), auth.as_deref()) {
            (Some(5001), Some("Basic cm9ib3Q6czNjcmV0")) => {
                let query = r.uri().query().unwrap_or("");
                let push = query.contains("push");
                let token = if push { "pull-push" } else { "pull-only" };
                Canned::new(200).body(format!(r#"{{"token":"{token}","expires_in":300}}"#))
            }
            (Some(5000), Some("Bearer pull-push")) => Canned::new(204),
            (Some(5000), Some("Bearer pull-only")) if wants == "pull" => Canned::new(204),
            (Some(5000), _) => bearer(
                "http://127.0.0.2:5001/token",
                &format!("repository:team/web:{wants}"),
            ),
            _ => Canned::new(404),
        })
    };
    let mut store = HashMap::new();
    let mut run = |method: Method, body: &[u8]| {
        let mut req = at("priv.example.com", method, session);
        req.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let req = with_auth(req, &format!("Bearer {alice}"));
        let run = simulate::run_full(
            cfg(""),
            req.clone(),
            body,
            &mut store,
            |n| (n == "users").then(|| USERS.to_string()),
            upstream,
        );
        if let Err(e) = simulate::check(&cfg(""), &req, &run) {
            panic!("invariant broken: {e}\n{run:?}");
        }
        run
    };
    assert_eq!(status(&run(Method::GET, b"")), 204);
    let chunk = run(Method::PATCH, b"bytes");
    assert_eq!(status(&chunk), 204, "{chunk:?}");
    let patches: Vec<_> = chunk
        .sent
        .iter()
        .filter(|r| r.method() == Method::PATCH)
        .collect();
    assert_eq!(patches.len(), 1, "{chunk:?}");
    assert_eq!(
        patches[0].headers()[header::AUTHORIZATION],
        "Bearer pull-push"
    );
}

#[test]
fn a_login_where_a_route_without_a_path_shares_the_host_is_the_users_to_check() {
    // `docker login shared.example.com` sends no scope: the route without a path would take
    // it, drop the credentials and hand out an anonymous token, whatever the password.
    let routes = r#"[
        {"name": "hub", "host": "shared.example.com", "upstream": "http://127.0.0.1:5000"},
        {"name": "vendor", "host": "shared.example.com", "path": "vendor",
         "upstream": "http://127.0.0.1:5000", "access": "users"}
    ]"#;
    let config = config(&[("routes", routes), ("token_secret", SECRET)]);
    let login = |password: &str| {
        let req = at(
            "shared.example.com",
            Method::GET,
            "/token?service=shared.example.com",
        );
        let req = with_auth(req, &basic("alice", password));
        drive_users(&config, req, b"", &mut HashMap::new())
    };
    let wrong = login("wrong");
    assert_eq!(status(&wrong), 401, "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.body).contains("incorrect username or password"));
    let right = login("s3cret");
    assert_eq!(status(&right), 200, "{right:?}");
    assert!(!token_of(&right).starts_with("srp-anonymous"));
    assert!(wrong.sent.is_empty() && right.sent.is_empty());
}

#[test]
fn a_token_for_another_repository_sends_the_client_for_one_that_covers_it() {
    // As a registry answers a token short of the scope: a 401 and the scope to ask for, never
    // a 403 saying the user may not (alice may pull team/web).
    let alice = token_of(&login("alice", "s3cret", "repository:team/other:pull"));
    let run = get(&cfg(""), &alice, MANIFEST, &mut HashMap::new());
    assert_eq!(status(&run), 401, "{run:?}");
    assert!(header(&run, "www-authenticate").contains("scope=\"repository:team/web:pull\""));
    assert!(!String::from_utf8_lossy(&run.body).contains("may not"));
    assert!(run.sent.is_empty());
    let alice = token_of(&login("alice", "s3cret", "repository:team/web:pull"));
    assert_eq!(
        status(&get(&cfg(""), &alice, MANIFEST, &mut HashMap::new())),
        200
    );
}
