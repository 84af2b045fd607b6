"""The proxy's own users: a vendor serves private images from the real registry (distribution
2.8 with token auth; the route's own account reads `private/*` there) to customers who log in
with an account the proxy keeps (`users`), under tokens the proxy signs.

Every client pulls as a user allowed to (docker login, podman and skopeo --creds, containerd's
ctr, whose --user POSTs the token form, oras); refusals are 401 or 403 with words a user can act
on, and none of them costs an upstream request (the test host's outbound counter says so).
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
import time

import pytest

import clients
import harness
from clients import call, oci_error_of
from upstream_double import MANIFEST, manifest
from upstreams import ALICE

SECRET = "e2e-token-secret-0123456789abcdef0123"
PREVIOUS = "e2e-previous-secret-fedcba9876543210"
PRIVATE = "private/secret"
CUSTOMER = ("customer", "customer-Secret-1")
STRANGER = ("stranger", "stranger-Secret-2")
EXPIRED = ("expired", "expired-Secret-3")


def htpasswd(user, password, cost=5):
    out = subprocess.run(["htpasswd", "-nbBC", str(cost), user, password], check=True,
                         capture_output=True, text=True).stdout.strip()
    return out.split(":", 1)[1]


def users(*extra, without=()) -> str:
    entries = [
        {"name": CUSTOMER[0], "password": htpasswd(*CUSTOMER), "admin": True,
         "access": [{"routes": ["vendor"], "repositories": ["private/*", "multiarch"]}]},
        {"name": STRANGER[0], "password": htpasswd(*STRANGER),
         "access": [{"routes": ["vendor"], "repositories": ["multiarch"]}]},
        {"name": EXPIRED[0], "password": htpasswd(*EXPIRED), "expires": "2020-01-01",
         "access": [{"repositories": ["**"]}]},
        *extra,
    ]
    return json.dumps([u for u in entries if u["name"] not in without])


def table(ups) -> list:
    return [{"name": "vendor", "upstream": ups.token.url, "auth": ups.token_server.url,
             "cdn": ups.token.cdn.url, "blob_redirect": "follow",
             "username": ALICE[0], "password": ALICE[1], "access": "users",
             "deny": ["private/forbidden*"]}]


def start(ups, user_json=None, **kw):
    variables = {"routes": json.dumps(table(ups)), "users": user_json or users(),
                 "token_secret": SECRET, **kw.pop("variables", {})}
    allowed = [ups.token.url, ups.token_server.url, ups.token.cdn.url]
    return harness.start_proxy(variables, allowed_hosts=allowed, name="users-proxy", **kw)


@pytest.fixture(scope="module")
def vendor(ups, seeded):
    p = start(ups)
    yield p
    p.stop()


def upstream_requests(proxy) -> int:
    return sum(harness.outbound(proxy).values())


def test_every_client_pulls_a_private_image_as_an_allowed_user(vendor, ups, seeded, podman,
                                                               docker, containerd, ctr_ns):
    host = f"127.0.0.1:{vendor.port}"
    ref = f"{host}/{PRIVATE}:latest"
    want = seeded["token"][(PRIVATE, "latest")]
    cfg = docker.new_config()
    docker.login(cfg, host, CUSTOMER)
    docker.pull(cfg, ref)
    assert any(d.endswith(want) for d in docker.repo_digests(cfg, ref))
    podman.pull(ref, creds=CUSTOMER)
    raw = clients.skopeo_inspect_raw(ref, creds=CUSTOMER).stdout
    assert clients.sha256_bytes(raw.encode()) == want
    containerd.pull(ctr_ns, ref, user=CUSTOMER)
    assert containerd.image_digest(ctr_ns, ref) == want
    assert clients.oras_pull(ref, creds=CUSTOMER) == want
    # The upstream saw the route's account, never a customer's password or token.
    log = ups.token_server.entries()
    assert not any(CUSTOMER[0] in json.dumps(e) for e in log), log[-3:]


@pytest.mark.parametrize("who", ["wrong password", "expired user", "user without the repository",
                                 "anonymous"])
def test_refusals_say_why_and_cost_the_upstream_nothing(vendor, ups, seeded, podman, who):
    host = f"127.0.0.1:{vendor.port}"
    creds = {"wrong password": (CUSTOMER[0], "nope"), "expired user": EXPIRED,
             "user without the repository": STRANGER, "anonymous": None}[who]
    words = {"wrong password": "incorrect username or password",
             "expired user": "expired", "user without the repository": "may not pull",
             "anonymous": "authentication required"}[who]
    before = upstream_requests(vendor)
    out = clients.run(["skopeo", "inspect", "--tls-verify=false",
                       *(["--creds", ":".join(creds)] if creds else []),
                       f"docker://{host}/{PRIVATE}:latest"], check=False)
    assert out.returncode != 0
    assert words in out.stderr, out.stderr
    p = podman.pull(f"{host}/{PRIVATE}:latest", creds=creds, check=False)
    assert p.returncode != 0, p.stdout
    assert upstream_requests(vendor) == before, "a refusal reached the upstream"


def test_a_login_is_checked_where_an_open_route_shares_the_host(ups, seeded, podman):
    """An open route without a path beside the users' `vendor/`: `podman login` (a token
    request with no scope) went to the open route, which dropped the credentials and gave an
    anonymous token: "Login Succeeded!" whatever the password."""
    routes = [{"name": "open", "upstream": ups.anon.url},
              {**table(ups)[0], "path": "vendor", "deny": ["vendor/private/forbidden*"]}]
    variables = {"routes": json.dumps(routes), "users": users(), "token_secret": SECRET}
    allowed = [ups.anon.url, ups.token.url, ups.token_server.url, ups.token.cdn.url]
    p = harness.start_proxy(variables, allowed_hosts=allowed, name="shared-host-proxy")
    try:
        host = f"127.0.0.1:{p.port}"
        wrong = podman("login", "--tls-verify=false", "-u", CUSTOMER[0], "-p", "nope", host,
                       check=False)
        assert wrong.returncode != 0, wrong.stdout
        assert "invalid username/password" in wrong.stderr, wrong.stderr
        right = podman("login", "--tls-verify=false", "-u", CUSTOMER[0], "-p", CUSTOMER[1],
                       host)
        assert "Login Succeeded" in right.stdout, right
    finally:
        p.stop()


def test_a_user_s_token_never_reaches_another_route_s_registry(ups, seeded, env):
    """A customer's token shown on a path another route serves, from another registry: that
    registry got it byte for byte, and could replay it at the proxy for the customer's
    images. It leaves the proxy for no one."""
    env.up.route("/v2/", manifest(MANIFEST), prefix=True)
    routes = [{"name": "open", "path": "open", "upstream": env.up.url},
              {**table(ups)[0], "path": "vendor", "deny": ["vendor/private/forbidden*"]}]
    variables = {"routes": json.dumps(routes), "users": users(), "token_secret": SECRET}
    allowed = [env.up.url, ups.token.url, ups.token_server.url, ups.token.cdn.url]
    p = harness.start_proxy(variables, allowed_hosts=allowed, name="two-registries-proxy")
    try:
        login = base64.b64encode(":".join(CUSTOMER).encode()).decode()
        r = call(p.url, "GET", f"/token?scope=repository:vendor/{PRIVATE}:pull",
                 headers=[("Authorization", f"Basic {login}")])
        assert r.status == 200, r.describe()
        token = r.json()["token"]
        r = call(p.url, "GET", "/v2/open/app/manifests/latest",
                 headers=[("Authorization", f"Bearer {token}")])
        assert r.status == 200, r.describe()
        sent = [x.header("Authorization") for x in env.up.requests]
        assert sent == [None], sent
    finally:
        p.stop()


def test_a_denied_repository_is_refused_by_digest_and_by_referrers_too(vendor, ups, seeded):
    """A token for one repository grants nothing on another, however it is addressed: as a
    registry answers, a 401 sends the client for a token for this one, which grants the user
    nothing, and that is a 403 saying so."""
    want = seeded["token"][(PRIVATE, "latest")]
    before = upstream_requests(vendor)

    def token_for(scope: str) -> str:
        r = call(vendor.url, "GET", f"/token?scope={scope}",
                 headers=[("Authorization", clients.basic_header(STRANGER))])
        return r.json()["token"]

    other = token_for("repository:multiarch:pull")
    own = token_for(f"repository:{PRIVATE}:pull")
    for path in [f"/v2/{PRIVATE}/manifests/{want}", f"/v2/{PRIVATE}/referrers/{want}",
                 f"/v2/{PRIVATE}/blobs/{want}", f"/v2/{PRIVATE}/tags/list"]:
        r = call(vendor.url, "GET", path, headers=[("Authorization", f"Bearer {other}")])
        assert r.status == 401, r.describe()
        assert f'scope="repository:{PRIVATE}:pull"' in r.header("WWW-Authenticate")
        r = call(vendor.url, "GET", path, headers=[("Authorization", f"Bearer {own}")])
        assert r.status == 403, r.describe()
        assert oci_error_of(r)["code"] == "DENIED"
        assert "stranger may not pull private/secret" in oci_error_of(r)["message"]
    # The route's deny list wins even for a user whose grants name it.
    r = call(vendor.url, "GET", "/token?scope=repository:private/forbidden:pull",
             headers=[("Authorization", clients.basic_header(CUSTOMER))])
    assert r.status == 403, r.describe()
    assert upstream_requests(vendor) == before


def test_forged_tokens_are_refused(vendor):
    r = call(vendor.url, "GET", f"/token?scope=repository:{PRIVATE}:pull",
             headers=[("Authorization", clients.basic_header(CUSTOMER))])
    head, payload, sig = r.json()["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    other_host = dict(claims, aud="http://evil.example.com")
    other_route = dict(claims, route="elsewhere")
    longer = dict(claims, exp=claims["exp"] + 3600)
    none = enc({"alg": "none", "typ": "JWT"})
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    before = upstream_requests(vendor)
    for what, token in [("altered signature", f"{head}.{payload}.{flipped}"),
                        ("altered claims", f"{head}.{enc(longer)}.{sig}"),
                        ("alg none", f"{none}.{payload}."),
                        ("another host", f"{head}.{enc(other_host)}.{sig}"),
                        ("another route", f"{head}.{enc(other_route)}.{sig}")]:
        r = call(vendor.url, "GET", f"/v2/{PRIVATE}/manifests/latest",
                 headers=[("Authorization", f"Bearer {token}")])
        assert r.status == 401, f"{what}: {r.describe()}"
    assert upstream_requests(vendor) == before


def test_rotation_keeps_the_previous_secret_and_a_removed_user_is_refused(ups, seeded):
    """token_secret rotates: tokens signed with the previous one still work while it is
    token_secret_previous, not after. A user removed from `users` cannot log in after the
    restart that reads the new value; a token already issued ends at its expiry."""
    # One public URL for the three instances, as a deployment keeps across restarts.
    site = {"public_url": "http://images.e2e.test"}
    first = start(ups, variables=site)
    try:
        r = call(first.url, "GET", f"/token?scope=repository:{PRIVATE}:pull",
                 headers=[("Authorization", clients.basic_header(CUSTOMER))])
        token = r.json()["token"]
    finally:
        first.stop()
    new = "e2e-the-new-token-secret-00000000000000"
    rotated = start(ups, user_json=users(without=[CUSTOMER[0]]),
                    variables={"token_secret": new, "token_secret_previous": SECRET, **site})
    try:
        r = call(rotated.url, "GET", f"/v2/{PRIVATE}/manifests/latest",
                 headers=[("Authorization", f"Bearer {token}"),
                          ("Accept", clients.MANIFEST_ACCEPT)])
        assert r.status == 200, r.describe()
        r = call(rotated.url, "GET", f"/token?scope=repository:{PRIVATE}:pull",
                 headers=[("Authorization", clients.basic_header(CUSTOMER))])
        assert r.status == 401, r.describe()
    finally:
        rotated.stop()
    gone = start(ups, variables={"token_secret": new, **site})
    try:
        r = call(gone.url, "GET", f"/v2/{PRIVATE}/manifests/latest",
                 headers=[("Authorization", f"Bearer {token}")])
        assert r.status == 401, r.describe()
    finally:
        gone.stop()


def test_pull_events_are_logged_and_counted_exactly_by_two_instances(ups, seeded, redis_server,
                                                                      tmp_path):
    """Two instances on one Redis, 8 concurrent clients x 25 manifest GETs: 200 pull events,
    and /-/stats counts 200 (counts are added by compare-and-swap)."""
    rc = tmp_path / "runtime-config.toml"
    rc.write_text(f'[key_value_store.default]\ntype = "redis"\n'
                  f'url = "redis://127.0.0.1:{redis_server.port}"\n')
    # Two instances of one deployment: one public URL.
    site = {"public_url": "http://images.e2e.test"}
    a = start(ups, runtime_config=rc, variables=site)
    b = start(ups, runtime_config=rc, variables=site)
    try:
        r = call(a.url, "GET", "/token?scope=repository:multiarch:pull",
                 headers=[("Authorization", clients.basic_header(STRANGER))])
        token = r.json()["token"]
        accept = "application/vnd.oci.image.index.v1+json"

        def client(i):
            target = (a, b)[i % 2]
            for _ in range(25):
                r = call(target.url, "GET", "/v2/multiarch/manifests/latest",
                         headers=[("Authorization", f"Bearer {token}"), ("Accept", accept)])
                assert r.status == 200, r.describe()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        def stats():
            r = call(b.url, "GET", "/-/stats",
                     headers=[("Authorization", clients.basic_header(CUSTOMER))])
            assert r.status == 200, r.describe()
            return r.json()

        # Counts are written after the answer (and under contention a count takes several
        # swaps): wait for them, then for the events, then read once more.
        deadline = time.monotonic() + 60
        while stats()["pulls"] < 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        events = []
        for p in (a, b):
            text = p.wait_log(lambda t: t.count('"event":"pull"') >= 100)
            events += [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"event":"pull"')]
        assert len(events) == 200, len(events)
        counted = stats()
        day = counted["days"][0]
        assert counted["pulls"] == 200, counted
        assert day["repositories"]["vendor:multiarch"] == 200
        assert day["users"][STRANGER[0]] == 200
        assert all(e["user"] == STRANGER[0] and e["status"] == 200 for e in events)
        assert not any("127.0.0.1" in json.dumps(e) for e in events), "no client address"
    finally:
        a.stop()
        b.stop()


def test_health_asks_no_upstream_and_stats_are_an_admin_s(vendor):
    before = upstream_requests(vendor)
    r = call(vendor.url, "GET", "/-/health")
    assert r.status == 200 and r.json() == {"status": "ok"}, r.describe()
    assert upstream_requests(vendor) == before
    # Basic, the one login the admin's endpoints take (a browser then asks for it).
    r = call(vendor.url, "GET", "/-/stats")
    assert r.status == 401 and r.header("WWW-Authenticate").startswith("Basic "), r.describe()
    r = call(vendor.url, "GET", "/-/stats", headers=[("Authorization", clients.basic_header(STRANGER))])
    assert r.status == 403, r.describe()
    r = call(vendor.url, "GET", "/-/health?deep=1",
             headers=[("Authorization", clients.basic_header(CUSTOMER))])
    assert r.status == 200, r.describe()
    assert r.json()["routes"]["vendor"]["status"] == "ok"


def test_a_chunked_upload_after_a_status_check_goes_through(ups, seeded):
    """distribution challenges an upload's status GET for `pull` only. The route's token for
    that must not stand in for the push token the next chunk needs: a streamed chunk cannot be
    sent again after a 401. POST, status GET, PATCH, PUT, as a user who may push."""
    from upstreams import SEEDER
    route = {"name": "vendor", "upstream": ups.token.url, "auth": ups.token_server.url,
             "cdn": ups.token.cdn.url, "username": SEEDER[0], "password": SEEDER[1],
             "access": "users", "push": True}
    pusher = ("pusher", "pusher-Secret-4")
    user = {"name": pusher[0], "password": htpasswd(*pusher),
            "access": [{"repositories": ["pushed/**"], "actions": ["pull", "push"]}]}
    variables = {"routes": json.dumps([route]), "users": json.dumps([user]),
                 "token_secret": SECRET}
    allowed = [ups.token.url, ups.token_server.url, ups.token.cdn.url]
    p = harness.start_proxy(variables, allowed_hosts=allowed, name="push-users-proxy")
    try:
        repo = f"pushed/status-{int(time.time() * 1000)}"
        c = clients.RegistryHTTP(p.url, pusher)
        scope = f"repository:{repo}:pull,push"
        r = c.request("POST", f"/v2/{repo}/blobs/uploads/", {"Content-Length": "0"}, scope=scope)
        assert r.status == 202, r
        session = r.header("Location")
        # The route's tokens forgotten (they expire; another store): the status GET is the
        # first request to need one.
        harness.forget(p)
        r = c.request("GET", session, scope=scope, absolute=True)
        assert r.status == 204, r
        blob = b"a chunk after a status check"
        r = c.request("PATCH", session, {"Content-Type": "application/octet-stream",
                                         "Content-Length": str(len(blob))}, blob,
                      scope=scope, absolute=True)
        assert r.status == 202, r
        digest = clients.sha256_bytes(blob)
        end = r.header("Location") + ("&" if "?" in r.header("Location") else "?") + f"digest={digest}"
        r = c.request("PUT", end, {"Content-Length": "0"}, scope=scope, absolute=True)
        assert r.status == 201, r
        r = c.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope)
        assert r.status in (200, 307), r  # 307: the registry's redirect to its storage
        # A mount from it (containerd and BuildKit mount what the registry has): the route's
        # token must read `from` too, or the registry refuses with insufficient_scope.
        other = f"{repo}-mounted"
        both = f"repository:{other}:pull,push repository:{repo}:pull"
        c = clients.RegistryHTTP(p.url, pusher)
        r = c.request("POST", f"/v2/{other}/blobs/uploads/?mount={digest}&from={repo}",
                      {"Content-Length": "0"}, scope=both)
        assert r.status == 201, r
        assert r.header("Docker-Content-Digest") == digest, r
    finally:
        p.stop()
