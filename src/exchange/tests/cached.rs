//! The store: what is kept, for whom, and what a warm pull costs.

use super::*;

/// What the store holds but its secret.
fn kept(store: &HashMap<String, Vec<u8>>) -> Vec<&String> {
    store
        .keys()
        .filter(|k| *k != crate::store_secret::KEY)
        .collect()
}

/// A request against `store` and `signed_upstream`: the run, and how many requests it sent.
fn against_store(
    cfg: &Config,
    req: Incoming,
    store: &mut HashMap<String, Vec<u8>>,
) -> (simulate::Run, u32) {
    let asked = std::rc::Rc::new(std::cell::Cell::new(0));
    let run =
        simulate::run_with_store(cfg.clone(), req, b"", store, signed_upstream(asked.clone()));
    (run, asked.get())
}

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
        let digest = crate::digest::sha256(INDEX.as_bytes());
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

/// The `Authorization` of a client holding the token the proxy's endpoint hands out
/// anonymously for `app`.
fn anonymous_bearer(
    cfg: &Config,
    store: &mut HashMap<String, Vec<u8>>,
    count: &std::rc::Rc<std::cell::Cell<u32>>,
) -> &'static str {
    let req = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
    let token = drive_stored(cfg, req, b"", store, signed_upstream(count.clone()));
    let v: serde_json::Value = serde_json::from_slice(&token.body).unwrap();
    Box::leak(format!("Bearer {}", v["token"].as_str().unwrap()).into_boxed_str())
}

/// Docker Hub hands out anonymous tokens for a repository that does not exist yet; they grant
/// nothing, and still grant nothing once it is pushed. The proxy must not hand the kept one
/// out again after the upstream refused it.
#[test]
fn an_anonymous_token_the_upstream_refused_is_not_handed_out_again() {
    let cfg = config(&[]);
    let mut store = HashMap::new();
    let issued = std::cell::Cell::new(0);
    let pushed_after = std::cell::Cell::new(u32::MAX);
    let mut hub = |r: &Request<Vec<u8>>| {
        if r.uri().path() == "/token" {
            issued.set(issued.get() + 1);
            return Ok(Canned::new(200).body(format!(
                r#"{{"token":"t-{}","expires_in":300}}"#,
                issued.get()
            )));
        }
        let token = r
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap());
        let grants = token
            .and_then(|t| t.strip_prefix("Bearer t-"))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > pushed_after.get());
        Ok(if grants {
            Canned::new(200)
                .header("content-type", OCI_INDEX)
                .header(
                    "docker-content-digest",
                    crate::digest::sha256(INDEX.as_bytes()),
                )
                .header("content-length", INDEX.len().to_string())
        } else {
            let scope = "repository:fresh:pull";
            let c = format!(
                r#"Bearer realm="http://127.0.0.2:5001/token",service="hub",scope="{scope}""#
            );
            let c = if token.is_some() {
                format!(r#"{c},error="insufficient_scope""#)
            } else {
                c
            };
            Canned::new(401).header("www-authenticate", c)
        })
    };
    let mut pull = |store: &mut HashMap<String, Vec<u8>>| {
        let req = incoming(Method::GET, "/token?scope=repository:fresh:pull", &[]);
        let run = drive_stored(&cfg, req, b"", store, &mut hub);
        let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
        let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
        let auth = [("authorization", &*bearer.leak()), ("accept", OCI_INDEX)];
        let req = incoming(Method::HEAD, "/v2/fresh/manifests/1", &auth);
        status(&drive_stored(&cfg, req, b"", store, &mut hub))
    };
    assert_eq!(pull(&mut store), 401);
    pushed_after.set(issued.get());
    assert_eq!(
        pull(&mut store),
        200,
        "the refused token was handed out again"
    );
    assert_eq!(issued.get(), 2);
}

