"""OGC WMS 1.3.0 raster services as a source: IGN Géoplateforme's WMS-R, or any MapServer, GeoServer
or QGIS Server publishing imagery.

Searching a service reads its GetCapabilities once (layers, CRS list, formats, MaxWidth/MaxHeight,
time dimensions) and returns one STAC item per *date zone* of the query's footprint: each item's
assets are GetMap requests without a bbox, one per layer (``wms.layers``), and its
``msc_france:date_rule`` says how its date is known, by the first rule of ``wms.dates`` that
answers for that ground:

1. ``capabilities``: the layer's ``time`` Dimension (its default, else its only value), or a
   ``date:YYYY-MM-DD`` keyword;
2. ``features``: a WFS 2.0 layer of acquisition-date polygons, one item per polygon;
3. ``survey-year``: a file of survey zones (e.g. départements) with their year (dated 1 July);
4. ``season``: what is left is dated with the middle of the recipe's window, and says so.

Reading (:func:`get_map`) requests each chip on its own grid in the service's CRS (bbox = the
chip's bounds, no reprojection by the server) at a fifth of the store's GSD (:func:`request_gsd`), tiled when
larger than the service allows; the build area-averages it locally like any file. Every request
goes through the href policy, the service's rate limit (per process) and bounded retries with
backoff on 429 (``Retry-After`` honoured) and 5xx; an answer that is an XML service exception, an
image of another size, or a GeoTIFF in another CRS or place is refused with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import numpy as np
import pystac
import requests
import shapely
import shapely.ops
from shapely.geometry import box, mapping, shape

from msc_france.config import SourceSpec, WmsSpec
from msc_france.errors import SourceError, first_line, printable
from msc_france.products.base import DATE_RULE
from msc_france.sources.base import SearchQuery, Source
from msc_france.urls import check_url, redact

#: Date rules, in the order they are tried (recorded per item and per chip).
DATE_RULES = ("capabilities", "features", "survey-year", "season")
#: Bytes of a capabilities document or a WFS answer (IGN's WMS-R capabilities are ~10 MB).
MAX_DOCUMENT_BYTES = 64 * 2**20
if TYPE_CHECKING:
    from rasterio.crs import CRS
    from rasterio.io import DatasetReader

_NS = {"wms": "http://www.opengis.net/wms"}
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


@dataclass(frozen=True)
class WmsLayer:
    """One named layer of a service, as its capabilities describe it."""

    name: str
    crs: frozenset[str]
    bbox_wgs84: tuple[float, float, float, float] | None
    date: dt.date | None


@dataclass(frozen=True)
class Capabilities:
    """What a WMS 1.3.0 service says it can do (parsed once per search)."""

    formats: tuple[str, ...]
    max_width: int | None
    max_height: int | None
    layers: dict[str, WmsLayer]

    def layer(self, name: str, url: str) -> WmsLayer:
        """The layer called ``name``.

        Raises:
            SourceError: the service does not publish it (naming a few it does).
        """
        if name not in self.layers:
            some = ", ".join(sorted(self.layers)[:8]) or "none"
            raise SourceError(f"WMS {redact(url)} has no layer '{printable(name)}' (it has {some}"
                              f"{', ...' if len(self.layers) > 8 else ''})")
        return self.layers[name]


def parse_date(text: str | None) -> dt.date | None:
    """A date from ISO text (``2021-06-15``, ``2021-06``, ``2021``: a year alone is 1 July; the start
    of an interval ``2021-06-01/2021-06-30``); None when it is not one.
    """
    if not text:
        return None
    m = _DATE.match(str(text).strip().split("/")[0])
    if not m:
        return None
    y, mo, d = int(m[1]), int(m[2] or 7), int(m[3] or 1)
    try:
        return dt.date(y, mo, d)
    except ValueError:
        return None


def parse_capabilities(xml: bytes, url: str) -> Capabilities:
    """The formats, size limits and named layers of a WMS 1.3.0 capabilities document.

    Raises:
        SourceError: not a WMS 1.3.0 capabilities document (a service exception says why).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise SourceError(f"WMS {redact(url)}: capabilities are not XML ({first_line(e)})") from None
    if root.tag.endswith("ServiceExceptionReport"):
        raise SourceError(f"WMS {redact(url)}: {_exception_text(root)}")
    if root.tag != f"{{{_NS['wms']}}}WMS_Capabilities":
        raise SourceError(f"WMS {redact(url)}: not a WMS 1.3.0 capabilities document (root {root.tag!r})")

    def number(path: str) -> int | None:
        el = root.find(path, _NS)
        try:
            return int(el.text) if el is not None and el.text else None
        except ValueError:
            return None

    formats = tuple(f.text.strip() for f in root.findall("wms:Capability/wms:Request/wms:GetMap/wms:Format", _NS)
                    if f.text)
    layers: dict[str, WmsLayer] = {}

    def walk(el: ET.Element, crs: frozenset[str], bbox: tuple[float, float, float, float] | None,
             date: dt.date | None) -> None:
        crs = crs | {c.text.strip().upper() for c in el.findall("wms:CRS", _NS) if c.text}
        gb = el.find("wms:EX_GeographicBoundingBox", _NS)
        if gb is not None:
            try:
                w, s, e, n = (float(gb.find(f"wms:{k}", _NS).text) for k in (  # type: ignore[union-attr,arg-type]
                    "westBoundLongitude", "southBoundLatitude", "eastBoundLongitude", "northBoundLatitude"))
                bbox = (w, s, e, n)
            except (AttributeError, TypeError, ValueError):
                pass
        date = _layer_date(el) or date
        name = el.find("wms:Name", _NS)
        if name is not None and name.text:
            layers[name.text.strip()] = WmsLayer(name.text.strip(), crs, bbox, date)
        for child in el.findall("wms:Layer", _NS):  # children inherit CRS, extent and dimensions
            walk(child, crs, bbox, date)

    for top in root.findall("wms:Capability/wms:Layer", _NS):
        walk(top, frozenset(), None, None)
    return Capabilities(formats, number("wms:Service/wms:MaxWidth"), number("wms:Service/wms:MaxHeight"), layers)


