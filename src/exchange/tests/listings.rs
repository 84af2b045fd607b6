//! Tags, catalog and referrers: bodies and Links in client names, pages kept whole.

use super::*;

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
fn a_catalog_past_the_prefix_ends_only_where_pages_go_by_name() {
    let cfg = config(&[("repository_prefix", "team")]);
    let page = |link: &'static str| {
        let run = drive(
            &cfg,
            incoming(Method::GET, "/v2/_catalog?n=2", &[]),
            b"",
            move |_| {
                Ok(Canned::new(200)
                    .header("link", link)
                    .body(r#"{"repositories":["team/a","zeta/x"]}"#))
            },
        );
        assert_eq!(run.body, br#"{"repositories":["a"]}"#);
        header(&run, "link").to_string()
    };
    // distribution: sorted by name, so nothing of the prefix comes after `zeta/x`.
    assert_eq!(page("</v2/_catalog?last=zeta%2Fx&n=2>; rel=\"next\""), "");
    // Quay: its own order behind an opaque cursor, so `team/b` may yet come.
    assert_eq!(
        page("</v2/_catalog?n=2&next_page=abc>; rel=\"next\""),
        "</v2/_catalog?n=2&next_page=abc>; rel=\"next\""
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
