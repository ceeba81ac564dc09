"""Real local servers for the offline tests of remote code paths (all on 127.0.0.1).

* :class:`AssetServer`: serves files with HTTP Range (as GDAL's /vsicurl needs), optionally
  acting as an HTTP proxy for Azure-blob-looking URLs and requiring a valid SAS signature.
* :class:`TokenServer`: a Planetary-Computer-shaped SAS token endpoint.
* :func:`rustac_api`: a real STAC API (rustac) loaded with NDJSON items.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _AssetHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        srv: AssetServer = self.server.owner  # type: ignore[attr-defined]
        url = urlparse(self.path)  # absolute URL when used as a proxy
        srv.requests.append(self.path)
        if srv.required_sig is not None:
            sig = parse_qs(url.query).get("sig", [None])[0]
            if sig != srv.required_sig:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        rel = url.path.lstrip("/")
        if url.netloc and url.netloc.endswith(".blob.core.windows.net"):
            rel = rel.split("/", 1)[1] if "/" in rel else rel  # drop the container
        path = srv.root / rel
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        rng = self.headers.get("Range")
        start, end = 0, size - 1
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else size - int(b)
            end = min(int(b), size - 1) if (a and b) else end
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Type", "image/tiff")
        self.end_headers()
        if not head:
            with open(path, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))


class AssetServer(_Server):
    """Range-capable file server; with ``required_sig`` set, unsigned or stale requests get 403."""

    def __init__(self, root: Path) -> None:
        super().__init__(_AssetHandler)
        self.root = Path(root)
        self.required_sig: str | None = None
        self.requests: list[str] = []


class _TokenHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv: TokenServer = self.server.owner  # type: ignore[attr-defined]
        srv.calls.append(self.path)
        if srv.fail_next > 0:
            srv.fail_next -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"msft:expiry": "2099-01-01T00:00:00Z",
                           "token": f"sv=2021-06-08&se=2099-01-01&sp=rl&sig={srv.current}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TokenServer(_Server):
    """Answers ``GET /api/sas/v1/token/{account}/{container}`` with the current signature."""

    def __init__(self) -> None:
        super().__init__(_TokenHandler)
        self.current = "sig-1"
        self.calls: list[str] = []
        self.fail_next = 0

    @property
    def sas_url(self) -> str:
        return f"{self.url}/api/sas/v1/token"


@contextlib.contextmanager
def planetary_computer_env(token_server: TokenServer) -> Iterator[None]:
    """Point the planetary-computer library at a local token endpoint, restoring it afterwards."""
    import planetary_computer.sas as sas
    from planetary_computer.settings import Settings

    old = os.environ.get("PC_SDK_SAS_URL")
    os.environ["PC_SDK_SAS_URL"] = token_server.sas_url
    Settings.get.cache_clear()
    sas.TOKEN_CACHE.clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PC_SDK_SAS_URL", None)
        else:
            os.environ["PC_SDK_SAS_URL"] = old
        Settings.get.cache_clear()
        sas.TOKEN_CACHE.clear()


def rustac_binary() -> str:
    """The rustac executable of this environment."""
    exe = Path(sys.executable).parent / "rustac"
    return str(exe) if exe.exists() else (shutil.which("rustac") or "rustac")


@contextlib.contextmanager
def rustac_api(ndjson_files: list[Path]) -> Iterator[str]:
    """A real STAC API serving ``ndjson_files``; yields its root URL."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    proc = subprocess.Popen([rustac_binary(), "serve", "--addr", addr, "--create-collections",
                             *map(str, ndjson_files)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{addr}"
    try:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(f"rustac exited: {proc.stderr.read().decode()[:500]}")  # type: ignore[union-attr]
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("rustac did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self, method: str) -> None:
        proxy: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = proxy.next_fault(self.path)
        proxy.log.append((self.path, fault))
        if fault is not None:
            kind, arg = fault
            if kind == "status":
                return self._send(int(arg), b'{"code": "injected"}', {"Content-Type": "application/json"})
            if kind == "429":
                return self._send(429, b"", {"Retry-After": str(arg)})
            if kind == "timeout":
                time.sleep(float(arg))
                self.close_connection = True
                return None
            if kind == "garble":
                truncated = b'{"type": "FeatureCollection", "features": [{"id": '
                return self._send(200, truncated, {"Content-Type": "application/json"})
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "content-type", "accept")}
        r = requests.request(method, proxy.upstream + self.path, data=body, headers=headers, timeout=30)
        if method == "HEAD":  # the file's size, as the upstream says it (the body is empty)
            self.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() in ("content-type", "content-length", "accept-ranges"):
                    self.send_header(k, v)
            self.end_headers()
            return None
        payload = r.content.replace(proxy.upstream.encode(), proxy.url.encode()) if proxy.rewrite else r.content
        out_headers = {k: v for k, v in r.headers.items()
                       if k.lower() in ("content-type", "content-range", "accept-ranges")}
        if fault is not None and fault[0] == "truncate":
            self.send_response(r.status_code)
            for k, v in out_headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return None
        self._send(r.status_code, payload, out_headers)


class FaultProxy(_Server):
    """A reverse proxy that injects faults: ``add(substring, [fault, ...])`` queues faults for the
    next requests whose path contains ``substring``; ``always(substring, fault)`` injects forever.

    Faults: ("status", 500|502|503|403|404), ("429", retry_after_s), ("timeout", seconds),
    ("truncate", None) (half the body, then the connection closes), ("garble", None) (broken JSON).
    ``rewrite`` replaces the upstream URL by the proxy's in bodies (STAC links), so paging goes
    through the proxy too.
    """

    def __init__(self, upstream: str, rewrite: bool = True) -> None:
        super().__init__(_ProxyHandler)
        self.upstream = upstream.rstrip("/")
        self.rewrite = rewrite
        self.queued: list[tuple[str, tuple[str, object]]] = []
        self.forever: dict[str, tuple[str, object]] = {}
        self.log: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def add(self, substring: str, faults: list[tuple[str, object]]) -> None:
        with self._lock:
            self.queued += [(substring, f) for f in faults]

    def always(self, substring: str, fault: tuple[str, object] | None) -> None:
        with self._lock:
            if fault is None:
                self.forever.pop(substring, None)
            else:
                self.forever[substring] = fault

    def next_fault(self, path: str) -> tuple[str, object] | None:
        with self._lock:
            for sub, f in self.forever.items():
                if sub in path:
                    return f
            for i, (sub, f) in enumerate(self.queued):
                if sub in path:
                    del self.queued[i]
                    return f
        return None

    @property
    def injected(self) -> int:
        return sum(1 for _, f in self.log if f is not None)
