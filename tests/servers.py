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


def items_served_at(world: Path, collections: tuple[str, ...], url: str, out: Path) -> list[Path]:
    """The generated world's NDJSON items of ``collections`` rewritten with their asset hrefs on
    ``url`` (a server over ``world``), one file per collection in ``out``: what a STAC API serves.
    """
    files = []
    for c in collections:
        path = out / f"{c}.ndjson"
        with open(path, "w") as f:
            for line in (world / f"{c}.ndjson").read_text().splitlines():
                item = json.loads(line)
                for a in item["assets"].values():
                    a["href"] = f"{url}/{Path(a['href']).relative_to(world)}"
                f.write(json.dumps(item) + "\n")
        files.append(path)
    return files


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


# --------------------------------------------------------------------------- a real WMS: MapServer


def mapserver() -> str | None:
    """Debian's MapServer CGI (``mapserv``, package cgi-mapserver), when installed."""
    return shutil.which("mapserv") or (str(Path("/usr/lib/cgi-bin/mapserv"))
                                       if Path("/usr/lib/cgi-bin/mapserv").exists() else None)


class _CgiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv: WmsServer = self.server.owner  # type: ignore[attr-defined]
        url = urlparse(self.path)
        params = {k.upper(): v for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        request = params.get("REQUEST", [""])[0]
        with srv.lock:
            srv.requests.append((time.monotonic(), request, self.path))
            fault = srv.faults.pop(0) if (srv.faults and request == "GetMap") else None
        query = url.query
        if fault == "429":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "0"})
        if fault == "500":
            return self._send(500, b"", "text/plain")
        if fault == "size":  # the server decimates on its own: half the pixels asked for
            query = query.replace(f"WIDTH={params['WIDTH'][0]}", f"WIDTH={int(params['WIDTH'][0]) // 2}")
        if fault == "crs":  # answers in WGS84 (a lat/lon bbox of the same place)
            query = query.replace("CRS=EPSG%3A2154", "CRS=EPSG%3A4326").replace("CRS=EPSG:2154", "CRS=EPSG:4326")
            query += "&BBOX=43.5,4.1,43.6,4.2"
        env = {**os.environ, "QUERY_STRING": query, "REQUEST_METHOD": "GET", "MAPSERVER_CONFIG_FILE": str(srv.config),
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(srv.port), "SCRIPT_NAME": "/wms"}
        out = subprocess.run([srv.exe], env=env, capture_output=True, timeout=60).stdout
        head, sep, body = out.partition(b"\r\n\r\n")
        if not sep:
            head, _, body = out.partition(b"\n\n")
        ctype = "text/plain"
        for line in head.decode("latin-1").splitlines():
            if line.lower().startswith("content-type:"):
                ctype = line.split(":", 1)[1].strip()
        if fault == "xml":  # a service exception, with HTTP 200 (as WMS servers answer)
            body = (b'<?xml version="1.0"?><ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">'
                    b'<ServiceException code="InternalError">tile store unavailable</ServiceException>'
                    b'</ServiceExceptionReport>')
            ctype = "text/xml"
        srv.bytes_served += len(body)
        self._send(200, body, ctype)


