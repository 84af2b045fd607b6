"""What a pull costs the upstream, counted by the test host (outbound requests per origin).

The token registry (distribution with its token server on 127.0.0.2) sits behind a front that
signs its blob redirects the way CloudFront does (`Expires=`), so the proxy may keep them for
as long as the signature lasts."""
from __future__ import annotations

import pytest

import harness
from images import IMAGE_REPOS, PREFIX

NAME = IMAGE_REPOS["layers20"]  # one platform: config + 20 layers


@pytest.fixture(scope="module")
def serial_dockerd(containerd):
    """dockerd downloading one blob at a time. Spin's store has no compare-and-swap: two
    downloads whose entries share a bucket can each write it at once, and one entry is lost
    (the next pull asks the upstream for it once; README, Caching). The adapter reads a bucket
    back and merges again, which narrows that window without closing it; what a pull costs is
    measured without it."""
    import clients
    d = clients.Docker(containerd, extra=["--max-concurrent-downloads=1"], name="dockerd-serial")
    yield d
    d.stop()


@pytest.fixture
def docker_one_at_a_time(serial_dockerd):
    yield from serial_dockerd.emptied()


def upstream_cost(before: dict, after: dict, origins) -> int:
    return sum(after.get(o, 0) - before.get(o, 0) for o in origins)


@pytest.mark.parametrize("mode", ["pass", "follow"])
def test_docker_pull_cold_and_warm(mode, make_target, ups, built, docker_one_at_a_time):
    docker = docker_one_at_a_time
    # A tag kept an hour: the warm pull is measured, not how long the cold one took.
    target = make_target("token", blob_redirect=mode, front="signed", tag_ttl="3600")
    registry = [target.registry.url, ups.token_server.url]
    cdn = [ups.token.cdn.url]
    blobs = len(built["layers20"]["blobs"])
    cfg = docker.new_config()
    ref = target.ref(NAME)

    start = harness.outbound(target.proxy)
    p = docker.pull(cfg, ref)
    assert f"Digest: {target.digest(NAME)}" in p.stdout, p.stdout
    cold = harness.outbound(target.proxy)
    docker.remove_all_images()
    p = docker.pull(cfg, ref)
    assert f"Digest: {target.digest(NAME)}" in p.stdout, p.stdout
    warm = harness.outbound(target.proxy)

    cold_registry = upstream_cost(start, cold, registry)
    warm_registry = upstream_cost(cold, warm, registry)
    warm_cdn = upstream_cost(cold, warm, cdn)
    print(f"\n{mode}: docker pull of {blobs} blobs: cold {cold_registry} registry and realm "
          f"requests (+{upstream_cost(start, cold, cdn)} to storage), warm {warm_registry} "
          f"(+{warm_cdn} to storage)")
    # One learns the realm, one fetches the token, the HEAD by tag (a HEAD upstream too:
    # Docker Hub counts none against its pull limit), the manifest's GET by digest; then
    # each blob.
    assert cold_registry <= blobs + 4, (start, cold)
    assert warm_registry == 0, (cold, warm)
    if mode == "pass":
        assert warm_cdn == 0, "the proxy fetched from storage in pass mode"
    else:
        assert warm_cdn == blobs, (cold, warm)


def test_private_content_is_never_kept(make_target, ups, docker):
    """A repository only a login can read: every pull goes to the upstream for its
    manifests, however warm the store."""
    from upstreams import ALICE
    target = make_target("token", front="signed")
    cfg = docker.new_config()
    docker.login(cfg, target.hostport, ALICE)
    ref = target.ref("private/secret")
    docker.pull(cfg, ref)
    docker.remove_all_images()
    before = harness.outbound(target.proxy)
    docker.pull(cfg, ref)
    after = harness.outbound(target.proxy)
    assert upstream_cost(before, after, [target.registry.url]) >= 2, (before, after)
    anon = docker.new_config()
    p = docker.pull(anon, ref, check=False)
    assert p.returncode != 0, "a private image was served to an anonymous client from the store"


