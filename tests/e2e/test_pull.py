"""Every client pulls every image through the proxy, for each kind of upstream.

Digests must equal what the registry reported when the images were pushed; skopeo's copies are
checked file by file (every manifest and blob hashes to its name).
"""
import hashlib
import json

import pytest

import clients
import images
from upstreams import ALICE

PREFIX = images.PREFIX

# id -> (registry kind, repository_prefix, blob_redirect)
SCENARIOS = {
    "anon": ("anon", "", "pass"),
    "anon-prefix": ("anon", PREFIX, "pass"),
    "basic": ("basic", "", "pass"),
    "basic-prefix": ("basic", PREFIX, "follow"),
    "token-cdn-pass": ("token", "", "pass"),
    "token-cdn-follow": ("token", "", "follow"),
    "token-cdn-prefix-follow": ("token", PREFIX, "follow"),
}

PULLED = list(images.IMAGE_REPOS.items())  # (image key, client repository name)


def creds_for(kind, name):
    """Basic upstream: always alice. Token upstream: anonymous, except the private repo."""
    if kind == "basic":
        return ALICE
    if kind == "token" and name.startswith("private/"):
        return ALICE
    return None


def amd64_instance(desc):
    for dgst, inst in desc["instances"].items():
        if inst["platform"].get("architecture") in (None, "amd64"):
            return dgst, inst
    raise AssertionError(f"no amd64 instance in {desc['instances']}")


@pytest.fixture(params=list(SCENARIOS), ids=list(SCENARIOS))
def target(request, make_target):
    kind, prefix, redirect = SCENARIOS[request.param]
    return make_target(kind, prefix=prefix, blob_redirect=redirect)


def test_skopeo(target, built):
    for key, name in PULLED:
        creds = creds_for(target.registry.kind, name)
        want = target.digest(name)
        raw = clients.skopeo_inspect_raw(target.ref(name), creds)
        got = "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest()
        assert got == want, f"skopeo inspect --raw {target.ref(name)}: digest {got} != {want}\n{raw.stdout[:1500]}"
        copy = clients.skopeo_copy_all(target.ref(name), creds)
        clients.verify_dir_image(copy.dest, built[key])
        assert built[key]["digest"] == want


def test_podman(target, built, podman):
    for key, name in PULLED:
        creds = creds_for(target.registry.kind, name)
        ref = target.ref(name)
        podman.pull(ref, creds)
        want = target.digest(name)
        info = json.loads(podman("image", "inspect", ref).stdout)[0]
        repo_digests = [d.split("@", 1)[1] for d in info.get("RepoDigests", [])]
        assert want in repo_digests, f"podman pulled {ref}: RepoDigests {info.get('RepoDigests')} lack {want}"
        inst, desc = amd64_instance(built[key])
        assert info["Digest"] in (want, inst), f"podman image Digest {info['Digest']} not {want} / {inst}"
        assert info["Id"] == desc["config"].split(":")[1], (
            f"podman image ID {info['Id']} is not the amd64 config {desc['config']}")


def test_podman_other_platform(make_target, built, podman):
    target = make_target("token", blob_redirect="follow")
    for key in ("multiarch", "v2s2list"):
        ref = target.ref(key)
        podman.pull(ref, platform="linux/arm64")
        info = json.loads(podman("image", "inspect", ref).stdout)[0]
        arm = [d for d, i in built[key]["instances"].items() if i["platform"]["architecture"] == "arm64"]
        assert info["Architecture"] == "arm64", f"{ref}: podman pulled {info['Architecture']}"
        assert info["Id"] == built[key]["instances"][arm[0]]["config"].split(":")[1]


def test_docker(target, built, docker):
    cfg = docker.new_config()
    kind = target.registry.kind
    logged_in = False
    for key, name in PULLED:
        creds = creds_for(kind, name)
        if creds and not logged_in:
            docker.login(cfg, target.hostport, creds)
            logged_in = True
        ref = target.ref(name)
        p = docker.pull(cfg, ref)
        want = target.digest(name)
        assert f"Digest: {want}" in p.stdout, f"docker pull {ref} printed:\n{p.stdout}"
        repo_digests = docker.repo_digests(cfg, ref)
        assert f"{target.hostport}/{target.name(name)}@{want}" in repo_digests, (
            f"docker RepoDigests {repo_digests} lack {want}")
        _, desc = amd64_instance(built[key])
        img_id = docker.cli(cfg, "image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
        assert img_id == desc["config"], f"docker image id {img_id} != amd64 config {desc['config']}"


def test_ctr(target, built, containerd, ctr_ns):
    kind = target.registry.kind
    for key, name in PULLED:
        creds = creds_for(kind, name)
        ref = target.ref(name)
        containerd.pull(ctr_ns, ref, user=creds)
        want = target.digest(name)
        got = containerd.image_digest(ctr_ns, ref)
        assert got == want, f"ctr pulled {ref} as {got}, registry has {want}"
        _, desc = amd64_instance(built[key])
        content = containerd.content(ctr_ns)
        needed = {want, desc["config"], *desc["layers"]}
        assert needed <= content, f"ctr content store lacks {sorted(needed - content)} for {ref}"


@pytest.mark.parametrize("scenario", ["anon-prefix", "token-cdn-pass", "token-cdn-follow"])
def test_ctr_all_platforms(scenario, make_target, built, containerd, ctr_ns):
    kind, prefix, redirect = SCENARIOS[scenario]
    target = make_target(kind, prefix=prefix, blob_redirect=redirect)
    for key in ("multiarch", "v2s2list"):
        ref = target.ref(key)
        containerd.pull(ctr_ns, ref, all_platforms=True)
        assert containerd.image_digest(ctr_ns, ref) == target.digest(key)
        content = containerd.content(ctr_ns)
        everything = {built[key]["digest"], *built[key]["instances"], *built[key]["blobs"]}
        assert everything <= content, f"--all-platforms left out {sorted(everything - content)}"


def test_ctr_platform_selection(make_target, built, containerd, ctr_ns):
    target = make_target("token", blob_redirect="pass")
    key = "multiarch"
    ref = target.ref(key)
    containerd.pull(ctr_ns, ref, platform="linux/arm64")
    content = containerd.content(ctr_ns)
    by_arch = {i["platform"]["architecture"]: (d, i) for d, i in built[key]["instances"].items()}
    arm_d, arm = by_arch["arm64"]
    amd_d, amd = by_arch["amd64"]
    assert {arm_d, arm["config"], *arm["layers"]} <= content, f"arm64 blobs missing: {content}"
    assert not set(amd["layers"]) & content, "amd64 layers were fetched for --platform linux/arm64"
