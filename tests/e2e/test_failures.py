"""Failure modes and edge behaviours of the proxy, against a scriptable upstream double.

Each test runs the real component in the test host (harness.start_proxy) with `upstream`,
`upstream_auth` and `upstream_cdn` pointing at doubles on 127.0.0.1, 127.0.0.2 and 127.0.0.3;
a fourth double on 127.0.0.4 plays a host that is NOT configured and must never be contacted
(fixtures `env`, `proxy`, `shared` and `fresh` in conftest.py).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import time
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest

import clients
import harness
from clients import call, oci_error_of, only_bearer
from upstream_double import (
    DOCKER_HUB_RATE_LIMIT_MESSAGE, Response, acr_tags_page, bearer_challenge,
    artifact_registry_redirect, blob, docker_hub_cdn_redirect, docker_hub_rate_limit,
    hang, manifest, oci_error, quay_challenge, slow, token_response,
)
from upstream_double import BLOB, BLOB_DIGEST, MANIFEST, NAME

SPIN_HEADERS = ["spin-full-url", "spin-path-info", "spin-matched-route", "spin-base-path",
                "spin-raw-component-route", "spin-component-route", "spin-client-addr"]
HOP_BY_HOP = ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
              "proxy-authorization", "proxy-authenticate", "proxy-connection"]


# ---------------------------------------------------------------------------------------------
# upstream down, slow, rate limited


def test_unreachable_upstream_is_502_in_plain_words(fresh, env):
    """Connection refused: the client reads plain words and never the upstream's origin;
    the log line has the cause and the origin."""
    port = harness.closed_port("127.0.0.1")
    origin = f"127.0.0.1:{port}"
    p = fresh(env.variables(upstream=f"http://{origin}"))
    for method in ("GET", "HEAD"):
        r = call(p.url, method, f"/v2/{NAME}/manifests/v1")
        assert r.status == 502, r.describe()
        assert origin not in r.describe(), r.describe()
        if method == "GET":
            err = oci_error_of(r)
            assert err["code"] == "UNAVAILABLE", r.describe()
            assert err["message"] == "the upstream registry is unreachable: connection refused", err
    log = p.wait_log(lambda t: t.count(f"/v2/{NAME}/manifests/v1 status=502") >= 2)
    lines = [ln for ln in log.splitlines() if f"/v2/{NAME}/manifests/v1 status=502" in ln]
    assert len(lines) == 2 and all(f"connection refused by http://{origin}" in ln for ln in lines), log


def test_unresolvable_upstream_says_so(fresh, env):
    """A host name that does not resolve (RFC 6761 `.invalid`)."""
    p = fresh(env.variables(upstream="http://registry.e2e.invalid:5000"))
    r = call(p.url, "GET", f"/v2/{NAME}/manifests/v1", timeout=60)
    assert r.status == 502, r.describe()
    err = oci_error_of(r)
    assert "does not resolve" in err["message"] and "e2e.invalid" not in r.describe(), err
    log = p.wait_log(lambda t: "cannot resolve" in t)
    assert "cannot resolve registry.e2e.invalid" in log, log[-2000:]


def test_upstream_timeout_is_504_in_plain_words(fresh, env):
    env.up.route(f"/v2/{NAME}/manifests/v1", hang())
    p = fresh(env.variables(upstream_timeout="2"))
    r = call(p.url, "GET", f"/v2/{NAME}/manifests/v1", timeout=60)
    assert r.status == 504, r.describe()
    err = oci_error_of(r)
    assert err["code"] == "UNAVAILABLE", r.describe()
    assert err["message"] == "the upstream registry did not answer within 2 s", err
    assert f":{env.up.port}" not in r.describe()
    assert 1.5 <= r.elapsed < 30, f"answered after {r.elapsed:.1f}s with upstream_timeout=2"
    assert env.up.requests_to(f"/v2/{NAME}/manifests/v1"), "the request never reached the upstream"
    log = p.wait_log(lambda t: "timed out" in t)
    assert f"timed out after 2 s waiting for {env.up.url}" in log, log[-2000:]


def stalled(port: int, head: str, sent: bytes, wait: float) -> bytes:
    """Sends `head` and part of a body, then nothing: what comes back within `wait`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        s.sendall(head.encode() + sent)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer
    except socket.timeout:
        return b"<no answer within %d s>" % wait
    finally:
        s.close()


def test_a_token_form_that_stops_arriving_holds_nothing(fresh, env):
    """A POST to /token that sends part of its form and then nothing: Spin waits for a
    client's body without end, so a thousand of them took every instance it has (1,000) and
    every other client got a 500. The proxy stops waiting after `upstream_timeout`."""
    p = fresh(env.variables(upstream_timeout="1"))
    head = (f"POST /token HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n")
    started = time.monotonic()
    answer = stalled(p.port, head, b"grant_type", 20)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 15
    assert not env.up.requests and not env.auth.requests


def test_a_token_form_that_drips_holds_nothing(fresh, env):
    """A form sent a byte at a time, each in time: read whole before anything is answered,
    all of it must come within `upstream_timeout`, or the proxy stops waiting."""
    p = fresh(env.variables(upstream_timeout="1"))
    head = (f"POST /token HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    started = time.monotonic()
    answer = b""
    try:
        s.sendall(head.encode())
        s.setblocking(False)
        for _ in range(100):
            try:
                answer += s.recv(4096)
                break
            except BlockingIOError:
                pass
            try:
                s.sendall(b"g")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.3)
        s.settimeout(30)
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 10
    assert not env.up.requests and not env.auth.requests


def test_an_upstream_that_drips_a_body_read_whole_holds_nothing(fresh, env):
    """A token realm that sends its answer a byte every 0.3 s, each within the between-bytes
    timeout: the client waits for a body the proxy reads whole, so all of it must come within
    `upstream_timeout` (a 64 KiB token answer at that pace held an instance for five hours)."""
    p = fresh(env.variables(upstream_timeout="1"))
    env.up.route("/v2/", bearer_challenge(env.auth.url + "/token", "registry"))
    env.auth.route("/token", Response(200, [("Content-Type", "application/json")],
                                      b'{"token": "' + b"t" * 200 + b'"}', drip=0.3))
    r = call(p.url, "GET", f"/token?scope=repository:{NAME}:pull&service=x", timeout=60)
    assert r.status == 504, r.describe()
    assert oci_error_of(r)["message"] == "the upstream token service did not answer within 1 s"
    assert r.elapsed < 10, f"answered after {r.elapsed:.1f}s with upstream_timeout=1"


