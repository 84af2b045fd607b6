#!/usr/bin/env python3
"""Speed benchmark: the proxy against a direct pull and against nginx, in the same run.

Starts a real `docker-registry serve` (anonymous, filesystem storage: it serves blobs itself,
the "same-host upstream" case) with one large blob and a one-layer image, and in front of it:

  proxy          the component spin.toml names, in the test host, blob_redirect = follow,
                 tag_ttl = 0 (nothing kept: every request goes upstream)
  proxy (kept)   the same with tag_ttl = 60: HEAD by tag and by digest answered from its store
  floor          tests/bench/floor: a Spin component that only forwards (one variable read,
                 one blocking splice per chunk), built with the project's settings
                 (.cargo/config.toml: the same stack size): what any component on this runtime
                 gets, for blobs as for HEADs; the same forwarding with what the proxy does for
                 every request on top (reading its `config` variable, a log line): the floor
                 for a forwarded request; and the same component answering by itself with what
                 the proxy's kept answer costs the runtime (a log line, its `config` variable,
                 two store reads): the floor for an answer from the store
  nginx          proxy_pass with 64 KiB proxy buffers (`proxy_buffers 8 64k`, no temp files)

Then, in interleaved rounds (the order rotates each round; medians over the rounds):

  * blob GET, 1 stream and 4 concurrent streams (curl to /dev/null) direct, through the floor,
    the proxy and nginx: MiB/s, and ÷ direct measured in the same round;
  * the proxy's peak RSS above idle during the 4 streams (VmRSS of the runtime's process
    tree, sampled);
  * CPU seconds per GiB moved of the process that answers (the registry itself for direct);
  * HEAD manifest (hey, 16 connections): req/s ÷ direct; CPU per HEAD of the process that
    answers (utime + stime from /proc), and the proxy's own CPU per HEAD above the floor;
  * `skopeo copy` of a one-layer image (200 MiB layer) into a directory: seconds, proxy ÷
    direct.

Numbers only, no assertion on speed. The exit status is non-zero only when something broke (a
pull short or failed, a non-2xx answer).

    python3 tests/bench/speed.py                   # 1 GiB blob, 8 rounds, 5000 HEADs each
    python3 tests/bench/speed.py --size 200 --rounds 3 --heads 2000   # a short run
    python3 tests/bench/speed.py --skip heads,skopeo --blob-targets floor,proxy --size 200
                                   # blobs: the proxy against its floor, nothing between
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (ROOT, MiB, RssSampler, curl_pulls, descendants, harness, image, make_blob,
                      push_blob, require_built, runtime, stop_all, tree_rss_kb,
                      workdir_with_registry)

NAME = "bench/speed"
SKOPEO_NAME = "bench/skopeo"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
FLOOR_DIR = ROOT / "tests" / "bench" / "floor"
FLOOR_WASM = ROOT / "target" / "wasm32-wasip2" / "release" / "forward_floor.wasm"
CLK_TCK = os.sysconf("SC_CLK_TCK")

NGINX = """  upstream registry {{
    server {upstream};
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_max_temp_file_size 0;
    }}
  }}"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children (nginx's worker), in seconds."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def start_nginx(work: Path, registry: harness.Service) -> harness.Service:
    d = work / "nginx"
    d.mkdir()
    port = harness.Reserved()  # nginx refuses `listen 127.0.0.1:0`
    conf = d / "nginx.conf"
    conf.write_text(harness.nginx_config(d, NGINX.format(port=port.port,
                                                         upstream=f"127.0.0.1:{registry.port}")))
    return harness.Service("bench-nginx", ["nginx", "-c", conf, "-p", d], port=port)


