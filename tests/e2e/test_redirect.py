"""Blob redirects to the CDN (127.0.0.3): "pass" hands the client the CDN URL, "follow" makes
the component fetch it so the client never sees the CDN."""
import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import clients
from images import PREFIX


def blob_path(digest):
    hexd = digest.split(":")[1]
    return f"/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"


def big_layer(built):
    inst = next(iter(built["big"]["instances"].values()))
    return inst["layers"][0]


def blob_bytes(built, key, digest):
    return (Path(built[key]["dir"]) / digest.split(":")[1]).read_bytes()


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_pass_redirects_client_to_cdn(prefix, make_target, ups, built, needs_proxy):
    target = make_target("token", prefix=prefix, blob_redirect="pass")
    cdn = ups.token.cdn
    c = target.http()
    dgst = built["layers20"]["blobs"][3]
    mark = cdn.mark()
    r = c.request("GET", f"/v2/layers20/blobs/{dgst}", scope="repository:layers20:pull")
    assert r.status in (302, 303, 307, 308), f"blob GET with blob_redirect=pass: {r!r}"
    loc = r.header("Location")
    assert loc, f"redirect without Location: {r!r}"
    u = urlsplit(loc)
    assert f"{u.scheme}://{u.hostname}:{u.port}" == cdn.url, f"Location {loc!r} is not the CDN {cdn.url}"
    assert u.path == blob_path(dgst), f"Location path {u.path!r}"
    assert not cdn.since(mark), f"the proxy fetched from the CDN itself in pass mode: {cdn.since(mark)}"
    got = clients.http_request("GET", loc)
    assert got.status == 200 and clients.sha256_bytes(got.body) == dgst, f"CDN GET {got!r}"
    log = cdn.wait_since(mark)
    assert [e["method"] for e in log] == ["GET"] and log[0]["path"] == blob_path(dgst), log


def test_pass_clients_fetch_from_cdn(make_target, ups, built, needs_proxy, containerd, ctr_ns):
    target = make_target("token", blob_redirect="pass")
    cdn = ups.token.cdn
    mark = cdn.mark()
    copy = clients.skopeo_copy_all(target.ref("layers20"))
    clients.verify_dir_image(copy.dest, built["layers20"])
    want = {blob_path(d) for d in built["layers20"]["blobs"]}

    def got(entries):
        return {e["path"] for e in entries if e["method"] == "GET" and e["status"] == 200}

    gets = got(cdn.wait_since(mark, lambda es: want <= got(es)))
    assert want <= gets, f"skopeo did not GET these blobs from the CDN: {sorted(want - gets)}"
    mark = cdn.mark()
    containerd.pull(ctr_ns, target.ref("multiarch"))
    inst = [i for i in built["multiarch"]["instances"].values()
            if i["platform"]["architecture"] == "amd64"][0]
    want = {blob_path(d) for d in [inst["config"], *inst["layers"]]}
    gets = got(cdn.wait_since(mark, lambda es: want <= got(es)))
    assert want <= gets, cdn.since(mark)
    assert not any(e["authorization"] for e in cdn.entries()), "a client sent Authorization to the CDN"


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_follow_streams_blob(prefix, make_target, ups, built, needs_proxy):
    target = make_target("token", prefix=prefix, blob_redirect="follow")
    cdn = ups.token.cdn
    c = target.http()
    dgst = built["layers20"]["blobs"][5]
    mark = cdn.mark()
    r = c.request("GET", f"/v2/layers20/blobs/{dgst}", scope="repository:layers20:pull")
    assert r.status == 200, f"blob GET with blob_redirect=follow: {r!r}"
    assert clients.sha256_bytes(r.body) == dgst, f"blob body does not hash to {dgst}"
    assert int(r.header("Content-Length", -1)) == len(r.body), r
    assert not r.header("Location"), r
    assert not [v for k, v in r.headers if cdn.service.host in v], f"CDN address leaks: {r!r}"
    log = cdn.wait_since(mark)
    assert any(e["method"] == "GET" and e["path"] == blob_path(dgst) for e in log), (
        f"the component did not fetch {blob_path(dgst)} from the CDN: {log}")
    assert not any(e["authorization"] for e in log), f"Authorization forwarded to the CDN: {log}"


def test_follow_range_and_head(make_target, ups, built, needs_proxy):
    target = make_target("token", blob_redirect="follow")
    c = target.http()
    dgst = big_layer(built)
    data = blob_bytes(built, "big", dgst)
    path = f"/v2/big/blobs/{dgst}"
    r = c.request("GET", path, {"Range": "bytes=1000-1999"}, scope="repository:big:pull")
    assert r.status == 206, f"ranged GET through follow: {r!r}"
    assert r.body == data[1000:2000], "ranged body differs"
    assert r.header("Content-Range") == f"bytes 1000-1999/{len(data)}", r
    r = c.request("GET", path, {"Range": f"bytes={len(data) - 100}-"}, scope="repository:big:pull")
    assert r.status == 206 and r.body == data[-100:], f"resume GET (bytes=N-): {r!r}"
    r = c.request("HEAD", path, scope="repository:big:pull")
    assert r.status == 200, f"blob HEAD through follow: {r!r}"
    assert int(r.header("Content-Length", -1)) == len(data), r
    assert not r.header("Location"), r


def test_follow_big_blob_streams_whole(make_target, ups, built, needs_proxy):
    target = make_target("token", blob_redirect="follow")
    c = target.http()
    dgst = big_layer(built)
    r = c.request("GET", f"/v2/big/blobs/{dgst}", scope="repository:big:pull")
    assert r.status == 200, f"{r.status} {r.reason} {r.headers}"
    assert len(r.body) == len(blob_bytes(built, "big", dgst))
    assert hashlib.sha256(r.body).hexdigest() == dgst.split(":")[1], "100 MiB blob corrupted"


def test_follow_clients_never_see_cdn(make_target, ups, built, needs_proxy, containerd, ctr_ns):
    target = make_target("token", blob_redirect="follow")
    cdn = ups.token.cdn
    mark = cdn.mark()
    p = containerd.pull(ctr_ns, target.ref("layers20"))
    assert containerd.image_digest(ctr_ns, target.ref("layers20")) == target.digest("layers20")
    dump = p.stdout + p.stderr
    assert cdn.service.host not in dump, "ctr saw the CDN address:\n" + dump[-3000:]
    assert " 307 " not in dump and "Temporary Redirect" not in dump, "a redirect reached ctr"
    want = {blob_path(d) for d in built["layers20"]["blobs"]}
    gets = {e["path"] for e in cdn.wait_since(
        mark, lambda es: want <= {e["path"] for e in es if e["method"] == "GET"}) if e["method"] == "GET"}
    assert want <= gets, (
        f"the component's CDN fetches are missing from the CDN log: {cdn.since(mark)}")
