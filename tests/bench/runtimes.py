#!/usr/bin/env python3
"""The test host against real Spin, operation by operation, in the same run.

Needs SPIN_BIN (the Spin CLI). Starts a registry and `tests/bench/floor` answering by itself
on both runtimes (and, with `--without`, a second test host that does not pay the costs of
Spin it names, see tests/host/src/spin_costs.rs), then measures each of the floor's
operations in interleaved rounds: CPU ms per request of the runtime's process tree (hey, 16
connections, HEAD), medians over the rounds, and what Spin spends above the test host.

  bare    a 200 with three headers, nothing else
  log     + one stderr line
  kv1     + open the store, read one key
  kv3     + open the store, read three keys
  vars1   + read one variable (the proxy's `config`, whose template names eleven)
  calls30 + thirty calls to the runtime's wall clock: what a call costs the runtime by itself
  all     log, two reads and the variable: what a kept answer by digest costs the runtime

`--guest-time` instead starts both runtimes with their per-instance accounting printed (Spin's
`spin.component_cpu_time` events, RUST_LOG at trace for that target only) and reports the
median time each request spent inside the guest, one request at a time (hey -c 1), for the
floor's operations and for the proxy answering a kept tag and a kept digest: whether the
guest's own code runs slower on one runtime, or the runtime's work around it costs more.

    SPIN_BIN=/path/to/spin python3 tests/bench/runtimes.py
    SPIN_BIN=/path/to/spin python3 tests/bench/runtimes.py --without trigger,app-log
    SPIN_BIN=/path/to/spin python3 tests/bench/runtimes.py --guest-time
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import harness, image, require_built, runtime, stop_all, workdir_with_registry
from speed import ACCEPT, build_floor, heads, start_floor

OPERATIONS = {
    "bare": "/-/answer",
    "log": "/-/answer?log",
    "kv1": "/-/answer?kv=1",
    "kv3": "/-/answer?kv=3",
    "vars1": "/-/answer?vars=1",
    "calls30": "/-/answer?calls=30",
    "all": "/-/answer?log&kv=2&vars=1",
}
# Where each runtime's per-instance accounting events come from.
ACCOUNTING = {"test host": "spin_test_host=trace", "spin": "spin_factors_executor=trace"}


def start_runtimes(work: Path, registry: harness.Service, spin: str, without: str,
                   accounting: bool) -> dict:
    """The floor on each runtime: name -> service."""
    configs = [("test host", None, "")]
    if without:
        configs.append((f"test host without {without}", None, without))
    configs.append(("spin", spin, ""))
    floors = {}
    for name, binary, costs in configs:
        harness.SPIN_BIN = binary
        os.environ["SPIN_TEST_HOST_WITHOUT"] = costs
        if accounting:
            os.environ["RUST_LOG"] = ACCOUNTING["spin" if binary else "test host"]
        d = work / re.sub(r"\W+", "-", name)
        d.mkdir()
        floors[name] = start_floor(d, registry)
    return floors


def guest_times(service: harness.Service, url: str, n: int, header: str | None = None) -> float:
    """Median µs inside the guest per request, from the runtime's own accounting events."""
    argv = ["hey", "-n", str(n), "-c", "1", "-m", "HEAD"]
    if header:
        argv += ["-H", header]
    before = len(service.log())
    subprocess.run(argv + [service.url + url], check=True, capture_output=True)
    # The event is written when the instance is dropped, after its answer: wait for all.
    deadline = time.monotonic() + 10
    while True:
        found = re.findall(r"component_cpu_time=([0-9.e-]+)", service.log()[before:])
        if len(found) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if len(found) < n:
        raise RuntimeError(f"{service.name}: {len(found)} accounting events for {n} requests")
    return 1e6 * statistics.median(float(v) for v in found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--requests", type=int, default=4000, help="HEADs per measurement (4000)")
    ap.add_argument("--without", default="",
                    help="also a test host without these of Spin's costs (comma-separated)")
    ap.add_argument("--guest-time", action="store_true",
                    help="time inside the guest per request, by each runtime's accounting")
    args = ap.parse_args()
    spin = harness.SPIN_BIN
    if not spin:
        sys.exit("runtimes.py compares the test host with Spin: set SPIN_BIN to the Spin CLI")
    require_built(harness.HOST_BIN)
    build_floor()

    work, registry = workdir_with_registry("runtimes-bench")
    services = [registry]
    try:
        floors = start_runtimes(work, registry, spin, args.without, args.guest_time)
        services += floors.values()
        if args.guest_time:
            return report_guest_time(work, registry, floors, spin)
        for svc in floors.values():
            for url in OPERATIONS.values():
                heads(svc.url + url, 320, svc.pid)
        cpu = {}
        for r in range(args.rounds):
            order = list(floors)[r % len(floors):] + list(floors)[:r % len(floors)]
            for name in order:
                for op, url in OPERATIONS.items():
                    _, c = heads(floors[name].url + url, args.requests, floors[name].pid)
                    cpu.setdefault((name, op), []).append(c)
            print(f"round {r + 1} done", flush=True)
    finally:
        stop_all(services, work)

    med = statistics.median
    harness.SPIN_BIN = spin
    print(f"spin: {runtime()}")
    print(f"CPU ms per request of each runtime, medians of {args.rounds} rounds of "
          f"{args.requests} HEADs (hey -c 16); Spin − test host")
    names = list(floors)
    print("| | " + " | ".join(names) + " | Spin − test host |")
    print("|---" * (len(names) + 2) + "|")
    for op in OPERATIONS:
        values = [med(cpu[(n, op)]) for n in names]
        gap = med(cpu[("spin", op)]) - med(cpu[("test host", op)])
        print(f"| {op} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {gap:+.3f} |")
    return 0


def report_guest_time(work: Path, registry: harness.Service, floors: dict, spin: str) -> int:
    """Time inside the guest per request, floor operations and the proxy's kept answers."""
    n = 2000
    times = {}
    for name, svc in floors.items():
        for op, url in OPERATIONS.items():
            heads(svc.url + url, 320, svc.pid)
            times[(name, op)] = guest_times(svc, url, n)
    img = image(registry.url, "bench/runtimes", "latest", work, os.urandom(4096))
    variables = {"upstream": registry.url, "upstream_auth": "http://127.0.0.2:9",
                 "upstream_cdn": "http://127.0.0.3:9", "blob_redirect": "follow",
                 "tag_ttl": "60"}
    kept = {"kept tag": "/v2/bench/runtimes/manifests/latest",
            "kept digest": f"/v2/bench/runtimes/manifests/{img['manifest']}"}
    for name in floors:
        if "without" in name:
            continue
        harness.SPIN_BIN = spin if name == "spin" else None
        os.environ["SPIN_TEST_HOST_WITHOUT"] = ""
        os.environ["RUST_LOG"] = ACCOUNTING[name]
        proxy = harness.start_proxy(variables, name=f"runtimes-proxy-{name.replace(' ', '-')}")
        try:
            for op, url in kept.items():
                # The first GET keeps the manifest; the HEADs are answered from the store.
                subprocess.run(["curl", "-sf", "-o", "/dev/null", "-H", f"Accept: {ACCEPT}",
                                proxy.url + url], check=True)
                times[(name, op)] = guest_times(proxy, url, n, f"Accept: {ACCEPT}")
        finally:
            proxy.stop()
    harness.SPIN_BIN = spin
    print(f"spin: {runtime()}")
    print(f"µs inside the guest per request (median of {n}, one at a time), by each runtime's "
          "own accounting")
    names = [n for n in floors if "without" not in n]
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for op in [*OPERATIONS, *kept]:
        print(f"| {op} | " + " | ".join(f"{times[(n, op)]:.1f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
