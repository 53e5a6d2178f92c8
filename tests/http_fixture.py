"""A loopback HTTP file server with Range support and scripted faults, for real yt-dlp downloads."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (content, content type)
        self.drop_bodies = 0  # next N bodies of ranged (media) requests are cut off a third of the way through
        self.unavailable = 0  # next N requests get 503
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.body_bytes_sent = 0
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        server = self.server
        with server.lock:
            server.requests.append((self.command, self.path, self.headers.get("Range", "")))
            if server.unavailable:
                server.unavailable -= 1
                self.send_error(503, "try again later")
                return
        if self.path not in server.files:
            self.send_error(404, "no such file")
            return
        content, content_type = server.files[self.path]
        start, end = 0, len(content) - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)), end) if match.group(2) else end
            if start >= len(content):
                self.send_error(416, "range not satisfiable")
                return
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", content_type)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(content)}")
        self.end_headers()
        if not body:
            return
        payload = content[start : end + 1]
        with server.lock:
            drop = server.drop_bodies > 0 and match is not None and len(payload) > 3
            server.drop_bodies -= drop
        if drop:
            payload = payload[: len(payload) // 3]
        try:
            self.wfile.write(payload)
            with server.lock:
                server.body_bytes_sent += len(payload)
        except (BrokenPipeError, ConnectionResetError):
            return
        if drop:
            self.close_connection = True


@contextmanager
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
