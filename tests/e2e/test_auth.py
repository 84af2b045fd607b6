"""Authentication through the proxy: challenges, the token endpoint, logins, private repos."""
import json
from urllib.parse import urlencode

import pytest

import clients
from clients import basic_header, http_request, parse_challenges
from images import PREFIX
from upstreams import ALICE

WRONG = (ALICE[0], "not-the-password")


def leaks(target, ups, resp, allow_cdn=False):
    """Header values of a proxy response that name an upstream address."""
    bad = [target.registry.hostport, ups.token_server.service.host + ":"]
    if not allow_cdn:
        bad.append(ups.token.cdn.service.host + ":")
    return [(k, v) for k, v in resp.headers if any(b in v for b in bad)]


def assert_proxy_challenge(target, ups, resp, scope=None):
    """The proxy's own challenge: Basic for a Basic upstream (credentials then travel with
    each request and the proxy forwards them), else Bearer on the proxy's token endpoint."""
    assert resp.status == 401, f"expected 401, got {resp!r}"
    values = resp.header_all("WWW-Authenticate")
    assert len(values) == 1, f"401 without exactly one WWW-Authenticate: {resp!r}"
    challenges = parse_challenges(values[0])
    assert len(challenges) == 1, f"not one challenge: {values}"
    if target.registry.kind == "basic":
        assert challenges == [("basic", {"realm": target.hostport})], f"{values}: {resp!r}"
        assert not leaks(target, ups, resp), f"upstream address leaks: {leaks(target, ups, resp)}"
        return
    for scheme, params in challenges:
        assert scheme == "bearer", f"non-Bearer challenge {values} from the proxy: {resp!r}"
        assert params.get("realm") == target.url + "/token", (
            f"realm {params.get('realm')!r} is not the proxy's {target.url}/token: {resp!r}")
        assert params.get("service") == target.hostport, (
            f"service {params.get('service')!r} is not {target.hostport!r}: {resp!r}")
        if scope is not None:
            assert params.get("scope") == scope, (
                f"challenge scope {params.get('scope')!r}, want {scope!r} (client names): {resp!r}")
    assert not leaks(target, ups, resp), f"upstream address leaks: {leaks(target, ups, resp)}"


def repo_requests(name, built):
    blob = built["private" if name.startswith("private/") else "multiarch"]["blobs"][0]
    accept = {"Accept": clients.MANIFEST_ACCEPT}
    return [
        ("HEAD", f"/v2/{name}/manifests/latest", accept),
        ("GET", f"/v2/{name}/manifests/latest", accept),
        ("HEAD", f"/v2/{name}/manifests/{built['private' if name.startswith('private/') else 'multiarch']['digest']}", accept),
        ("GET", f"/v2/{name}/blobs/{blob}", {}),
        ("HEAD", f"/v2/{name}/blobs/{blob}", {}),
        ("GET", f"/v2/{name}/tags/list", {}),
        ("GET", f"/v2/{name}/tags/list?n=2", {}),
    ]


@pytest.mark.parametrize("kind,prefix", [("basic", ""), ("basic", PREFIX), ("token", ""),
                                         ("token", PREFIX)])
def test_every_401_carries_the_proxy_realm(kind, prefix, make_target, ups, built, needs_proxy):
    target = make_target(kind, prefix=prefix)
    r = http_request("GET", target.url + "/v2/")
    assert_proxy_challenge(target, ups, r)
    for name in ("private/secret", "multiarch"):
        for method, path, headers in repo_requests(name, built):
            r = http_request(method, target.url + path, headers)
            assert_proxy_challenge(target, ups, r, scope=f"repository:{name}:pull")


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_insufficient_scope_challenge_is_rewritten(prefix, make_target, ups, built, needs_proxy):
    """An anonymous token does not cover private/...: the upstream's insufficient_scope 401
    must come back with the proxy's realm and the client's name."""
    target = make_target("token", prefix=prefix)
    c = target.http()
    for method, path, headers in repo_requests("private/secret", built):
        r = c.request(method, path, headers, scope="repository:private/secret:pull")
        assert c.auth, f"no anonymous token was obtained: {c.token_responses}"
        assert_proxy_challenge(target, ups, r, scope="repository:private/secret:pull")
    for t in c.token_responses:
        assert t.status == 200 and not leaks(target, ups, t), f"token response {t!r}"


