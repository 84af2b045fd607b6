"""The public registries' quirks the route presets must survive, with real image bytes and
real clients: each registry is imitated by the upstream double (ImitatedRegistry cites where
each behaviour comes from), behind a route using the registry's preset with its hosts pointed
at the doubles."""
from __future__ import annotations

import gzip
import json

import pytest

import clients
import harness
from upstream_double import ImageStore, ImitatedRegistry

KINDS = ["ghcr", "quay", "k8s", "ecr-public", "mcr", "open-v2", "harbor", "gzip"]
PRESETS = {"ghcr": "ghcr", "quay": "quay", "k8s": "k8s", "ecr-public": "ecr-public", "mcr": "mcr"}
REPO = "org/app"
TAGS = [f"v{i}" for i in range(5)]


def route_for(kind: str, env, blob_redirect: str) -> dict:
    """The preset's route, its hosts on the doubles: the registry on 127.0.0.1, the token
    realm (or registry.k8s.io's regional Artifact Registry host) on 127.0.0.2, storage on
    127.0.0.3."""
    realm_on_registry = kind in ("ghcr", "quay", "harbor")
    route = {
        "name": kind,
        "upstream": env.up.url,
        "auth": [env.up.url] if realm_on_registry else [env.auth.url],
        "cdn": [env.cdn.url],
        "blob_redirect": blob_redirect,
    }
    if kind == "k8s":
        # No credentials go to Artifact Registry: it is a host redirects lead to.
        route.update(auth=[], cdn=[env.auth.url, env.cdn.url])
    if kind in PRESETS:
        route["preset"] = PRESETS[kind]
    return route


@pytest.fixture
def imitate(env, built):
    started = []

    def make(kind, blob_redirect="pass"):
        store = ImageStore()
        for tag in TAGS:
            store.add(REPO, tag, built["multiarch"]["dir"])
        registry = ImitatedRegistry(kind, env.up, env.auth, env.cdn, store)
        hosts = [env.up.url, env.auth.url, env.cdn.url]
        proxy = harness.start_proxy(
            {"routes": json.dumps([route_for(kind, env, blob_redirect)])},
            allowed_hosts=hosts, name=f"proxy-{kind}")
        started.append(proxy)
        return registry, proxy
    yield make
    for p in started:
        p.stop()


@pytest.mark.parametrize("blob_redirect", ["pass", "follow"])
@pytest.mark.parametrize("kind", KINDS)
def test_preset_pulls_with_skopeo_and_ctr(kind, blob_redirect, imitate, built, env, containerd,
                                          ctr_ns):
    registry, proxy = imitate(kind, blob_redirect)
    ref = f"127.0.0.1:{proxy.port}/{REPO}:{TAGS[0]}"
    if kind == "gzip":
        # Clients check a manifest's length against the HEAD's, which here is the encoded one:
        # none of them pulls from such a registry directly either. The proxy's part is to
        # change nothing: same bytes, same headers.
        path = f"/v2/{REPO}/manifests/{TAGS[0]}"
        accept = [("Accept", clients.MANIFEST_ACCEPT)]
        direct = clients.call(env.up.url, "GET", path, headers=accept)
        got = clients.call(proxy.url, "GET", path, headers=accept)
        assert got.status == direct.status == 200, got
        assert got.body == direct.body and got.header("Content-Encoding") == "gzip", got
        assert got.header("Docker-Content-Digest") == built["multiarch"]["digest"], got
        assert clients.sha256_bytes(gzip.decompress(got.body)) == built["multiarch"]["digest"]
        return
    copy = clients.skopeo_copy_all(ref)
    clients.verify_dir_image(copy.dest, built["multiarch"])
    containerd.pull(ctr_ns, ref)
    assert containerd.image_digest(ctr_ns, ref) == built["multiarch"]["digest"]
    assert clients.oras_pull(ref) == built["multiarch"]["digest"]
    assert not env.evil.requests
    storage_gets = [r for r in env.cdn.requests if r.path.startswith("/storage/")]
    if kind in ("ghcr", "quay", "ecr-public", "mcr", "k8s"):
        assert storage_gets, f"{kind}: no blob came from its storage"
        assert all(r.header("Authorization") is None for r in storage_gets), "credentials to storage"
    if kind == "k8s":
        # Every API request went on to Artifact Registry, which got its anonymous token from
        # the proxy, never a client's.
        assert registry.token_requests >= 1


def test_quay_tag_pages_through_the_proxy(imitate):
    _, proxy = imitate("quay")
    out = clients.skopeo_list_tags(f"127.0.0.1:{proxy.port}/{REPO}")
    assert sorted(out["Tags"]) == TAGS, out
    c = clients.RegistryHTTP(proxy.url)
    pages = clients.walk_links(c, f"/v2/{REPO}/tags/list?n=2", scope=f"repository:{REPO}:pull")
    assert [t for p in pages for t in p.json()["tags"]] == TAGS
    assert all("next_page=" in (p.header("Link") or "next_page=") for p in pages[:-1])
