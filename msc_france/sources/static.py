"""Local static catalogs and item collections, searched in-process.

pystac-client cannot search a static catalog (it has no ``/search``), so items are loaded once
with pystac and filtered by collection, bbox, datetime and properties here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pystac

from msc_france.errors import SourceError, first_line
from msc_france.sources.base import SearchQuery, Source
from msc_france.urls import check_url, redact


class FsspecStacIO(pystac.StacIO):
    """pystac I/O through fsspec, so static catalogs can live on object storage (s3://, gs://, az://).

    Every link it follows obeys the catalog's place: a local catalog links to local files only (a
    child link to ``http://127.0.0.1`` is never fetched); a remote one to remote URLs that pass the
    href policy (:func:`msc_france.urls.check_url`), never to local paths.
    """

    def __init__(self, root: str = "", private_ok: bool = False) -> None:
        super().__init__()
        self.root, self.private_ok = root, private_ok
        self.refused: SourceError | None = None  # pystac rewraps errors: the refusal is kept here

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        """The text at ``source`` (a path or any fsspec URL)."""
        href = str(source)
        try:
            self._check(href)
        except SourceError as e:
            self.refused = e
            raise
        with fsspec.open(href, "r", encoding="utf-8") as f:
            return f.read()

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        """Write ``txt`` at ``dest`` (a path or any fsspec URL)."""
        with fsspec.open(str(dest), "w", encoding="utf-8") as f:
            f.write(txt)


    def _check(self, href: str) -> None:
        if not self.root:
            return
        if _is_local(self.root) and not _is_local(href):
            raise SourceError(f"refused link {redact(href)}: a local catalog links only to local files")
        if not _is_local(self.root):
            if _is_local(href):
                raise SourceError(f"refused link {href}: a remote catalog cannot name local files")
            check_url(href, private_ok=self.private_ok, trusted=self.root)


def _is_local(href: str) -> bool:
    return "://" not in href or href.lower().startswith("file://")


def load_items(path: Path | str, private_ok: bool = False) -> list[pystac.Item]:
    """Read items from a static catalog/collection JSON (recursively), an ItemCollection, or NDJSON,
    on the local disk or on object storage (a URL).

    Args:
        path: the catalog file.
        private_ok: a remote catalog may link to loopback and private hosts (tests, local servers).
    """
    href = str(path)
    io = FsspecStacIO(href, private_ok)
    try:
        fs, root = fsspec.core.url_to_fs(href)
        exists = fs.exists(root)
    except (OSError, ValueError, ImportError) as e:
        raise SourceError(f"cannot reach static catalog {href}: {first_line(e)}") from None
    if not exists:
        raise SourceError(f"static catalog not found: {href}")
    try:
        text = io.read_text(href)
        if href.endswith(".ndjson"):
            lines = [ln for ln in text.splitlines() if ln.strip()]
            return _resolved([pystac.Item.from_dict(json.loads(ln), preserve_dict=False) for ln in lines], href)
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("type") == "FeatureCollection":
            return _resolved(list(pystac.ItemCollection.from_dict(d, preserve_dict=False)), href)
        obj = pystac.read_file(href, stac_io=io)
        if isinstance(obj, pystac.Item):
            return [obj]
        if not isinstance(obj, pystac.Catalog):  # a Collection is a Catalog
            raise ValueError(f"a STAC {type(obj).__name__}, not a catalog, collection or item")
        items = list(obj.get_items(recursive=True))
        for it in items:
            it.make_asset_hrefs_absolute()
        return items
    except RecursionError:
        raise SourceError(f"cannot read static catalog {path}: its child links form a cycle") from None
    except (OSError, ValueError, KeyError, pystac.STACError) as e:
        if io.refused is not None:
            raise io.refused from None
        raise SourceError(f"cannot read static catalog {path}: {first_line(e)}") from None


def _absolute(href: str) -> bool:
    return "://" in href or href.startswith("/") or href.startswith(("<", "/vsi"))


def _resolved(items: list[pystac.Item], href: str) -> list[pystac.Item]:
    """Relative asset hrefs resolved against the folder of the file holding them (not the cwd)."""
    base = href.rsplit("/", 1)[0] if "/" in href else "."
    for it in items:
        for a in it.assets.values():
            if not _absolute(a.href):
                a.href = f"{base}/{a.href}" if "://" in base else str((Path(base) / a.href).resolve())
    return items


@dataclass
class StaticSource(Source):
    """Items of a local static STAC catalog, item collection or NDJSON file."""

    path: Path | str = field(default=Path("."))
    _items: list[pystac.Item] | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        """The catalog path (as the sensor YAML writes it when it holds ``$VARS``)."""
        return str(self.spec.path) if "$" in str(self.spec.path) else str(self.path)

    def items(self) -> list[pystac.Item]:
        """All items of the catalog (loaded once)."""
        if self._items is None:
            try:
                self._items = load_items(self.path, self.spec.allow_private_hosts)
            except SourceError as e:
                if "$" not in str(self.spec.path):
                    raise
                # The path as written: $VARS are expanded to read, never into a message.
                raise SourceError(str(e).replace(str(self.path), str(self.spec.path))) from None
        return self._items

    def _search(self, q: SearchQuery) -> list[pystac.Item]:
        return self.items()
