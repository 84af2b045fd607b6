//! Redirects: passed to the client or followed, only where configuration allows.

use super::*;

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
    // Handed to the client, only a plain http(s) URL without credentials.
    for target in [
        "ftp://127.0.0.3/x",
        "javascript:alert(1)",
        "file:///etc/passwd",
    ] {
        let (_, run) = blob_redirect("pass", target);
        assert_eq!(
            (status(&run), header(&run, "location")),
            (502, ""),
            "{target}"
        );
    }
}

#[test]
fn a_backslash_in_a_location_is_no_other_host() {
    // url reads `/\\host/x` as `//host/x`; RFC 3986 and Go's clients do not.
    for policy in ["pass", "follow"] {
        let (_, run) = blob_redirect(policy, "/\\127.0.0.4:6666/x");
        assert_eq!(status(&run), 502, "{policy}");
        assert_eq!(header(&run, "location"), "", "{policy}");
        assert_eq!(run.sent.len(), 1, "{policy}");
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