/// What docker does for a pull of `app:1` with one layer, against `cfg` and `store`:
/// returns the upstream requests it cost.
fn docker_pull(cfg: &Config, store: &mut std::collections::HashMap<String, Vec<u8>>) -> u32 {
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let digest = crate::digest::sha256(INDEX.as_bytes());
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
    // The realm's anonymous token, marked as handed out anonymously (upstream, unmarked).
    let t = v["token"].as_str().unwrap();
    assert!(
        t.starts_with("srp-anonymous.") && t.ends_with(".anon-1"),
        "{t}"
    );
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
    // Learn the realm, get a token, HEAD the tag (a HEAD upstream too: Docker Hub counts
    // none), GET the manifest by digest, the blob.
    assert_eq!(docker_pull(&cfg, &mut store), 5);
    assert_eq!(docker_pull(&cfg, &mut store), 0);
    assert!(!format!("{store:?}").contains("s3cret"));
    // A manifest by digest is kept a week (the upstream may delete it), not for good.
    let now = incoming(Method::GET, "/", &[]).now;
    let manifests = entries(&store, "manifest");
    assert!(!manifests.is_empty());
    for (_, until, _) in manifests {
        assert_eq!(until, now + 7 * 24 * 3600);
    }
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
    assert_eq!(docker_pull(&cfg, &mut store), 5);
    // Another manifest took its slot; the tag is still kept, and the client's token is one the
    // proxy handed out anonymously: what the upstream says now is kept again.
    store.retain(|k, _| !k.starts_with("spin-registry-proxy:manifest:"));
    assert_eq!(docker_pull(&cfg, &mut store), 1);
    assert_eq!(docker_pull(&cfg, &mut store), 0);
}

/// A HEAD by a kept tag is answered from the tag's entry alone, the most frequent request of a
/// pull (docker and containerd both ask it first): the manifest's entry is not read, so a HEAD
/// answers as fully without it, and asks the upstream nothing.
#[test]
fn a_kept_head_by_tag_needs_only_the_tag() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    docker_pull(&cfg, &mut store);
    store.retain(|k, _| !k.starts_with("spin-registry-proxy:manifest:"));
    let (head, asked) = head_by_tag(&cfg, &mut store);
    assert_eq!(status(&head), 200, "{head:?}");
    assert_eq!(asked, 0, "a HEAD by a kept tag asked the upstream");
    let digest = crate::digest::sha256(INDEX.as_bytes());
    assert_eq!(header(&head, "docker-content-digest"), digest);
    assert_eq!(header(&head, "content-type"), OCI_INDEX);
    assert_eq!(header(&head, "content-length"), INDEX.len().to_string());
    assert_eq!(header(&head, "etag"), format!("\"{digest}\""));
    assert!(head.body.is_empty());
}

/// A conditional request the store answers is answered as the registry would: a 304 where
/// the client's ETag is the manifest's, without a body or a length.
#[test]
fn a_kept_answer_takes_if_none_match() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    docker_pull(&cfg, &mut store);
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let by_digest = format!("/v2/app/manifests/{digest}");
    let quoted = format!("\"{digest}\"");
    for (method, path, etag, want) in [
        (Method::GET, by_digest.as_str(), quoted.as_str(), 304),
        (Method::HEAD, by_digest.as_str(), quoted.as_str(), 304),
        (Method::HEAD, "/v2/app/manifests/1", quoted.as_str(), 304),
        (Method::GET, by_digest.as_str(), "\"sha256:0\"", 200),
        (Method::HEAD, "/v2/app/manifests/1", "\"sha256:0\"", 200),
    ] {
        let mut req = incoming(method.clone(), path, &[("accept", OCI_INDEX)]);
        req.headers
            .insert(header::IF_NONE_MATCH, HeaderValue::from_str(etag).unwrap());
        let (run, asked) = against_store(&cfg, req, &mut store);
        assert_eq!(
            asked, 0,
            "{method} {path}: not kept, the test tests nothing"
        );
        assert_eq!(status(&run), want, "{method} {path} {etag}: {run:?}");
        assert_eq!(header(&run, "etag"), quoted);
        if want == 304 {
            assert!(run.body.is_empty() && header(&run, "content-length").is_empty());
        }
    }
}

