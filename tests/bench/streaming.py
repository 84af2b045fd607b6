#!/usr/bin/env python3
"""Streaming benchmark: does a large blob pass through the proxy without being buffered?

Starts a real `docker-registry serve` (distribution, anonymous, filesystem storage in a temp
dir) on a loopback port the kernel chooses, pushes a small and a large random blob through its
HTTP API (monolithic POST + PUT), then for each size:

  * starts a FRESH proxy (tests/host spin-test-host running the component spin.toml names) with
    upstream = the registry,
  * runs 4 concurrent `curl -s -o /dev/null` GETs of /v2/<name>/blobs/<digest> through it,
    recording the host's peak RSS (VmHWM of the process, plus its children if any), the elapsed
    time and the throughput,
  * runs the same 4 concurrent pulls directly from the registry,
  * pulls again (4 concurrent, both ways) through a sha256 to check every byte.

Prints numbers only: no timing assertion. Exit status is non-zero only when something broke
(a pull failed, a digest mismatched). The issue's target: the large run's peak RSS is at most a
few MB above the small run's.

    python3 tests/bench/streaming.py            # 1 MiB and 1 GiB
    python3 tests/bench/streaming.py --quick    # 1 MiB and 32 MiB, for smoke runs
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import (MiB, RssSampler, curl_pulls, harness, make_blob, push_blob,
                      require_built, rss_kb, runtime, start_registry)

NAME = "bench/blobs"
CONCURRENCY = 4
HELD_BELOW = 8 * MiB   # blobs this small are also pulled rate-limited, all 4 in flight at once
HELD_RATE = "512k"


def pull_timed(url: str, size: int, extra=()) -> float:
    """CONCURRENCY concurrent curl GETs to /dev/null; returns elapsed seconds."""
    return curl_pulls(url, size, CONCURRENCY, extra)


def pull_verified(url: str, digest: str) -> None:
    """CONCURRENCY concurrent curl GETs, each hashed as it arrives; raises on mismatch."""
    results: list = [None] * CONCURRENCY

    def one(i):
        p = subprocess.Popen(["curl", "-s", "-S", "--fail", url], stdout=subprocess.PIPE)
        h = hashlib.sha256()
        while True:
            chunk = p.stdout.read(MiB)
            if not chunk:
                break
            h.update(chunk)
        p.wait()
        results[i] = (p.returncode, "sha256:" + h.hexdigest())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rc, got in results:
        if rc != 0 or got != digest:
            raise RuntimeError(f"verify {url}: curl rc={rc}, sha256 {got} != {digest}")


def start_proxy(registry: str) -> harness.Service:
    return harness.start_proxy({
        "upstream": registry,
        "upstream_auth": "http://127.0.0.2:9",  # loopback dummies: the registry is anonymous
        "upstream_cdn": "http://127.0.0.3:9",
        "blob_redirect": "follow",
    }, name="bench-proxy")


def fmt_size(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 else f"{n // MiB} MiB" if n >= MiB else f"{n} B"


def main() -> int:
    global CONCURRENCY
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 MiB and 32 MiB instead of 1 MiB and 1 GiB")
    ap.add_argument("--sizes", help="comma-separated sizes in MiB (overrides --quick)")
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 pass")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY, help="parallel pulls (4)")
    args = ap.parse_args()
    CONCURRENCY = args.concurrency
    if args.sizes:
        sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    else:
        sizes = [MiB, 32 * MiB] if args.quick else [MiB, 1024 * MiB]
    require_built()

    work = Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    registry = None
    rows = []
    try:
        registry = start_registry(work, "streaming-bench")
        print(f"registry {registry.url} (docker-registry, storage {work}/storage)", flush=True)
        blobs = []
        for size in sizes:
            path = work / f"blob-{size}"
            t0 = time.monotonic()
            digest = make_blob(path, size)
            push_blob(registry.url, NAME, path, digest)
            path.unlink()  # the registry has its own copy
            print(f"pushed {fmt_size(size):>8} {digest} in {time.monotonic() - t0:.1f}s", flush=True)
            blobs.append((size, digest))

        for size, digest in blobs:
            path = f"/v2/{NAME}/blobs/{digest}"
            proxy = start_proxy(registry.url)
            try:
                warm = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                       proxy.url + "/v2/"], capture_output=True, text=True)
                idle_mb = rss_kb(proxy.pid, "VmHWM") / 1024
                with RssSampler(proxy.pid) as s:
                    t_proxy = pull_timed(proxy.url + path, size)
                    if size <= HELD_BELOW:
                        # Small pulls end in milliseconds and barely overlap; held open they
                        # keep 4 component instances alive at once, as the large pulls do, so
                        # the comparison measures body size and not concurrency.
                        pull_timed(proxy.url + path, size, ["--limit-rate", HELD_RATE])
                    peak_timed = s.peak_mb()
                    if not args.no_verify:
                        pull_verified(proxy.url + path, digest)
                peak_all = s.peak_mb()
                log_tail = proxy.log().strip().splitlines()[-1:] or [""]
            finally:
                proxy.stop()
            t_direct = pull_timed(registry.url + path, size)
            if not args.no_verify:
                pull_verified(registry.url + path, digest)
            total = CONCURRENCY * size / MiB
            row = dict(size=size, idle=idle_mb, peak=peak_timed, peak_all=peak_all,
                       t_proxy=t_proxy, t_direct=t_direct, tp_proxy=total / t_proxy,
                       tp_direct=total / t_direct, warm=warm.stdout)
            rows.append(row)
            print(f"{fmt_size(size):>8}: proxy {t_proxy:.2f}s ({row['tp_proxy']:.0f} MiB/s), "
                  f"direct {t_direct:.2f}s ({row['tp_direct']:.0f} MiB/s), peak RSS "
                  f"{peak_timed:.1f} MB (idle {idle_mb:.1f} MB, GET /v2/ -> {warm.stdout}); "
                  f"last log line: {log_tail[0][:160]}", flush=True)
    finally:
        if registry:
            registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    base = rows[0]["peak"]
    print(f"runtime: {runtime()}")
    print()
    print(f"{CONCURRENCY} concurrent GETs of one blob; RSS = VmHWM of spin-test-host (+children), MB = MiB;"
          f" blobs up to {HELD_BELOW // MiB} MiB also pulled at {HELD_RATE}/s so all {CONCURRENCY} overlap")
    hdr = ("size", "idle RSS MB", "peak RSS MB", "delta vs smallest MB", "via proxy MiB/s",
           "direct MiB/s", "proxy/direct")
    print(" | ".join(hdr))
    print(" | ".join("-" * len(h) for h in hdr))
    for r in rows:
        print(" | ".join([
            f"{fmt_size(r['size'])}", f"{r['idle']:.1f}", f"{r['peak']:.1f}",
            f"{r['peak'] - base:+.1f}", f"{r['tp_proxy']:.0f}", f"{r['tp_direct']:.0f}",
            f"{r['tp_proxy'] / r['tp_direct']:.2f}"]))
    if not args.no_verify:
        print(f"sha256 verified: {CONCURRENCY} pulls per size through the proxy and directly "
              f"(peak RSS including the verify pass: "
              + ", ".join(f"{fmt_size(r['size'])} {r['peak_all']:.1f} MB" for r in rows) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