def test_a_client_that_stops_reading_a_blob_holds_nothing(fresh, env):
    """A client that takes a blob's first bytes and then reads no more: the runtime waits for a
    reader without end, so each held an instance and an upstream connection for as long as it
    kept its own open (a thousand such would take every instance Spin has). The proxy lets go
    after `upstream_timeout` without progress; a slow reader that keeps reading gets it all."""
    data = os.urandom(24 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = f"/v2/{NAME}/blobs/{digest}"
    env.up.route(path, blob(data))
    p = fresh(env.variables(upstream_timeout="2"))
    start = len(p.log())
    readers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(30)
            s.connect(("127.0.0.1", p.port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\n\r\n".encode())
            status = b""
            while len(status) < 12 and (chunk := s.recv(12 - len(status))):
                status += chunk
            assert status == b"HTTP/1.1 200", status
            readers.append(s)
        # Each instance ends while its client still holds the connection open.
        marker = f"GET {path} "
        log = p.wait_log(lambda t: t[start:].count(marker) >= 3, timeout=60)[start:]
        lines = [ln for ln in log.splitlines() if marker in ln]
        assert len(lines) == 3, log[-2000:]
        assert all('error="client took nothing for 2s"' in ln for ln in lines), lines
    finally:
        for s in readers:
            s.close()
    # A reader that takes 64 KiB every 50 ms: 8 MiB in about seven seconds, three times the
    # timeout, without a pause that long.
    small = data[: 8 << 20]
    small_path = f"/v2/{NAME}/blobs/sha256:{hashlib.sha256(small).hexdigest()}"
    env.up.route(small_path, blob(small))
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
    conn.request("GET", small_path)
    r = conn.getresponse()
    got = b""
    while chunk := r.read(64 << 10):
        got += chunk
        time.sleep(0.05)
    conn.close()
    assert r.status == 200 and got == small, (r.status, len(got))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_upstream_5xx_keeps_status_but_never_its_body(proxy, env, status):
    body = f"<html>internal error at {env.up.url} in /srv/registry</html>".encode()
    env.up.route(f"/v2/{NAME}/manifests/v1",
                 Response(status, [("Content-Type", "text/html"), ("Retry-After", "5"),
                                   ("X-Backend", env.up.url)], body))
    for method in ("GET", "HEAD"):
        r = call(proxy.url, method, f"/v2/{NAME}/manifests/v1")
        assert r.status == status, r.describe()
        assert env.up.url not in r.describe() and b"/srv" not in r.body, r.describe()
        assert r.header("Retry-After") == "5", r.describe()
        if method == "GET":
            assert oci_error_of(r)["code"] == "UNAVAILABLE", r.describe()


def test_slow_upstream_within_timeout_is_served(fresh, env):
    env.up.route(f"/v2/{NAME}/manifests/v1", slow(manifest(MANIFEST), 1.0))
    p = fresh(env.variables(upstream_timeout="30"))
    r = call(p.url, "GET", f"/v2/{NAME}/manifests/v1")
    assert r.status == 200, r.describe()
    assert r.body == MANIFEST


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_429_passes_through_with_retry_after(proxy, env, method):
    """Docker Hub's rate limit: status, Retry-After and RateLimit-* pass; its words (which name
    Docker Hub) and the address it saw do not."""
    canned = docker_hub_rate_limit("37")
    env.up.route(f"/v2/{NAME}/manifests/v1", canned)
    r = call(proxy.url, method, f"/v2/{NAME}/manifests/v1")
    assert r.status == 429, r.describe()
    assert r.header("Retry-After") == "37", r.describe()
    assert r.header("RateLimit-Remaining") == "0;w=21600", r.describe()
    assert r.header("Docker-RateLimit-Source") is None, r.describe()
    if method == "GET":
        err = oci_error_of(r)
        assert err["code"] == "TOOMANYREQUESTS", r.describe()
        assert DOCKER_HUB_RATE_LIMIT_MESSAGE not in r.body.decode(), r.describe()
        assert int(r.header("Content-Length")) == len(r.body)
    assert [x.method for x in env.up.requests] == [method], "HEAD must stay HEAD upstream"


# ---------------------------------------------------------------------------------------------
# read-only: write methods never reach the upstream

WRITE_PATHS = [
    "/v2/",
    f"/v2/{NAME}/blobs/uploads/",
    f"/v2/{NAME}/blobs/uploads/5f0e-uuid?digest={BLOB_DIGEST}",
    f"/v2/{NAME}/manifests/v1",
    f"/v2/{NAME}/blobs/{BLOB_DIGEST}",
]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", WRITE_PATHS)
def test_write_methods_are_405_and_never_forwarded(proxy, env, method, path):
    env.up.route("/", Response(202, [("Location", f"/v2/{NAME}/blobs/uploads/u")]), prefix=True)
    body = b"" if method in ("DELETE", "OPTIONS") else b'{"layers":[]}'
    r = call(proxy.url, method, path, headers=[("Content-Type", "application/octet-stream")],
             body=body)
    assert r.status == 405, r.describe()
    assert r.header("Allow") is not None, r.describe()
    allow = {m.strip().upper() for m in r.header("Allow").split(",") if m.strip()}
    # An upload's path takes writes alone: on a route without pushes, no method (RFC 9110
    # 10.2.1); elsewhere the reads.
    assert allow == (set() if "/blobs/uploads/" in path else {"GET", "HEAD"}), r.describe()
    assert oci_error_of(r)["code"] == "UNSUPPORTED", r.describe()
    time.sleep(0.1)
    assert env.up.requests == [], [(x.method, x.target) for x in env.up.requests]
    assert env.auth.requests == [] and env.cdn.requests == []


# ---------------------------------------------------------------------------------------------
# unknown paths and the home page


@pytest.mark.parametrize("path", ["/foo", "/v2/x/unknownthing", f"/v2/{NAME}/unknownthing", "/v3/",
                                  "/.env"])
def test_unknown_paths_are_404_oci_json(proxy, env, path):
    # if the proxy forwarded these, the client would see this 200
    env.up.route("/", Response(200, [("Content-Type", "text/plain")], b"forwarded"), prefix=True)
    r = call(proxy.url, "GET", path)
    assert r.status == 404, r.describe()
    oci_error_of(r)


def test_root_is_a_short_page(proxy, env):
    r = call(proxy.url, "GET", "/")
    assert r.status == 200, r.describe()
    assert 0 < len(r.body) < 16 * 1024, r.describe()
    h = call(proxy.url, "HEAD", "/")
    assert h.status == 200, h.describe()


def test_root_redirects_to_home_when_set(fresh, env):
    home = "https://docs.example.test/registry"
    p = fresh(env.variables(home=home))
    r = call(p.url, "GET", "/")
    assert r.status in (301, 302, 303, 307, 308), r.describe()
    assert r.header("Location") == home, r.describe()


# ---------------------------------------------------------------------------------------------
# invalid configuration

SECRET = "TOKEN-e2e-5ecret"
BAD_CONFIG = [
    ("upstream", "not a url"),
    ("upstream", "ftp://127.0.0.1:21"),  # a valid allowed_outbound_hosts entry, not an http origin
    ("upstream_auth", "http://*.example.com"),
    ("upstream_auth", ""),  # Spin: an empty allowed_outbound_hosts entry denies every request
    ("upstream_cdn", ""),
    ("public_url", f"https://robot:{SECRET}@images.example.com"),
    ("public_url", "https://*.example.com"),
    ("blob_redirect", "sideways"),
    ("upstream_timeout", "soon"),
    ("trust_forwarded", "yes"),
    ("home", "javascript:alert(1)"),
    ("routes", f'[{{"name": "ghcr", "upstream": "https://robot:{SECRET}@ghcr.io"}}]'),
    ("routes", f'[{{"name": "own", "preset": "ghcr", "username": "robot", "password": "{SECRET}"}}]'),
    ("routes", f'[{{"name": "x", "preset": "ghcr", "colour": "{SECRET}"}}]'),
]


@pytest.mark.parametrize("variable,value", BAD_CONFIG, ids=[f"{k}={v}" for k, v in BAD_CONFIG])
def test_invalid_configuration_is_500_naming_the_variable(env, variable, value):
    """Every request answers 500 naming the variable, never its value (which may hold a
    credential). upstream, upstream_auth and upstream_cdn are also allowed_outbound_hosts
    entries: Spin loads the app all the same (templated entries are resolved per request, and
    one that fails denies every outbound request), so the component has to say what is wrong."""
    p = harness.start_proxy(env.variables(**{variable: value}), name=f"proxy-bad-{variable}")
    try:
        for method, path in [("GET", "/"), ("GET", "/v2/"), ("GET", f"/v2/{NAME}/manifests/v1"),
                             ("HEAD", f"/v2/{NAME}/manifests/v1"), ("GET", "/token?service=x"),
                             ("POST", f"/v2/{NAME}/blobs/uploads/"), ("GET", "/foo")]:
            r = call(p.url, method, path, body=b"" if method == "POST" else None)
            assert r.status == 500, f"{method} {path}: {r.describe()}"
            assert SECRET not in r.describe(), r.describe()
            assert len(value) < 5 or value not in r.describe(), r.describe()
            if method != "HEAD":
                err = oci_error_of(r)
                assert f"variable {variable}" in err["message"], f"{method} {path}: {r.describe()}"
        log = p.wait_log(lambda t: t.count("status=500") >= 7)
        errors = [ln for ln in log.splitlines() if "status=500" in ln]
        assert len(errors) == 7 and all(f"variable {variable}" in ln for ln in errors), log
        # The runtime's own line about the entry it cannot use is Spin's, not the component's.
        ours = "\n".join(ln for ln in log.splitlines()
                         if not ln.startswith("Error parsing allowed outbound hosts"))
        assert SECRET not in ours and (len(value) < 5 or value not in ours), log
        assert env.up.requests == [], "an invalid configuration must not contact the upstream"
    finally:
        p.stop()


# ---------------------------------------------------------------------------------------------
# auth challenges and the token endpoint


@pytest.mark.parametrize("style", ["quay", "reordered", "separate", "escaped"])
@pytest.mark.parametrize("probe", ["GET /v2/", f"HEAD /v2/{NAME}/manifests/v1"])
def test_multi_challenge_becomes_one_bearer_on_proxy_realm(proxy, env, style, probe):
    """Quay: `Basic realm="quay.io", Bearer realm=".../v2/auth",...` in one header."""
    realm = env.up.url + "/v2/auth"
    challenge = quay_challenge(realm, scope=f"repository:{NAME}:pull", style=style)
    env.up.route("/v2/", challenge)
    env.up.route(f"/v2/{NAME}/manifests/v1", challenge)
    env.up.route("/v2/auth", token_response("quay-issued-token"))
    method, path = probe.split(" ", 1)
    r = call(proxy.url, method, path)
    assert r.status == 401, r.describe()
    params = only_bearer(r)
    assert params.get("realm") == proxy.url + "/token", params
    for v in params.values():
        assert env.up.url not in v, f"upstream origin leaked in challenge: {params}"

    # the client follows the challenge to the proxy's token endpoint
    query = "service=" + params.get("service", "quay.io")
    if params.get("scope"):
        query += "&scope=" + params["scope"]
    t = call(proxy.url, "GET", "/token?" + query)
    assert t.status == 200, t.describe()
    doc = t.json()
    assert doc.get("token") or doc.get("access_token"), t.describe()
    assert env.up.requests_to("/v2/auth"), "token request did not reach the Bearer realm"
    assert not env.evil.requests


def test_token_realm_on_upstream_auth_host(proxy, env):
    """Docker Hub: registry-1.docker.io challenges with realm on auth.docker.io."""
    env.up.route("/v2/", oci_error(401, "UNAUTHORIZED", "authentication required", headers=[
        ("WWW-Authenticate",
         f'Bearer realm="{env.auth.url}/token",service="registry.docker.io"')]))
    env.auth.route("/token", token_response("hub-token"))
    r = call(proxy.url, "GET", "/v2/")
    assert r.status == 401, r.describe()
    assert only_bearer(r).get("realm") == proxy.url + "/token"
    t = call(proxy.url, "GET", f"/token?service=registry.docker.io&scope=repository:{NAME}:pull")
    assert t.status == 200, t.describe()
    assert env.auth.requests_to("/token"), "token request did not reach upstream_auth"


def test_an_anonymous_token_the_registry_refused_is_never_handed_out_again(fresh, env):
    """Docker Hub hands out anonymous tokens for a repository that is not pushed yet; they
    grant nothing, and still nothing once it is pushed (401 `insufficient_scope`). The proxy
    kept such a token for half its life (150 s) and handed it to every client: a deploy
    right after the push failed as "repository does not exist" where a direct pull worked."""
    issued = []
    granting = []  # the tokens issued once the repository exists

    def token(req):
        issued.append(f"t-{len(issued) + 1}")
        return token_response(issued[-1])

    def manifest_or_refusal(req):
        if (req.header("Authorization") or "")[len("Bearer "):] in granting:
            return manifest(MANIFEST)
        refused = bearer_challenge(env.auth.url + "/token", "registry.test",
                                   scope=f"repository:{NAME}:pull")
        if req.header("Authorization"):
            refused.headers = [(k, v + ',error="insufficient_scope"' if k == "WWW-Authenticate"
                                else v) for k, v in refused.headers]
        return refused

    env.up.route("/v2/", bearer_challenge(env.auth.url + "/token", "registry.test"))
    env.up.route(f"/v2/{NAME}/manifests/v1", manifest_or_refusal)
    env.auth.route("/token", token)
    p = fresh(env.variables())
    accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")]

    def pull():
        c = clients.RegistryHTTP(p.url)
        return c.request("HEAD", f"/v2/{NAME}/manifests/v1", dict(accept))

    assert pull().status == 401
    granting.append(f"t-{len(issued) + 1}")  # pushed: the next token the realm issues grants
    r = pull()
    assert r.status == 200, (r, issued)
    assert issued == ["t-1", "t-2"], issued


def test_post_token_is_forwarded_not_405(proxy, env):
    """containerd POSTs credentials (grant_type=password) to the realm."""
    env.up.route("/v2/", quay_challenge(env.up.url + "/v2/auth", scope=f"repository:{NAME}:pull"))
    env.up.route("/v2/auth", token_response("posted-token"))
    form = (f"grant_type=password&username=alice&password=s3cret&service=quay.io"
            f"&scope=repository%3A{NAME.replace('/', '%2F')}%3Apull&client_id=e2e").encode()
    t = call(proxy.url, "POST", "/token", body=form,
             headers=[("Content-Type", "application/x-www-form-urlencoded")])
    assert t.status == 200, t.describe()
    assert (t.json().get("token") or t.json().get("access_token")) == "posted-token"
    assert env.up.requests_to("/v2/auth"), "POST /token did not reach the Bearer realm"


def test_a_token_request_not_in_utf8_is_refused_never_sent_altered(proxy, env):
    """A form's bytes that are not UTF-8 (a Latin-1 password) would reach the realm replaced
    by U+FFFD and fail there as a wrong password: the client is told instead."""
    env.up.route("/v2/", quay_challenge(env.up.url + "/v2/auth", scope=f"repository:{NAME}:pull"))
    env.up.route("/v2/auth", token_response("posted-token"))
    for form in (b"grant_type=password&username=alice&password=b%F6b",
                 b"grant_type=password&username=alice&password=b\xf6b"):
        t = call(proxy.url, "POST", "/token", body=form,
                 headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert t.status == 400 and "not UTF-8" in t.body.decode(), t.describe()
        assert t.json()["errors"][0]["code"] == "UNSUPPORTED", t.describe()
    t = call(proxy.url, "GET", "/token?scope=repository:x:pull&account=b%F6b")
    assert t.status == 400, t.describe()
    assert not env.up.requests, env.up.requests


@pytest.mark.parametrize("what", ["containerd's POST /token", "manifest GET"])
def test_a_request_that_meets_a_closing_connection_goes_once_more(proxy, env, what):
    """Registries and token services close idle keep-alive connections (load balancers after
    60 s); a request the runtime sends on one just then fails before any answer. On Spin 4.0.2
    `ctr` pulls through a token-auth registry failed 2 in 80 that way (502 "closed the
    connection before answering"): the proxy holds every request it sends, and sends it once
    more. Twice is the upstream's failure."""
    manifest_path = f"/v2/{NAME}/manifests/v1"
    double, path = (env.auth, "/token") if "token" in what else (env.up, manifest_path)

    def answers(drops: int):
        for d in (env.up, env.auth):
            d.reset()
        double.route(path, Response(drop=True), times=drops)
        env.up.route("/v2/", bearer_challenge(env.auth.url + "/token", "registry.test"))
        env.auth.route("/token", token_response("posted-token"))
        env.up.route(manifest_path, manifest(MANIFEST))

    form = (f"grant_type=password&username=alice&password=s3cret&service=registry.test"
            f"&scope=repository%3A{NAME.replace('/', '%2F')}%3Apull&client_id=e2e").encode()

    def send():
        if "token" in what:
            return call(proxy.url, "POST", "/token", body=form,
                        headers=[("Content-Type", "application/x-www-form-urlencoded")])
        return call(proxy.url, "GET", manifest_path,
                    headers=[("Authorization", "Bearer posted-token")])

    answers(drops=1)
    r = send()
    assert r.status == 200, r.describe()
    assert len(double.requests_to(path)) == 2, [q.target for q in double.requests]
    answers(drops=2)
    r = send()
    assert r.status == 502, r.describe()
    assert len(double.requests_to(path)) == 2, [q.target for q in double.requests]


def test_realm_uses_public_url(fresh, env):
    env.up.route("/v2/", quay_challenge(env.up.url + "/v2/auth"))
    p = fresh(env.variables(public_url="https://registry.example.test"))
    r = call(p.url, "GET", "/v2/")
    assert r.status == 401, r.describe()
    assert only_bearer(r).get("realm") == "https://registry.example.test/token"


FOREIGN = ["unconfigured-host", "userinfo-trick", "cdn-is-no-realm"]


@pytest.mark.parametrize("kind", FOREIGN)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_request_never_goes_to_unconfigured_realm(proxy, env, kind, method):
    if kind == "unconfigured-host":
        realm, target = env.evil.url + "/token", env.evil
    elif kind == "userinfo-trick":  # starts with the upstream origin, but the host is 127.0.0.4
        realm, target = f"http://127.0.0.1:{env.up.port}@127.0.0.4:{env.evil.port}/token", env.evil
    else:  # upstream_cdn is an allowed outbound host, but not a token realm
        realm, target = env.cdn.url + "/token", env.cdn
    for d in (env.evil, env.cdn):
        d.route("/token", token_response("stolen"))
    env.up.route("/v2/", oci_error(401, "UNAUTHORIZED", "authentication required", headers=[
        ("WWW-Authenticate", f'Bearer realm="{realm}",service="evil",scope="repository:{NAME}:pull"')]))

    r = call(proxy.url, "GET", "/v2/")
    for k, v in r.headers:
        assert "127.0.0.4" not in v and env.cdn.url not in v, f"foreign realm leaked: {k}: {v}"
    if method == "GET":
        t = call(proxy.url, "GET", f"/token?service=evil&scope=repository:{NAME}:pull",
                 headers=[("Authorization", "Basic " + base64.b64encode(b"alice:s3cret").decode())])
    else:
        t = call(proxy.url, "POST", "/token",
                 body=b"grant_type=password&username=alice&password=s3cret&service=evil",
                 headers=[("Content-Type", "application/x-www-form-urlencoded")])
    assert t.status >= 400, f"token from an unconfigured realm was served: {t.describe()}"
    assert oci_error_of(t)["code"] in ("UNAVAILABLE", "DENIED"), t.describe()
    time.sleep(0.1)
    assert target.requests == [], [(x.method, x.target, x.headers) for x in target.requests]


# ---------------------------------------------------------------------------------------------
# redirects


@pytest.mark.parametrize("mode", ["follow", "pass"])
def test_relative_redirect_is_fetched_from_upstream(env, shared, mode):
    """Artifact Registry: blob GET -> 302 Location: /artifacts-downloads/... on its own host."""
    p = shared(mode)
    env.up.route(f"/v2/{NAME}/blobs/{BLOB_DIGEST}", artifact_registry_redirect())
    env.up.route("/artifacts-downloads/", blob(BLOB), prefix=True)
    r = call(p.url, "GET", f"/v2/{NAME}/blobs/{BLOB_DIGEST}",
             headers=[("Authorization", "Bearer client-token")])
    assert r.status == 200, r.describe()
    assert r.body == BLOB, f"{len(r.body)} bytes, sha256 {hashlib.sha256(r.body).hexdigest()}"
    dl = env.up.requests_to("/artifacts-downloads/namespaces/p/repositories/r/downloads/ABCdef123")
    assert dl and dl[0].query == "token=opaque%2Bsig", [x.target for x in env.up.requests]


def test_follow_cdn_redirect_drops_authorization(proxy, env):
    """Docker Hub: blob GET -> 307 to its CDN with a signed URL; Authorization stays home."""
    cdn_path = "/registry-v2/docker/registry/v2/blobs/sha256/ab/abc/data"
    env.up.route(f"/v2/{NAME}/blobs/{BLOB_DIGEST}",
                 docker_hub_cdn_redirect(env.cdn.url + cdn_path + "?verify=1700000000-Zm9v%3D"))
    env.cdn.route(cdn_path, blob(BLOB))
    r = call(proxy.url, "GET", f"/v2/{NAME}/blobs/{BLOB_DIGEST}",
             headers=[("Authorization", "Bearer client-token-xyz")])
    assert r.status == 200, r.describe()
    assert r.body == BLOB
    got = env.cdn.requests_to(cdn_path)
    assert len(got) == 1, [x.target for x in env.cdn.requests]
    assert got[0].query == "verify=1700000000-Zm9v%3D"
    assert got[0].header("Authorization") is None, f"Authorization sent to the CDN: {got[0].headers}"
    assert "client-token-xyz" not in json.dumps(got[0].headers)


def test_pass_mode_hands_cdn_redirect_to_client(env, shared):
    """blob_redirect=pass: the client is sent to the CDN itself (inferred from the variable)."""
    p = shared("pass")
    loc = env.cdn.url + "/blobs/data?sig=1"
    env.up.route(f"/v2/{NAME}/blobs/{BLOB_DIGEST}", docker_hub_cdn_redirect(loc))
    env.cdn.route("/blobs/data", blob(BLOB))
    r = call(p.url, "GET", f"/v2/{NAME}/blobs/{BLOB_DIGEST}")
    assert r.status in (301, 302, 303, 307, 308), r.describe()
    assert r.header("Location") == loc, r.describe()
    assert env.cdn.requests == []


# ---------------------------------------------------------------------------------------------
# headers


def test_hop_by_hop_and_spin_headers_never_reach_upstream(proxy, env):
    env.up.route(f"/v2/{NAME}/manifests/v1", manifest(MANIFEST))
    sent = [("Keep-Alive", "timeout=5, max=100"), ("TE", "trailers"), ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic cHJveHk6cHc="),
            ("Proxy-Connection", "keep-alive"), ("Connection", "keep-alive, Upgrade, TE"),
            ("spin-client-addr", "203.0.113.9:1"), ("spin-full-url", "http://evil.test/x"),
            ("spin-path-info", "/x"), ("X-Custom-Kept", "yes")]
    r = call(proxy.url, "GET", f"/v2/{NAME}/manifests/v1", headers=sent)
    assert r.status == 200, r.describe()
    assert r.body == MANIFEST
    (got,) = env.up.requests_to(f"/v2/{NAME}/manifests/v1")
    names = got.header_names()
    leaked = [h for h in HOP_BY_HOP + SPIN_HEADERS if h in names]
    assert not leaked, f"reached the upstream: {leaked}\n{got.headers}"
    assert not any(n.startswith("spin-") for n in names), got.headers


def test_headers_named_in_connection_are_dropped(proxy, env):
    """RFC 9110 7.6.1: a header listed in Connection is hop-by-hop too. The runtime strips
    Connection before the guest sees it; the request allowlist drops what it named anyway."""
    env.up.route(f"/v2/{NAME}/manifests/v1", manifest(MANIFEST))
    r = call(proxy.url, "GET", f"/v2/{NAME}/manifests/v1",
             headers=[("Connection", "keep-alive, X-Hop-Only"), ("X-Hop-Only", "1")])
    assert r.status == 200, r.describe()
    (got,) = env.up.requests_to(f"/v2/{NAME}/manifests/v1")
    assert "x-hop-only" not in got.header_names(), got.headers


ACCEPT = ("application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json;q=0.9, "
          "application/vnd.oci.image.manifest.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json, */*;q=0.1")


def test_accept_reaches_upstream_verbatim(proxy, env):
    env.up.route(f"/v2/{NAME}/manifests/v1", manifest(MANIFEST))
    r = call(proxy.url, "GET", f"/v2/{NAME}/manifests/v1", headers=[("Accept", ACCEPT)])
    assert r.status == 200, r.describe()
    (got,) = env.up.requests_to(f"/v2/{NAME}/manifests/v1")
    assert got.header_all("Accept") == [ACCEPT], got.headers


def test_accept_in_several_lines_keeps_every_value(proxy, env):
    """docker sends one Accept line per media type."""
    env.up.route(f"/v2/{NAME}/manifests/v1", manifest(MANIFEST))
    values = [v.strip() for v in ACCEPT.split(",")]
    r = call(proxy.url, "GET", f"/v2/{NAME}/manifests/v1", headers=[("Accept", v) for v in values])
    assert r.status == 200, r.describe()
    (got,) = env.up.requests_to(f"/v2/{NAME}/manifests/v1")
    seen = [v.strip() for line in got.header_all("Accept") for v in line.split(",")]
    assert seen == values, got.headers


@pytest.mark.parametrize("where", ["upstream", "cdn"])
@pytest.mark.parametrize("rng,start,end", [("bytes=10-19", 10, 19), ("bytes=299990-", 299990, 299999),
                                           ("bytes=-5", 299995, 299999)])
def test_range_passes_through(proxy, env, where, rng, start, end):
    path = f"/v2/{NAME}/blobs/{BLOB_DIGEST}"
    if where == "upstream":
        env.up.route(path, blob(BLOB))
        target = env.up
    else:
        env.up.route(path, docker_hub_cdn_redirect(env.cdn.url + "/data/x"))
        env.cdn.route("/data/x", blob(BLOB))
        target = env.cdn
    r = call(proxy.url, "GET", path, headers=[("Range", rng)])
    assert r.status == 206, r.describe()
    assert r.header("Content-Range") == f"bytes {start}-{end}/{len(BLOB)}", r.describe()
    assert r.body == BLOB[start:end + 1]
    assert int(r.header("Content-Length")) == end - start + 1
    assert [x.header("Range") for x in target.requests if x.path != "/v2/"][-1] == rng


@pytest.mark.parametrize("who", ["anonymous", "with credentials"])
def test_head_keeps_digest_and_length(proxy, env, who):
    """A HEAD's answer has the GET's length, digest and type, and a HEAD stays a HEAD upstream
    (Docker Hub counts GETs against its pull limit, HEADs not). Anonymous, what it says of
    the tag is kept: the next HEAD by tag costs nothing (watchtower and diun only poll)."""
    digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    for ref in ("v1", digest):
        env.up.route(f"/v2/{NAME}/manifests/{ref}", manifest(MANIFEST))
    auth = [("Authorization", "Bearer someone")] if who == "with credentials" else []
    r = call(proxy.url, "HEAD", f"/v2/{NAME}/manifests/v1", headers=[("Accept", ACCEPT), *auth])
    assert r.status == 200, r.describe()
    assert r.header("Content-Length") == str(len(MANIFEST)), r.describe()
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Content-Type") == "application/vnd.oci.image.manifest.v1+json"
    sent = [x.method for x in env.up.requests]
    assert sent == ["HEAD"], [(x.method, x.target) for x in env.up.requests]
    g = call(proxy.url, "GET", f"/v2/{NAME}/manifests/{digest}", headers=[("Accept", ACCEPT), *auth])
    assert g.status == 200 and g.body == MANIFEST, g.describe()
    assert len(env.up.requests) == 2, [(x.method, x.target) for x in env.up.requests]
    again = call(proxy.url, "HEAD", f"/v2/{NAME}/manifests/v1", headers=[("Accept", ACCEPT), *auth])
    assert again.status == 200 and again.header("Docker-Content-Digest") == digest, again.describe()
    assert len(env.up.requests) == (3 if auth else 2), [(x.method, x.target) for x in env.up.requests]


def test_absolute_link_pagination_points_at_proxy(proxy, env):
    """ACR sends `Link: <https://<registry>/v2/...?last=..&n=..>; rel="next"` (absolute). The
    client must get a Link it can follow through the proxy (not beyond the contract's list:
    see pitfall 18)."""
    path = f"/v2/{NAME}/tags/list"

    def tags(req):
        q = dict(req.params)
        if q.get("last") == "b":
            return acr_tags_page(env.up.url, NAME, ["c"], None, 2)
        return acr_tags_page(env.up.url, NAME, ["a", "b"], "b", 2)

    env.up.route(path, tags)
    r = call(proxy.url, "GET", path + "?n=2")
    assert r.status == 200, r.describe()
    assert r.json()["tags"] == ["a", "b"]
    assert [x.query for x in env.up.requests_to(path)] == ["n=2"]
    link = r.header("Link")
    assert link, r.describe()
    assert env.up.url not in link, f"Link points at the upstream: {link}"
    m = re.match(r"\s*<([^>]+)>\s*;\s*rel=\"?next\"?", link)
    assert m, link
    nxt = urljoin(proxy.url + path, m.group(1))
    assert nxt.startswith(proxy.url + path), nxt
    assert dict(parse_qsl(urlsplit(nxt).query)) == {"last": "b", "n": "2"}, nxt
    r2 = call(proxy.url, "GET", nxt[len(proxy.url):])
    assert r2.status == 200 and r2.json()["tags"] == ["c"], r2.describe()


@pytest.mark.parametrize("where", ["upstream", "cdn"])
def test_a_body_cut_short_is_never_served_as_complete(proxy, env, where):
    """An upstream, or the CDN a followed redirect leads to, dies mid-blob: the client must
    see a failed transfer, never a complete-looking short blob (nothing is lost silently)."""
    cut = Response(200, [("Content-Type", "application/octet-stream"),
                         ("Content-Length", str(len(BLOB)))], BLOB[: len(BLOB) // 2], cut=True)
    path = f"/v2/{NAME}/blobs/{BLOB_DIGEST}"
    if where == "cdn":
        env.up.route(path, docker_hub_cdn_redirect(env.cdn.url + "/blob"))
        env.cdn.route("/blob", cut)
    else:
        env.up.route(path, cut)
    got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          "--max-time", "20", proxy.url + path], capture_output=True, text=True)
    assert got.returncode != 0, f"curl saw a complete response: {got.stdout}"
    assert got.stdout.split()[-1] != str(len(BLOB)), got.stdout
    if where == "cdn":
        assert env.cdn.requests_to("/blob"), "the CDN was never asked"


@pytest.mark.parametrize("what", ["manifest", "blob"])
def test_a_body_longer_than_its_length_is_never_served_as_complete(proxy, env, what):
    """A broken upstream sends `Content-Length` beside chunked framing, which wins (RFC 9112
    6.3), so the body runs on past the length the proxy passes on. The runtime refuses the
    bytes beyond it only after the declared ones have left: the client must not take those
    first bytes for the whole (a manifest GET without `Accept` and a blob are streamed)."""
    body, path = ((MANIFEST, f"/v2/{NAME}/manifests/longer") if what == "manifest"
                  else (BLOB, f"/v2/{NAME}/blobs/{BLOB_DIGEST}"))
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    env.up.route(path, Response(200, [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                                chunked))
    # No `Accept` (curl's `*/*` has the proxy read a manifest whole, and refuse it).
    got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          "-H", "Accept:", "--max-time", "20", proxy.url + path],
                         capture_output=True, text=True)
    assert got.returncode != 0, f"curl saw a complete response: {got.stdout}"
    assert env.up.requests_to(path), "the upstream was never asked"


def test_a_304_with_its_200_s_length_is_whole(fresh, env):
    """A 304 may carry the `Content-Length` its 200 would have, and has no body: the check
    that a streamed body ends at its declared length does not take it for a short one."""
    p = fresh(env.variables())
    digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    path = f"/v2/{NAME}/manifests/cond"
    env.up.route(path, Response(304, [("ETag", f'"{digest}"'),
                                      ("Content-Length", str(len(MANIFEST)))], b""))
    got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          "-H", "Accept:", "-H", f'If-None-Match: "{digest}"', "--max-time", "20",
                          p.url + path], capture_output=True, text=True)
    assert got.returncode == 0 and got.stdout == "304 0", got
    log = p.wait_log(lambda t: f"{path} status=304" in t)
    (line,) = [ln for ln in log.splitlines() if f"{path} status=304" in ln]
    assert "error=" not in line, line


@pytest.mark.parametrize("status", [101, 600, 999])
def test_an_upstream_status_no_client_takes_is_a_502(proxy, env, status):
    """`http` takes any status from 100 to 999, and hyper hands a 101 on as an answer: none is
    one a client could take, and the body beside it is the upstream's own words."""
    words = b"internal host db7.corp project acme-secret"
    path = f"/v2/{NAME}/blobs/{BLOB_DIGEST}"
    env.up.route(path, Response(status, [("Content-Type", "text/plain")], words))
    r = call(proxy.url, "GET", path)
    assert r.status == 502, r.describe()
    assert oci_error_of(r)["code"] == "UNAVAILABLE", r.describe()
    assert b"acme-secret" not in r.body and "db7" not in r.describe(), r.describe()


@pytest.mark.parametrize("credentials", [False, True])
def test_a_realm_s_page_is_no_token(fresh, env, credentials):
    """A token realm answering 200 with something else than a token (a login page, a captive
    portal): the token service failed, and its page (naming its hosts and projects) is not
    passed on, with or without the client's credentials."""
    p = fresh(env.variables())
    env.up.route("/v2/", bearer_challenge(env.auth.url + "/token", "registry"))
    env.auth.route("/token", Response(200, [("Content-Type", "text/html")],
                                      b"<html>Sign in to sso.acme-secret.example</html>"))
    headers = [("Authorization", "Basic " + base64.b64encode(b"alice:pw").decode())] if credentials else []
    r = call(p.url, "GET", f"/token?scope=repository:{NAME}:pull&service=x", headers=headers)
    assert r.status == 502, r.describe()
    assert oci_error_of(r)["code"] == "UNAVAILABLE", r.describe()
    assert b"acme-secret" not in r.body, r.describe()
    assert env.auth.requests_to("/token"), "the realm was never asked"


def test_listings_carry_only_the_api_s_fields(fresh, env):
    """Through a prefix the proxy rewrites listings: a registry's own fields beside the
    API's (its host, its project) stay with it, and a tags list names the repository asked
    for."""
    p = fresh(env.variables(repository_prefix="org"))
    env.up.route(f"/v2/org/{NAME}/tags/list", Response(
        200, [("Content-Type", "application/json")],
        json.dumps({"name": "org/other", "tags": ["a"], "registry": "db7.acme-secret"}).encode()))
    r = call(p.url, "GET", f"/v2/{NAME}/tags/list")
    assert r.status == 200 and r.json() == {"name": NAME, "tags": ["a"]}, r.describe()
    env.up.route("/v2/_catalog", Response(
        200, [("Content-Type", "application/json")],
        json.dumps({"repositories": [f"org/{NAME}"], "project": "acme-secret"}).encode()))
    r = call(p.url, "GET", "/v2/_catalog")
    assert r.status == 200 and r.json() == {"repositories": [NAME]}, r.describe()


@pytest.mark.parametrize("ref", [
    "blobs/md5:abc", "blobs/sha256:abc", "blobs/" + BLOB_DIGEST[:-1],
    "blobs/" + BLOB_DIGEST.upper().replace("SHA256", "sha256"),
    "manifests/sha256:abc", "manifests/sha512:" + BLOB_DIGEST[7:],
], ids=["md5", "short", "63-digits", "upper-case", "manifest-short", "sha512-of-64-digits"])
def test_a_malformed_digest_is_400_and_never_sent(proxy, env, ref):
    """A digest that is not lower-case hex of its algorithm's length, or of an algorithm no
    registry takes, is refused as distribution refuses it, before an upstream request (and
    without a `Docker-Content-Digest` taken from the path)."""
    r = call(proxy.url, "GET", f"/v2/{NAME}/{ref}")
    assert r.status == 400, r.describe()
    assert oci_error_of(r)["code"] == "DIGEST_INVALID", r.describe()
    assert r.header("Docker-Content-Digest") is None, r.describe()
    assert not [q for q in env.up.requests if NAME in q.path], [q.path for q in env.up.requests]


def test_a_request_too_long_to_forward_is_the_client_s_414(fresh, env):
    """Thousands of token scopes, each given the prefix, make a realm URL longer than a URI
    can be: the client's doing, so a 4xx, not the proxy's internal error."""
    p = fresh(env.variables(repository_prefix="org"))
    env.up.route("/v2/", bearer_challenge(env.auth.url + "/token", "registry"))
    query = "&".join(f"scope=repository:t{i}/app:pull" for i in range(2000))
    r = call(p.url, "GET", "/token?" + query)
    assert r.status == 414, r.describe()
    assert oci_error_of(r)["code"] == "UNSUPPORTED", r.describe()
    assert not env.auth.requests_to("/token")


def test_a_backslash_location_is_no_other_host(shared, env):
    """url reads `/\\host/x` as `//host/x`, as browsers do; RFC 3986 and Go's clients read
    a path on the registry. Such a redirect is refused, never handed on or followed to a
    host configuration does not name."""
    path = f"/v2/{NAME}/blobs/{BLOB_DIGEST}"
    env.up.route(path, Response(307, [("Location", "/\\" + env.evil.url.split("//")[1] + "/x")]))
    for mode in ("pass", "follow"):
        r = call(shared(mode).url, "GET", path)
        assert r.status == 502, (mode, r.describe())
        assert r.header("Location") is None, (mode, r.describe())
    assert not env.evil.requests, env.evil.requests


def test_referrers_through_a_prefix(fresh, env):
    """distribution 2.8 has no referrers API; distribution 3, GHCR and Docker Hub answer
    `GET /v2/<name>/referrers/<digest>[?artifactType=]` with an OCI index, `OCI-Filters-Applied`
    when they filtered. The name maps, the query and the index bytes pass untouched."""
    p = fresh(env.variables(repository_prefix="org"))
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": BLOB_DIGEST, "size": 7,
                                       "artifactType": "application/vnd.example.sbom"}]},
                       indent=1).encode()
    upstream_path = f"/v2/org/{NAME}/referrers/{BLOB_DIGEST}"
    env.up.route(upstream_path, Response(200, [("Content-Type", "application/vnd.oci.image.index.v1+json"),
                                               ("OCI-Filters-Applied", "artifactType")], index))
    query = "artifactType=application%2Fvnd.example.sbom"
    r = call(p.url, "GET", f"/v2/{NAME}/referrers/{BLOB_DIGEST}?{query}")
    assert r.status == 200, r.describe()
    assert r.body == index, r.describe()
    assert r.header("OCI-Filters-Applied") == "artifactType", r.describe()
    (got,) = env.up.requests_to(upstream_path)
    assert got.query == query, got.query
    # The fallback clients use without a referrers API: a tag named after the digest.
    fallback = "sha256-" + BLOB_DIGEST.split(":")[1]
    env.up.route(f"/v2/org/{NAME}/manifests/{fallback}", manifest(MANIFEST))
    r = call(p.url, "GET", f"/v2/{NAME}/manifests/{fallback}")
    assert r.status == 200 and r.body == MANIFEST, r.describe()