def start_floor(work: Path, registry: harness.Service) -> harness.Service:
    d = work / "floor"
    d.mkdir()
    manifest = d / "spin.toml"
    # The proxy's application variables and its `config` template, verbatim: reading `config`
    # costs the floor what it costs the proxy.
    proxy_manifest = (ROOT / "spin.toml").read_text()
    variables = proxy_manifest.split("[variables]\n", 1)[1].split("\n[[", 1)[0]
    config = next(line for line in proxy_manifest.splitlines() if line.startswith("config = "))
    manifest.write_text(f"""spin_manifest_version = 2

[application]
name = "forward-floor"
version = "0.1.0"

[variables]
{variables}
[[trigger.http]]
route = "/..."
component = "floor"

[component.floor]
source = "{FLOOR_WASM}"
allowed_outbound_hosts = ["{registry.url}"]

key_value_stores = ["default"]

[component.floor.variables]
upstream = "{{{{ upstream }}}}"
{config}
""")
    runtime = [harness.SPIN_BIN, "up"] if harness.SPIN_BIN else [harness.HOST_BIN]
    return harness.Service("bench-floor", [*runtime, "--from", manifest, "--listen",
                                           "127.0.0.1:0", "--state-dir", d],
                           env={"SPIN_VARIABLE_UPSTREAM": registry.url}, port=0,
                           announce=harness.ANNOUNCED)


def pull(url: str, size: int, streams: int) -> float:
    """`streams` concurrent curl GETs to /dev/null; MiB/s over all of them."""
    return streams * size / MiB / curl_pulls(url, size, streams)