def _layer_date(el: ET.Element) -> dt.date | None:
    """A layer's acquisition date from its own ``time`` Dimension or a ``date:`` keyword."""
    for dim in el.findall("wms:Dimension", _NS):
        if (dim.get("name") or "").lower() == "time":
            values = [v for v in (dim.text or "").split(",") if v.strip()]
            when = parse_date(dim.get("default")) or (parse_date(values[0]) if len(values) == 1 else None)
            if when:
                return when
    for kw in el.findall("wms:KeywordList/wms:Keyword", _NS):
        if kw.text and kw.text.strip().lower().startswith("date:"):
            when = parse_date(kw.text.strip()[5:])
            if when:
                return when
    return None


def _exception_text(root: ET.Element) -> str:
    texts = [" ".join((e.text or "").split()) for e in root.iter() if e.tag.endswith("ServiceException")]
    codes = [e.get("code") for e in root.iter() if e.tag.endswith("ServiceException") and e.get("code")]
    msg = "; ".join(t for t in texts if t) or "no message"
    return f"service exception{f' {codes[0]}' if codes else ''}: {msg}"[:300]


class RateLimiter:
    """At most ``rate`` requests per second from this process, shared by its threads."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this request may go."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()
_SESSION = threading.local()


def _limiter(url: str, rate: float) -> RateLimiter:
    key = (urlsplit(url).netloc, rate)
    with _LIMITERS_LOCK:
        return _LIMITERS.setdefault(key, RateLimiter(rate))


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, content type and body."""

    status: int
    content_type: str
    body: bytes


#: Redirects followed per request, each through the href policy.
MAX_REDIRECTS = 5


def http_get(url: str, params: dict[str, str], spec: SourceSpec, max_bytes: int) -> Answer:
    """GET ``url`` with ``params``: href policy (on every redirect too), rate limit, timeouts,
    bounded retries with backoff on connection errors, 429 (``Retry-After`` honoured, at most 30 s)
    and 5xx.

    Raises:
        SourceError: refused by the href policy, too large, redirected too often, or still failing
            after the retries.
    """
    full = _with_params(url, params)
    rate = spec.wms.max_requests_per_s if spec.wms else 40.0
    session = getattr(_SESSION, "s", None)
    if session is None:
        session = _SESSION.s = requests.Session()
    last = "no answer"
    for attempt in range(spec.max_retries + 1):
        try:
            r = _follow(session, full, spec, rate)
            with r:
                if r.status_code in (429, 500, 502, 503, 504):
                    last = f"HTTP {r.status_code}"
                    if attempt < spec.max_retries:
                        time.sleep(_retry_after(r.headers.get("Retry-After"), attempt))
                    continue
                body = _read_bounded(r, max_bytes, spec.response_deadline_s, full)
                return Answer(r.status_code, r.headers.get("Content-Type", "").split(";")[0].strip().lower(), body)
        except requests.RequestException as e:
            last = first_line(e, 160)
            if attempt < spec.max_retries:
                time.sleep(0.5 * 2**attempt)
    raise SourceError(f"WMS {redact(url)} failed {spec.max_retries + 1} times: {last}")


