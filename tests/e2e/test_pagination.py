"""Tag and catalog pagination through the proxy, Link headers and names in client terms.

distribution 2.8 paginates the catalog but ignores `n`/`last` on tags/list, so the tag walks go
through tagpager.py (which paginates tags/list the way distribution 3 and Docker Hub do); the
plain registry is checked for the single-page answer."""
from urllib.parse import parse_qs, urlsplit

import pytest

import clients
from images import PAGED_REPO, PREFIX, TAGS, push_plan
from upstreams import ALICE


def _link_target(resp):
    link = resp.header("Link")
    return link.split(";")[0].strip()[1:-1] if link else None


@pytest.mark.parametrize("kind,prefix,creds", [("anon", PREFIX, None), ("token", PREFIX, None),
                                               ("basic", PREFIX, ALICE), ("token", "", ALICE)])
def test_tags_pagination(kind, prefix, creds, make_target):
    target = make_target(kind, prefix=prefix, paged_tags=True)
    name = target.name(PAGED_REPO)
    c = target.http(creds)
    pages = clients.walk_links(c, f"/v2/{name}/tags/list?n=5",
                               scope=f"repository:{name}:pull")
    seen = []
    for i, r in enumerate(pages):
        body = r.json()
        assert body.get("name") == name, f"page {i} JSON name {body.get('name')!r}, want {name!r}: {r!r}"
        assert len(body["tags"]) <= 5, f"page {i} has {len(body['tags'])} tags with n=5: {r!r}"
        seen += body["tags"]
        link = _link_target(r)
        if link:
            u = urlsplit(link)
            assert u.path == f"/v2/{name}/tags/list", f"Link path {link!r} is not in client names"
            q = parse_qs(u.query)
            assert q.get("n") == ["5"], f"Link {link!r} lost n=5"
            assert q.get("last") == [body["tags"][-1]], f"Link {link!r} last != {body['tags'][-1]}"
            if not u.scheme:
                continue
            assert f"{u.hostname}:{u.port}" == target.hostport, f"absolute Link elsewhere: {link!r}"
    assert sorted(seen) == sorted(TAGS), f"walked tags {seen}, want {TAGS}"
    assert len(seen) == len(set(seen)), f"duplicated tags: {seen}"
    assert len(pages) >= 5, f"only {len(pages)} pages for {len(TAGS)} tags with n=5"


@pytest.mark.parametrize("kind,prefix,creds", [("anon", PREFIX, None), ("token", PREFIX, ALICE)])
def test_skopeo_list_tags(kind, prefix, creds, make_target):
    for paged in (True, False):
        target = make_target(kind, prefix=prefix, paged_tags=paged)
        out = clients.skopeo_list_tags(f"{target.hostport}/{target.name(PAGED_REPO)}", creds)
        assert sorted(out["Tags"]) == sorted(TAGS), f"paged={paged}: {out}"
        assert len(out["Tags"]) == len(TAGS), f"paged={paged}: {out}"
        assert out["Repository"] == f"{target.hostport}/{target.name(PAGED_REPO)}", out


@pytest.mark.parametrize("kind,creds", [("anon", None), ("token", ALICE)])
def test_tags_unpaginated_upstream(kind, creds, make_target):
    """distribution 2.8 answers n=5 with every tag and no Link: the proxy passes that on with
    the name in client terms."""
    target = make_target(kind, prefix=PREFIX)
    name = target.name(PAGED_REPO)
    r = target.http(creds).request("GET", f"/v2/{name}/tags/list?n=5",
                                   scope=f"repository:{name}:pull")
    assert r.status == 200, r
    assert r.json()["name"] == name, r
    assert sorted(r.json()["tags"]) == sorted(TAGS), r
    assert not r.header("Link"), r


@pytest.mark.parametrize("kind,creds", [("anon", None), ("token", ALICE), ("basic", ALICE)])
def test_catalog_through_prefix(kind, creds, make_target, needs_proxy):
    target = make_target(kind, prefix=PREFIX)
    c = target.http(creds)
    pages = clients.walk_links(c, "/v2/_catalog?n=2", scope="registry:catalog:*")
    seen = []
    for i, r in enumerate(pages):
        body = r.json()
        assert len(body["repositories"]) <= 2, f"page {i} has more than n=2: {r!r}"
        seen += body["repositories"]
        link = _link_target(r)
        if link:
            u = urlsplit(link)
            assert u.path == "/v2/_catalog", f"catalog Link {link!r}"
            assert parse_qs(u.query).get("n") == ["2"], f"catalog Link {link!r} lost n=2"
            assert PREFIX not in link, f"catalog Link {link!r} shows the upstream prefix"
    want = sorted({repo[len(PREFIX) + 1:] for repo, _, _ in push_plan()
                   if repo.startswith(PREFIX + "/")})
    assert len(seen) == len(set(seen)), f"catalog repeated names: {seen}"
    assert sorted(seen) == want, f"catalog through prefix {PREFIX!r}: {seen}, want {want}"


def test_catalog_without_prefix(make_target):
    target = make_target("anon")
    pages = clients.walk_links(target.http(), "/v2/_catalog?n=7")
    seen = [n for r in pages for n in r.json()["repositories"]]
    want = sorted({repo for repo, _, _ in push_plan()})
    assert sorted(seen) == want and len(seen) == len(want), f"catalog {seen}, want {want}"
