"""A transparent front for distribution 2.8 that paginates tags/list the way distribution 3 and
Docker Hub do. distribution 2.8 (the Debian package) ignores `n` and `last` on
`GET /v2/<name>/tags/list` and returns every tag unsorted on one page; newer registries sort the
tags, return at most `n` after `last`, and add `Link: </v2/<name>/tags/list?last=X&n=N>;
rel="next"` (relative, like distribution's catalog Link).

    python3 tagpager.py --listen 127.0.0.1:0 --upstream http://127.0.0.1:REGPORT

Every other request, and tags/list without n/last, is relayed unchanged (status, headers, body;
Authorization included, so the upstream's auth still applies). Each paginated request is logged
as `PAGERLOG {json}`.

With `--sign-redirects SECONDS`, the `Location` of every redirect gets `Expires=<now+SECONDS>`
appended, as CloudFront's signed URLs carry it (the static CDN ignores queries): what lets the
proxy keep a blob's redirect for as long as its signature lasts.
"""
import argparse
import http.client
import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

UPSTREAM = None
SIGN_SECONDS = None
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def handle_one_request(self):
        # Clients probe HTTPS first on insecure registries: refuse a TLS ClientHello at once
        # instead of waiting for a request line that never comes.
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first in (b"", b"\x16"):
            self.close_connection = True
            return
        super().handle_one_request()

    def _upstream(self, method, path, body=None):
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=120)
        # Every header line as it came: clients send one Accept line per media type.
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self.headers.get("Host", UPSTREAM.netloc))
        for k, v in self.headers.items():
            if k.lower() not in HOP | {"host", "content-length"}:
                conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read() if method != "HEAD" else b""
        conn.close()
        return resp, data

    def _reply(self, status, headers, data, length=None):
        self.send_response(status)
        for k, v in headers:
            if k.lower() in HOP or k.lower() == "content-length":
                continue
            if k.lower() == "location" and SIGN_SECONDS and 300 <= status < 400:
                v += ("&" if "?" in v else "?") + f"Expires={int(time.time()) + SIGN_SECONDS}"
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _relay(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        resp, data = self._upstream(method, self.path, body)
        self._reply(resp.status, resp.getheaders(), data,
                    length=resp.getheader("Content-Length") if method == "HEAD" else None)

    def do_GET(self):
        u = urlsplit(self.path)
        q = parse_qs(u.query)
        if not (u.path.endswith("/tags/list") and ("n" in q or "last" in q)):
            return self._relay("GET")
        resp, data = self._upstream("GET", u.path)
        if resp.status != 200:
            return self._reply(resp.status, resp.getheaders(), data)
        doc = json.loads(data)
        tags = sorted(doc.get("tags") or [])
        last = q.get("last", [""])[0]
        if last:
            tags = [t for t in tags if t > last]
        n = int(q["n"][0]) if "n" in q else len(tags)
        page, more = tags[:n], len(tags) > n
        out = json.dumps({"name": doc["name"], "tags": page}).encode() + b"\n"
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() != "link"]
        if more and page:
            headers.append(("Link", f'<{u.path}?{urlencode({"last": page[-1], "n": n})}>; rel="next"'))
        sys.stdout.write("PAGERLOG " + json.dumps({"path": self.path, "returned": len(page),
                                                  "more": more}) + "\n")
        sys.stdout.flush()
        self._reply(200, headers, out)

    def do_HEAD(self):
        self._relay("HEAD")

    def do_POST(self):
        self._relay("POST")

    def do_PUT(self):
        self._relay("PUT")

    def do_PATCH(self):
        self._relay("PATCH")

    def do_DELETE(self):
        self._relay("DELETE")


def main():
    global UPSTREAM, SIGN_SECONDS
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--sign-redirects", type=int, metavar="SECONDS")
    a = ap.parse_args()
    UPSTREAM = urlsplit(a.upstream)
    SIGN_SECONDS = a.sign_redirects
    host, _, port = a.listen.rpartition(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    # --listen HOST:0: the kernel chooses the port, printed for the harness to read.
    print(f"tag pager listening on http://{host}:{srv.server_port} for {a.upstream}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
