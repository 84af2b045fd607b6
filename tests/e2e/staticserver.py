"""A static file server with Range support, standing in for a registry's blob CDN.

    python3 staticserver.py --listen 127.0.0.3:0 --root DIR

Serves GET and HEAD of files under DIR (query strings ignored). A single `Range: bytes=a-b`,
`bytes=a-` or `bytes=-n` gets 206 with Content-Range; an unsatisfiable one 416; several ranges
are answered with the whole file (200), which RFC 9110 allows. Every request is logged to stdout
as `CDNLOG {json}` with method, path, range, status and whether an Authorization header came
along (its value is never logged). The line is written before the answer, so a client that
has its answer finds the line in the log.
"""
import argparse
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

ROOT = None
CHUNK = 1 << 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-cdn/1"

    def log_message(self, fmt, *args):
        pass

    def _log(self, **entry):
        sys.stdout.write("CDNLOG " + json.dumps(entry, sort_keys=True) + "\n")
        sys.stdout.flush()

    def _error(self, status, method, path, rng):
        body = b"" if method == "HEAD" else f"{status}\n".encode()
        self._log(method=method, path=path, range=rng, status=status,
                  authorization="Authorization" in self.headers)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method):
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        full = os.path.realpath(os.path.join(ROOT, path.lstrip("/")))
        if not full.startswith(ROOT + os.sep) or not os.path.isfile(full):
            return self._error(404, method, path, rng)
        size = os.path.getsize(full)
        start, end, status = 0, size - 1, 200
        if rng:
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start = max(size - int(m.group(2)), 0)
                if start >= size or start > end:
                    self._log(method=method, path=path, range=rng, status=416,
                              authorization="Authorization" in self.headers)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        length = end - start + 1 if size else 0
        self._log(method=method, path=path, range=rng, status=status,
                  authorization="Authorization" in self.headers)
        self.send_response(status)
        # Blobs are bytes; the registry UI's page (test_browser.py) is a page.
        html = path.endswith(".html")
        self.send_header("Content-Type", "text/html; charset=utf-8" if html else "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if method == "GET" and length:
            try:
                with open(full, "rb") as fh:
                    fh.seek(start)
                    left = length
                    while left:
                        chunk = fh.read(min(CHUNK, left))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def do_GET(self):
        self._serve("GET")

    def do_HEAD(self):
        self._serve("HEAD")


def main():
    global ROOT
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    ROOT = os.path.realpath(a.root)
    host, _, port = a.listen.rpartition(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    # --listen HOST:0: the kernel chooses the port, printed for the harness to read.
    print(f"static server listening on http://{host}:{srv.server_port} serving {ROOT}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
