"""The key-value store under concurrency: buckets are merged by compare-and-swap
(`wasi:keyvalue` atomics), so writers that meet in one bucket lose nothing: one instance on
the test host's SQLite store, and two instances on one Redis (SpinKube's replicas).

To aim 16 writers at one bucket the test computes buckets as the component does (a bucket is
chosen by HMAC-SHA256 under the store's secret, which the test reads from the store, as only
someone who can read the store can), and checks its computation on one entry first.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
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

    def clear(self):
        with sqlite3.connect(self.path, timeout=30) as db:
            db.execute("DELETE FROM spin_key_value")


class Redis:
    def __init__(self, port: int):
        self.port = port

    def get(self, key: str):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", "GET", key],
                             capture_output=True, check=True).stdout.rstrip(b"\n")
        return out or None

    def clear(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "FLUSHALL"], capture_output=True,
                       check=True)


@contextlib.contextmanager
def on_store(where, fresh, env, redis_server, tmp_path):
    """Proxies on one store, and a reader of it: one instance on the SQLite store, or two on
    one Redis (SpinKube's replicas)."""
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

        def stored(secret, tag):
            """The identities kept in the bucket `tag`'s entry goes to under `secret`."""
            kept = kv.get(f"spin-registry-proxy:tag:{bucket(secret, 'tag', tag_id(tag), 128)}")
            return {e["identity"] for e in json.loads(kept or b"[]")}

        yield get, tag_id, stored, kv
    finally:
        if where == "redis":
            for p in proxies:
                p.stop()


@pytest.mark.parametrize("where", ["sqlite", "redis"])
def test_sixteen_writers_into_one_bucket_lose_nothing(fresh, env, redis_server, tmp_path, where):
    with on_store(where, fresh, env, redis_server, tmp_path) as (get, tag_id, stored, kv):
        assert get(0, "first") == 200
        secret = bytes.fromhex(kv.get(SECRET_KEY).decode())
        # The computation, checked: the first tag's entry is in the bucket it names.
        assert tag_id("first") in stored(secret, "first")
        first = bucket(secret, "tag", tag_id("first"), 128)
        for round_ in range(3):
            # 16 tags that share one bucket (not the first's), written at once.
            by_bucket = {}
            for i in range(4000):
                tag = f"r{round_}-t{i}"
                by_bucket.setdefault(bucket(secret, "tag", tag_id(tag), 128), []).append(tag)
            tags = next(t[:16] for b, t in by_bucket.items() if len(t) >= 16 and b != first)
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda it: get(*it), enumerate(tags)))
            assert statuses == [200] * 16
            lost = [t for t in tags if tag_id(t) not in stored(secret, t)]
            assert not lost, f"round {round_}: {len(lost)} of 16 entries lost: {lost}"


@pytest.mark.parametrize("where", ["sqlite", "redis"])
def test_first_requests_on_an_empty_store_keep_under_one_secret(fresh, env, redis_server,
                                                                tmp_path, where):
    """16 first requests at once on an empty store: each finds no secret and writes its own
    unless one is kept by then, under a lock that one of them makes. All must go on with the
    secret that stays, or what they keep is where nobody looks."""
    with on_store(where, fresh, env, redis_server, tmp_path) as (get, tag_id, stored, kv):
        for round_ in range(2):
            if round_:
                kv.clear()
            tags = [f"fresh{round_}-{i}" for i in range(16)]
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda it: get(*it), enumerate(tags)))
            assert statuses == [200] * 16
            secret = bytes.fromhex(kv.get(SECRET_KEY).decode())
            lost = [t for t in tags if tag_id(t) not in stored(secret, t)]
            assert not lost, f"round {round_}: {len(lost)} of 16 entries lost: {lost}"
