"""web/serve.mjs, the page's server (`make serve`, and the browser test's through web/run-browser.mjs): hostile
request paths are refused (400/404) without leaking a file outside the served roots or crashing the server;
the page, a release folder and onnxruntime-web's files come back byte for byte, with ranges, HEAD, the right
content types and the two cross-origin isolation headers."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
ORT = WEB / "node_modules/onnxruntime-web/dist"
ISOLATION = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp"}
TIMEOUT = 10  # seconds, for every start, request and stop


class Served:
    def __init__(self, process: subprocess.Popen, host: str, port: int, first_lines: str) -> None:
        self.process, self.host, self.port, self.first_lines = process, host, port, first_lines

    def request(self, target: bytes | str, method: str = "GET", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """One request with the target sent as it is (no client normalizes or re-encodes it)."""
        target = target.encode("latin-1") if isinstance(target, str) else target
        lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {self.host}:{self.port}".encode(),
                 b"Connection: close", *(f"{k}: {v}".encode() for k, v in (headers or {}).items())]
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        if not reply:
            return 0, {}, b""  # closed without an answer (a crashed server, say)
        head, _, body = reply.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        found = dict(f.split(": ", 1) for f in fields if ": " in f)
        return int(status_line.split()[1]), {k.lower(): v for k, v in found.items()}, body


def start(*args: str) -> Served:
    """node web/serve.mjs ARGS --port 0, its URL read from the first line it prints."""
    process = subprocess.Popen(["node", str(WEB / "serve.mjs"), *args, "--port", "0"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and select.select([process.stdout], [], [], 0.5)[0] == []:
        pass
    line = process.stdout.readline() if select.select([process.stdout], [], [], 0)[0] else ""
    found = re.search(r"http://([\d.]+):(\d+)/", line)
    if not found:
        stop(process)
        pytest.fail(f"serve.mjs printed no URL: {line!r} {process.stderr.read()[-2000:]!r}")
    return Served(process, found[1], int(found[2]), line)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release folder beside a secret one: symlinks inside it point in (served) and out (refused)."""
    top = tmp_path_factory.mktemp("serve")
    (top / "secret").mkdir()
    (top / "secret/secret.txt").write_text("SECRET-4f1c9 not to be served\n")
    release = top / "release"
    (release / "sub").mkdir(parents=True)
    (release / "model.onnx").write_bytes(bytes(range(256)) * 7 + b"tail")
    (release / "sub/shards.json").write_text('{"shards": 2}\n')
    (release / "a clip.wav").write_bytes(b"RIFF" + bytes(40))
    (release / "empty.bin").write_bytes(b"")
    (release / "alias.onnx").symlink_to("model.onnx")
    (release / "escape.txt").symlink_to(top / "secret/secret.txt")
    (release / "outside").symlink_to("../secret")
    (release / "passwd").symlink_to("/etc/passwd")
    return top


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[Served]:
    served = start(str(tree / "release"))
    yield served
    stop(served.process)


SECRETS = [b"SECRET-4f1c9", b"root:"]  # the secret file's content, /etc/passwd's first line
HOSTILE = [
    b"/..%2F..%2Fetc%2Fpasswd",  # the old server's escape: decoded after the URL parser resolved dot segments
    b"/..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    b"/release/..%2Fsecret%2Fsecret.txt",
    b"/release/..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    b"/ort/..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    b"/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    b"/release/%2e%2e/secret/secret.txt",
    b"/release/.%2e/secret/secret.txt",
    b"/release/%2e%2e%2fsecret%2fsecret.txt",
    b"/release/%252E%252E%252Fsecret%252Fsecret.txt",  # doubly encoded
    b"/release/..%252F..%252F..%252F..%252F..%252F..%252Fetc%252Fpasswd",
    b"/release/..\\secret\\secret.txt",  # backslashes, raw and encoded
    b"/release/..%5Csecret%5Csecret.txt",
    b"/release/..%5C..%5C..%5C..%5C..%5C..%5C..%5Cetc%5Cpasswd",
    b"/release/model.onnx%00.html",  # NUL bytes, encoded and raw
    b"/release/%00/../../secret/secret.txt",
    b"/release/model\x00.onnx",
    b"/../../../../../../../etc/passwd",  # raw dot segments, no client to resolve them
    b"/release/../secret/secret.txt",
    b"/release/./../secret/secret.txt",
    b"/release/..",
    b"//etc/passwd",  # absolute paths
    b"/release//etc/passwd",
    b"/release/%2Fetc%2Fpasswd",
    b"/%2Fetc%2Fpasswd",
    b"http://127.0.0.1/../../../../../../etc/passwd",  # absolute-form target
    b"etc/passwd",
    b"/release/escape.txt",  # symlinks out of the root: a file, a folder, /etc/passwd
    b"/release/outside/secret.txt",
    b"/release/outside/",
    b"/release/passwd",
    b"/release/%C0%AE%C0%AE/secret/secret.txt",  # overlong UTF-8 and malformed percent-encoding
    b"/release/%C0%AF..%C0%AF..%C0%AFetc%C0%AFpasswd",
    b"/release/%E0%A4%A",
    b"/release/%zz/../secret/secret.txt",
    b"/release/%",
    b"/" + b"../" * 400 + b"etc/passwd",  # overlong paths
    b"/release/" + b"x" * 5000,
    b"/release/" + b"a/" * 3000 + b"model.onnx",
    b"/release/" + b"..%2F" * 4000 + b"etc/passwd",  # past Node's 16 KB header limit: its parser refuses it
]