# ---------------------------------------------------------------------------------------------
# logging


def test_one_log_line_per_request(fresh, env):
    body = MANIFEST + b" " * (1234 - len(MANIFEST))
    assert len(body) == 1234
    env.up.route(f"/v2/{NAME}/manifests/loga", manifest(body))
    env.up.route(f"/v2/{NAME}/manifests/logb", docker_hub_rate_limit("9"))
    p = fresh(env.variables())
    assert call(p.url, "GET", f"/v2/{NAME}/manifests/loga").status == 200
    assert call(p.url, "HEAD", f"/v2/{NAME}/manifests/logb").status == 429
    assert call(p.url, "DELETE", f"/v2/{NAME}/manifests/logc").status == 405
    # A line is written once its response is sent: wait for all three, in any order.
    log = p.wait_log(lambda t: all(f"/manifests/{x} " in t for x in ("loga", "logb", "logc")))

    def lines(tag):
        return [ln for ln in log.splitlines() if f"/v2/{NAME}/manifests/{tag}" in ln]

    a, b, c = lines("loga"), lines("logb"), lines("logc")
    assert len(a) == 1 and len(b) == 1 and len(c) == 1, f"want one line each:\n{log}"
    a, b, c = a[0], b[0], c[0]
    assert "GET" in a and "HEAD" in b and "DELETE" in c, log
    assert len(re.findall(r"(?<!\d)200(?!\d)", a)) >= 2, f"status and upstream status: {a}"
    assert re.search(r"(?<!\d)1234(?!\d)", a), f"bytes missing: {a}"
    assert len(re.findall(r"(?<!\d)429(?!\d)", b)) >= 2, f"status and upstream status: {b}"
    assert re.search(r"(?<!\d)405(?!\d)", c), c
    dur = re.compile(r"(?<![=\w.])\d+(\.\d+)?\s*(ns|us|µs|ms|s)\b(?!=)"
                     r"|\b(ns|us|µs|ms|s|secs?|dur\w*|elapsed|took|time)[=:]\s*\d", re.I)
    for ln in (a, b, c):
        assert dur.search(ln), f"no duration: {ln}"


