"""A registry UI in a real browser (Debian's chromium, headless): a small page on an origin the
route lists (`"cors"`) lists repositories and tags through the proxy and shows a manifest's
digest; the same page on another origin cannot read a thing. The screenshot of the page is
kept as the test's artifact (under $E2E_WORK/artifacts/).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

import clients
import harness

UI = Path(__file__).resolve().parent / "ui"
ARTIFACTS = harness.WORK / "artifacts"


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail("chromium is not installed (apt-get install chromium chromium-driver)")
    return exe


def page_server(host: str) -> harness.Service:
    return harness.Service(f"ui-{host}", [sys.executable, harness.ROOT / "tests" / "e2e" / "staticserver.py",
                                          "--listen", f"{host}:0", "--root", UI],
                           host=host, port=0, announce=harness.ANNOUNCED)


def browse(url: str, screenshot: Path | None = None) -> str:
    """The page's DOM once its scripts have run (headless chromium, its own profile, no network
    but loopback: the flags keep it from calling home)."""
    profile = clients.tmpdir("chromium-")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000"]
    if screenshot:
        clients.run([chromium(), *flags, f"--screenshot={screenshot}", "--window-size=900,900",
                     url], timeout=120)
    out = clients.run([chromium(), *flags, "--dump-dom", url], timeout=120)
    return out.stdout


def result(dom: str) -> str:
    m = re.search(r'<pre id="result"[^>]*>(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    return html.unescape(m.group(1))


@pytest.fixture(scope="module")
def pages():
    allowed, other = page_server("127.0.0.5"), page_server("127.0.0.6")
    yield allowed, other
    allowed.stop()
    other.stop()


def test_a_listed_origin_s_page_reads_the_registry_and_no_other_does(ups, seeded, pages):
    allowed, other = pages
    table = [{"name": "ui", "upstream": ups.anon.url, "cors": [allowed.url]}]
    proxy = harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=[ups.anon.url],
                                name="ui-proxy")
    try:
        before = harness.outbound(proxy)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "registry-ui.png"
        query = f"?registry={proxy.url}&repository=multiarch"
        seen = result(browse(f"{allowed.url}/index.html{query}", screenshot=shot))
        doc = json.loads(seen)
        assert "multiarch" in doc["repositories"], doc
        assert doc["tags"] == ["latest"], doc
        assert doc["digest"] == seeded["anon"][("multiarch", "latest")], doc
        assert shot.stat().st_size > 1000, "no screenshot"
        log = proxy.wait_log(lambda t: "OPTIONS /v2/multiarch/manifests/latest status=204" in t)
        assert "OPTIONS /v2/multiarch/manifests/latest status=204" in log, log[-2000:]
        # The same page on another origin reads nothing.
        refused = result(browse(f"{other.url}/index.html{query}"))
        assert refused.startswith("ERROR"), refused
        # Preflights are the proxy's: each request that reached the registry was a GET/HEAD.
        after = harness.outbound(proxy)
        assert sum(after.values()) - sum(before.values()) >= 3
    finally:
        proxy.stop()