def _follow(session: requests.Session, url: str, spec: SourceSpec, rate: float) -> requests.Response:
    """The answer to ``url`` after at most :data:`MAX_REDIRECTS` redirects, each hop checked by the
    href policy and counted against the rate limit before it is requested.
    """
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, private_ok=spec.allow_private_hosts)
        _limiter(url, rate).wait()
        r = session.get(url, timeout=spec.timeout_s, stream=True, allow_redirects=False)
        if not r.is_redirect:
            return r
        url = urljoin(url, r.headers["location"])
        r.close()
    raise SourceError(f"WMS {redact(url)} redirected more than {MAX_REDIRECTS} times")


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        return min(max(float(header), 0.0), 30.0) if header else 0.5 * 2**attempt
    except ValueError:
        return 0.5 * 2**attempt


def _read_bounded(r: requests.Response, max_bytes: int, deadline_s: float, url: str) -> bytes:
    start, chunks, n = time.monotonic(), [], 0
    for chunk in r.iter_content(65536):
        n += len(chunk)
        if n > max_bytes:
            raise SourceError(f"WMS {redact(url)}: answer larger than {max_bytes} bytes")
        if time.monotonic() - start > deadline_s:
            raise SourceError(f"WMS {redact(url)}: answer took over {deadline_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _with_params(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` set (replacing any of the same name, case-insensitively: WMS keys are)."""
    parts = urlsplit(url)
    keep = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k.upper() not in {p.upper() for p in params}]
    return urlunsplit(parts._replace(query=urlencode(keep + list(params.items()))))


def capabilities(spec: SourceSpec) -> Capabilities:
    """The service's capabilities (one request).

    Raises:
        SourceError: unreachable, or not a WMS 1.3.0 service.
    """
    url = str(spec.url)
    a = http_get(url, {"SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetCapabilities"}, spec, MAX_DOCUMENT_BYTES)
    if a.status != 200:
        raise SourceError(f"WMS {redact(url)} GetCapabilities answered HTTP {a.status}")
    return parse_capabilities(a.body, url)


def choose_format(wms: WmsSpec, caps: Capabilities, url: str) -> str:
    """The first of ``wms.formats`` the service offers.

    Raises:
        SourceError: it offers none of them.
    """
    offered = {f.lower() for f in caps.formats}
    for f in wms.formats:
        if f.lower() in offered:
            return f
    raise SourceError(f"WMS {redact(url)} offers none of the formats {', '.join(wms.formats)} "
                      f"(it offers {', '.join(caps.formats) or 'none'})")