def test_concurrent_requests_log_whole_lines(fresh, env):
    """Many requests at once: still exactly one whole line each, never two run together."""
    from concurrent.futures import ThreadPoolExecutor
    env.up.route(f"/v2/{NAME}/manifests/many", manifest(MANIFEST))
    p = fresh(env.variables())
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: call(p.url, "HEAD", f"/v2/{NAME}/manifests/many").status,
                                 range(400)))
    assert statuses == [200] * 400, statuses
    log = p.wait_log(lambda t: t.count("/manifests/many") >= 400)
    lines = [ln for ln in log.splitlines() if "/manifests/many" in ln]
    assert len(lines) == 400, f"{len(lines)} lines for 400 requests"
    merged = [ln for ln in lines if ln.count("/manifests/many") != 1]
    assert not merged, f"lines run together: {merged[:3]}"


def test_a_line_longer_than_one_write_is_logged_whole(fresh, env):
    """A runtime takes at most 4096 bytes per write to stderr: a longer line goes in several,
    and still arrives as one line, ended once."""
    p = fresh(env.variables())
    name = "/".join(f"part{i:02d}-" + "x" * 190 for i in range(30))
    assert len(name) > 5000
    call(p.url, "HEAD", f"/v2/{name}/manifests/long")
    log = p.wait_log(lambda t: "/manifests/long" in t)
    lines = [ln for ln in log.splitlines() if "/manifests/long" in ln]
    assert len(lines) == 1 and name in lines[0], f"{len(lines)} lines: {log[-300:]}"


