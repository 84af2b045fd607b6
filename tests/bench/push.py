#!/usr/bin/env python3
"""Push benchmark: a large blob pushed through the proxy in bounded memory.

Starts a real `docker-registry serve` and a proxy in front of it (the test host, or the real
Spin CLI with SPIN_BIN=path/to/spin) with a route that takes pushes, then pushes a 1 MiB and a
1 GiB random blob the way docker and containerd do (POST to start, one PATCH with the whole
layer, PUT ?digest= to end), through the proxy and directly, and prints the proxy's peak RSS
above its idle RSS (VmHWM of the process and its children), the time of each push, and
whether the registry holds the blob under its digest.

Numbers only, no assertion.

    python3 tests/bench/push.py              # 1 MiB and 1 GiB
    python3 tests/bench/push.py --size 200   # 1 MiB and 200 MiB
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import MiB, RssSampler, harness, make_blob, rss_kb, start_registry, runtime


def push(origin: str, name: str, path: Path, digest: str) -> float:
    """POST, one PATCH with the whole blob, PUT ?digest=; the seconds it took."""
    t0 = time.monotonic()
    out = subprocess.run(["curl", "-s", "-S", "-D", "-", "-o", "/dev/null", "-X", "POST",
                          "-H", "Content-Length: 0", f"{origin}/v2/{name}/blobs/uploads/"],
                         capture_output=True, text=True, check=True).stdout
    location = next(ln.split(" ", 1)[1].strip() for ln in out.splitlines()
                    if ln.lower().startswith("location:"))
    if location.startswith("/"):
        location = origin + location
    out = subprocess.run(["curl", "-s", "-S", "-D", "-", "-o", "/dev/null", "-X", "PATCH",
                          "-H", "Content-Type: application/octet-stream",
                          # -T streams the file (--data-binary would read it all first).
                          "-T", str(path), location],
                         capture_output=True, text=True, check=True).stdout
    location = next(ln.split(" ", 1)[1].strip() for ln in out.splitlines()
                    if ln.lower().startswith("location:"))
    if location.startswith("/"):
        location = origin + location
    sep = "&" if "?" in location else "?"
    code = subprocess.run(["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code}", "-X",
                           "PUT", "-H", "Content-Length: 0", f"{location}{sep}digest={digest}"],
                          capture_output=True, text=True, check=True).stdout
    if code != "201":
        raise RuntimeError(f"push end: {code}")
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="the large blob, MiB (1024)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-push-", dir=harness.WORK))
    registry = start_registry(work, "push")
    rows = []
    try:
        table = [{"name": "rw", "upstream": registry.url, "push": True}]
        proxy = harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=[registry.url],
                                    name="bench-push")
        try:
            subprocess.run(["curl", "-s", "-o", "/dev/null", proxy.url + "/v2/"], check=True)
            idle = (rss_kb(proxy.pid, "VmHWM") + sum(rss_kb(p, "VmHWM")
                                                     for p in harness.descendants(proxy.pid))) / 1024
            for size in (MiB, args.size * MiB):
                path = work / f"blob-{size}"
                digest = make_blob(path, size)
                with RssSampler(proxy.pid) as s:
                    t_proxy = push(proxy.url, f"via-proxy/{size}", path, digest)
                t_direct = push(registry.url, f"direct/{size}", path, digest)
                head = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                       "-I", f"{registry.url}/v2/via-proxy/{size}/blobs/{digest}"],
                                      capture_output=True, text=True).stdout
                rows.append((size, s.peak_mb() - idle, t_proxy, t_direct, head))
                path.unlink()
        finally:
            proxy.stop()
    finally:
        registry.stop()
    print(f"runtime: {runtime()}; idle RSS {idle:.1f} MiB")
    print("size | peak - idle RSS MiB | proxy s | direct s | proxy/direct time | registry has it")
    for size, delta, tp, td, head in rows:
        print(f"{size // MiB} MiB | {delta:+.1f} | {tp:.2f} | {td:.2f} | {tp / td:.2f} | {head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
