"""STAC API search against a real STAC API server (rustac) on 127.0.0.1, loaded with demo items."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from msc_france.config import SourceSpec
from msc_france.errors import SourceError
from msc_france.sources.base import SearchQuery
from msc_france.sources.stac_api import StacApiSource
from msc_france.sources.static import StaticSource
from tests.servers import free_port, rustac_api


@pytest.fixture(scope="module")
def api(tiny_world: Path):
    with rustac_api([tiny_world / "sentinel-2-l2a.ndjson", tiny_world / "landsat-c2-l2.ndjson"]) as url:
        yield url


def _bbox(world: Path) -> tuple[float, float, float, float]:
    from shapely.geometry import box

    from msc_france.crs import L93, WGS84, reproject_geometry

    truth = json.loads((world / "truth.json").read_text())
    return tuple(reproject_geometry(box(*truth["bounds_l93"]), L93, WGS84).bounds)  # type: ignore[return-value]


def _query(world: Path, collection: str, **kw) -> SearchQuery:
    return SearchQuery(collection=collection, bbox=_bbox(world), start=dt.date(2021, 4, 1),
                       end=dt.date(2021, 9, 30), **kw)


def _api(url: str, collection: str, **kw) -> StacApiSource:
    return StacApiSource(SourceSpec(type="stac-api", url=url, collection=collection, **kw))


def test_api_search_equals_static_search(api: str, tiny_world: Path) -> None:
    q = _query(tiny_world, "sentinel-2-l2a")
    remote = _api(api, "sentinel-2-l2a").search(q)
    local = StaticSource(SourceSpec(type="static", path="x", collection="sentinel-2-l2a"),
                         path=tiny_world / "sentinel-2-l2a.json").search(q)
    assert [i.id for i in remote] == [i.id for i in local]
    assert len(remote) == 8  # 2 tiles x 4 dates
    assert remote[0].assets["B02"].href == local[0].assets["B02"].href


def test_paging_past_the_page_size(api: str, tiny_world: Path) -> None:
    q = _query(tiny_world, "sentinel-2-l2a")
    paged = _api(api, "sentinel-2-l2a", page_size=3).search(q)
    assert len(paged) == 8 and len({i.id for i in paged}) == 8


def test_property_and_cloud_filters(api: str, tiny_world: Path) -> None:
    q = _query(tiny_world, "landsat-c2-l2", properties=(("platform", "landsat-8"),))
    items = _api(api, "landsat-c2-l2").search(q)
    assert items and all(i.properties["platform"] == "landsat-8" for i in items)
    everything = _api(api, "landsat-c2-l2").search(_query(tiny_world, "landsat-c2-l2"))
    assert any(i.properties["platform"] == "landsat-9" for i in everything)
    clear = _api(api, "landsat-c2-l2").search(
        _query(tiny_world, "landsat-c2-l2", max_cloud_cover=20.0, cloud_cover_property="eo:cloud_cover"))
    assert clear and all(i.properties["eo:cloud_cover"] <= 20 for i in clear)
    assert len(clear) < len(everything)


def test_datetime_window(api: str, tiny_world: Path) -> None:
    q = SearchQuery("sentinel-2-l2a", _bbox(tiny_world), dt.date(2021, 5, 1), dt.date(2021, 5, 31))
    items = _api(api, "sentinel-2-l2a").search(q)
    assert {i.datetime.date() for i in items} == {dt.date(2021, 5, 3), dt.date(2021, 5, 28)}


def test_search_results_are_cached(api: str, tiny_world: Path, tmp_path: Path) -> None:
    src = _api(api, "sentinel-2-l2a")
    src.cache_dir = tmp_path
    q = _query(tiny_world, "sentinel-2-l2a")
    first = src.search(q)
    second = src.search(q)
    assert src.stats == {"searches": 1, "cache_hits": 1}
    assert [i.id for i in first] == [i.id for i in second]
    assert len(list(tmp_path.glob("sentinel-2-l2a-*.json"))) == 1


@pytest.mark.timeout(30)  # must fail within seconds, not minutes
def test_unreachable_api_fails_fast(tiny_world: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/stac/v1"
    with pytest.raises(SourceError, match="unreachable"):
        _api(url, "sentinel-2-l2a", timeout_s=2, max_retries=1).search(_query(tiny_world, "sentinel-2-l2a"))