def test_credentials_never_logged(fresh, env):
    basic = base64.b64encode(b"alice:s3cret").decode()
    bearer = "tok-" + os.urandom(8).hex()
    refresh = "rt-" + os.urandom(8).hex()
    refresh2 = "rt2-" + os.urandom(8).hex()
    issued = "issued-" + os.urandom(8).hex()
    env.up.route("/v2/", quay_challenge(env.up.url + "/v2/auth", scope=f"repository:{NAME}:pull"))
    env.up.route("/v2/auth", token_response(issued))
    env.up.route(f"/v2/{NAME}/manifests/v1", manifest(MANIFEST))
    p = fresh(env.variables())
    call(p.url, "GET", "/v2/", headers=[("Authorization", f"Basic {basic}")])
    call(p.url, "GET", f"/v2/{NAME}/manifests/v1", headers=[("Authorization", f"Bearer {bearer}")])
    t = call(p.url, "GET", f"/token?service=quay.io&scope=repository:{NAME}:pull"
                           f"&refresh_token={refresh}&password=s3cret",
             headers=[("Authorization", f"Basic {basic}")])
    assert t.status == 200, t.describe()
    call(p.url, "POST", "/token", headers=[("Content-Type", "application/x-www-form-urlencoded")],
         body=f"grant_type=refresh_token&refresh_token={refresh2}&service=quay.io"
              f"&username=alice&password=s3cret&client_id=e2e".encode())
    call(p.url, "GET", f"/v2/{NAME}/manifests/v1?refresh_token={refresh}",
         headers=[("Authorization", f"Bearer {bearer}")])
    log = p.wait_log(lambda t: t.count(" status=") >= 5)
    assert "/token" in log, f"token requests not logged at all:\n{log}"
    for secret in (basic, "alice:s3cret", "s3cret", bearer, refresh, refresh2, issued):
        assert secret not in log, f"credential {secret!r} in host log:\n{log}"


