"""repository_prefix is a boundary: clients see only repositories under it, in their own names."""
from urllib.parse import urlencode

import pytest

import clients
from images import PREFIX
from upstreams import ALICE

ESCAPES = [
    "../../other/outside",
    "..%2F..%2Fother/outside",
    "%2E%2E/%2E%2E/other/outside",
    "./../../other/outside",
    "x/../../../other/outside",
]


def _final(target, method, path, creds=None, hops=3):
    """Request through the proxy, following redirects that stay on the proxy."""
    c = target.http(creds)
    r = c.request(method, path)
    while hops and r.status in (301, 302, 303, 307, 308) and r.header("Location", "").startswith(
            ("/", target.url)):
        loc = r.header("Location")
        r = c.request(method, loc[len(target.url):] if loc.startswith(target.url) else loc)
        hops -= 1
    return r


@pytest.mark.parametrize("kind,creds", [("anon", None), ("token", ALICE)])
def test_dot_segments_do_not_escape_the_prefix(kind, creds, make_target, built, needs_proxy):
    target = make_target(kind, prefix=PREFIX)
    for esc in ESCAPES:
        r = _final(target, "GET", f"/v2/{esc}/tags/list", creds)
        leaked = r.status == 200 and r.json().get("tags") == ["latest"]
        assert not leaked, f"{esc!r} reached other/outside outside the prefix: {r!r}"
        r = _final(target, "GET", f"/v2/{esc}/manifests/latest", creds)
        # other/outside:latest is the "small" image; no repository under the prefix has it
        # as :latest
        assert not (r.status == 200 and r.header("Docker-Content-Digest") == built["small"]["digest"]), (
            f"{esc!r} reached other/outside:latest outside the prefix: {r!r}")
    r = _final(target, "GET", "/v2/other/outside/tags/list", creds)
    assert r.status in (401, 404), f"other/outside must be team/app/other/outside: {r!r}"


def test_token_scopes_stay_under_the_prefix(make_target, ups, needs_proxy):
    target = make_target("token", prefix=PREFIX)
    mark = ups.token_server.mark()
    for scope in ["repository:../../other/outside:pull", "repository:other/outside:pull",
                  "repository:multiarch:pull,push,delete"]:
        q = urlencode({"service": target.hostport, "scope": scope})
        r = clients.http_request("GET", f"{target.url}/token?{q}",
                                 {"Authorization": clients.basic_header(ALICE)})
        assert r.status in (200, 400, 401, 403), f"{scope}: {r!r}"
    for e in ups.token_server.since(mark):
        for s in e["scopes"]:
            name = s.split(":")[1]
            assert name.startswith(PREFIX + "/"), f"upstream scope {s!r} outside the prefix: {e}"
            assert "/../" not in f"/{name}/", f"dot segments reached the token server: {s!r}"
