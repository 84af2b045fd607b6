"""The key-value store under concurrency: buckets are merged by compare-and-swap
(`wasi:keyvalue` atomics), so writers that meet in one bucket lose nothing: one instance on
the test host's SQLite store, and two instances on one Redis (SpinKube's replicas).

To aim 16 writers at one bucket the test computes buckets as the component does (a bucket is
chosen by HMAC-SHA256 under the store's secret, which the test reads from the store, as only
someone who can read the store can), and checks its computation on one entry first.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

import harness
from clients import call
from upstream_double import MANIFEST, NAME, manifest

ACCEPT = "application/vnd.oci.image.manifest.v1+json"
TTL = "3600"
SECRET_KEY = "spin-registry-proxy:secret"


def identity(kind: str, upstream: str, *parts: str) -> str:
    h = hashlib.sha256()
    for p in (kind, upstream, "anonymous", *parts):
        h.update(p.encode() + b"\0")
    return h.hexdigest()


def bucket(secret: bytes, kind: str, ident: str, buckets: int) -> int:
    mac = hmac.new(secret, kind.encode() + b"\0" + ident.encode() + b"\0", hashlib.sha256)
    return int.from_bytes(mac.digest()[:8], "big") % buckets


class Sqlite:
    def __init__(self, proxy):
        self.path = Path(proxy.state_dir) / "sqlite_key_value.db"

    def get(self, key: str):
        with sqlite3.connect(self.path, timeout=30) as db:
            row = db.execute("SELECT value FROM spin_key_value WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None


class Redis:
    def __init__(self, port: int):
        self.port = port

    def get(self, key: str):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", "GET", key],
                             capture_output=True, check=True).stdout.rstrip(b"\n")
        return out or None


@pytest.mark.parametrize("where", ["sqlite", "redis"])
def test_sixteen_writers_into_one_bucket_lose_nothing(fresh, env, redis_server, tmp_path, where):
    env.up.route(f"/v2/{NAME}/manifests/", manifest(MANIFEST), prefix=True)
    variables = env.variables(tag_ttl=TTL)
    if where == "redis":
        rc = tmp_path / "runtime-config.toml"
        rc.write_text(f'[key_value_store.default]\ntype = "redis"\n'
                      f'url = "redis://127.0.0.1:{redis_server.port}"\n')
        proxies = [harness.start_proxy(variables, runtime_config=rc) for _ in range(2)]
        kv = Redis(redis_server.port)
    else:
        proxies = [fresh(variables)]
        kv = Sqlite(proxies[0])
    try:
        def get(i, tag):
            return call(proxies[i % len(proxies)].url, "GET", f"/v2/{NAME}/manifests/{tag}",
                        headers=[("Accept", ACCEPT)]).status

        def tag_id(tag):
            return identity("tag", env.up.url, NAME, tag, TTL)

        assert get(0, "first") == 200
        secret = bytes.fromhex(kv.get(SECRET_KEY).decode())
        # The computation, checked: the first tag's entry is in the bucket it names.
        first = f"spin-registry-proxy:tag:{bucket(secret, 'tag', tag_id('first'), 128)}"
        assert tag_id("first") in [e["identity"] for e in json.loads(kv.get(first))]
        for round_ in range(3):
            # 16 tags that share one bucket (not the first's), written at once.
            by_bucket = {}
            for i in range(4000):
                tag = f"r{round_}-t{i}"
                by_bucket.setdefault(bucket(secret, "tag", tag_id(tag), 128), []).append(tag)
            target, tags = next((b, t[:16]) for b, t in by_bucket.items()
                                if len(t) >= 16 and f"spin-registry-proxy:tag:{b}" != first)
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda it: get(*it), enumerate(tags)))
            assert statuses == [200] * 16
            found = {e["identity"] for e in json.loads(kv.get(f"spin-registry-proxy:tag:{target}"))}
            lost = [t for t in tags if tag_id(t) not in found]
            assert not lost, f"round {round_}: {len(lost)} of 16 entries lost: {lost}"
    finally:
        if where == "redis":
            for p in proxies:
                p.stop()