def test_token_endpoint_without_scope(make_target, ups, needs_proxy):
    """docker login: GET /v2/ -> 401, then GET <realm>?service=... with Basic and no scope."""
    target = make_target("token")
    ch = dict(parse_challenges(http_request("GET", target.url + "/v2/").header("WWW-Authenticate")))
    realm = ch["bearer"]["realm"]
    q = urlencode({"service": ch["bearer"]["service"]})
    r = http_request("GET", f"{realm}?{q}", {"Authorization": basic_header(ALICE)})
    assert r.status == 200, f"login token request refused: {r!r}"
    body = r.json()
    tok = body.get("token") or body.get("access_token")
    assert tok, f"no token in {body}"
    r2 = http_request("GET", target.url + "/v2/", {"Authorization": "Bearer " + tok})
    assert r2.status == 200, f"/v2/ with the login token: {r2!r}"
    bad = http_request("GET", f"{realm}?{q}", {"Authorization": basic_header(WRONG)})
    assert bad.status == 401, f"wrong password was accepted by {realm}: {bad!r}"


def test_basic_upstream_login_forwards_credentials_and_mints_nothing(make_target, ups, needs_proxy):
    """A Basic upstream: the proxy challenges with Basic, forwards the client's credentials to
    the upstream with each request, and its token endpoint hands out no token (a token of the
    proxy's making would have to carry the password)."""
    target = make_target("basic", prefix=PREFIX)
    r = http_request("GET", target.url + "/v2/")
    assert_proxy_challenge(target, ups, r)
    ok = http_request("GET", target.url + "/v2/", {"Authorization": basic_header(ALICE)})
    assert ok.status == 200, ok
    bad = http_request("GET", target.url + "/v2/", {"Authorization": basic_header(WRONG)})
    assert_proxy_challenge(target, ups, bad)
    head = http_request("HEAD", target.url + "/v2/private/secret/manifests/latest",
                        {"Accept": clients.MANIFEST_ACCEPT, "Authorization": basic_header(ALICE)})
    assert head.header("Docker-Content-Digest") == target.digest("private/secret"), head
    for q in ["service=x", "service=x&scope=repository:private/secret:pull"]:
        t = http_request("GET", f"{target.url}/token?{q}", {"Authorization": basic_header(ALICE)})
        assert t.status == 400, f"token endpoint for a Basic upstream: {t!r}"
        assert ALICE[1] not in t.body.decode() and "YWxpY2" not in t.body.decode(), t
    form = urlencode({"grant_type": "password", "username": ALICE[0], "password": ALICE[1],
                      "scope": "repository:private/secret:pull", "service": "x"}).encode()
    t = http_request("POST", target.url + "/token",
                     {"Content-Type": "application/x-www-form-urlencoded"}, form)
    assert t.status == 400 and ALICE[1] not in t.body.decode(), t


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_token_post_form_and_refresh(prefix, make_target, ups, built, needs_proxy):
    """containerd's POST form (grant_type=password, then refresh_token) reaches the upstream's
    token server as a POST with the scope in upstream names."""
    target = make_target("token", prefix=prefix)
    up = target.upstream_name("private/secret")
    mark = ups.token_server.mark()
    form = {"grant_type": "password", "username": ALICE[0], "password": ALICE[1],
            "scope": "repository:private/secret:pull repository:multiarch:pull",
            "service": target.hostport, "client_id": "e2e-client", "access_type": "offline"}
    r = http_request("POST", target.url + "/token", {"Content-Type": "application/x-www-form-urlencoded"},
                     urlencode(form).encode())
    assert r.status == 200, f"POST /token: {r!r}"
    body = r.json()
    tok = body.get("access_token") or body.get("token")
    assert tok, f"no token in {body}"
    head = http_request("HEAD", target.url + "/v2/private/secret/manifests/latest",
                        {"Accept": clients.MANIFEST_ACCEPT, "Authorization": "Bearer " + tok})
    assert head.status == 200, f"HEAD with the POSTed token: {head!r}"
    assert head.header("Docker-Content-Digest") == target.digest("private/secret")
    posts = [e for e in ups.token_server.since(mark) if e["method"] == "POST"]
    assert posts, f"no POST reached the token server: {ups.token_server.since(mark)}"
    assert posts[0]["grant_type"] == "password" and posts[0]["user"] == "alice", posts
    assert f"repository:{up}:pull" in posts[0]["scopes"], (
        f"upstream POST scopes {posts[0]['scopes']} lack repository:{up}:pull")
    assert f"repository:{target.upstream_name('multiarch')}:pull" in posts[0]["scopes"], posts

    rt = body.get("refresh_token")
    assert rt, f"password grant answered without refresh_token: {body}"
    mark = ups.token_server.mark()
    form = {"grant_type": "refresh_token", "refresh_token": rt,
            "scope": "repository:private/secret:pull", "service": target.hostport,
            "client_id": "e2e-client"}
    r = http_request("POST", target.url + "/token", {"Content-Type": "application/x-www-form-urlencoded"},
                     urlencode(form).encode())
    assert r.status == 200, f"refresh_token grant: {r!r}"
    tok = r.json().get("access_token") or r.json().get("token")
    head = http_request("HEAD", target.url + "/v2/private/secret/manifests/latest",
                        {"Accept": clients.MANIFEST_ACCEPT, "Authorization": "Bearer " + tok})
    assert head.status == 200, f"HEAD with the refreshed token: {head!r}"
    posts = [e for e in ups.token_server.since(mark) if e["method"] == "POST"]
    assert posts and posts[0]["grant_type"] == "refresh_token", ups.token_server.since(mark)
    assert posts[0]["scopes"] == [f"repository:{up}:pull"], posts

    bad = dict(form, grant_type="password", username=WRONG[0], password=WRONG[1])
    bad.pop("refresh_token")
    r = http_request("POST", target.url + "/token", {"Content-Type": "application/x-www-form-urlencoded"},
                     urlencode(bad).encode())
    assert r.status == 401, f"wrong password POST: {r!r}"