def heads(url: str, n: int, pid: int, token: str | None = None,
          header: str | None = None) -> tuple[float, float]:
    """n HEADs over 16 connections (hey), with a Bearer `token` and one more `header` if
    given; (req/s, CPU ms per HEAD of process `pid` and its children)."""
    n -= n % 16  # hey gives each connection n // 16
    argv = ["hey", "-n", str(n), "-c", "16", "-m", "HEAD", "-H", f"Accept: {ACCEPT}", url]
    if token:
        argv[-1:-1] = ["-H", f"Authorization: Bearer {token}"]
    if header:
        argv[-1:-1] = ["-H", header]
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    codes = {int(c): int(k) for c, k in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    if set(codes) != {200} or codes[200] != n:
        raise RuntimeError(f"HEAD {url}: {codes}\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rps, 1000 * cpu / n


def skopeo_copy(svc: harness.Service, dest: Path) -> float:
    """Seconds for `skopeo copy` of the image into a fresh directory."""
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://127.0.0.1:{svc.port}/{SKOPEO_NAME}:latest", f"dir:{dest}"],
                   check=True, capture_output=True)
    return time.monotonic() - t0


def build_floor() -> None:
    # From the project's root, so that its .cargo/config.toml (the component's stack size)
    # applies to the floor as well: what the proxy spends above the floor is then its code's.
    subprocess.run(["cargo", "build", "-q", "--release", "--target", "wasm32-wasip2",
                    "--manifest-path", FLOOR_DIR / "Cargo.toml", "--target-dir",
                    ROOT / "target"], check=True, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="blob size in MiB (1024)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (8)")
    ap.add_argument("--heads", type=int, default=5000, help="HEADs per measurement (5000)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: blobs,heads,skopeo")
    ap.add_argument("--image", type=int, default=200, help="skopeo's image layer in MiB (200)")
    ap.add_argument("--blob-targets", default="direct,floor,proxy,nginx",
                    help="comma-separated blob GET targets (direct,floor,proxy,nginx); "
                         "`floor,proxy` sets the proxy against its floor with nothing between")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    named = args.blob_targets.split(",")
    if not named or not set(named) <= {"direct", "floor", "proxy", "nginx"}:
        sys.exit("--blob-targets: choose among direct,floor,proxy,nginx")
    for tool in ("curl", "hey", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    require_built()
    build_floor()

    work, registry = workdir_with_registry("speed-bench")
    services = [registry]
    try:
        size = args.size * MiB
        path = work / "blob"
        digest = make_blob(path, size)
        push_blob(registry.url, NAME, path, digest)
        path.unlink()
        img = image(registry.url, NAME, "latest", work, os.urandom(4096))
        if "skopeo" not in skip:
            image(registry.url, SKOPEO_NAME, "latest", work, os.urandom(args.image * MiB))
        proxy_vars = {"upstream": registry.url, "upstream_auth": "http://127.0.0.2:9",
                      "upstream_cdn": "http://127.0.0.3:9", "blob_redirect": "follow"}
        proxy = harness.start_proxy({**proxy_vars, "tag_ttl": "0"}, name="bench-proxy")
        kept = harness.start_proxy({**proxy_vars, "tag_ttl": "60"}, name="bench-proxy-kept")
        floor = start_floor(work, registry)
        nginx = start_nginx(work, registry)
        services += [proxy, kept, floor, nginx]
        print(f"registry {registry.url}; blob {args.size} MiB; {args.rounds} rounds", flush=True)

        blob_path = f"/v2/{NAME}/blobs/{digest}"
        every = {"direct": registry, "floor": floor, "proxy": proxy, "nginx": nginx}
        blob_targets = {t: svc for t, svc in every.items() if t in named}
        # Ratios are per round against the first target named: direct, or else the floor.
        base = next(iter(blob_targets))
        streams = {}   # (target, n) -> [MiB/s per round]
        ratios = {}    # (target, n) -> [÷ base per round]
        rss = []
        blob_cpu = {}  # (target, n) -> [CPU seconds per GiB of the answering process]
        if "blobs" not in skip:
            # A first pull each way warms the page cache and the component's compiled code.
            for svc in blob_targets.values():
                pull(svc.url + blob_path, size, 1)
            order = list(blob_targets)
            for r in range(args.rounds):
                for n in (1, 4):
                    got = {}
                    for t in order[r % len(order):] + order[:r % len(order)]:
                        svc = blob_targets[t]
                        cpu0 = cpu_seconds(svc.pid)
                        if n == 4:
                            # Every target's 4 streams are sampled alike: the sampler's own
                            # CPU (/proc reads every 20 ms) cost the proxy 3% of its rate
                            # against the floor when only the proxy's were.
                            idle = tree_rss_kb(svc.pid) / 1024
                            with RssSampler(svc.pid, every=0.02) as s:
                                got[t] = pull(svc.url + blob_path, size, n)
                            if t == "proxy":
                                rss.append(max(s.samples or [idle]) - idle)
                        else:
                            got[t] = pull(svc.url + blob_path, size, n)
                        gib = n * size / (1 << 30)
                        blob_cpu.setdefault((t, n), []).append((cpu_seconds(svc.pid) - cpu0) / gib)
                    for t, v in got.items():
                        streams.setdefault((t, n), []).append(v)
                        ratios.setdefault((t, n), []).append(v / got[base])
                print(f"round {r + 1}: " + ", ".join(
                    f"{t} {streams[(t, n)][-1]:.0f}" for n in (1, 4) for t in order)
                    + " MiB/s (1 stream, then 4)", flush=True)

        manifest_url = f"/v2/{NAME}/manifests/latest"
        # target -> (service, path, one more request header or None)
        head_targets = {
            "direct": (registry, manifest_url, None),
            "floor": (floor, manifest_url, None),
            # What forwarding costs any component that reads the proxy's configuration and
            # logs each request, as the proxy does.
            "floor, as proxy": (floor, manifest_url, "X-Floor-As-Proxy: 1"),
            # What answering from the store costs any component on this runtime: a log line,
            # one variable and the store reads the proxy's kept HEAD makes (the store's secret,
            # and the manifest's entry by digest or the tag's by tag), no upstream.
            "floor, answering": (floor, "/-/answer?log&kv=2&vars=1", None),
            "proxy": (proxy, manifest_url, None),
            "proxy, kept tag": (kept, manifest_url, None),
            "proxy, kept digest": (kept, f"/v2/{NAME}/manifests/{img['manifest']}", None),
            "nginx": (nginx, manifest_url, None),
        }
        rps, cpu = {}, {}
        if "heads" not in skip:
            # Warm every path once: the kept proxy stores the manifest by tag and by digest.
            for svc, p, _ in head_targets.values():
                subprocess.run(["curl", "-sf", "-o", "/dev/null", "-H", f"Accept: {ACCEPT}",
                                svc.url + p], check=True)
            order = list(head_targets)
            for r in range(args.rounds):
                for t in order[r % len(order):] + order[:r % len(order)]:
                    svc, p, header = head_targets[t]
                    q, c = heads(svc.url + p, args.heads, svc.pid, header=header)
                    rps.setdefault(t, []).append(q)
                    cpu.setdefault(t, []).append(c)
                print(f"round {r + 1}: " + ", ".join(f"{t} {rps[t][-1]:.0f}" for t in order)
                      + " HEAD/s", flush=True)
        copies = {}  # target -> [seconds per round]
        if "skopeo" not in skip:
            targets = {"direct": registry, "proxy": proxy}
            for r in range(args.rounds):
                for t in list(targets)[r % 2:] + list(targets)[:r % 2]:
                    copies.setdefault(t, []).append(skopeo_copy(targets[t], work / "copy"))
                print(f"round {r + 1}: skopeo copy " + ", ".join(
                    f"{t} {copies[t][-1]:.2f}s" for t in targets), flush=True)
    finally:
        stop_all(services, work)

    med = statistics.median
    print(f"runtime: {runtime()}")
    print()
    if streams:
        print(f"blob GET of {args.size} MiB, medians of {args.rounds} rounds "
              f"(÷ {base}: median of the per-round ratios)")
        print(f"| | MiB/s, 1 stream | ÷ {base} | MiB/s, 4 streams | ÷ {base} | CPU s/GiB |")
        print("|---|---|---|---|---|---|")
        for t in blob_targets:
            print(f"| {t} | {med(streams[(t, 1)]):.0f} | {med(ratios[(t, 1)]):.2f} | "
                  f"{med(streams[(t, 4)]):.0f} | {med(ratios[(t, 4)]):.2f} | "
                  f"{med(blob_cpu[(t, 1)] + blob_cpu[(t, 4)]):.2f} |")
        if "proxy" in blob_targets and "floor" in blob_targets:
            # The proxy against the floor round by round: the floor's level or not.
            for n in (1, 4):
                each = [p / f for p, f in zip(streams[("proxy", n)], streams[("floor", n)])]
                print(f"proxy ÷ floor, {n} stream{'s' * (n > 1)}: median {med(each):.3f}, mean "
                      f"{statistics.mean(each):.3f}, per round "
                      + " ".join(f"{x:.2f}" for x in each))
        if rss:
            print(f"proxy peak RSS above idle during 4 streams: median {med(rss):.1f} MiB, "
                  f"max {max(rss):.1f} MiB")
    if rps:
        print()
        print(f"HEAD manifest, hey -c 16, {args.heads} per round, medians of {args.rounds} rounds")
        print("| | req/s | ÷ direct | CPU ms per HEAD (answering process) |")
        print("|---|---|---|---|")
        for t in head_targets:
            print(f"| {t} | {med(rps[t]):.0f} | {med(rps[t]) / med(rps['direct']):.2f} | "
                  f"{med(cpu[t]):.3f} |")
        own = med(cpu["proxy"]) - med(cpu["floor"])
        as_proxy = med(cpu["proxy"]) - med(cpu["floor, as proxy"])
        by_tag = med(cpu["proxy, kept tag"]) - med(cpu["floor, answering"])
        by_digest = med(cpu["proxy, kept digest"]) - med(cpu["floor, answering"])
        print(f"proxy's own CPU per HEAD above the floor: {own:.3f} ms uncached "
              f"({as_proxy:+.3f} above the floor that reads its config and logs); kept, above "
              f"the answering floor (two store reads, as the proxy's): {by_tag:+.3f} ms by tag, "
              f"{by_digest:+.3f} ms by digest")
    if copies:
        print()
        ratios = [p / d for p, d in zip(copies["proxy"], copies["direct"])]
        print(f"skopeo copy of a {args.image} MiB one-layer image to dir: (1 layer through "
              f"`follow`), medians of {args.rounds} rounds: direct {med(copies['direct']):.2f} s, "
              f"proxy {med(copies['proxy']):.2f} s, proxy ÷ direct time {med(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
