//! The store: what is kept, for whom, and what a warm pull costs.

use super::*;

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
