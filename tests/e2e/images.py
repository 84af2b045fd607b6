"""Test images, built offline with buildah, umoci and skopeo, cached across sessions.

Every image is kept as a skopeo `dir:` directory (manifest.json, `<hex>.manifest.json` for the
instances of a list, one file per blob named by its hex digest) under
  $E2E_WORK/images/<VERSION>/<key>/
and pushed into each registry with `skopeo copy --all --preserve-digests`, so the registry holds
exactly these bytes. Bump VERSION when the recipe changes.

  multiarch  OCI image index, linux/amd64 + linux/arm64 (buildah, --format oci)
  v2s2list   Docker schema 2 manifest list, amd64 + arm64 (buildah manifest push --all --format v2s2)
  layers20   OCI image with 20 layers (umoci insert x20)
  big        Docker schema 2 image, one layer of 100 MiB of random bytes (umoci + skopeo --format v2s2)
  private    small OCI image for the private repository
  small      small OCI image for the tag pagination repo and the catalog
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import WORK

VERSION = "v1"
CACHE = WORK / "images" / VERSION
BIG_SIZE = 100 * 1024 * 1024 + 12345

KEYS = ("multiarch", "v2s2list", "layers20", "big", "small", "private")

MEDIA_LISTS = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def _run(argv, **kw):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}\n"
                           f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p.stdout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class Buildah:
    def __init__(self, tmp: Path):
        self.base = ["buildah", "--root", tmp / "root", "--runroot", tmp / "runroot",
                     "--storage-driver", "vfs"]
        self.tmp = tmp

    def __call__(self, *args):
        return _run(self.base + list(args)).strip()

    def image(self, arch: str, files: dict) -> str:
        """A from-scratch image for linux/arch holding `files` (path -> bytes); returns its ID."""
        ctx = Path(tempfile.mkdtemp(dir=self.tmp))
        c = self("from", "--arch", arch, "--os", "linux", "scratch")
        for i, (dst, data) in enumerate(files.items()):
            src = ctx / f"f{i}"
            src.write_bytes(data)
            self("copy", c, src, dst)
        self("config", "--arch", arch, "--os", "linux", "--cmd", "/hello", "--label",
             f"e2e.arch={arch}", c)
        iid = ctx / "iid"
        self("commit", "--format", "oci", "--iidfile", iid, c)
        self("rm", c)
        return iid.read_text().strip()


def _build_lists(tmp: Path, out: Path):
    b = Buildah(tmp)
    for key, fmt in (("multiarch", "oci"), ("v2s2list", "v2s2")):
        lst = f"list-{key}"
        b("manifest", "create", lst)
        for arch in ("amd64", "arm64"):
            iid = b.image(arch, {"/hello": f"{key} for {arch}\n".encode(),
                                 "/etc/e2e-release": f"{key} {arch} {VERSION}\n".encode()})
            b("manifest", "add", "--arch", arch, "--os", "linux", lst, iid)
        raw = tmp / f"{key}-raw"
        b("manifest", "push", "--all", "--format", fmt, lst, f"dir:{raw}")
        # buildah writes uncompressed layers to dir:; gzip them like a registry image.
        _run(["skopeo", "copy", "--all", "--dest-compress", "--dest-compress-format", "gzip",
              f"dir:{raw}", f"dir:{out / key}"])


def _umoci_image(tmp: Path, name: str, files: list, arch="amd64") -> Path:
    layout = tmp / f"layout-{name}"
    _run(["umoci", "init", "--layout", layout])
    ref = f"{layout}:{name}"
    _run(["umoci", "new", "--image", ref])
    for src, dst in files:
        _run(["umoci", "insert", "--image", ref, src, dst])
    _run(["umoci", "config", "--image", ref, "--architecture", arch, "--os", "linux",
          "--config.cmd", "/hello", "--config.label", f"e2e.image={name}"])
    return layout


def _build_umoci(tmp: Path, out: Path):
    files = []
    for i in range(20):
        p = tmp / f"layer{i:02d}.txt"
        p.write_text(f"layer {i} of layers20 {VERSION}\n" * (i + 1))
        files.append((p, f"/layers/{i:02d}.txt"))
    layout = _umoci_image(tmp, "layers20", files)
    _run(["skopeo", "copy", f"oci:{layout}:layers20", f"dir:{out / 'layers20'}"])

    big = tmp / "random.bin"
    with open(big, "wb") as f:
        left = BIG_SIZE
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    hello = tmp / "hello-big"
    hello.write_text(f"big {VERSION}\n")
    layout = _umoci_image(tmp, "big", [(big, "/random.bin")])
    big.unlink()
    _run(["skopeo", "copy", "--format", "v2s2", f"oci:{layout}:big", f"dir:{out / 'big'}"])

    small = tmp / "small.txt"
    small.write_text(f"small image {VERSION}\n")
    layout = _umoci_image(tmp, "small", [(small, "/hello")])
    _run(["skopeo", "copy", f"oci:{layout}:small", f"dir:{out / 'small'}"])

    secret = tmp / "secret.txt"
    secret.write_text(f"private image {VERSION}\n")
    layout = _umoci_image(tmp, "private", [(secret, "/secret.txt")])
    _run(["skopeo", "copy", f"oci:{layout}:private", f"dir:{out / 'private'}"])


def describe(path: Path) -> dict:
    """Digests of a dir: image: the top manifest, instances (for lists) and every blob."""
    top = path / "manifest.json"
    raw = top.read_bytes()
    m = json.loads(raw)
    desc = {"dir": str(path), "digest": sha256_file(top), "size": len(raw),
            "media_type": m.get("mediaType"), "instances": {}, "blobs": set()}
    if m.get("mediaType") in MEDIA_LISTS or "manifests" in m:
        manifests = [(d["digest"], d.get("platform", {}), path / (d["digest"].split(":")[1]
                                                                   + ".manifest.json"))
                     for d in m["manifests"]]
    else:
        manifests = [(desc["digest"], {}, top)]
    for dgst, platform, mpath in manifests:
        im = json.loads(mpath.read_bytes())
        blobs = [im["config"]["digest"]] + [l["digest"] for l in im["layers"]]
        desc["instances"][dgst] = {"platform": platform, "media_type": im.get("mediaType"),
                                   "config": im["config"]["digest"],
                                   "layers": [l["digest"] for l in im["layers"]]}
        desc["blobs"].update(blobs)
    desc["blobs"] = sorted(desc["blobs"])
    return desc


def build_all() -> dict:
    """Build (or reuse) every image; returns key -> describe()."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    lock = open(CACHE.parent / f"{VERSION}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if not (CACHE / "complete").exists():
            if CACHE.exists():
                shutil.rmtree(CACHE)
            staging = Path(tempfile.mkdtemp(prefix=f"{VERSION}-staging-", dir=CACHE.parent))
            tmp = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE.parent))
            try:
                _build_lists(tmp, staging)
                _build_umoci(tmp, staging)
                (staging / "complete").write_text("ok\n")
                staging.rename(CACHE)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(staging, ignore_errors=True)
        return {k: describe(CACHE / k) for k in KEYS}
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


