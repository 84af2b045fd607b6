"""Spin's own OCI client through the proxy: `spin registry push` and `pull`, and `spin up
--from` a reference, against distribution with token auth (credentials from docker's config,
as Spin reads them) and anonymous. A Spin application is an OCI artifact of its own kind (a
config of `application/vnd.fermyon.spin.application.v1+config`, one layer per Wasm file), and
Spin's client (oci-client) meets the challenge on `GET /v2/` and asks the token endpoint by
GET with Basic credentials.

These need the Spin CLI (`SPIN_BIN`); without it they are skipped, saying so: the README's
test command runs without one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

import harness
from clients import call
from upstreams import SEEDER

pytestmark = pytest.mark.skipif(not harness.SPIN_BIN,
                                reason="needs the Spin CLI: set SPIN_BIN=/path/to/spin")

FLOOR_WASM = harness.ROOT / "target" / "wasm32-wasip2" / "release" / "forward_floor.wasm"


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    """A Spin application whose one component answers `/-/answer` by itself."""
    if not FLOOR_WASM.exists():
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip2",
                        "--manifest-path", harness.ROOT / "tests" / "bench" / "floor" /
                        "Cargo.toml", "--target-dir", harness.ROOT / "target"],
                       check=True, capture_output=True, cwd=harness.ROOT)
    d = tmp_path_factory.mktemp("spin-app")
    (d / "spin.toml").write_text(f"""spin_manifest_version = 2
[application]
name = "answers"
version = "0.1.0"
[[trigger.http]]
route = "/..."
component = "answers"
[component.answers]
source = "{FLOOR_WASM}"
allowed_outbound_hosts = []
[component.answers.variables]
upstream = "http://127.0.0.1:1"
""")
    return d


@pytest.fixture(scope="module", params=["pass", "follow"])
def proxy(ups, request):
    """Blobs redirected to the registry's storage (127.0.0.3) handed to Spin's client, or
    followed by the proxy."""
    table = [
        {"name": "tok", "host": "127.0.0.1", "path": "tok", "push": True,
         "blob_redirect": request.param,
         "upstream": ups.token.url, "auth": ups.token_server.url, "cdn": ups.token.cdn.url},
        {"name": "anon", "host": "localhost", "upstream": ups.anon.url},
    ]
    allowed = [ups.token.url, ups.token_server.url, ups.token.cdn.url, ups.anon.url]
    p = harness.start_proxy({"routes": json.dumps(table)},
                            allowed_hosts=allowed, name="spin-oci-proxy")
    yield p
    p.stop()


def docker_config(tmp_path: Path, creds=None, host=None) -> dict:
    """The environment of a Spin CLI whose docker config (`DOCKER_CONFIG`, where Spin reads
    registry credentials) holds `creds` for `host`."""
    auths = {}
    if creds:
        auths[host] = {"auth": base64.b64encode(":".join(creds).encode()).decode()}
    conf = tmp_path / f"docker-{uuid.uuid4().hex[:8]}"
    conf.mkdir()
    (conf / "config.json").write_text(json.dumps({"auths": auths}))
    return {"DOCKER_CONFIG": str(conf)}


def spin(args, tmp_path: Path, creds=None, host=None, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([harness.SPIN_BIN, *args], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, **docker_config(tmp_path, creds, host)}, timeout=120)
    assert r.returncode == 0, f"spin {' '.join(map(str, args))}: {r.stdout}\n{r.stderr}"
    return r


def pulled(cache: Path) -> dict:
    """What `spin registry pull` kept: Wasm files by digest, and the manifest and config it
    wrote (Spin writes them again from what it parsed, so compare them with a direct pull's,
    not with the digest)."""
    reg = cache / "registry"
    kept = {p.name: p.read_bytes() for p in (reg / "wasm").iterdir()}
    for name in ("manifest.json", "config.json"):
        kept[name] = next((reg / "manifests").rglob(name)).read_bytes()
    return kept


def test_spin_pushes_pulls_and_runs_an_app_through_the_proxy(proxy, ups, app, tmp_path):
    host = f"127.0.0.1:{proxy.port}"
    ref = f"{host}/tok/spin/answers-{uuid.uuid4().hex[:8]}:1.0"
    pushed = spin(["registry", "push", "--insecure", ref], tmp_path, SEEDER, host, cwd=app)
    assert "Pushed with digest sha256:" in pushed.stdout
    digest = pushed.stdout.split("Pushed with digest ")[1].split()[0]

    spin(["registry", "pull", "--insecure", "--cache-dir", tmp_path / "via", ref], tmp_path,
         SEEDER, host)
    direct = ref.replace(f"{host}/tok/", f"{ups.token.hostport}/")
    spin(["registry", "pull", "--insecure", "--cache-dir", tmp_path / "direct", direct],
         tmp_path, SEEDER, ups.token.hostport)
    via = pulled(tmp_path / "via")
    assert via == pulled(tmp_path / "direct")
    assert via["sha256:" + hashlib.sha256(FLOOR_WASM.read_bytes()).hexdigest()] == \
        FLOOR_WASM.read_bytes()

    # By digest too, and running it: `spin up --from` the reference, from a cache of its own.
    by_digest = ref.rsplit(":", 1)[0] + "@" + digest
    up = harness.Service("spin-up-from", [harness.SPIN_BIN, "up", "--from", by_digest,
                                          "--insecure", "--cache-dir", tmp_path / "up-cache",
                                          "--listen", "127.0.0.1:0"],
                         env=docker_config(tmp_path, SEEDER, host), cwd=tmp_path, port=0,
                         announce=harness.ANNOUNCED, wait=120)
    try:
        assert call(up.url, "GET", "/-/answer").status == 200
    finally:
        up.stop()


def test_spin_pulls_anonymously_what_was_pushed_directly(proxy, ups, app, tmp_path):
    repo = f"spin/direct-{uuid.uuid4().hex[:8]}"
    pushed = spin(["registry", "push", "--insecure", f"{ups.anon.hostport}/{repo}:2.0"],
                  tmp_path, cwd=app)
    digest = pushed.stdout.split("Pushed with digest ")[1].split()[0]
    spin(["registry", "pull", "--insecure", "--cache-dir", tmp_path / "via",
          f"localhost:{proxy.port}/{repo}@{digest}"], tmp_path)
    spin(["registry", "pull", "--insecure", "--cache-dir", tmp_path / "direct",
          f"{ups.anon.hostport}/{repo}:2.0"], tmp_path)
    assert pulled(tmp_path / "via") == pulled(tmp_path / "direct")
