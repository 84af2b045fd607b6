#!/usr/bin/env python3
"""Load benchmark: many clients at once, every kind of request, through the proxy and direct.

Starts a real `docker-registry serve` (anonymous) with a one-layer image, the test host running
the component spin.toml names in front of it (blob_redirect = follow), then drives 64 concurrent
clients for 60 s, as 4 `hey` runs side by side, 16 connections each:

  HEAD manifest by tag | GET manifest by digest | GET blob (64 KiB) | GET /token

and the same 64 clients against the registry directly (the token request there is `GET /v2/`,
what the proxy's token endpoint asks an anonymous upstream). Prints, per kind and in total,
requests/s through the proxy and directly and their ratio, the errors (non-2xx answers and
transport errors: must be 0), and the runtime's RSS (its process tree) at the start, the peak
and the end of the run, and the highest in each fifth of it (must be flat: no growth with the
number of requests once the host has reached its working size). Before the run, the same 64
clients warm the proxy up for `--warm` seconds: the runtime's pooling allocator keeps each
instance slot's memory resident once a request has used it, so RSS climbs until as many slots
as the load runs at once have been used, and only then says whether anything leaks. With
`--floor`, tests/bench/floor (a component that only forwards) then takes the same load the same
way (its token requests are `GET /v2/`, forwarded): its RSS per fifth is the runtime's own, so
that growth through the proxy can be told from growth of the runtime under any component.

Numbers only, no assertion on speed; the exit status is non-zero when there were errors.

    python3 tests/bench/load.py               # 64 clients, 60 s each way
    python3 tests/bench/load.py --seconds 10  # a short run
    python3 tests/bench/load.py --floor       # and the floor guest's RSS under the same load
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import speed
from benchlib import (RssSampler, harness, image, require_built, runtime,
                      start_registry, tree_rss_kb)

NAME = "bench/app"
ACCEPT = ("application/vnd.oci.image.index.v1+json, "
          "application/vnd.oci.image.manifest.v1+json")


def kinds(img: dict, token_path: str) -> list:
    """(label, hey arguments after the URL base) for each request kind."""
    return [
        ("HEAD manifest", ["-m", "HEAD", "-H", f"Accept: {ACCEPT}"],
         f"/v2/{NAME}/manifests/latest"),
        ("GET manifest", ["-H", f"Accept: {ACCEPT}"], f"/v2/{NAME}/manifests/{img['manifest']}"),
        ("GET blob", [], f"/v2/{NAME}/blobs/{img['layer']}"),
        ("token", [], token_path),
    ]


def parse_hey(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?!.*responses)", out, re.M))
    return {"rps": float(rps.group(1)) if rps else 0.0, "codes": codes, "errors": errors,
            "bad": sum(n for c, n in codes.items() if not 200 <= c < 300) + errors}


def drive(base: str, plan: list, clients: int, seconds: int) -> list:
    """Runs every kind at once, `clients` connections in all; returns parsed results."""
    per = max(1, clients // len(plan))
    procs = []
    for label, args, path in plan:
        argv = ["hey", "-z", f"{seconds}s", "-c", str(per), *args, base + path]
        procs.append((label, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True)))
    results = []
    for label, p in procs:
        out, _ = p.communicate()
        results.append((label, parse_hey(out), out))
    return results


def under_load(svc: harness.Service, plan: list, clients: int, warm: int,
               seconds: int) -> tuple:
    """Warms `svc` up at full load, then drives it while sampling its RSS: (warm-up results,
    results, start MiB, end MiB, samples)."""
    warmed = drive(svc.url, plan, clients, warm)
    start_mb = tree_rss_kb(svc.pid) / 1024
    with RssSampler(svc.pid, every=0.2) as trace:
        results = drive(svc.url, plan, clients, seconds)
    time.sleep(1)
    return warmed, results, start_mb, tree_rss_kb(svc.pid) / 1024, trace.samples


def print_rss(who: str, start_mb: float, end_mb: float, samples: list) -> None:
    peak = max(samples or [end_mb])
    print(f"{who} RSS (process tree): start {start_mb:.1f} MiB, peak {peak:.1f} MiB, "
          f"end {end_mb:.1f} MiB (end - start {end_mb - start_mb:+.1f} MiB)")
    # Flat or growing: the highest RSS in each fifth of the run (a leak climbs to the end).
    n = len(samples)
    fifths = [max(samples[i * n // 5:(i + 1) * n // 5] or [0]) for i in range(5)]
    print(f"{who} RSS, highest per fifth of the run: "
          + ", ".join(f"{mb:.1f}" for mb in fifths) + " MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--warm", type=int, default=30, help="seconds of warm-up at full load (30)")
    ap.add_argument("--floor", action="store_true",
                    help="also put the floor guest under the same load, for the runtime's RSS")
    args = ap.parse_args()
    if not shutil.which("hey"):
        sys.exit("hey not found (apt-get install hey)")
    require_built()
    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    registry = proxy = floor = None
    floor_run = None
    if args.floor:
        speed.build_floor()
    try:
        registry = start_registry(work, "load-bench")
        img = image(registry.url, NAME, "latest", work, os.urandom(64 << 10))
        proxy = harness.start_proxy({
            "upstream": registry.url,
            "upstream_auth": "http://127.0.0.2:9",  # loopback dummies: the registry is anonymous
            "upstream_cdn": "http://127.0.0.3:9",
            "blob_redirect": "follow",
        }, name="load-proxy")
        # Warm up at full load, so the start RSS is the runtime's working size for it.
        warm, via, start_mb, end_mb, samples = under_load(
            proxy, kinds(img, f"/token?service=x&scope=repository:{NAME}:pull"),
            args.clients, args.warm, args.seconds)
        direct = drive(registry.url, kinds(img, "/v2/"), args.clients, args.seconds)
        lines = len([ln for ln in proxy.log().splitlines() if " status=" in ln])
        proxy.stop()
        if args.floor:
            floor = speed.start_floor(work, registry)
            floor_run = under_load(floor, kinds(img, "/v2/"), args.clients, args.warm,
                                   args.seconds)
    finally:
        for s in (floor, proxy, registry):
            if s:
                s.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"runtime: {runtime()}")
    print(f"{args.clients} concurrent clients ({args.clients // 4} per kind), {args.seconds} s "
          f"each way; blob_redirect=follow; upstream distribution 2.8 on loopback")
    hdr = ("kind", "proxy req/s", "direct req/s", "proxy/direct", "proxy errors", "direct errors")
    print(" | ".join(hdr))
    print(" | ".join("-" * len(h) for h in hdr))
    tot_p = tot_d = bad = 0
    for (label, p, _), (_, d, _) in zip(via, direct):
        tot_p, tot_d, bad = tot_p + p["rps"], tot_d + d["rps"], bad + p["bad"] + d["bad"]
        print(" | ".join([label, f"{p['rps']:.0f}", f"{d['rps']:.0f}",
                          f"{p['rps'] / d['rps']:.2f}" if d["rps"] else "-",
                          str(p["bad"]), str(d["bad"])]))
    print(" | ".join(["all", f"{tot_p:.0f}", f"{tot_d:.0f}",
                      f"{tot_p / tot_d:.2f}" if tot_d else "-", "", ""]))
    print_rss("runtime", start_mb, end_mb, samples)
    print(f"log lines written: {lines}")
    warm_bad = sum(r["bad"] for _, r, _ in warm)
    if floor_run:
        floor_warm, floor_via, *floor_rss = floor_run
        print(f"floor guest under the same load: "
              f"{sum(r['rps'] for _, r, _ in floor_via):.0f} req/s")
        print_rss("floor's runtime", *floor_rss)
        bad += sum(r["bad"] for _, r, _ in floor_via)
        warm_bad += sum(r["bad"] for _, r, _ in floor_warm)
        via = via + [(f"floor {label}", r, out) for label, r, out in floor_via]
    print(f"errors: {bad} (warm-up: {warm_bad})")
    for label, r, out in via + direct:
        if r["bad"]:
            print(f"--- {label}\n{out[-1500:]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
