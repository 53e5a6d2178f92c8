"""A loopback HTTP server that misbehaves on purpose, one behaviour per path."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, audio: bytes, long_audio: bytes | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.audio = audio  # a valid WAV, served whole at /good.wav
        self.long_audio = long_audio or audio  # served slowly at /slow.wav: ffmpeg's probe ends early in it
        self.closing = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: HostileServer

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, audio = self.path, self.server.audio
        try:
            if path == "/good.wav":
                self._headers(200, "audio/wav", len(audio))
                self.wfile.write(audio)
            elif path == "/stall.wav":  # headers, then nothing, ever
                self._headers(200, "audio/wav", len(audio))
                self.wfile.flush()
                self.server.closing.wait(600)
            elif path == "/trickle.wav":  # a byte every 0.2 s: no socket read ever times out
                self._headers(200, "audio/wav", len(audio))
                for byte in audio:
                    if self.server.closing.wait(0.2):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            elif path in ("/stall-after-header.wav", "/slow.wav"):
                # the first 2 kB at once (yt-dlp's probe is satisfied and hands over to ffmpeg), then
                # nothing, or 5 kB every 0.1 s: only ffmpeg is left waiting
                audio = self.server.long_audio if path == "/slow.wav" else audio
                self._headers(200, "audio/wav", len(audio))
                self.wfile.write(audio[:2048])
                self.wfile.flush()
                for start in range(2048, len(audio), 5000) if path == "/slow.wav" else []:
                    if self.server.closing.wait(0.1):
                        return
                    self.wfile.write(audio[start : start + 5000])
                    self.wfile.flush()
                self.server.closing.wait(600)
            elif path == "/truncated.wav":  # promises the whole file, sends a third, hangs up
                self._headers(200, "audio/wav", len(audio))
                self.wfile.write(audio[: len(audio) // 3])
                self.close_connection = True
            elif path == "/loop.wav":
                self.send_response(302)
                self.send_header("Location", "/loop.wav")
                self.end_headers()
            elif path == "/page.wav":
                page = b"<!doctype html><html><body>Sign in to continue</body></html>"
                self._headers(200, "text/html", len(page))
                self.wfile.write(page)
            elif path == "/error500.wav":
                self.send_error(500, "internal error")
            else:
                self.send_error(404, "no such file")
        except (BrokenPipeError, ConnectionResetError):
            return

    def _headers(self, code: int, kind: str, length: int) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()


@contextmanager
def hostile_server(audio: bytes, long_audio: bytes | None = None) -> Iterator[HostileServer]:
    server = HostileServer(audio, long_audio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        time.sleep(0.05)
        server.shutdown()
        server.server_close()