def test_an_unreachable_store_costs_requests_never_a_pull(ups, seeded, built, tmp_path):
    """The key-value store on a Redis that is not there (every open, read and write fails):
    pulls work as without a store, each one paying its upstream requests."""
    import clients
    rc = tmp_path / "runtime-config.toml"
    rc.write_text('[key_value_store.default]\ntype = "redis"\n'
                  f'url = "redis://127.0.0.1:{harness.closed_port()}"\n')
    reg = ups.front("token", "signed")
    proxy = harness.start_proxy({"upstream": reg.url, "upstream_auth": ups.token_server.url,
                                 "upstream_cdn": ups.token.cdn.url}, runtime_config=rc)
    try:
        name = IMAGE_REPOS["multiarch"]
        costs = []
        for _ in range(2):
            before = harness.outbound(proxy)
            clients.skopeo_copy_all(f"127.0.0.1:{proxy.port}/{name}:latest")
            costs.append(upstream_cost(before, harness.outbound(proxy), [reg.url]))
        assert costs[0] == costs[1] > 0, costs
        assert "status=5" not in proxy.log(), proxy.log()[-3000:]
    finally:
        proxy.stop()


def test_a_request_reads_one_variable_with_or_without_a_route_table(make_target, ups):
    """On Spin every variable read costs host memory under load and about 0.035 ms: spin.toml
    bundles the application variables into one, `config`, which a request reads alone (eleven
    reads before the bundles, two or three with the former ones)."""
    import json
    import clients
    single = make_target("token").proxy
    table = [{"name": "r", "path": "r", "upstream": ups.anon.url, "prefix": PREFIX}]
    routed = harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=[ups.anon.url],
                                 name="routes-proxy")
    try:
        for proxy, path, reads in [(single, "", 1), (routed, "r/", 1)]:
            before = harness.counters(proxy)["variable_reads"]
            for _ in range(10):
                url = f"http://127.0.0.1:{proxy.port}/v2/{path}{NAME}/manifests/latest"
                accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
                assert clients.http_request("HEAD", url, accept, None).status in (200, 401), url
            after = harness.counters(proxy)["variable_reads"]
            assert after - before == 10 * reads, (proxy.name, before, after)
    finally:
        routed.stop()


def test_answers_the_client_does_not_get_leave_their_connection_open(make_target):
    """Spin's outbound pool (hyper's) closes a connection whose response was dropped before its
    end. The proxy reads the small bodies it does not pass on (error pages it replaces, the
    repository probe of its token endpoint) to their end, so the next request reuses the
    connection instead of paying a new one (and a TLS handshake on a real upstream)."""
    import clients
    target = make_target("anon")
    proxy = target.proxy
    repository = target.name(NAME)
    before = harness.counters(proxy)
    for i in range(10):
        for path, status in [(f"/v2/{repository}/manifests/missing-{i}", 404),
                             (f"/token?service=x&scope=repository:{repository}:pull", 200)]:
            lines = proxy.log().count(f"GET {path.split('?')[0]} ")
            r = clients.http_request("GET", proxy.url + path)
            assert r.status == status, r
            # The body is read after the client has its answer, and the log line written
            # after that: the connection is back in the pool once the line is there.
            proxy.wait_log(lambda t: t.count(f"GET {path.split('?')[0]} ") > lines)
    after = harness.counters(proxy)
    sent = sum(after["outbound"].values()) - sum(before["outbound"].values())
    connects = after["connects"] - before["connects"]
    print(f"\n{sent} upstream requests over {connects} new connections")
    # 10 replaced error pages, and the token endpoint's probes (`/v2/`, the repository) once:
    # its answer for an open repository is kept.
    assert sent >= 12, (before, after)
    assert connects <= 2, (before, after)


def test_counts_can_be_asked_for_as_soon_as_the_host_serves(ups, tmp_path):
    """The counts every economy test reads come on SIGUSR1. A host that announced `Serving`
    before it handled the signal lost it, or died of it, when asked at once (30 of 40 starts;
    once in CI): asked the moment the line is out, ten starts in a row answer."""
    import os
    import signal
    import subprocess
    import time
    if harness.SPIN_BIN:
        pytest.skip("a test of the test host's own counts; SPIN_BIN runs real Spin")
    for i in range(10):
        env = dict(os.environ, SPIN_VARIABLE_UPSTREAM=ups.anon.url)
        argv = [harness.HOST_BIN, "--from", harness.SPIN_TOML, "--listen", "127.0.0.1:0",
                "--state-dir", tmp_path / str(i)]
        host = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            assert host.stdout.readline().startswith(b"Serving"), "the host did not start"
            host.send_signal(signal.SIGUSR1)
            os.set_blocking(host.stdout.fileno(), False)
            out, deadline = b"", time.monotonic() + 10
            while b"OUTBOUND" not in out and host.poll() is None and time.monotonic() < deadline:
                out += host.stdout.read() or b""
                time.sleep(0.02)
            assert b"OUTBOUND" in out, (i, host.poll(), out)
        finally:
            host.kill()
            host.wait()
