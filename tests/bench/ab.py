#!/usr/bin/env python3
"""Two builds of the component against each other, interleaved on one runtime in one run.

For measuring one change at a time: build the component before and after it, copy each .wasm
aside, and give both paths. Starts a real registry with a one-layer image and, for each build,
the proxy twice (tag_ttl 0: nothing kept, a HEAD by tag goes upstream; tag_ttl 60: kept), each from a copy of spin.toml
that names that build. Then, in rounds whose order rotates, `hey` HEADs (16 connections):
nothing kept, a kept tag, a kept digest. Prints CPU ms per HEAD of each runtime's process tree
(medians of the rounds) and B − A, and which runtime ran (the test host, or SPIN_BIN).

On the test host with `SPIN_TEST_HOST_FUEL=1` in the environment it also prints, per build and
request, the wasm instructions the instance ran, its calls into the host and the linear memory
it grew to: counts that do not move with the machine's load (the CPU rounds then include fuel
checks, so read them for the counts only).

    python3 tests/bench/ab.py before.wasm after.wasm
    SPIN_BIN=/path/to/spin python3 tests/bench/ab.py before.wasm after.wasm --rounds 8
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

from benchlib import harness, image, runtime, stop_all, workdir_with_registry
from speed import ACCEPT, heads

NAME = "bench/ab"


def manifest_naming(wasm: Path, where: Path) -> Path:
    """spin.toml, naming `wasm` as the component's source."""
    text = harness.SPIN_TOML.read_text()
    source = re.search(r'^source = "[^"]+"', text, re.M).group(0)
    path = where / "spin.toml"
    path.write_text(text.replace(source, f'source = "{wasm.resolve()}"'))
    return path


def start(build: str, wasm: Path, work: Path, variables: dict) -> dict:
    """The proxy of one build: nothing kept and kept."""
    d = work / build
    d.mkdir()
    manifest = manifest_naming(wasm, d)
    saved = harness.SPIN_TOML
    harness.SPIN_TOML = manifest
    try:
        return {kept: harness.start_proxy({**variables, "tag_ttl": ttl}, name=f"ab-{build}-{kept}")
                for kept, ttl in (("nothing", "0"), ("kept", "60"))}
    finally:
        harness.SPIN_TOML = saved


def fuel(proxy: harness.Service, url: str) -> str:
    """The instructions, host calls and linear memory of one HEAD, from the test host's
    `guest fuel` line; empty where no such line comes (Spin, or the test host without
    SPIN_TEST_HOST_FUEL)."""
    if harness.SPIN_BIN or os.environ.get("SPIN_TEST_HOST_FUEL") != "1":
        return ""
    before = len(proxy.log())
    subprocess.run(["curl", "-sfI", "-o", "/dev/null", "-H", f"Accept: {ACCEPT}", proxy.url + url],
                   check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # written when the instance is dropped, after the answer
        found = re.findall(r"guest fuel \S+: (\d+) host calls: (\d+) memory: (\d+)",
                           proxy.log()[before:])
        if found:
            used, calls, memory = found[-1]
            return (f"{int(used):,} instructions, {calls} host calls, "
                    f"{int(memory) >> 10} KiB memory")
        time.sleep(0.05)
    raise RuntimeError(f"{proxy.name}: no `guest fuel` line for HEAD {url}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="the build before (a .wasm)")
    ap.add_argument("b", type=Path, help="the build after (a .wasm)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (6)")
    ap.add_argument("--heads", type=int, default=3000, help="HEADs per measurement (3000)")
    args = ap.parse_args()
    for w in (args.a, args.b):
        if not w.is_file():
            sys.exit(f"missing {w}")

    work, registry = workdir_with_registry("ab-bench")
    services = [registry]
    try:
        img = image(registry.url, NAME, "latest", work, b"ab layer")
        variables = {"upstream": registry.url, "upstream_auth": "http://127.0.0.2:9",
                     "upstream_cdn": "http://127.0.0.3:9", "blob_redirect": "follow"}
        proxies = {}
        for build, wasm in (("A", args.a), ("B", args.b)):
            proxies[build] = start(build, wasm, work, variables)
            services += proxies[build].values()
        tag, digest = f"/v2/{NAME}/manifests/latest", f"/v2/{NAME}/manifests/{img['manifest']}"
        # A digest is kept whatever tag_ttl says (its bytes cannot change): nothing kept is a tag.
        targets = {"nothing kept": ("nothing", tag), "kept tag": ("kept", tag),
                   "kept digest": ("kept", digest)}
        for build in proxies:
            for kept, url in targets.values():
                # The GET keeps the manifest; the warm-up fills the runtime's pools.
                svc = proxies[build][kept]
                subprocess.run(["curl", "-sf", "-o", "/dev/null", "-H", f"Accept: {ACCEPT}",
                                svc.url + url], check=True)
                heads(svc.url + url, 320, svc.pid)
        counts = {(b, t): fuel(proxies[b][k], u) for b in proxies for t, (k, u) in targets.items()}
        cpu = {}
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for t, (kept, url) in targets.items():
                for build in order:
                    svc = proxies[build][kept]
                    cpu.setdefault((build, t), []).append(heads(svc.url + url, args.heads,
                                                                svc.pid)[1])
            print(f"round {r + 1} done", flush=True)
    finally:
        stop_all(services, work)

    med = statistics.median
    print(f"runtime: {runtime()}")
    print(f"A = {args.a}, B = {args.b}")
    print(f"CPU ms per HEAD, medians of {args.rounds} rounds of {args.heads} (hey -c 16)")
    counted = any(counts.values())
    print("| | A | B | B − A |" + (" A: per HEAD | B: per HEAD |" if counted else ""))
    print("|---" * (6 if counted else 4) + "|")
    for t in targets:
        a, b = med(cpu[("A", t)]), med(cpu[("B", t)])
        extra = f" {counts[('A', t)]} | {counts[('B', t)]} |" if counted else ""
        print(f"| {t} | {a:.3f} | {b:.3f} | {b - a:+.3f} |" + extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