# What goes into every registry: repository -> (image key, [tags]).
PREFIX = "team/app"
TAG_COUNT = 25
TAGS = [f"t{i:02d}" for i in range(TAG_COUNT)]
IMAGE_REPOS = {  # client-facing names of the pull-test repositories
    "multiarch": "multiarch",
    "v2s2list": "v2s2list",
    "layers20": "layers20",
    "big": "big",
    "private": "private/secret",
}
PAGED_REPO = "tagged"


def push_plan() -> list:
    """(upstream repository, image key, tags) for every registry."""
    plan = []
    for prefix in ("", PREFIX + "/"):
        for key, repo in IMAGE_REPOS.items():
            plan.append((prefix + repo, key, ["latest"]))
        plan.append((prefix + PAGED_REPO, "small", TAGS))
    plan.append(("other/outside", "small", ["latest"]))
    plan.append(("library/e2e-small", "small", ["latest"]))  # for the Docker Hub stand-in
    plan.append(("team/application/lookalike", "small", ["latest"]))
    plan.append(("team/apple", "small", ["latest"]))
    return plan


def seed(registry, built: dict) -> dict:
    """Push every image of push_plan() into `registry` (an upstreams.Registry) and return
    {(repository, tag): digest as the registry reports it (Docker-Content-Digest)}."""
    from clients import MANIFEST_ACCEPT, RegistryHTTP, skopeo_push

    recorded = {}
    client = RegistryHTTP(registry.url, registry.push_creds)
    for repo, key, tags in push_plan():
        img = built[key]
        skopeo_push(Path(img["dir"]), f"{registry.hostport}/{repo}:{tags[0]}", registry.push_creds)
        raw = (Path(img["dir"]) / "manifest.json").read_bytes()
        ctype = img["media_type"] or json.loads(raw).get("mediaType") or (
            "application/vnd.oci.image.index.v1+json" if "manifests" in json.loads(raw)
            else "application/vnd.oci.image.manifest.v1+json")
        scope = f"repository:{repo}:pull,push"
        client.auth = None
        for tag in tags[1:]:
            r = client.request("PUT", f"/v2/{repo}/manifests/{tag}",
                               {"Content-Type": ctype}, raw, scope=scope)
            assert r.status == 201, f"tagging {repo}:{tag} failed: {r!r}"
        client.auth = None
        for tag in tags:
            r = client.request("HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_ACCEPT},
                               scope=f"repository:{repo}:pull")
            assert r.status == 200, f"HEAD {repo}:{tag} on {registry.kind}: {r!r}"
            dgst = r.header("Docker-Content-Digest")
            assert dgst == img["digest"], (
                f"{registry.kind} reports {dgst} for {repo}:{tag}, pushed {img['digest']}")
            recorded[(repo, tag)] = dgst
    return recorded
