#!/usr/bin/env python3
"""Economy benchmark: what each pull costs the upstream, cold and warm, per client and mode.

Starts what the end-to-end tests use: distribution with token auth (its token server on
127.0.0.2, as Docker Hub's realm is on auth.docker.io) behind a front that signs its blob
redirects for an hour (`Expires=`, as CloudFront does), blob storage on 127.0.0.3, and the
images the tests build offline. For each client (docker, containerd's ctr, skopeo) and each
`blob_redirect` mode it starts a fresh proxy (the component spin.toml names, in the test host,
which counts its outbound requests per origin), pulls an image twice (the client's own store
emptied in between), and prints the requests each pull cost:

  registry   requests to the registry and its token realm (what rate limits and Fermyon
             Cloud's 500 outbound requests per hour count against the proxy)
  storage    requests to blob storage (only `follow` makes them: `pass` hands the client the
             signed URL)

how many pulls of the image an hour's 500 outbound requests allow, cold and warm, and how many
upstream connections each pull opened (a request on a pooled connection pays no TLS handshake).
Numbers only, no assertion; the exit status is non-zero only when a pull failed.

    python3 tests/bench/economy.py                  # layers20 (config + 20 layers) and multiarch
    python3 tests/bench/economy.py --images layers20 --clients docker
"""
from __future__ import annotations

import argparse
import sys

from benchlib import ROOT, harness, runtime

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import clients  # noqa: E402
import images  # noqa: E402
import upstreams  # noqa: E402

BUDGET = 500  # Fermyon Cloud: outbound requests per hour per app


def cost(before: dict, after: dict, origins) -> int:
    return sum(after.get(o, 0) - before.get(o, 0) for o in origins)


def counts(proxy, ups, reg) -> dict:
    """Upstream requests per origin so far, and connections opened: the test host counts them
    itself; Spin does not (SPIN_BIN), so there they come from the upstreams' own logs (the
    registry's access log, the realm's TOKENLOG and the storage's CDNLOG lines, each written
    as the request is answered: read once the pull is over, after a moment), with no count of
    connections."""
    if not harness.SPIN_BIN:
        return harness.counters(proxy)
    import time
    time.sleep(0.5)
    registry = ups.registries["token"].service.log()
    return {"connects": None, "outbound": {
        reg.url: sum(1 for ln in registry.splitlines() if '" 20' in ln or '" 30' in ln
                     or '" 40' in ln or '" 50' in ln),
        ups.token_server.url: ups.token_server.service.log().count("TOKENLOG "),
        ups.token.cdn.url: ups.token.cdn.service.log().count("CDNLOG "),
    }}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="layers20,multiarch",
                    help="comma-separated image keys of tests/e2e/images.py")
    ap.add_argument("--clients", default="docker,ctr,skopeo", help="docker, ctr, skopeo")
    args = ap.parse_args()
    keys = args.images.split(",")
    wanted = args.clients.split(",")
    ups = upstreams.Upstreams()
    containerd = dockerd = None
    rows = []
    try:
        built = images.build_all()
        seeded = images.seed(ups.token, built)
        reg = ups.front("token", "signed")
        if "docker" in wanted or "ctr" in wanted:
            containerd = clients.Containerd()
        if "docker" in wanted:
            dockerd = clients.Docker(containerd)
        registry_origins = [reg.url, ups.token_server.url]
        storage_origins = [ups.token.cdn.url]
        for key in keys:
            name = images.IMAGE_REPOS[key]
            digest = seeded[(name, "latest")]
            blobs = len(built[key]["blobs"])
            for client in wanted:
                for mode in ("pass", "follow"):
                    proxy = harness.start_proxy({
                        "upstream": reg.url, "upstream_auth": ups.token_server.url,
                        "upstream_cdn": ups.token.cdn.url, "blob_redirect": mode,
                    }, name=f"economy-{client}-{mode}")
                    try:
                        ref = f"127.0.0.1:{proxy.port}/{name}:latest"
                        counted = [counts(proxy, ups, reg)]
                        for _ in range(2):
                            if client == "docker":
                                dockerd.remove_all_images()
                                p = dockerd.pull(dockerd.new_config(), ref)
                                assert f"Digest: {digest}" in p.stdout, p.stdout
                            elif client == "ctr":
                                ns = containerd.new_namespace()
                                containerd.pull(ns, ref)
                                assert containerd.image_digest(ns, ref) == digest
                                containerd.drop_namespace(ns)
                            else:
                                clients.skopeo_copy_all(ref)
                            counted.append(counts(proxy, ups, reg))
                    finally:
                        proxy.stop()
                    out = [c["outbound"] for c in counted]
                    cold = (cost(out[0], out[1], registry_origins),
                            cost(out[0], out[1], storage_origins))
                    warm = (cost(out[1], out[2], registry_origins),
                            cost(out[1], out[2], storage_origins))
                    # New upstream connections, all origins: a pooled one costs no handshake.
                    opened = ["-" if counted[i]["connects"] is None
                              else counted[i + 1]["connects"] - counted[i]["connects"]
                              for i in (0, 1)]
                    rows.append((key, blobs, client, mode, cold, warm, opened))
                    print(f"{key} ({blobs} blobs) {client} {mode}: cold {cold[0]} + {cold[1]} "
                          f"storage, warm {warm[0]} + {warm[1]} storage; connections opened: "
                          f"cold {opened[0]}, warm {opened[1]}", flush=True)
    finally:
        if dockerd:
            dockerd.remove_all_images()
            dockerd.stop()
        if containerd:
            containerd.stop()
        ups.stop()

    print()
    print(f"runtime: {runtime()}")
    print("Upstream requests per pull (registry + realm; + blob storage), and pulls per hour "
          f"within {BUDGET} outbound requests")
    print("| image | blobs | client | blob_redirect | cold | warm | pulls/h cold | pulls/h warm "
          "| connections opened cold / warm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, blobs, client, mode, cold, warm, opened in rows:
        per_hour = lambda c: "unbounded" if sum(c) == 0 else str(BUDGET // sum(c))  # noqa: E731
        print(f"| {key} | {blobs} | {client} | {mode} | {cold[0]} + {cold[1]} | "
              f"{warm[0]} + {warm[1]} | {per_hour(cold)} | {per_hour(warm)} | "
              f"{opened[0]} / {opened[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
