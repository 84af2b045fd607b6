//! A route's own account: its tokens, kept and replaced, and its realm.

use super::*;

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
fn what_a_route_s_own_credentials_fetched_is_kept_for_that_route_alone() {
    let cfg = table();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut store = std::collections::HashMap::new();
    let digest = crate::digest::sha256(b"{}");
    // With a slash: the hub route does not add `library/`.
    let path = format!("/v2/team/app/manifests/{digest}");
    let mut req = at("own.example.com", Method::GET, &path);
    req.headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
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
    assert!(!run.cause.unwrap_or_default().contains("credentials"));
    // Nor one that rate-limits (429): the client waits as the realm says.
    let mut req = at("own.example.com", Method::GET, "/v2/app/manifests/1");
    req.now += 86_400;
    let run = simulate::run_with_store(cfg.clone(), req, b"", &mut store, |_| {
        Ok(Canned::new(429)
            .header("retry-after", "42")
            .body("slow down"))
    });
    assert_eq!(status(&run), 429, "{:?}", run.cause);
    assert_eq!(header(&run, "retry-after"), "42");
    assert_eq!(run.sent.len(), 1, "{:?}", run.sent);
    assert!(String::from_utf8_lossy(&run.body).contains("TOOMANYREQUESTS"));
}

/// Two accounts with one username (Artifact Registry's `_json_key`, ECR's `AWS`: the username
/// is free text) on one upstream: each route's tokens and entries are its account's own.
/// Before, they were bound to the username: route b used the token route a's password got,
/// and read a repository only a may. And a route whose password changed served what the old
/// account fetched.
#[test]
fn what_an_account_fetched_is_bound_to_the_whole_account() {
    let table = |a: &str, b: &str| {
        let json = format!(
            r#"[{{"name": "a", "host": "a.example.com", "upstream": "http://127.0.0.1:5000",
                 "auth": "http://127.0.0.2:5001", "username": "_json_key", "password": "{a}",
                 "public": true}},
                {{"name": "b", "host": "b.example.com", "upstream": "http://127.0.0.1:5000",
                 "auth": "http://127.0.0.2:5001", "username": "_json_key", "password": "{b}",
                 "public": true}}]"#
        );
        config(&[("routes", &json)])
    };
    let digest = crate::digest::sha256(b"{}");
    let path = format!("/v2/private/manifests/{digest}");
    // The realm's token names the password it was given; only "key-a" may read `private`.
    let upstream = |r: &Request<Vec<u8>>| {
        let auth = r.headers().get(header::AUTHORIZATION);
        let auth = auth.map(|v| v.to_str().unwrap().to_string());
        let basic = |password: &str| {
            let pair = format!("_json_key:{password}");
            format!("Basic {}", crate::base64::encode(pair.as_bytes()))
        };
        Ok(match (r.uri().port_u16(), auth.as_deref()) {
            (Some(5001), Some(a)) if a == basic("key-a") => {
                Canned::new(200).body(r#"{"token":"token-a","expires_in":300}"#)
            }
            (Some(5001), Some(a)) if a == basic("key-b") || a == basic("key-c") => {
                Canned::new(200).body(r#"{"token":"token-other","expires_in":300}"#)
            }
            (Some(5000), Some("Bearer token-a")) => Canned::new(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .header("content-length", "2")
                .body("{}"),
            (Some(5000), Some("Bearer token-other")) => Canned::new(403),
            (Some(5000), _) => bearer("http://127.0.0.2:5001/token", "repository:private:pull"),
            _ => Canned::new(404),
        })
    };
    let get = |cfg: &Config, host: &'static str, store: &mut HashMap<String, Vec<u8>>| {
        let mut req = at(host, Method::GET, &path);
        req.headers
            .insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        drive_stored(cfg, req, b"", store, upstream)
    };
    let mut store = HashMap::new();
    let cfg = table("key-a", "key-b");
    assert_eq!(status(&get(&cfg, "a.example.com", &mut store)), 200);
    let b = get(&cfg, "b.example.com", &mut store);
    assert_eq!(status(&b), 403, "route b read what only a's account may");
    assert!(
        b.sent.iter().all(
            |r| r.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())
                != Some(b"Bearer token-a")
        ),
        "route b sent route a's token: {:?}",
        b.sent
    );
    // Route a's password changes: what the old account fetched is not served.
    let changed = table("key-c", "key-b");
    let a = get(&changed, "a.example.com", &mut store);
    assert_eq!(status(&a), 403, "served what the old account fetched");
    assert!(
        !format!("{store:?}").contains("key-"),
        "a credential in the store"
    );
}
