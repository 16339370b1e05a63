#!/usr/bin/env python3
"""A small HTTP/1.1 file server with Range support and fault injection, for
tests/test_download.c.

    http_range_server.py DIR

Binds 127.0.0.1 on a free port, prints the port on stdout (one line), then
serves the files under DIR until killed. Faults come from query parameters;
requests are counted per `tag` (the whole path when there is none):

    tag=NAME      groups requests for n503, drop and /_stats
    n503=N        answer 503 to the first N requests of the tag
    n416=N        answer 416 to the first N requests of the tag that carry Range
    status=CODE   always answer CODE (with a short body)
    drop=N        on the first request of the tag, send the headers and N bytes
                  of the body, then close the connection
    norange=1     ignore Range (answer 200 with the whole file)
    extra=N       serve the file followed by N more bytes ("X")
    chunk=N, delay_ms=M   send the body N bytes at a time, M ms apart

GET /_stats?tag=NAME answers "requests=N\\nranges=R1,R2,...\\n", where Ri is
the Range header of request i ("-" when there was none).
"""
import http.server
import os
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()
COUNTS = {}
RANGES = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if os.environ.get("FERRY_HTTP_LOG"):
            sys.stderr.write("http: " + (format % args) + "\n")

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        tag = params.get("tag", self.path)

        if url.path == "/_stats":
            with LOCK:
                n = COUNTS.get(tag, 0)
                ranges = ",".join(RANGES.get(tag, []))
            self.reply(200, f"requests={n}\nranges={ranges}\n".encode())
            return

        with LOCK:
            n = COUNTS[tag] = COUNTS.get(tag, 0) + 1
            RANGES.setdefault(tag, []).append(self.headers.get("Range", "-"))

        if "status" in params:
            self.reply(int(params["status"]), b"forced status\n")
            return
        if n <= int(params.get("n503", "0")):
            self.reply(503, b"try again later\n")
            return

        if self.headers.get("Range") and n <= int(params.get("n416", "0")):
            self.reply(416, b"")
            return

        root = os.path.realpath(sys.argv[1])
        path = os.path.realpath(os.path.join(root, urllib.parse.unquote(url.path).lstrip("/")))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            self.reply(404, b"not found\n")
            return
        with open(path, "rb") as f:
            data = f.read()
        data += b"X" * int(params.get("extra", "0"))

        code, start, end = 200, 0, len(data)
        headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
        rng = self.headers.get("Range")
        if rng and params.get("norange") != "1":
            spec = rng.removeprefix("bytes=")
            first, _, last = spec.partition("-")
            first = int(first)
            if first >= len(data):
                self.reply(416, b"", [("Content-Range", f"bytes */{len(data)}")])
                return
            end = min(int(last) + 1, len(data)) if last else len(data)
            code, start = 206, first
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
        body = data[start:end]

        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

        drop = int(params.get("drop", "-1"))
        if drop >= 0 and n == 1:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return

        chunk = int(params.get("chunk", "0")) or len(body) or 1
        delay = int(params.get("delay_ms", "0")) / 1000.0
        try:
            for off in range(0, len(body), chunk):
                self.wfile.write(body[off : off + chunk])
                self.wfile.flush()
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: http_range_server.py DIR\n")
        return 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