/// Clients that only poll a tag (watchtower, diun, renovate) HEAD it: the proxy asks the
/// upstream with a HEAD too (Docker Hub counts GETs against its pull limit, HEADs not), keeps
/// the tag's entry from that head, and answers the next polls within `tag_ttl` by itself.
#[test]
fn a_head_by_tag_stays_a_head_and_polls_are_answered_from_its_entry() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let bearer = anonymous_bearer(&cfg, &mut store, &count);
    let auth = [("authorization", bearer), ("accept", OCI_INDEX)];
    let digest = crate::digest::sha256(INDEX.as_bytes());
    for poll in 0..3 {
        let req = incoming(Method::HEAD, "/v2/app/manifests/1", &auth);
        let run = drive_stored(&cfg, req, b"", &mut store, signed_upstream(count.clone()));
        assert_eq!(status(&run), 200, "{run:?}");
        assert_eq!(header(&run, "docker-content-digest"), digest);
        assert_eq!(header(&run, "content-length"), INDEX.len().to_string());
        let methods: Vec<_> = run.sent.iter().map(|r| r.method().clone()).collect();
        let want = if poll == 0 {
            vec![Method::HEAD]
        } else {
            vec![]
        };
        assert_eq!(methods, want, "poll {poll}");
    }
}

#[test]
fn a_tag_is_kept_for_each_route_as_long_as_it_says() {
    // Two routes to one upstream share a store: what the one keeping tags for a day saw is
    // not served by the one that keeps them for a minute.
    let mut store = std::collections::HashMap::new();
    let day = config(&[("tag_ttl", "86400")]);
    assert_eq!(docker_pull(&day, &mut store), 5);
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
    assert!(kept(&store).is_empty(), "{store:?}");
    // However warm the store, a client's own credentials are judged by the upstream.
    docker_pull(&cfg, &mut store);
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let req = incoming(
        Method::GET,
        &format!("/v2/app/manifests/{digest}"),
        &[
            ("authorization", "Bearer expired-or-forged"),
            ("accept", OCI_INDEX),
        ],
    );
    let (run, asked) = against_store(&cfg, req, &mut store);
    assert_eq!(asked, 1);
    assert_eq!(status(&run), 401);
}

#[test]
fn kept_manifests_are_served_only_to_clients_that_accept_them() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    docker_pull(&cfg, &mut store);
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let v2s2 = "application/vnd.docker.distribution.manifest.v2+json";
    let req = incoming(
        Method::GET,
        &format!("/v2/app/manifests/{digest}"),
        &[("accept", v2s2)],
    );
    let (run, asked) = against_store(&cfg, req, &mut store);
    assert_eq!(
        asked, 1,
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
    assert_eq!(against_store(&cfg, req, &mut store).1, 1);
}

#[test]
fn follow_mode_goes_to_storage_directly_when_warm() {
    let cfg = config(&[
        ("blob_redirect", "follow"),
        ("upstream_cdn", "http://127.0.0.3:5002"),
    ]);
    let mut store = std::collections::HashMap::new();
    let blob = |store: &mut std::collections::HashMap<String, Vec<u8>>| {
        // The realm's anonymous token first, so the blob request is an anonymous one.
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let t = incoming(Method::GET, "/token?scope=repository:app:pull", &[]);
        let t =
            simulate::run_with_store(cfg.clone(), t, b"", store, signed_upstream(count.clone()));
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
        let before = count.get();
        let mut req = incoming(Method::GET, &format!("/v2/app/blobs/{BLOB}"), &[]);
        req.headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&bearer).unwrap(),
        );
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
    assert!(kept(&store).is_empty(), "{store:?}");
}

