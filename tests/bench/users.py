#!/usr/bin/env python3
"""What the proxy's own users cost: checking a user's token on each request, and a login.

Starts a real `docker-registry serve` with a one-layer image, and one proxy in front of it (the
test host, or the real Spin CLI with SPIN_BIN=path/to/spin) with two routes to it:

  open   /o/...   anyone (no token)
  users  /u/...   the proxy's users, with tokens it signs (`"access": "users"`)

Both keep manifests (a HEAD by digest is answered from the store after the first), so the
difference in CPU per HEAD between the two is what a request on a `users` route adds: checking
the token (signature, expiry, origin, route, scope). Then logins at the token endpoint, with an
argon2id password (OWASP's parameters, as tests/users makes them) and a bcrypt one (cost 10, and
htpasswd's default 5): CPU per login.

Interleaved rounds, medians; numbers only, no assertion.

    python3 tests/bench/users.py                      # 7 rounds of 4000 HEADs, 20 logins each
    SPIN_BIN=../shared/tools/spin python3 tests/bench/users.py
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from benchlib import harness, image, start_registry, runtime
from speed import ACCEPT, cpu_seconds, heads

SECRET = "bench-token-secret-0123456789abcdef0123"
ARGON2 = ("$argon2id$v=19$m=19456,t=2,p=1$ci7FBgUlvmzJ8DXfgcasNQ$"
          "0TswAlbqinpEiHVlBoi6RuR9Vh+AdPM1oLsXPhKjuhs")  # "s3cret", by tests/users


def bcrypt(cost: int) -> str:
    out = subprocess.run(["htpasswd", "-nbBC", str(cost), "x", "s3cret"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return out.split(":", 1)[1]


def token_url(proxy, scope: str) -> str:
    return f"{proxy.url}/token?scope={scope}"


def login(proxy, user: str, scope: str) -> str:
    req = urllib.request.Request(token_url(proxy, scope), headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:s3cret".encode()).decode()})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["token"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--heads", type=int, default=4000)
    ap.add_argument("--logins", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-users-", dir=harness.WORK))
    registry = start_registry(work, "users")
    try:
        img = image(registry.url, "bench/app", "1", work, os.urandom(1024))
        users = json.dumps([
            {"name": name, "password": hash_, "access": [{"repositories": ["**"]}]}
            for name, hash_ in [("argon", ARGON2), ("bcrypt10", bcrypt(10)),
                                ("bcrypt5", bcrypt(5))]])
        table = [{"name": "open", "path": "o", "upstream": registry.url},
                 {"name": "users", "path": "u", "upstream": registry.url, "access": "users"}]
        proxy = harness.start_proxy({"routes": json.dumps(table), "users": users,
                                     "token_secret": SECRET, "tag_ttl": "60"},
                                    allowed_hosts=[registry.url], name="bench-users")
        try:
            token = login(proxy, "bcrypt5", "repository:u/bench/app:pull")
            digest = img["manifest"]
            urls = {"open": (f"{proxy.url}/v2/o/bench/app/manifests/{digest}", None),
                    "users": (f"{proxy.url}/v2/u/bench/app/manifests/{digest}", token)}
            cpu = {k: [] for k in urls}
            rps = {k: [] for k in urls}
            logins = {k: [] for k in ("argon", "bcrypt10", "bcrypt5")}
            for k, (url, tok) in urls.items():  # warm: a GET puts the manifest in the store
                warm = ["curl", "-sf", "-o", "/dev/null", "-H", f"Accept: {ACCEPT}", url]
                if tok:
                    warm[-1:-1] = ["-H", f"Authorization: Bearer {tok}"]
                subprocess.run(warm, check=True)
                heads(url, 64, proxy.pid, tok)
            for r in range(args.rounds):
                order = list(urls) if r % 2 == 0 else list(reversed(urls))
                for k in order:
                    url, tok = urls[k]
                    rate, ms = heads(url, args.heads, proxy.pid, tok)
                    rps[k].append(rate)
                    cpu[k].append(ms)
                for user in logins:
                    c0 = cpu_seconds(proxy.pid)
                    for _ in range(args.logins // args.rounds + 1):
                        login(proxy, user, "repository:u/bench/app:pull")
                    n = args.logins // args.rounds + 1
                    logins[user].append(1000 * (cpu_seconds(proxy.pid) - c0) / n)
        finally:
            proxy.stop()
    finally:
        registry.stop()
    med = statistics.median
    print(f"runtime: {runtime()}")
    print(f"HEAD by digest from the store, hey -c 16, {args.heads} per round, "
          f"medians of {args.rounds} rounds")
    print(f"{'route':8} {'req/s':>9} {'CPU ms/HEAD':>12}")
    for k in urls:
        print(f"{k:8} {med(rps[k]):9.0f} {med(cpu[k]):12.4f}")
    diffs = [u - o for u, o in zip(cpu["users"], cpu["open"])]
    print(f"token check (users - open, per round, median): {med(diffs):.4f} ms "
          f"(rounds: {', '.join(f'{d:.4f}' for d in diffs)})")
    print("login at the token endpoint, CPU ms per login (median of rounds):")
    for user, ms in logins.items():
        print(f"  {user:9} {med(ms):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
