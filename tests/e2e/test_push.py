"""Pushes through the proxy, on routes that say `"push": true`, in front of the real registry
(distribution 2.8: with token auth, where the client's credentials go upstream and it decides,
and with htpasswd): skopeo, docker, podman and oras push; a multi-arch index; a mount from
another repository; a referrer. Every pushed image then pulls, through the proxy and
directly, with the same digests. Refusals are clean, and cost the upstream nothing.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest

import clients
import harness
from clients import call, oci_error_of
from upstreams import ALICE, SEEDER


def token_route(ups, **extra) -> dict:
    return {"upstream": ups.token.url, "auth": ups.token_server.url, "cdn": ups.token.cdn.url,
            **extra}


@pytest.fixture(scope="module")
def pushy(ups, seeded):
    table = [
        {"name": "tok", "host": "127.0.0.1", "path": "tok", "push": True, "delete": True,
         **token_route(ups)},
        {"name": "ro", "host": "127.0.0.1", "path": "ro", **token_route(ups)},
        {"name": "basic", "host": "localhost", "upstream": ups.basic.url, "push": True},
    ]
    allowed = [ups.token.url, ups.token_server.url, ups.token.cdn.url, ups.basic.url]
    p = harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=allowed,
                            name="push-proxy")
    yield p
    p.stop()


def fresh(name: str) -> str:
    return f"pushed/{name}-{uuid.uuid4().hex[:8]}"


def digest_direct(ups, repo: str, tag: str) -> str:
    r = clients.RegistryHTTP(ups.token.url, SEEDER).request(
        "HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": clients.MANIFEST_ACCEPT},
        scope=f"repository:{repo}:pull")
    assert r.status == 200, r
    return r.header("Docker-Content-Digest")


def digest_proxied(proxy, repo: str, tag: str, creds=SEEDER, host=None) -> str:
    ref = f"{host or f'127.0.0.1:{proxy.port}'}/{repo}:{tag}"
    raw = clients.skopeo_inspect_raw(ref, creds=creds).stdout
    return clients.sha256_bytes(raw.encode())


def test_skopeo_copies_a_multi_arch_image_in(pushy, ups, built):
    img = built["multiarch"]
    repo = fresh("skopeo")
    clients.skopeo_push(clients.Path(img["dir"]), f"127.0.0.1:{pushy.port}/tok/{repo}:1", SEEDER)
    assert digest_direct(ups, repo, "1") == img["digest"]
    assert digest_proxied(pushy, f"tok/{repo}", "1") == img["digest"]


def test_docker_pushes_mounting_what_the_registry_has(pushy, ups, seeded, docker):
    host = f"127.0.0.1:{pushy.port}"
    cfg = docker.new_config()
    docker.login(cfg, host, SEEDER)
    source = f"{host}/tok/layers20:latest"
    docker.pull(cfg, source)
    repo = fresh("docker")
    target = f"{host}/tok/{repo}:1"
    docker.cli(cfg, "tag", source, target)
    mark = ups.token.service.log().count("\n")
    docker.cli(cfg, "push", target)
    pushed = digest_direct(ups, repo, "1")
    assert digest_proxied(pushy, f"tok/{repo}", "1") == pushed
    # docker knows the blobs are in tok/layers20 and asks the registry to mount them.
    log = ups.token.service.wait_log(lambda t: "mount=" in "\n".join(t.splitlines()[mark:]))
    tail = "\n".join(log.splitlines()[mark:])
    assert "mount=" in tail and "from=layers20" in tail, tail[-3000:]


def test_podman_pushes_an_image_and_a_multi_arch_index(pushy, ups, seeded, podman):
    host = f"127.0.0.1:{pushy.port}"
    podman.pull(f"{host}/tok/v2s2list:latest", creds=SEEDER)
    repo = fresh("podman")
    podman("tag", f"{host}/tok/v2s2list:latest", f"{host}/tok/{repo}:1")
    podman("push", "--tls-verify=false", "--creds", ":".join(SEEDER), f"{host}/tok/{repo}:1")
    assert digest_proxied(pushy, f"tok/{repo}", "1") == digest_direct(ups, repo, "1")
    index = fresh("index")
    podman("manifest", "create", "local/list")
    podman("manifest", "add", "--all", "--tls-verify=false", "--creds", ":".join(SEEDER),
           "local/list", f"docker://{host}/tok/multiarch:latest")
    podman("manifest", "push", "--all", "--tls-verify=false", "--creds", ":".join(SEEDER),
           "local/list", f"docker://{host}/tok/{index}:1")
    pushed = digest_direct(ups, index, "1")
    assert digest_proxied(pushy, f"tok/{index}", "1") == pushed
    doc = json.loads(clients.skopeo_inspect_raw(f"{host}/tok/{index}:1", creds=SEEDER).stdout)
    assert len(doc["manifests"]) == 2, doc


def test_oras_pushes_an_artifact_and_attaches_a_referrer(pushy, ups, seeded, tmp_path):
    import oras.oci
    import oras.provider
    host = f"127.0.0.1:{pushy.port}"
    repo = fresh("oras")
    reg = oras.provider.Registry(hostname=host, insecure=True)
    reg.auth.set_basic_auth(*SEEDER)
    # oras-py keeps the first token it gets (the pull of its HEAD) and sends it again after a
    # push's 401, directly against a registry as through the proxy: give it one for push.
    r = call(pushy.url, "GET", f"/token?scope=repository:tok/{repo}:pull,push",
             headers=[("Authorization", clients.basic_header(SEEDER))])
    reg.auth.token = r.json()["token"]
    artifact = tmp_path / "artifact.txt"
    artifact.write_text("an artifact pushed through the proxy\n" * 1000)
    r = reg.push(target=f"{host}/tok/{repo}:1", files=[str(artifact)], do_chunked=True,
                 chunk_size=8192, disable_path_validation=True)
    assert r.status_code in (200, 201), r.text
    subject = digest_direct(ups, repo, "1")
    note = tmp_path / "signature.txt"
    note.write_text("signed\n")
    raw = clients.skopeo_inspect_raw(f"{host}/tok/{repo}:1", creds=SEEDER).stdout
    manifest = oras.oci.Subject(mediaType=json.loads(raw)["mediaType"], digest=subject,
                                size=len(raw.encode()))
    r = reg.push(target=f"{host}/tok/{repo}:sig", files=[str(note)], subject=manifest,
                 disable_path_validation=True)
    assert r.status_code in (200, 201), r.text
    referrer = digest_direct(ups, repo, "sig")
    assert digest_proxied(pushy, f"tok/{repo}", "sig") == referrer
    raw = clients.skopeo_inspect_raw(f"{host}/tok/{repo}:sig", creds=SEEDER).stdout
    assert json.loads(raw)["subject"]["digest"] == subject


def test_an_htpasswd_registry_takes_a_push_with_basic_credentials(pushy, ups, built):
    img = built["small"]
    repo = fresh("basic")
    host = f"localhost:{pushy.port}"
    clients.skopeo_push(clients.Path(img["dir"]), f"{host}/{repo}:1", ALICE)
    assert digest_proxied(pushy, repo, "1", creds=ALICE, host=host) == img["digest"]


def test_a_manifest_deleted_through_the_proxy_is_gone_from_it(ups, built):
    """A manifest the proxy keeps (pulled by digest, anonymously) and then deletes through
    a route that takes deletes: no route to that registry serves it from the store again."""
    table = [{"name": "open", "host": "127.0.0.1", "path": "open", "upstream": ups.anon.url,
              "push": True, "delete": True},
             {"name": "openro", "host": "127.0.0.1", "path": "openro", "upstream": ups.anon.url}]
    pushy = harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=[ups.anon.url],
                                name="delete-proxy")
    try:
        deleted_is_gone(pushy, built["small"], ups.anon.url)
    finally:
        pushy.stop()


def deleted_is_gone(pushy, img, upstream):
    repo = fresh("deleted")
    clients.skopeo_push(clients.Path(img["dir"]), f"127.0.0.1:{pushy.port}/open/{repo}:1")
    # A tag's DELETE (distribution-spec 1.1) is the registry's to answer (2.8 has none).
    none = [("Content-Length", "0")]
    want = call(upstream, "DELETE", f"/v2/{repo}/manifests/1", headers=none)
    r = call(pushy.url, "DELETE", f"/v2/open/{repo}/manifests/1", headers=none)
    assert r.status == want.status != 405, (r.describe(), want.describe())
    accept = [("Accept", clients.MANIFEST_ACCEPT)]
    for route in ("open", "openro", "open"):
        r = call(pushy.url, "GET", f"/v2/{route}/{repo}/manifests/{img['digest']}", headers=accept)
        assert r.status == 200 and clients.sha256_bytes(r.body) == img["digest"], r.describe()
        r = call(pushy.url, "HEAD", f"/v2/{route}/{repo}/manifests/1", headers=accept)
        assert r.status == 200 and r.header("Docker-Content-Digest") == img["digest"], r.describe()
    if not harness.SPIN_BIN:
        before = harness.outbound(pushy)
        r = call(pushy.url, "GET", f"/v2/openro/{repo}/manifests/{img['digest']}", headers=accept)
        assert r.status == 200 and harness.outbound(pushy) == before, "not kept: the test tests nothing"
    r = call(pushy.url, "DELETE", f"/v2/open/{repo}/manifests/{img['digest']}",
             headers=[("Content-Length", "0")])
    assert r.status == 202, r.describe()
    for route in ("open", "openro"):
        r = call(pushy.url, "GET", f"/v2/{route}/{repo}/manifests/{img['digest']}", headers=accept)
        assert r.status == 404, (route, r.describe())
        assert oci_error_of(r)["code"] == "MANIFEST_UNKNOWN", r.describe()
        # The registry untagged it too: no tag the proxy kept before names it.
        r = call(pushy.url, "HEAD", f"/v2/{route}/{repo}/manifests/1", headers=accept)
        assert r.status == 404, (route, r.describe())


def test_a_blob_that_takes_longer_to_send_than_the_timeout_goes_through(ups):
    """`upstream_timeout` times the registry's answer, not the client's sending: a layer
    pushed in one PATCH at the client's pace takes as long as it takes (docker sends each
    layer so: at 10 MB/s a 250 MB one outlasted the default 25 s, and failed 502)."""
    table = [{"name": "tok", "host": "127.0.0.1", "push": True, "timeout": 2, **token_route(ups)}]
    allowed = [ups.token.url, ups.token_server.url, ups.token.cdn.url]
    proxy = harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=allowed,
                                name="slow-push-proxy")
    try:
        repo = fresh("slow")
        client = clients.RegistryHTTP(proxy.url, SEEDER)
        r = client.request("POST", f"/v2/{repo}/blobs/uploads/", {"Content-Length": "0"},
                           scope=f"repository:{repo}:pull,push")
        assert r.status == 202, r
        location = urlsplit(r.header("Location"))
        chunk = os.urandom(1 << 20)
        sends = 4
        blob = chunk * sends
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        try:
            conn.putrequest("PATCH", f"{location.path}?{location.query}", skip_accept_encoding=True)
            conn.putheader("Authorization", client.auth)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(len(blob)))
            conn.endheaders()
            for _ in range(sends):
                conn.send(chunk)
                time.sleep(1.2)  # a pause shorter than the timeout, a PATCH much longer
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202, (resp.status, resp.getheaders())
            location = urlsplit(resp.getheader("Location"))
        finally:
            conn.close()
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        sep = "&" if location.query else ""
        r = client.request("PUT", f"{location.path}?{location.query}{sep}digest={digest}",
                           {"Content-Length": "0"})
        assert r.status == 201, r
        r = client.request("GET", f"/v2/{repo}/blobs/{digest}")
        assert r.status == 307, r  # to the registry's storage, which has the bytes
        cdn = urlsplit(r.header("Location"))
        r = call(f"{cdn.scheme}://{cdn.netloc}", "GET", f"{cdn.path}?{cdn.query}")
        assert r.status == 200 and r.body == blob, r.describe()
        # A client that stops sending is let go after the timeout: 408, not an instance held.
        r = client.request("POST", f"/v2/{repo}/blobs/uploads/", {"Content-Length": "0"})
        assert r.status == 202, r
        location = urlsplit(r.header("Location"))
        head = (f"PATCH {location.path}?{location.query} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}"
                f"\r\nAuthorization: {client.auth}\r\nContent-Length: {len(blob)}\r\n\r\n")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as s:
            s.sendall(head.encode() + chunk)
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        proxy.stop()


def test_refusals_are_clean_and_reach_no_upstream(pushy, ups, built):
    """A route that takes no pushes refuses before anything is sent; an upload session of
    another repository is the registry's to refuse (its state names the repository)."""
    out = clients.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds",
                       ":".join(SEEDER), f"dir:{built['small']['dir']}",
                       f"docker://127.0.0.1:{pushy.port}/ro/{fresh('refused')}:1"], check=False)
    assert out.returncode != 0 and "pushes are not enabled" in out.stderr, out.stderr
    before = harness.outbound(pushy)
    auth = ("Authorization", clients.basic_header(SEEDER))
    for method, path in [("POST", "/v2/ro/x/blobs/uploads/"), ("PUT", "/v2/ro/x/manifests/1"),
                         ("PATCH", "/v2/ro/x/blobs/uploads/abc"),
                         ("DELETE", "/v2/ro/x/manifests/1")]:
        r = call(pushy.url, method, path, headers=[("Content-Length", "0"), auth])
        assert r.status == 405, r.describe()
        assert oci_error_of(r)["code"] == "UNSUPPORTED"
    assert harness.outbound(pushy) == before
    # A session started for one repository, used for another.
    token = clients.RegistryHTTP(pushy.url, SEEDER)
    a, b = fresh("a"), fresh("b")
    r = token.request("POST", f"/v2/tok/{a}/blobs/uploads/", {"Content-Length": "0"},
                      scope=f"repository:tok/{a}:pull,push")
    assert r.status == 202, r
    location = r.header("Location")
    assert location.startswith(f"{pushy.url}/v2/tok/{a}/blobs/uploads/"), location
    other = location.replace(f"/tok/{a}/", f"/tok/{b}/")
    token.auth = None
    r = token.request("PATCH", other, {"Content-Type": "application/octet-stream"}, b"bytes",
                      scope=f"repository:tok/{b}:pull,push", absolute=True)
    assert 400 <= r.status < 500, r