def test_ctr_with_credentials_posts_upstream_scope(make_target, ups, containerd, ctr_ns):
    target = make_target("token", prefix=PREFIX, blob_redirect="follow")
    mark = ups.token_server.mark()
    ref = target.ref("private/secret")
    p = containerd.pull(ctr_ns, ref, user=ALICE)
    assert containerd.image_digest(ctr_ns, ref) == target.digest("private/secret")
    entries = ups.token_server.since(mark)
    up_scope = f"repository:{PREFIX}/private/secret:pull"
    posts = [e for e in entries if e["method"] == "POST" and e["status"] == 200]
    if not target.direct:
        assert "POST /token" in p.stdout + p.stderr, "ctr did not POST to the proxy's /token"
    assert any(e["grant_type"] == "password" and up_scope in e["scopes"] for e in posts), (
        f"no POST grant_type=password with {up_scope} reached the token server: {entries}")
    for e in entries:
        for s in e["scopes"]:
            assert s.startswith(f"repository:{PREFIX}/") or s.startswith("registry:"), (
                f"scope {s!r} is not in upstream names: {e}")
            assert f"{PREFIX}/{PREFIX}" not in s, f"doubly prefixed scope {s!r}: {e}"


def test_anonymous_token_requests_use_upstream_scope(make_target, ups, needs_proxy):
    target = make_target("token", prefix=PREFIX)
    mark = ups.token_server.mark()
    clients.skopeo_inspect_raw(target.ref("multiarch"))
    entries = ups.token_server.since(mark)
    assert entries, "the token server saw no request"
    scopes = [s for e in entries for s in e["scopes"]]
    assert f"repository:{PREFIX}/multiarch:pull" in scopes, entries
    assert all(f"{PREFIX}/{PREFIX}" not in s for s in scopes), entries
    assert all(e["user"] is None for e in entries), f"anonymous pull sent credentials: {entries}"