@pytest.mark.parametrize("depth, status", [(126, 200), (400, 502)])
def test_listings_nested_deeper_than_any_registry_sends_cost_no_trap(fresh, env, depth, status):
    """A hostile upstream (no registry sends this) nests a tags listing that the proxy must
    parse to map its names: as deep as serde_json parses (128 levels) it is rewritten within
    the component's 128 KiB stack (.cargo/config.toml; it passes with 48 KiB, not 40); deeper
    is refused in plain words. The guest never traps, which would end the request without an
    OCI error."""
    p = fresh(env.variables(repository_prefix="org"))
    arrays = "[" * depth + "]" * depth
    objects = '{"o":' * depth + "1" + "}" * depth
    body = f'{{"name":"org/{NAME}","tags":["a"],"x":{arrays},"y":{objects}}}'.encode()
    env.up.route(f"/v2/org/{NAME}/tags/list", Response(200, [("Content-Type", "application/json")], body))
    r = call(p.url, "GET", f"/v2/{NAME}/tags/list")
    assert r.status == status, r.describe()
    if status == 200:
        assert r.json()["name"] == NAME and r.json()["tags"] == ["a"], r.describe()
    else:
        assert oci_error_of(r), r.describe()
    assert "trapped" not in p.log(), p.log()[-2000:]