@dataclass
class WmsSource(Source):
    """A WMS 1.3.0 service searched by footprint: one item per date zone (module docstring)."""

    survey_zones: list[tuple[shapely.Geometry, dt.date]] | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        """The service URL and its layers (credentials removed)."""
        wms = self.spec.wms
        assert wms is not None
        return f"{redact(str(self.spec.url))}|{','.join(f'{k}={v}' for k, v in sorted(wms.layers.items()))}"

    def _search(self, q: SearchQuery) -> list[pystac.Item]:
        spec, wms = self.spec, self.spec.wms
        assert wms is not None
        url = str(spec.url)
        caps = capabilities(spec)
        fmt = choose_format(wms, caps, url)
        footprint: shapely.Geometry = box(*q.bbox)
        dates: list[dt.date] = []
        for name in sorted(wms.layers.values()):
            layer = caps.layer(name, url)
            if wms.crs.upper() not in layer.crs:
                raise SourceError(f"WMS {redact(url)} layer '{name}' is not offered in {wms.crs} (it offers "
                                  f"{', '.join(sorted(layer.crs)[:8])})")
            if layer.bbox_wgs84 is not None:
                footprint = footprint.intersection(box(*layer.bbox_wgs84))
            if layer.date is not None:
                dates.append(layer.date)
        if footprint.is_empty or footprint.area == 0:
            return []
        assets: dict[str, dict[str, object]] = {key: {"href": _with_params(url, {
            "SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap", "LAYERS": name, "STYLES": "",
            "CRS": wms.crs, "FORMAT": fmt, **({"TRANSPARENT": "TRUE"} if wms.transparent else {})}),
            "type": fmt, "roles": ["data"], "title": name} for key, name in sorted(wms.layers.items())}
        zones = list(self._zones(q, footprint, dates))
        return [self._item(q, n, geom, when, rule, assets) for n, (geom, when, rule) in enumerate(zones)]

    def _zones(self, q: SearchQuery, footprint: shapely.Geometry,
               dates: list[dt.date]) -> Iterator[tuple[shapely.Geometry, dt.date, str]]:
        """(ground, date, rule) for the whole footprint, each part dated by the first rule that can."""
        rules = self.spec.wms.dates  # type: ignore[union-attr]
        left = footprint
        if rules.capabilities and dates and len(set(dates)) == 1:  # layers of one survey: one date
            yield left, dates[0], "capabilities"
            return
        for source, rule in ((self._features, "features"), (self._survey, "survey-year")):
            for geom, when in source(q):
                part = geom.intersection(left)
                if part.is_empty or part.area <= 1e-12:
                    continue
                yield part, when, rule
                left = left.difference(geom)
                if left.is_empty or left.area <= 1e-12:
                    return
        yield left, q.start + (q.end - q.start) / 2, "season"

    def _features(self, q: SearchQuery) -> list[tuple[shapely.Geometry, dt.date]]:
        """Acquisition-date polygons of the date layer over the query (WFS 2.0 GetFeature, GeoJSON)."""
        rules = self.spec.wms.dates  # type: ignore[union-attr]
        if not rules.features_url or not rules.features_type:
            return []
        w, s, e, n = q.bbox
        a = http_get(rules.features_url, {
            "SERVICE": "WFS", "VERSION": "2.0.0", "REQUEST": "GetFeature", "TYPENAMES": rules.features_type,
            "OUTPUTFORMAT": "application/json", "SRSNAME": "EPSG:4326", "COUNT": str(rules.max_features),
            "BBOX": f"{s},{w},{n},{e},urn:ogc:def:crs:EPSG::4326"}, self.spec, MAX_DOCUMENT_BYTES)
        try:
            doc = json.loads(a.body) if a.status == 200 else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
            raise SourceError(f"WFS {redact(rules.features_url)} ({rules.features_type}) gave no GeoJSON features "
                              f"(HTTP {a.status}, {a.content_type or 'no type'})")
        out = []
        for f in doc["features"][: rules.max_features]:
            try:
                geom = shapely.make_valid(shape(f["geometry"]))
                when = parse_date(str(f["properties"][rules.features_date]))
            except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException):
                continue
            if when is not None and not geom.is_empty:
                out.append((_lonlat(geom, doc), when))
        return out

    def _survey(self, q: SearchQuery) -> list[tuple[shapely.Geometry, dt.date]]:
        """Survey zones (WGS84) with their year, from the configured file (read once)."""
        rules = self.spec.wms.dates  # type: ignore[union-attr]
        if not rules.survey_file:
            return []
        if self.survey_zones is None:
            import geopandas as gpd

            try:
                zones = gpd.read_file(rules.survey_file)
                zones = zones.to_crs("EPSG:4326") if zones.crs is not None else zones
                years = zones[rules.survey_year]
            except Exception as e:  # a missing file, an unreadable one, a missing column
                raise SourceError(f"survey zones {rules.survey_file}: {first_line(e, 160)}") from None
            self.survey_zones = [(shapely.make_valid(g), d) for g, y in zip(zones.geometry, years, strict=True)
                                 if g is not None and (d := parse_date(str(y))) is not None]
        return [z for z in self.survey_zones if z[0].intersects(box(*q.bbox))]

    def _item(self, q: SearchQuery, n: int, geom: shapely.Geometry, when: dt.date, rule: str,
              assets: dict[str, dict[str, object]]) -> pystac.Item:
        geom = geom if geom.geom_type in ("Polygon", "MultiPolygon") else shapely.MultiPolygon(
            [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon"])
        stamp = dt.datetime(when.year, when.month, when.day, 12, tzinfo=dt.UTC)
        item = pystac.Item(
            id=f"{q.collection}-{when.isoformat()}-{rule}-{n}", geometry=mapping(geom), bbox=list(geom.bounds),
            datetime=stamp, properties={DATE_RULE: rule}, collection=q.collection)
        for key, a in assets.items():
            item.add_asset(key, pystac.Asset(href=str(a["href"]), media_type=str(a["type"]),
                                             roles=list(a["roles"]), title=str(a["title"])))  # type: ignore[call-overload]
        return item


def _lonlat(geom: shapely.Geometry, doc: dict) -> shapely.Geometry:
    """GeoJSON is lon/lat; a WFS 2.0 server asked for EPSG:4326 may still answer lat/lon in a
    ``crs`` member naming ``urn:ogc:def:crs:EPSG::4326``: swapped back here.
    """
    crs = str(((doc.get("crs") or {}).get("properties") or {}).get("name", ""))
    return shapely.ops.transform(lambda x, y: (y, x), geom) if crs.endswith("EPSG::4326") else geom


@dataclass(frozen=True)
class Request:
    """One GetMap request of a chip (or of a piece of it, when it exceeds the service's size)."""

    bbox: tuple[float, float, float, float]
    width: int
    height: int
    col: int
    row: int


def plan_requests(bounds: tuple[float, float, float, float], gsd: float, max_size: int) -> tuple[int, int, list[Request]]:
    """The pieces of a chip requested at ``gsd`` metres: (full width, full height, requests), each at
    most ``max_size`` pixels a side, on one pixel grid (pieces share edges exactly).
    """
    left, bottom, right, top = bounds
    width, height = max(1, round((right - left) / gsd)), max(1, round((top - bottom) / gsd))
    px, py = (right - left) / width, (top - bottom) / height
    nx, ny = math.ceil(width / max_size), math.ceil(height / max_size)
    xs = np.linspace(0, width, nx + 1).round().astype(int)
    ys = np.linspace(0, height, ny + 1).round().astype(int)
    out = []
    for j in range(ny):
        for i in range(nx):
            c0, c1, r0, r1 = int(xs[i]), int(xs[i + 1]), int(ys[j]), int(ys[j + 1])
            out.append(Request((left + c0 * px, top - r1 * py, left + c1 * px, top - r0 * py), c1 - c0, r1 - r0,
                               c0, r0))
    return width, height, out


def request_gsd(wms: WmsSpec, store_gsd: float, native_gsd: float) -> float:
    """Metres per requested pixel: the configured value, else a fifth of the store's GSD (each stored
    pixel the mean of 5 x 5 requested ones) but never finer than the imagery's own. Measured on real
    IGN patches through MapServer (docs/sources.md): at a third of the store's GSD the server's own
    decimation still shows (mean 0.99 DN from the tiles, max 10), at a fifth it no longer does
    (0.18 DN, 99 % within 1 DN) for 2.5 times the bytes.
    """
    if wms.request_gsd is not None:
        return wms.request_gsd
    return max(store_gsd / 5, min(native_gsd, store_gsd))


@contextmanager
def get_map(href: str, bounds: tuple[float, float, float, float], gsd: float, spec: SourceSpec,
            bands: int) -> Iterator[DatasetReader]:
    """The service's image of ``bounds`` at ``gsd`` metres per pixel, as an open in-memory GeoTIFF
    (rasterio dataset) georeferenced on the request grid, with an alpha band where the service sent
    one: what the warper reads like any file.

    Raises:
        SourceError: a service exception, an HTTP error, an image of another size, CRS or place, or
            fewer than ``bands`` colour bands.
    """
    import rasterio
    from affine import Affine
    from rasterio.io import MemoryFile

    wms = spec.wms
    assert wms is not None
    max_size = wms.max_size or 4096
    width, height, pieces = plan_requests(bounds, gsd, max_size)
    layer = dict(parse_qsl(urlsplit(href).query)).get("LAYERS", "?")
    out: np.ndarray | None = None
    alpha = np.full((height, width), 255, np.uint8)
    crs = rasterio.crs.CRS.from_user_input(wms.crs)
    for p in pieces:
        what = f"WMS {redact(str(spec.url))} layer {printable(layer)}"
        body = _image_answer(href, p, spec, what)
        with MemoryFile(body) as mem:
            try:
                src = mem.open()
            except rasterio.errors.RasterioError as e:
                raise SourceError(f"{what}: unreadable image ({first_line(e, 120)})") from None
            with src:
                if (src.height, src.width) != (p.height, p.width):
                    raise SourceError(f"{what}: answered {src.width} x {src.height} px for a {p.width} x "
                                      f"{p.height} px request")
                _check_place(src, crs, p, what)
                colour = [i + 1 for i, ci in enumerate(src.colorinterp) if ci != rasterio.enums.ColorInterp.alpha]
                if len(colour) < bands:
                    raise SourceError(f"{what}: {len(colour)} colour band(s), {bands} needed")
                data = src.read()
                has_alpha = len(colour) < src.count
                if out is None:
                    out = np.zeros((len(colour), height, width), data.dtype)
                out[:, p.row:p.row + p.height, p.col:p.col + p.width] = data[[c - 1 for c in colour]]
                if has_alpha:
                    alpha[p.row:p.row + p.height, p.col:p.col + p.width] = data[src.count - 1]
                elif src.nodata is not None:  # a service that declares a fill value instead
                    fill = (data[[c - 1 for c in colour]] == src.nodata).all(axis=0)
                    alpha[p.row:p.row + p.height, p.col:p.col + p.width] = np.where(fill, 0, 255)
    assert out is not None
    left, _, _, top = bounds
    transform = Affine((bounds[2] - left) / width, 0, left, 0, -(top - bounds[1]) / height, top)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=width, height=height, count=out.shape[0] + 1, dtype=out.dtype,
                      crs=crs, transform=transform) as dst:
            dst.write(out, list(range(1, out.shape[0] + 1)))
            dst.write(alpha.astype(out.dtype), out.shape[0] + 1)
            dst.colorinterp = [rasterio.enums.ColorInterp.gray] * out.shape[0] + [rasterio.enums.ColorInterp.alpha]
        with mem.open() as src:
            yield src


def _image_answer(href: str, p: Request, spec: SourceSpec, what: str) -> bytes:
    """The bytes of one GetMap piece, once the answer is known to be an image.

    Raises:
        SourceError: an HTTP error, a service exception (XML), or an answer that is not an image.
    """
    assert spec.wms is not None
    a = http_get(href, {"BBOX": ",".join(f"{v:.6f}" for v in p.bbox), "WIDTH": str(p.width),
                        "HEIGHT": str(p.height)}, spec, spec.wms.max_response_bytes)
    if a.status != 200:
        raise SourceError(f"{what}: HTTP {a.status}")
    if a.content_type.endswith("xml") or a.body.lstrip()[:1] == b"<":
        raise SourceError(f"{what}: {_exception_of(a.body)}")
    if not a.content_type.startswith("image/"):
        raise SourceError(f"{what}: answered {a.content_type or 'no content type'}, not an image")
    return a.body


def _exception_of(body: bytes) -> str:
    try:
        return _exception_text(ET.fromstring(body))
    except ET.ParseError:
        return "answered XML or text instead of an image"


def _check_place(s: DatasetReader, crs: CRS, p: Request, what: str) -> None:
    """A georeferenced answer (GeoTIFF) must be in the request CRS and at the request bbox."""
    if s.crs is None:
        return  # PNG and JPEG carry no georeferencing: the request defines it
    if s.crs != crs:
        raise SourceError(f"{what}: answered an image in {s.crs.to_string()[:60]}, not the requested "
                          f"{crs.to_string()}")
    got = tuple(s.bounds)
    tol = max((p.bbox[2] - p.bbox[0]) / p.width, (p.bbox[3] - p.bbox[1]) / p.height) / 2
    if max(abs(a - b) for a, b in zip(got, p.bbox, strict=True)) > tol:
        raise SourceError(f"{what}: answered an image of {', '.join(f'{v:.1f}' for v in got)}, not the "
                          f"requested {', '.join(f'{v:.1f}' for v in p.bbox)}")


__all__ = ["DATE_RULES", "Capabilities", "WmsLayer", "WmsSource", "capabilities", "get_map", "parse_capabilities",
           "parse_date", "plan_requests", "request_gsd"]
