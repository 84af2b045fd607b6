"""What the benchmarks share: a real registry on a port the kernel chooses, blobs and manifests
pushed through its API, and the test host's memory as /proc reports it."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402
from harness import descendants  # noqa: E402 (speed.py takes it from here too)

MiB = 1 << 20

# The runtime runs as users run it: without RUST_BACKTRACE, which this kind of machine's shell
# sets. With it, Spin 4.0.2 captures a backtrace of an error it makes on every request (a
# uprobe on libgcc's `_Unwind_Backtrace` counts exactly one per request, whatever the guest
# does): 0.03-0.04 ms of CPU per request (interleaved on the answering and forwarding floors),
# which no user pays.
UNSET = [v for v in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE") if os.environ.pop(v, None)]


def runtime() -> str:
    """The runtime the component runs on, and the environment it was given."""
    unset = f" ({', '.join(UNSET)} unset, as users run it)" if UNSET else ""
    return harness.runtime() + unset


PROXY_WASM = ROOT / "target" / "wasm32-wasip2" / "release" / "spin_registry_proxy.wasm"


def require_built(*paths) -> None:
    """Exits naming the first of the runtime (the test host, or SPIN_BIN), the component and
    `paths` that is missing."""
    for path in (harness.SPIN_BIN or harness.HOST_BIN, PROXY_WASM, *paths):
        if not Path(path).exists():
            sys.exit(f"missing {path}: build it first (tests/run does)")


def workdir_with_registry(name: str) -> tuple[Path, harness.Service]:
    """A fresh work directory and a registry serving from it (the directory is gone again if
    the registry does not start)."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        return work, start_registry(work, name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def stop_all(services: list, work: Path) -> None:
    """Stops `services`, the last started first, and removes the work directory."""
    for s in reversed(services):
        s.stop()
    shutil.rmtree(work, ignore_errors=True)


def start_registry(workdir: Path, name: str) -> harness.Service:
    exe = shutil.which("docker-registry") or shutil.which("registry")
    if not exe:
        sys.exit("docker-registry not found (apt-get install docker-registry)")
    storage = workdir / "storage"
    storage.mkdir()
    cfg = workdir / "registry.yml"
    cfg.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: {name}-secret
""")
    # At level error it prints no `listening on` line (level info would log every request):
    # its port comes from the OS.
    return harness.Service(f"{name}-registry", [exe, "serve", cfg], port=0, wait=60)


def make_blob(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


def push_blob(registry: str, name: str, path: Path, digest: str) -> None:
    u = urlsplit(registry)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600, blocksize=MiB)
    conn.request("POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    r = conn.getresponse()
    r.read()
    if r.status != 202:
        sys.exit(f"upload start: {r.status} {r.getheaders()}")
    loc = urlsplit(r.getheader("Location"))
    target = loc.path + "?" + (loc.query + "&" if loc.query else "") + "digest=" + digest
    size = path.stat().st_size
    with open(path, "rb") as f:
        conn.request("PUT", target, body=f, headers={"Content-Length": str(size),
                                                     "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        body = r.read()
    if r.status != 201:
        sys.exit(f"upload PUT: {r.status} {body[:300]!r}")
    conn.request("HEAD", f"/v2/{name}/blobs/{digest}")
    r = conn.getresponse()
    r.read()
    if r.status != 200 or int(r.getheader("Content-Length")) != size:
        sys.exit(f"blob HEAD after push: {r.status} {r.getheaders()}")
    conn.close()


def curl_pulls(url: str, size: int, streams: int, extra=()) -> float:
    """`streams` concurrent curl GETs to /dev/null, each checked for a 200 of `size` bytes;
    returns the elapsed seconds."""
    import subprocess
    import time
    argv = ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
            *extra, url]
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(streams)]
    outs = [p.communicate() for p in procs]
    elapsed = time.monotonic() - t0
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0 or out.decode().split() != ["200", str(size)]:
            raise RuntimeError(f"pull {url}: curl rc={p.returncode} out={out!r} err={err!r}")
    return elapsed


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status in KiB (VmRSS now, VmHWM the peak); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """VmRSS of a process and its descendants: `spin up` serves from a child process."""
    return sum(rss_kb(p) for p in [pid, *descendants(pid)])


class RssSampler:
    """Peak RSS of a process tree: VmHWM of the process plus the children's peak, sampled every
    `every` seconds; `samples` keeps the tree's VmRSS (MiB) at each sample."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every = pid, every
        self.children_peak_kb = 0
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            kids = descendants(self.pid)
            self.samples.append(sum(rss_kb(p) for p in [self.pid, *kids]) / 1024)
            if kids:
                now = sum(rss_kb(k, "VmHWM") for k in kids)
                self.children_peak_kb = max(self.children_peak_kb, now)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def peak_mb(self) -> float:
        return (rss_kb(self.pid, "VmHWM") + self.children_peak_kb) / 1024


def push_manifest(registry: str, name: str, tag: str, body: bytes, media_type: str) -> str:
    """PUTs a manifest by tag; returns its digest."""
    u = urlsplit(registry)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("PUT", f"/v2/{name}/manifests/{tag}", body=body,
                 headers={"Content-Type": media_type})
    r = conn.getresponse()
    r.read()
    conn.close()
    if r.status != 201:
        sys.exit(f"manifest PUT: {r.status} {r.getheaders()}")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_bytes(registry: str, name: str, workdir: Path, data: bytes) -> str:
    """Pushes `data` as a blob; returns its digest."""
    path = workdir / "blob.tmp"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    push_blob(registry, name, path, digest)
    path.unlink()
    return digest


def image(registry: str, name: str, tag: str, workdir: Path, layer: bytes) -> dict:
    """A one-layer OCI image pushed by tag: its manifest digest and its blobs."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = push_bytes(registry, name, workdir, config)
    layer_digest = push_bytes(registry, name, workdir, layer)
    mt = "application/vnd.oci.image.manifest.v1+json"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }).encode()
    return {"manifest": push_manifest(registry, name, tag, manifest, mt), "media_type": mt,
            "config": config_digest, "layer": layer_digest}