#[test]
fn a_head_answered_from_a_get_keeps_the_length() {
    // distribution answers a manifest by digest whatever the Accept; the proxy turns an
    // anonymous HEAD into the GET it keeps.
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let upstream = |r: &Request<Vec<u8>>| {
        let c = Canned::new(200)
            .header("content-type", OCI_INDEX)
            .header(
                "docker-content-digest",
                crate::digest::sha256(INDEX.as_bytes()),
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

/// A HEAD from the store tells the kept length without decoding or hashing the kept bytes (they
/// were most of a kept HEAD's own work); the GET checks them, and asks the upstream when they no
/// longer hash to the digest.
#[test]
fn a_kept_head_tells_the_length_without_reading_the_bytes() {
    let cfg = config(&[]);
    let mut store = std::collections::HashMap::new();
    docker_pull(&cfg, &mut store);
    let kept_bytes = crate::base64::encode(INDEX.as_bytes());
    // Not base64 any more, but of the same length and padding.
    let unpadded = kept_bytes.trim_end_matches('=');
    let spoilt = kept_bytes.replacen(unpadded, &"!".repeat(unpadded.len()), 1);
    for v in store.values_mut() {
        let text = String::from_utf8_lossy(v).into_owned();
        *v = text.replace(&kept_bytes, &spoilt).into_bytes();
    }
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let run = |req: Incoming, store: &mut HashMap<String, Vec<u8>>| {
        simulate::run_with_store(cfg.clone(), req, b"", store, signed_upstream(count.clone()))
    };
    let token = run(
        incoming(Method::GET, "/token?scope=repository:app:pull", &[]),
        &mut store,
    );
    let v: serde_json::Value = serde_json::from_slice(&token.body).unwrap();
    let bearer: &'static str =
        Box::leak(format!("Bearer {}", v["token"].as_str().unwrap()).into_boxed_str());
    let auth = [("authorization", bearer), ("accept", OCI_INDEX)];
    let before = count.get();
    let head = run(
        incoming(Method::HEAD, "/v2/app/manifests/1", &auth),
        &mut store,
    );
    assert_eq!(status(&head), 200, "{head:?}");
    assert_eq!(header(&head, "content-length"), INDEX.len().to_string());
    assert_eq!(count.get(), before, "a kept HEAD asked the upstream");
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let path = format!("/v2/app/manifests/{digest}");
    let get = run(incoming(Method::GET, &path, &auth), &mut store);
    assert_eq!(get.body, INDEX.as_bytes());
    assert_eq!(count.get(), before + 1, "spoilt bytes were served");
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

/// The entries of one kind in the store, as `(identity, until, value)`.
fn entries(store: &HashMap<String, Vec<u8>>, kind: &str) -> Vec<(String, u64, serde_json::Value)> {
    let prefix = format!("spin-registry-proxy:{kind}:");
    store
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .flat_map(|(_, v)| serde_json::from_slice::<Vec<serde_json::Value>>(v).unwrap())
        .map(|e| {
            let identity = e["identity"].as_str().unwrap().to_string();
            (identity, e["until"].as_u64().unwrap(), e["value"].clone())
        })
        .collect()
}

/// `/v2/` with the proxy's own `anonymous` token gets the upstream's answer, kept or not: it
/// was a 200 on an empty store and a 401 for five minutes once the upstream's open `/v2/` was
/// kept (the store's rule took "no Authorization to send" for "none sent"), and a client that
/// pings `/v2/` with its token (oras-go) looped. Without any `Authorization`, the proxy's
/// challenge, however open the upstream.
#[test]
fn v2_answers_one_rule_whatever_the_store_holds() {
    let cfg = config(&[]);
    let mut store = HashMap::new();
    let open = |_: &Request<Vec<u8>>| Ok(Canned::new(200).body("{}"));
    let anonymous = [("authorization", "Bearer anonymous")];
    let run = drive_stored(
        &cfg,
        incoming(Method::GET, "/v2/", &anonymous),
        b"",
        &mut store,
        open,
    );
    assert_eq!(status(&run), 200);
    for round in 0..2 {
        let run = drive_stored(
            &cfg,
            incoming(Method::GET, "/v2/", &[]),
            b"",
            &mut store,
            open,
        );
        assert_eq!(status(&run), 401, "{round}");
        let run = drive_stored(
            &cfg,
            incoming(Method::GET, "/v2/", &anonymous),
            b"",
            &mut store,
            open,
        );
        assert_eq!(status(&run), 200, "{round}: {run:?}");
    }
}

/// A signed blob URL may claim up to 7 days (S3's `X-Amz-Expires`): it is kept 10 minutes at
/// most, since storage revokes URLs sooner (STS session credentials, rotated keys). In
/// `follow`, storage refusing a kept one drops it, and the registry is asked again, once.
#[test]
fn a_kept_redirect_lives_ten_minutes_at_most_and_is_dropped_when_refused() {
    let cfg = config(&[
        ("blob_redirect", "follow"),
        ("upstream_cdn", "http://127.0.0.3:5002"),
    ]);
    let now = incoming(Method::GET, "/", &[]).now;
    let issued = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let revoked = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let upstream = |issued: std::rc::Rc<std::cell::Cell<u32>>,
                    revoked: std::rc::Rc<std::cell::Cell<u32>>| {
        move |r: &Request<Vec<u8>>| {
            Ok(match (r.uri().port_u16(), r.uri().query().unwrap_or("")) {
                (Some(5000), _) => {
                    issued.set(issued.get() + 1);
                    let url = format!(
                        "http://127.0.0.3:5002/blob?n={}&X-Amz-Date=20991130T120000Z&X-Amz-Expires=604800",
                        issued.get()
                    );
                    Canned::new(307).header("location", url)
                }
                (Some(5002), q) if q.starts_with(&format!("n={}&", revoked.get())) => {
                    Canned::new(403).body("<Error>AccessDenied</Error>")
                }
                (Some(5002), _) => Canned::new(200).body("blob bytes"),
                _ => Canned::new(404),
            })
        }
    };
    let mut store = HashMap::new();
    let get = |store: &mut HashMap<String, Vec<u8>>| {
        let req = incoming(Method::GET, &format!("/v2/app/blobs/{BLOB}"), &[]);
        drive_stored(
            &cfg,
            req,
            b"",
            store,
            upstream(issued.clone(), revoked.clone()),
        )
    };
    assert_eq!(get(&mut store).body, b"blob bytes");
    let kept = entries(&store, "redirect");
    assert_eq!(kept.len(), 1);
    assert!(kept[0].1 <= now + 600, "kept until {}", kept[0].1 - now);
    // Warm: storage directly.
    let run = get(&mut store);
    assert_eq!(
        (run.body.as_slice(), run.sent.len()),
        (&b"blob bytes"[..], 1)
    );
    // Storage revokes the kept URL: dropped, a new one asked for, the client gets its blob.
    revoked.set(1);
    let run = get(&mut store);
    assert_eq!(status(&run), 200, "{run:?}");
    assert_eq!(run.body, b"blob bytes");
    assert_eq!(run.sent.len(), 3, "{:?}", run.sent);
    let kept = entries(&store, "redirect");
    assert!(kept[0].2.as_str().unwrap().contains("n=2&"), "{kept:?}");
    // Once: a registry whose fresh URL is refused too is the client's error.
    revoked.set(2);
    issued.set(1);
    let run = get(&mut store);
    assert_eq!(status(&run), 403, "{run:?}");
}

/// A tag's entry is keyed by the manifest types the client's `Accept` admits, the one thing
/// in it that decides the registry's answer: clients that list them in any order, with any
/// other text, share one entry, and no client can make a tag a new key per request.
#[test]
fn a_tag_has_one_entry_per_set_of_manifest_types_whatever_else_accept_says() {
    let cfg = config(&[]);
    let mut store = HashMap::new();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    docker_pull(&cfg, &mut store);
    let before = entries(&store, "tag").len();
    for i in 0..50 {
        let accept: &'static str = Box::leak(
            format!("application/x-junk-{i}, {OCI_INDEX};q=0.{}", i % 9 + 1).into_boxed_str(),
        );
        let req = incoming(Method::HEAD, "/v2/app/manifests/1", &[("accept", accept)]);
        let run = drive_stored(&cfg, req, b"", &mut store, signed_upstream(tokens.clone()));
        assert!(matches!(status(&run), 200 | 401), "{run:?}");
    }
    assert_eq!(entries(&store, "tag").len(), before, "new tag entries");
}

/// Anonymous token requests naming ever new scopes (each a realm token) no longer push out
/// what marks a client's token as anonymous: the mark is in the token itself. Before, about
/// 1,024 of them emptied the store's record of handed-out tokens, and a client's anonymous
/// token then fetched, and kept, nothing.
#[test]
fn a_flood_of_anonymous_tokens_keeps_no_one_from_the_store() {
    let cfg = config(&[]);
    let mut store = HashMap::new();
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    docker_pull(&cfg, &mut store);
    let bearer = anonymous_bearer(&cfg, &mut store, &count);
    for i in 0..1500 {
        let path = format!("/token?scope=repository:flood{i}:pull");
        let run = drive_stored(
            &cfg,
            incoming(Method::GET, &path, &[]),
            b"",
            &mut store,
            signed_upstream(count.clone()),
        );
        assert_eq!(status(&run), 200);
    }
    let before = count.get();
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let auth = [("authorization", bearer), ("accept", OCI_INDEX)];
    let req = incoming(Method::GET, &format!("/v2/app/manifests/{digest}"), &auth);
    let run = drive_stored(&cfg, req, b"", &mut store, signed_upstream(count.clone()));
    assert_eq!(status(&run), 200);
    assert_eq!(
        count.get(),
        before,
        "the manifest was not served from the store"
    );
    let all: usize = store.len();
    assert!(all <= crate::cache::MAX_BUCKETS as usize + 2, "{all} keys");
}

/// The step after the store's secret is known, for a first read of the secret that found
/// `first`, and for a second read (after this request wrote its own) that found `second`.
fn after_secret(first: Option<Vec<u8>>, second: Option<Vec<u8>>) -> (String, Vec<Write>) {
    let req = incoming(Method::GET, &format!("/v2/app/manifests/{D}"), &[]);
    let (mut ex, step) = Exchange::start(config(&[]), req);
    let secret_read = format!("{:?}", Step::Load(vec![crate::store_secret::KEY.into()]));
    assert_eq!(format!("{step:?}"), secret_read);
    let mut step = ex.on_loaded(vec![first.clone()]);
    let writes = ex.take_writes();
    if first.is_none() {
        assert_eq!(
            format!("{step:?}"),
            secret_read,
            "read again after writing one"
        );
        step = ex.on_loaded(vec![second]);
    }
    (format!("{step:?}"), writes)
}

#[test]
fn a_request_that_wrote_a_secret_goes_on_with_the_one_kept() {
    let theirs = crate::store_secret::StoreSecret::new([7; 32]).encode();
    let (kept, none_written) = after_secret(Some(theirs.clone()), None);
    assert!(kept.starts_with("Load("), "{kept}");
    assert!(none_written.is_empty());
    // Another instance's secret was written first: this request's own was not, and what it
    // looks up and keeps is where the kept secret puts it.
    let (raced, writes) = after_secret(None, Some(theirs));
    assert_eq!(raced, kept);
    assert!(matches!(&writes[..], [Write::Create { key, .. }] if key == crate::store_secret::KEY));
    // A store that keeps nothing: the request's own secret, written once, read once more.
    let (own, _) = after_secret(None, None);
    assert_ne!(own, kept);
    assert!(own.starts_with("Load("), "{own}");
}

/// Rewrites every stored entry of `kind` (its bucket's JSON) with `change`.
fn tamper(
    store: &mut HashMap<String, Vec<u8>>,
    kind: &str,
    change: impl Fn(&mut serde_json::Value),
) {
    for (key, value) in store.iter_mut() {
        if key.starts_with(&format!("spin-registry-proxy:{kind}:")) {
            let mut bucket: serde_json::Value = serde_json::from_slice(value).unwrap();
            for entry in bucket.as_array_mut().unwrap() {
                change(&mut entry["value"]);
            }
            *value = serde_json::to_vec(&bucket).unwrap();
        }
    }
}

/// An anonymous HEAD of `app:1`, and the upstream requests it cost.
fn head_by_tag(cfg: &Config, store: &mut HashMap<String, Vec<u8>>) -> (Run, u32) {
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let bearer = anonymous_bearer(cfg, store, &count);
    let auth = [("authorization", bearer), ("accept", OCI_INDEX)];
    let before = count.get();
    let req = incoming(Method::HEAD, "/v2/app/manifests/1", &auth);
    let head = drive_stored(cfg, req, b"", store, signed_upstream(count.clone()));
    (head, count.get() - before)
}

/// A HEAD then a GET by digest, as docker pulls: their statuses, the HEAD's length and the
/// upstream requests both cost.
fn head_and_get(cfg: &Config, store: &mut HashMap<String, Vec<u8>>) -> (String, u32) {
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let bearer = anonymous_bearer(cfg, store, &count);
    let auth = [("authorization", bearer), ("accept", OCI_INDEX)];
    let before = count.get();
    let digest = crate::digest::sha256(INDEX.as_bytes());
    let path = format!("/v2/app/manifests/{digest}");
    let mut ask = |method: Method| {
        let req = incoming(method, &path, &auth);
        drive_stored(cfg, req, b"", store, signed_upstream(count.clone()))
    };
    let head = ask(Method::HEAD);
    let get = ask(Method::GET);
    assert_eq!((status(&head), status(&get)), (200, 200));
    assert_eq!(get.body, INDEX.as_bytes());
    assert_eq!(header(&get, "docker-content-digest"), digest);
    (
        header(&head, "content-length").to_string(),
        count.get() - before,
    )
}

/// The store is the operator's: whatever happens to what the proxy wrote there costs upstream
/// requests, never a wrong answer, and the next answer from the upstream mends it.
#[test]
fn a_damaged_store_answers_nothing_wrong_and_is_mended() {
    let cfg = config(&[]);
    let length = INDEX.len().to_string();
    for (kind, damage) in [
        // Bytes cut short (still base64): the HEAD's length would be wrong.
        (
            "manifest",
            Box::new(|v: &mut serde_json::Value| {
                let b = v["bytes"].as_str().unwrap().to_string();
                v["bytes"] = b[..b.len() - 8].into();
            }) as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        // Another manifest under this one's identity.
        (
            "manifest",
            Box::new(|v: &mut serde_json::Value| {
                v["bytes"] = crate::base64::encode(b"{}").into();
                v["digest"] = crate::digest::sha256(b"{}").into();
            }),
        ),
        // A tag's length no manifest has, and a digest that is none.
        (
            "tag",
            Box::new(|v: &mut serde_json::Value| v["length"] = u64::MAX.into()),
        ),
        (
            "tag",
            Box::new(|v: &mut serde_json::Value| v["digest"] = "sha256:x".into()),
        ),
    ] {
        let mut store = HashMap::new();
        docker_pull(&cfg, &mut store);
        assert_eq!(head_and_get(&cfg, &mut store), (length.clone(), 0), "kept");
        tamper(&mut store, kind, damage);
        if kind == "manifest" {
            let (told, asked) = head_and_get(&cfg, &mut store);
            assert!(asked > 0 && told == length, "{kind}: {told}, {asked}");
            assert_eq!(
                head_and_get(&cfg, &mut store),
                (length.clone(), 0),
                "mended"
            );
        } else {
            let (head, asked) = head_by_tag(&cfg, &mut store);
            assert_eq!(header(&head, "content-length"), length, "{kind}");
            assert_eq!(asked, 1, "{kind}: the tag went upstream");
        }
    }
}