@pytest.mark.parametrize("depth", [126, 400])
@pytest.mark.parametrize("body", ["error", "token"])
def test_other_upstream_json_nested_deep_costs_no_trap(fresh, env, body, depth):
    """The other upstream bodies the proxy parses as JSON, nested as deep as serde_json parses
    and deeper: an error body (read for its code) and the token a route's own account fetches.
    Neither traps the guest on its 128 KiB stack; each ends in an answer or an OCI error."""
    nested = '{"o":' * depth + "1" + "}" * depth
    path = f"/v2/{NAME}/manifests/v1"
    if body == "error":
        p = fresh(env.variables())
        errors = f'{{"errors":[{{"code":"MANIFEST_UNKNOWN","message":"m","detail":{nested}}}]}}'
        env.up.route(path, Response(404, [("Content-Type", "application/json")], errors.encode()))
        r = call(p.url, "GET", path)
        assert r.status == 404 and oci_error_of(r), r.describe()
    else:
        own = {"name": "own", "upstream": env.up.url, "auth": env.auth.url,
               "username": "alice", "password": "s3cret", "access": "public"}
        p = fresh(env.variables(routes=json.dumps([own])))
        env.up.route("/v2/", bearer_challenge(env.auth.url + "/token", "registry.test"))
        answer = f'{{"x":{nested},"token":"deep-token","expires_in":300}}'.encode()
        env.auth.route("/token", Response(200, [("Content-Type", "application/json")], answer))
        challenge = bearer_challenge(env.auth.url + "/token", "registry.test")
        env.up.route(path, lambda q: manifest(MANIFEST)
                     if q.header("Authorization") == "Bearer deep-token" else challenge)
        r = call(p.url, "GET", path)
        if depth == 126:
            assert r.status == 200, r.describe()
        else:
            assert r.status >= 400 and oci_error_of(r), r.describe()
            assert "configuration" not in r.body.decode(errors="replace"), r.describe()
    assert "trapped" not in p.log(), p.log()[-2000:]