class WmsServer(_Server):
    """MapServer serving real raster files as WMS 1.3.0 layers (and a WFS layer of date polygons)
    behind a small CGI host on 127.0.0.1. ``faults`` (appended by a test) change the next GetMap
    answers: "429", "500", "xml" (a service exception with HTTP 200), "size" (half the width),
    "crs" (an image in EPSG:4326).

    Args:
        workdir: where the mapfile, its config and tile indexes are written.
        layers: WMS layer name -> the files it mosaics (any CRS GDAL reads).
        offsite: an RGB triple the service treats as no data (IGN's white fill).
        date: a ``time`` Dimension default for every layer (None: none).
        date_zones: (polygon in the files' CRS, date) for a WFS layer ``dates`` (None: none).
        bands: WMS layer name -> the files' bands it shows, e.g. "4,1,2" (default: the first three).
    """

    def __init__(self, workdir: Path, layers: dict[str, list[Path]], offsite: tuple[int, int, int] | None = None,
                 date: str | None = None, date_zones: list[tuple[object, str]] | None = None,
                 formats: tuple[str, ...] = ("image/tiff", "image/png", "image/jpeg"),
                 bands: dict[str, str] | None = None) -> None:
        import geopandas as gpd
        import rasterio
        from shapely.geometry import box

        super().__init__(_CgiHandler)
        exe = mapserver()
        if exe is None:
            raise RuntimeError("mapserv is not installed")
        self.exe = exe
        self.requests: list[tuple[float, str, str]] = []
        self.faults: list[str] = []
        self.bytes_served = 0
        self.lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        blocks = []
        for n, (name, files) in enumerate(layers.items()):
            rows = []
            for f in files:
                with rasterio.open(f) as d:
                    rows.append({"location": str(f), "geometry": box(*d.bounds)})
            gpd.GeoDataFrame(rows, crs="EPSG:2154").to_file(workdir / f"layer{n}.shp")
            meta = f'"wms_title" "{name}"'
            if date:
                meta += f' "wms_timeextent" "{date}" "wms_timedefault" "{date}" "wms_timeitem" "location"'
            off = f"OFFSITE {' '.join(map(str, offsite))}" if offsite else ""
            if bands and name in bands:
                off += f'\n    PROCESSING "BANDS={bands[name]}"'
            blocks.append(f'''  LAYER
    NAME "{name}"
    TYPE RASTER
    STATUS ON
    TILEINDEX "{workdir / f"layer{n}.shp"}"
    PROJECTION "init=epsg:2154" END
    {off}
    PROCESSING "RESAMPLE=AVERAGE"
    METADATA {meta} END
  END''')
        if date_zones:
            gpd.GeoDataFrame({"date": [d for _, d in date_zones]}, geometry=[g for g, _ in date_zones],
                             crs="EPSG:2154").to_file(workdir / "dates.shp")
            blocks.append(f'''  LAYER
    NAME "dates"
    TYPE POLYGON
    STATUS ON
    DATA "{workdir / "dates.shp"}"
    PROJECTION "init=epsg:2154" END
    METADATA "ows_title" "dates" "gml_include_items" "all" END
  END''')
        fmts = {"image/tiff": '''  OUTPUTFORMAT
    NAME "GTiff"
    DRIVER "GDAL/GTiff"
    MIMETYPE "image/tiff"
    IMAGEMODE RGBA
    EXTENSION "tif"
  END''', "image/png": '''  OUTPUTFORMAT
    NAME "png"
    DRIVER "AGG/PNG"
    MIMETYPE "image/png"
    IMAGEMODE RGBA
    TRANSPARENT ON
    EXTENSION "png"
  END''', "image/jpeg": '''  OUTPUTFORMAT
    NAME "jpeg"
    DRIVER "AGG/JPEG"
    MIMETYPE "image/jpeg"
    IMAGEMODE RGB
    EXTENSION "jpg"
  END'''}
        mapfile = workdir / "service.map"
        mapfile.write_text(f'''MAP
  NAME "test"
  EXTENT 100000 6000000 1300000 7200000
  SIZE 256 256
  MAXSIZE 4096
  UNITS METERS
  PROJECTION "init=epsg:2154" END
{chr(10).join(fmts[f] for f in formats)}
  OUTPUTFORMAT
    NAME "geojson"
    DRIVER "OGR/GEOJSON"
    MIMETYPE "application/json"
    FORMATOPTION "FORM=SIMPLE"
    FORMATOPTION "STORAGE=memory"
  END
  WEB
    METADATA
      "ows_title" "test"
      "ows_onlineresource" "{self.url}/wms?"
      "ows_srs" "EPSG:2154 EPSG:4326"
      "ows_enable_request" "*"
      "wms_getmap_formatlist" "{",".join(formats)}"
      "wfs_getfeature_formatlist" "geojson"
    END
  END
{chr(10).join(blocks)}
END
''')
        self.config = workdir / "mapserver.conf"
        self.config.write_text(f'CONFIG\n  ENV\n    MS_MAPFILE "{mapfile}"\n  END\nEND\n')

    @property
    def wms_url(self) -> str:
        return f"{self.url}/wms"

    def count(self, request: str) -> int:
        """Requests of one kind (GetMap, GetCapabilities, GetFeature) received so far."""
        return sum(1 for _, r, _ in self.requests if r == request)
