"""Manifest bytes and headers through the proxy are exactly the registry's, whatever Accept says."""
import time

import pytest

import clients
from images import IMAGE_REPOS, PREFIX
from upstreams import ALICE

ACCEPTS = {
    "all": clients.MANIFEST_ACCEPT,
    # After "all" has filled the store: containerd names the types and adds */*; generic HTTP
    # clients send */* alone, which registries answer each their own way (distribution 2.8: a
    # schema 2 image as schema 1, an OCI one not at all), so never from the store.
    "containerd": "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.docker.distribution.manifest.list.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.oci.image.index.v1+json, */*",
    "wildcard-only": "*/*",
    "docker-v2s2-only": "application/vnd.docker.distribution.manifest.v2+json",
    "oci-manifest-only": "application/vnd.oci.image.manifest.v1+json",
    "lists-only": "application/vnd.docker.distribution.manifest.list.v2+json, "
                  "application/vnd.oci.image.index.v1+json",
    "none": None,
}
COMPARED = ("Content-Type", "Docker-Content-Digest", "Content-Length")


def _get(client, method, path, accept, name):
    headers = {"Accept": accept} if accept else {}
    return client.request(method, path, headers, scope=f"repository:{name}:pull")


@pytest.mark.parametrize("kind,prefix,creds", [("anon", "", None), ("token", PREFIX, ALICE),
                                               ("basic", PREFIX, ALICE)])
def test_manifests_identical_to_registry(kind, prefix, creds, make_target, ups, needs_proxy):
    target = make_target(kind, prefix=prefix)
    proxy = target.http(creds)
    direct = clients.RegistryHTTP(target.registry.url, creds)
    for name in IMAGE_REPOS.values():
        up = target.upstream_name(name)
        for label, accept in ACCEPTS.items():
            for method in ("GET", "HEAD"):
                for ref in ("latest", target.digest(name)):
                    want = _get(direct, method, f"/v2/{up}/manifests/{ref}", accept, up)
                    got = _get(proxy, method, f"/v2/{name}/manifests/{ref}", accept, name)
                    ctx = f"{method} {name}:{ref} Accept={label}\nproxy: {got!r}\nregistry: {want!r}"
                    assert got.status == want.status, ctx
                    if want.status != 200:
                        continue
                    if "prettyjws" in (want.header("Content-Type") or ""):
                        # distribution 2.8 converts to schema 1 on the fly for clients that
                        # accept no v2 type, signing with a fresh key each time: only the
                        # type and the (payload) digest are stable.
                        for h in ("Content-Type", "Docker-Content-Digest"):
                            assert got.header(h) == want.header(h), f"{h} differs. {ctx}"
                        continue
                    for h in COMPARED:
                        assert got.header(h) == want.header(h), f"{h} differs. {ctx}"
                    assert got.body == want.body, f"body differs. {ctx}"
        # Conditional requests, once the store holds what it may: answered as the registry
        # answers them, from the store or not.
        digest = target.digest(name)
        for method in ("GET", "HEAD"):
            for ref in ("latest", digest):
                for etag in (f'"{digest}"', '"sha256:' + "0" * 64 + '"'):
                    headers = {"Accept": clients.MANIFEST_ACCEPT, "If-None-Match": etag}
                    want = direct.request(method, f"/v2/{up}/manifests/{ref}", headers,
                                          scope=f"repository:{up}:pull")
                    got = proxy.request(method, f"/v2/{name}/manifests/{ref}", headers,
                                        scope=f"repository:{name}:pull")
                    ctx = f"{method} {name}:{ref} If-None-Match {etag}\nproxy: {got!r}\nregistry: {want!r}"
                    assert got.status == want.status, ctx
                    assert got.body == want.body, ctx


def test_errors_pass_through(make_target, needs_proxy):
    target = make_target("anon", prefix=PREFIX)
    c = target.http()
    r = c.request("GET", "/v2/multiarch/manifests/no-such-tag",
                  {"Accept": clients.MANIFEST_ACCEPT})
    assert r.status == 404, r
    codes = [e["code"] for e in r.json()["errors"]]
    assert "MANIFEST_UNKNOWN" in codes, r
    r = c.request("GET", "/v2/no/such/repo/tags/list")
    assert r.status == 404 and "NAME_UNKNOWN" in [e["code"] for e in r.json()["errors"]], r
    r = c.request("GET", "/v2/multiarch/blobs/sha256:" + "0" * 64)
    assert r.status == 404 and "BLOB_UNKNOWN" in [e["code"] for e in r.json()["errors"]], r
    r = c.request("HEAD", "/v2/multiarch/manifests/no-such-tag",
                  {"Accept": clients.MANIFEST_ACCEPT})
    assert r.status == 404 and r.body == b"", r
    # An OCI index asked for by a client that names only Docker's manifest type: distribution
    # says it has one, which tells the user what to change; the proxy says so in its words.
    r = c.request("GET", "/v2/multiarch/manifests/latest",
                  {"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status == 404, r
    message = r.json()["errors"][0]["message"]
    assert message.endswith("in a media type this request's Accept header does not name)"), r


def test_listener_rejects_tls_fast(make_target, needs_proxy):
    """skopeo tries HTTPS first on an insecure registry; the proxy's listener must fail that
    handshake at once instead of letting it time out (10 s)."""
    import socket
    target = make_target("anon")
    # A TLS ClientHello record where plain HTTP is served: answered (400) or closed at once,
    # never held until a client's 10 s handshake timeout.
    with socket.create_connection(("127.0.0.1", target.proxy.port), timeout=8) as s:
        s.sendall(bytes.fromhex("16030100310100002d0303") + bytes(32) + bytes.fromhex("000002002f0100"))
        try:
            answered = s.recv(64)
        except ConnectionResetError:  # refused outright: as good
            answered = b""
    assert answered == b"" or answered.startswith(b"HTTP/1.1 400"), answered
    start = time.monotonic()
    clients.skopeo_inspect_raw(target.ref("multiarch"))
    elapsed = time.monotonic() - start
    assert elapsed < 9, f"skopeo inspect through the proxy took {elapsed:.1f}s (TLS probe stalls?)"


def test_a_registry_without_referrers_leads_clients_to_the_tag_fallback(make_target, needs_proxy):
    """distribution 2.8 has no referrers API: its router answers a plain "404 page not found".
    oras-go (oras, notation) then falls back to the `sha256-<hex>` tag, unless the 404's code
    is NAME_UNKNOWN, which it takes for a missing repository and stops: the proxy must not
    invent that code."""
    target = make_target("anon", prefix=PREFIX)
    digest = target.digest("multiarch")
    up = target.upstream_name("multiarch")
    direct = clients.RegistryHTTP(target.registry.url).request("GET", f"/v2/{up}/referrers/{digest}")
    assert direct.status == 404 and b"errors" not in direct.body, direct
    c = target.http()
    r = c.request("GET", f"/v2/multiarch/referrers/{digest}")
    assert r.status == 404 and [e["code"] for e in r.json()["errors"]] == ["UNSUPPORTED"], r
    assert c.request("HEAD", f"/v2/multiarch/referrers/{digest}").status == 404
    # A repository that is missing still says so.
    r = c.request("GET", "/v2/no/such/repo/tags/list")
    assert r.status == 404 and "NAME_UNKNOWN" in [e["code"] for e in r.json()["errors"]], r