def _unauthorized(text):
    t = text.lower()
    return any(w in t for w in ("unauthorized", "denied", "authentication required",
                                "no basic auth credentials"))


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_private_refused_anonymously_skopeo(kind, make_target):
    target = make_target(kind)
    p = clients.skopeo_inspect_raw(target.ref("private/secret"), check=False)
    assert p.returncode != 0, f"anonymous skopeo inspect of private/secret succeeded:\n{p.stdout[:500]}"
    assert _unauthorized(p.stderr), f"skopeo error does not say unauthorized/denied:\n{p.stderr}"
    p = clients.skopeo_copy_all(target.ref("private/secret"), check=False)
    assert p.returncode != 0 and _unauthorized(p.stderr), p.stderr
    p = clients.skopeo_inspect_raw(target.ref("private/secret"), ALICE)
    assert clients.sha256_bytes(p.stdout.encode()) == target.digest("private/secret")
    p = clients.skopeo_inspect_raw(target.ref("private/secret"), WRONG, check=False)
    assert p.returncode != 0 and _unauthorized(p.stderr), f"wrong password: {p.stderr}"


@pytest.mark.parametrize("kind,prefix", [("basic", ""), ("token", ""), ("token", PREFIX)])
def test_docker_login_and_private_pull(kind, prefix, make_target, docker):
    target = make_target(kind, prefix=prefix)
    anon = docker.new_config()
    p = docker.pull(anon, target.ref("private/secret"), check=False)
    assert p.returncode != 0, f"anonymous docker pull of private/secret succeeded:\n{p.stdout}"
    assert _unauthorized(p.stderr), f"docker error does not say unauthorized/denied:\n{p.stderr}"

    bad = docker.new_config()
    p = docker.login(bad, target.hostport, WRONG, check=False)
    assert p.returncode != 0, f"docker login with a wrong password succeeded:\n{p.stdout}"

    cfg = docker.new_config()
    p = docker.login(cfg, target.hostport, ALICE)
    assert "Login Succeeded" in p.stdout, p.stdout + p.stderr
    auths = json.loads((cfg / "config.json").read_text()).get("auths", {})
    assert target.hostport in auths, f"docker stored credentials for {list(auths)}"
    p = docker.pull(cfg, target.ref("private/secret"))
    assert f"Digest: {target.digest('private/secret')}" in p.stdout, p.stdout
    p = docker.pull(cfg, target.ref("multiarch"))
    assert f"Digest: {target.digest('multiarch')}" in p.stdout, p.stdout


def test_ctr_private_refused_anonymously(make_target, containerd, ctr_ns):
    target = make_target("token")
    p = containerd.pull(ctr_ns, target.ref("private/secret"), check=False)
    assert p.returncode != 0, "anonymous ctr pull of private/secret succeeded"
    assert _unauthorized(p.stderr + p.stdout), p.stderr[-2000:]
    if not target.direct:
        # containerd keeps the first challenge's realm for the host: it must be the proxy's
        dump = p.stdout + p.stderr
        assert "127.0.0.2" not in dump, f"ctr was sent to the upstream realm:\n{dump[-3000:]}"


def test_public_url_names_the_realm(make_target, ups, needs_proxy):
    """With public_url set, challenges name it rather than the Host the request came to."""
    target = make_target("token", public_url="https://registry.example.test")
    for method, path in [("GET", "/v2/"), ("HEAD", "/v2/multiarch/manifests/latest")]:
        r = http_request(method, target.url + path, {"Accept": clients.MANIFEST_ACCEPT})
        assert r.status == 401, r
        ch = dict(c for v in r.header_all("WWW-Authenticate") for c in parse_challenges(v))
        assert ch.get("bearer", {}).get("realm") == "https://registry.example.test/token", r
        assert ch["bearer"].get("service") == "registry.example.test", r
        assert not leaks(target, ups, r), r