@pytest.mark.parametrize("target", HOSTILE, ids=[repr(t[:60])[2:-1] for t in HOSTILE])
def test_hostile_paths_are_refused_and_nothing_leaks(server: Served, target: bytes) -> None:
    try:
        status, _, body = server.request(target)
    except ConnectionResetError:  # the parser may close on a request it refuses before reading all of it
        status, body = 400, b""
    assert status in (400, 404), (status, body[:200])
    assert not any(secret in body for secret in SECRETS), body[:200]
    assert b"Error" not in body and b"    at " not in body and len(body) < 100  # a short answer, no trace
    assert server.process.poll() is None and server.request("/")[0] == 200  # the server is still up


def test_it_binds_loopback_and_prints_the_url(server: Served) -> None:
    assert server.host == "127.0.0.1" and server.first_lines.startswith(f"Open http://127.0.0.1:{server.port}/")


def served_files(tree: Path) -> list[tuple[str, Path, str]]:
    release = tree / "release"
    files = [("/", WEB / "index.html", "text/html"), ("/index.html", WEB / "index.html", "text/html"),
             ("/asr.js", WEB / "asr.js", "text/javascript"),
             ("/release/model.onnx", release / "model.onnx", "application/octet-stream"),
             ("/release/alias.onnx", release / "model.onnx", "application/octet-stream"),  # a link inside
             ("/release/sub/shards.json", release / "sub/shards.json", "application/json"),
             ("/release/a%20clip.wav", release / "a clip.wav", "audio/wav"),
             ("/release/model.onnx?cache=1", release / "model.onnx", "application/octet-stream")]
    if ORT.is_dir():  # web/node_modules, from `make test` (npm ci in web/)
        files += [("/ort/ort.wasm.min.mjs", ORT / "ort.wasm.min.mjs", "text/javascript"),
                  ("/ort/ort-wasm-simd-threaded.wasm", ORT / "ort-wasm-simd-threaded.wasm", "application/wasm")]
    return files


def test_the_page_release_and_ort_files_are_served_byte_for_byte(server: Served, tree: Path) -> None:
    for target, file, kind in served_files(tree):
        status, headers, body = server.request(target)
        assert status == 200 and body == file.read_bytes(), target
        assert headers["content-type"].split(";")[0] == kind and headers["content-length"] == str(len(body))
        assert all(headers[k] == v for k, v in ISOLATION.items()) and headers["accept-ranges"] == "bytes"
        head_status, head_headers, head_body = server.request(target, "HEAD")
        assert head_status == 200 and head_body == b"" and head_headers["content-length"] == str(len(body))
    status, headers, body = server.request("/release/empty.bin")
    assert (status, headers["content-length"], body) == (200, "0", b"")
    assert server.request("/release/missing.onnx")[0] == 404 and server.request("/release/sub")[0] == 404
    status, headers, _ = server.request("/release/model.onnx", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(("spec", "start", "end"), [("bytes=0-9", 0, 9), ("bytes=-10", 1786, 1795),
                                                    ("bytes=1000-", 1000, 1795), ("bytes=1790-99999", 1790, 1795)])
def test_ranges(server: Served, tree: Path, spec: str, start: int, end: int) -> None:
    data = (tree / "release/model.onnx").read_bytes()
    assert len(data) == 1796
    status, headers, body = server.request("/release/model.onnx", headers={"Range": spec})
    assert status == 206 and body == data[start:end + 1]
    assert headers["content-range"] == f"bytes {start}-{end}/1796" and headers["content-length"] == str(len(body))
    head_status, head_headers, head_body = server.request("/release/model.onnx", "HEAD", {"Range": spec})
    assert head_status == 206 and head_body == b"" and head_headers["content-range"] == headers["content-range"]


def test_unsatisfiable_and_ignored_ranges(server: Served, tree: Path) -> None:
    data = (tree / "release/model.onnx").read_bytes()
    for spec in ("bytes=1796-", "bytes=5000-6000", "bytes=-0"):
        status, headers, body = server.request("/release/model.onnx", headers={"Range": spec})
        assert (status, headers["content-range"], body) == (416, "bytes */1796", b""), spec
    for spec in ("bytes=9-2", "bytes=0-1,5-9", "lines=1-2", "bytes=x-y"):  # not honoured: the whole file
        status, _, body = server.request("/release/model.onnx", headers={"Range": spec})
        assert status == 200 and body == data, spec


def test_no_isolation_and_another_address_warns(tree: Path) -> None:
    plain = start(str(tree / "release"), "--no-isolation", "--host", "127.0.0.2")
    try:
        _, headers, _ = plain.request("/asr.js")
        assert plain.host == "127.0.0.2" and not set(ISOLATION) & set(headers)
    finally:
        stop(plain.process)
    assert "warning: listening on 127.0.0.2" in plain.process.stderr.read()


def test_the_browser_test_uses_this_server() -> None:
    runner = (WEB / "run-browser.mjs").read_text()
    assert 'from "./serve.mjs"' in runner and "createServer" not in runner
