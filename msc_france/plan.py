"""The plan: for every chip and sensor, which acquisition (and which items of it) to use, and why.

Items of one sensor acquired on the same day by the same platform form one *acquisition*
(adjacent Sentinel-2 tiles of one pass, neighbouring aerial tiles of one campaign); a chip that
straddles tiles is mosaicked from several items of one acquisition. Acquisitions are ranked per
chip by their *expected valid fraction*, coverage of the chip x (1 - item cloud cover), then by
distance to the recipe's target date. The best ``max_candidates`` are kept: the build tries them
in order and keeps the first whose measured valid fraction passes the recipe's threshold.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac
import shapely
from shapely.geometry import shape

from msc_france.config import Catalog, Recipe, sensor_gsds
from msc_france.crs import L93, WGS84, reproject_geometry
from msc_france.errors import BadInputError, first_line
from msc_france.fsutil import atomic_path
from msc_france.grid import Chip, chips_in
from msc_france.products import check_sensor
from msc_france.products.base import PROVIDER
from msc_france.regions import Region
from msc_france.sources import SearchQuery
from msc_france.sources.providers import search_providers

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)

#: Coverage at or above this counts as full (floating-point slack of footprint reprojection).
FULL_COVERAGE = 0.999
LABEL_WINDOW = (dt.date(2000, 1, 1), dt.date(2100, 1, 1))


@dataclass(frozen=True)
class Candidate:
    """One acquisition usable for one chip of one sensor."""

    chip_id: str
    sensor: str
    rank: int
    items: tuple[pystac.Item, ...]
    acquired: dt.datetime
    cloud_cover: float | None
    coverage: float
    days_from_target: int

    @property
    def expected_valid(self) -> float:
        """Coverage x clear fraction, the ranking score."""
        clear = 1.0 if self.cloud_cover is None else max(0.0, 1 - self.cloud_cover / 100)
        return self.coverage * clear

    @property
    def reason(self) -> str:
        """Why this acquisition was chosen, in words."""
        cc = "n/a" if self.cloud_cover is None else f"{self.cloud_cover:.1f}%"
        n = len(self.items)
        mosaic = f" mosaic of {n} items" if n > 1 else ""
        return (
            f"expected valid {self.expected_valid:.0%}: covers {self.coverage:.0%} of chip, cloud {cc}; "
            f"{self.days_from_target} d from target{mosaic}"
        )


@dataclass(frozen=True)
class SensorCounts:
    """What a plan found for one sensor.

    Attributes:
        items: items found. chips: chips of the region. planned: chips with a candidate.
        mosaic: chips whose best candidate mosaics several items. partial: chips it covers in part.
    """

    items: int
    chips: int
    planned: int
    mosaic: int
    partial: int

    def row(self, sensor: str) -> list[Any]:
        """The sensor's row of the plan table."""
        return [sensor, self.items, f"{self.planned}/{self.chips}", self.mosaic, self.partial]


@dataclass
class Plan:
    """Chips of a region and the ranked candidates of every (chip, sensor)."""

    region: Region
    recipe: Recipe
    catalog: Catalog
    chips: list[Chip]
    gsds: dict[str, float]
    candidates: dict[tuple[str, str], list[Candidate]]
    items_found: dict[str, int] = field(default_factory=dict)

    @property
    def sensors(self) -> list[str]:
        """Sensors of the plan, labels last."""
        return list(self.gsds)

    def for_chip(self, chip_id: str, sensor: str) -> list[Candidate]:
        """Ranked candidates (may be empty)."""
        return self.candidates.get((chip_id, sensor), [])

    def counts(self) -> dict[str, SensorCounts]:
        """Per sensor: items found, chips with a candidate, chips needing a mosaic, partly covered."""
        out = {}
        for s in self.sensors:
            best = [self.for_chip(c.id, s) for c in self.chips]
            out[s] = SensorCounts(self.items_found.get(s, 0), len(self.chips), sum(1 for b in best if b),
                                  sum(1 for b in best if b and len(b[0].items) > 1),
                                  sum(1 for b in best if b and b[0].coverage < FULL_COVERAGE))
        return out

    def to_geodataframe(self) -> gpd.GeoDataFrame:
        """One row per (chip, sensor, rank); rank 0 marks a chip no item covers."""
        import geopandas as gpd

        rows = []
        for chip in self.chips:
            for s in self.sensors:
                cands = self.for_chip(chip.id, s)
                base = {"chip_id": chip.id, "sensor": s, "region": self.region.name, "geometry": chip.polygon}
                if not cands:
                    rows.append({**base, "rank": 0, "acquired": None, "item_ids": "", "n_items": 0,
                                 "cloud_cover": np.nan, "coverage": 0.0, "expected_valid": 0.0,
                                 "days_from_target": -1, "reason": "no item covers this chip", "provider": ""})
                for c in cands:
                    rows.append({**base, "rank": c.rank, "acquired": c.acquired.isoformat(),
                                 "item_ids": ",".join(i.id for i in c.items), "n_items": len(c.items),
                                 "cloud_cover": np.nan if c.cloud_cover is None else c.cloud_cover,
                                 "coverage": round(c.coverage, 6), "expected_valid": round(c.expected_valid, 6),
                                 "days_from_target": c.days_from_target, "reason": c.reason,
                                 "provider": ",".join(dict.fromkeys(str(i.properties.get(PROVIDER, ""))
                                                                    for i in c.items))})
        return gpd.GeoDataFrame(rows, geometry="geometry", crs=L93)

    def write(self, path: Path) -> None:
        """Write the plan as GeoParquet (atomically): one row per (chip, sensor, rank), and in the
        file's metadata everything a build needs besides (region, recipe, catalog, GSDs and the
        STAC items of every candidate), so that ``build --plan`` builds exactly this plan.
        """
        import io

        import pyarrow.parquet as pq

        path = Path(path)
        if path.is_dir():
            raise BadInputError(f"plan output {path} is a directory")
        if not path.parent.exists():
            raise BadInputError(f"plan output directory {path.parent} does not exist")
        buf = io.BytesIO()
        self.to_geodataframe().to_parquet(buf)
        table = pq.read_table(io.BytesIO(buf.getvalue()))
        items: dict[str, dict[str, Any]] = {s: {} for s in self.sensors}
        for (_, sensor), cands in self.candidates.items():
            for c in cands:
                for it in c.items:
                    items[sensor].setdefault(it.id, it.to_dict(transform_hrefs=False))
        meta = {
            "format": PLAN_FORMAT,
            "region": {"name": self.region.name, "wkt_l93": self.region.geometry.wkt},
            "recipe": self.recipe.model_dump(mode="json"),
            "catalog": self.catalog.model_dump(mode="json"),
            "gsds": self.gsds, "items_found": self.items_found, "items": items,
        }
        schema_meta = {**(table.schema.metadata or {}), PLAN_KEY: json.dumps(meta).encode()}
        with atomic_path(path) as tmp:
            pq.write_table(table.replace_schema_metadata(schema_meta), tmp)


#: Version of the plan file's metadata, and its key in the parquet schema metadata.
PLAN_FORMAT = 1
PLAN_KEY = b"msc_france_plan"


def read_plan(path: Path | str) -> Plan:
    """The plan written by :meth:`Plan.write` (``msc-france plan --out``), possibly edited: its rows
    decide which chips are built and which candidates each one tries, in rank order.

    Raises:
        BadInputError: the file is missing, not a plan, of another plan format, or inconsistent.
    """
    import geopandas as gpd
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInputError(f"no plan file at {path}")
    try:
        meta_raw = (pq.read_schema(path).metadata or {}).get(PLAN_KEY)
        rows = gpd.read_parquet(path)
    except Exception as e:  # pyarrow and geopandas raise their own types for a non-parquet file
        raise BadInputError(f"{path} is not a plan file ({first_line(e, 120)})") from None
    if meta_raw is None:
        raise BadInputError(f"{path} is a parquet file but not a plan written by msc-france plan")
    try:
        return _plan_from(path, json.loads(meta_raw), rows)
    except BadInputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, pystac.STACError) as e:
        # ValidationError and JSONDecodeError are ValueErrors: an edited or truncated plan.
        what = f"{type(e).__name__}: {first_line(e, 160)}" if isinstance(e, KeyError) else first_line(e, 200)
        raise BadInputError(f"plan {path} has invalid or incomplete metadata ({what})") from None


def _plan_from(path: Path, meta: Any, rows: Any) -> Plan:
    """The plan of a parsed file, every row checked against the plan's own recipe."""
    if not isinstance(meta, dict):
        raise BadInputError(f"plan {path}: its metadata is not a JSON object")
    if meta.get("format") != PLAN_FORMAT:
        raise BadInputError(f"plan {path} has format {meta.get('format')}; this msc-france reads {PLAN_FORMAT}")
    from shapely import wkt

    recipe = Recipe.model_validate(meta["recipe"])
    catalog = Catalog.model_validate(meta["catalog"])
    region = Region(meta["region"]["name"], wkt.loads(meta["region"]["wkt_l93"]))
    gsds = {k: float(v) for k, v in meta["gsds"].items()}
    if set(gsds) - set(recipe.sensors) - ({recipe.labels.sensor} if recipe.labels else set()):
        raise BadInputError(f"plan {path}: GSDs for sensors its recipe does not build ({', '.join(sorted(gsds))})")
    from msc_france.config.recipe import check_chip_size

    check_chip_size(recipe.chip_size_m, gsds, recipe.limits)
    items = {s: {i: pystac.Item.from_dict(d) for i, d in by_id.items()} for s, by_id in meta["items"].items()}
    missing = {"chip_id", "sensor", "rank", "item_ids", "acquired", "cloud_cover", "coverage",
               "days_from_target"} - set(rows.columns)
    if missing:
        raise BadInputError(f"plan {path}: rows lack column(s) {', '.join(sorted(missing))}")
    chips = [Chip.from_id(str(c)) for c in dict.fromkeys(rows["chip_id"])]
    wrong = [c.id for c in chips if c.size_m != recipe.chip_size_m]
    if wrong:
        raise BadInputError(f"plan {path}: chip {wrong[0]} is {Chip.from_id(wrong[0]).size_m} m, its recipe's chips "
                            f"are {recipe.chip_size_m} m ({len(wrong)} such row chip(s))")
    candidates: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for r in rows[rows["rank"] > 0].sort_values(["chip_id", "sensor", "rank"]).itertuples():
        if r.sensor not in gsds:
            raise BadInputError(f"plan {path}: row for unknown sensor '{r.sensor}'")
        try:
            its = tuple(items[r.sensor][i] for i in str(r.item_ids).split(","))
        except KeyError as e:
            raise BadInputError(f"plan {path}: chip {r.chip_id} names item {e} that the plan does not hold") from None
        cc = None if r.cloud_cover is None or np.isnan(r.cloud_cover) else float(r.cloud_cover)
        candidates[(r.chip_id, r.sensor)].append(Candidate(
            chip_id=r.chip_id, sensor=r.sensor, rank=len(candidates[(r.chip_id, r.sensor)]) + 1, items=its,
            acquired=dt.datetime.fromisoformat(r.acquired), cloud_cover=cc, coverage=float(r.coverage),
            days_from_target=int(r.days_from_target)))
    return Plan(region, recipe, catalog, chips, gsds, dict(candidates), dict(meta["items_found"]))


def _acquisition_key(item: pystac.Item) -> tuple[str, str, str]:
    """Items mosaicked together: same day, platform and product (SPOT PAN, MS and pansharpened
    files of one pass are distinct products and are never mixed).
    """
    when = item.datetime or item.common_metadata.start_datetime
    return (when.date().isoformat() if when else "", str(item.properties.get("platform", "")),
            str(item.properties.get("msc_france:product", "")))


def _item_footprint_l93(item: pystac.Item) -> shapely.Geometry:
    geom = shape(item.geometry)
    return shapely.make_valid(reproject_geometry(geom, WGS84, L93, densify_m=0.01))


def rank_candidates(
    chips: list[Chip], items: list[pystac.Item], sensor: str, target: dt.date,
    cloud_property: str | None, max_candidates: int,
) -> dict[tuple[str, str], list[Candidate]]:
    """Rank the acquisitions of ``items`` for each chip (see module docstring).

    Vectorised over (chip, item) pairs with shapely 2: one STRtree query and one batch of
    intersections for the whole region; mosaics (an acquisition with several items over a chip)
    are resolved in Python, and only the ``max_candidates`` best per chip become objects. For all
    of France (about 166,000 chips) this is what keeps planning to minutes (docs/benchmarks.md).
    """
    if not items or not chips:
        return {}
    groups: dict[tuple[str, str, str], list[pystac.Item]] = defaultdict(list)
    for it in items:
        groups[_acquisition_key(it)].append(it)
    ordered = [it for k in sorted(groups) for it in sorted(groups[k], key=lambda i: i.id)]
    acq_of = np.array([a for a, k in enumerate(sorted(groups)) for _ in groups[k]])
    fps = np.array([_item_footprint_l93(it) for it in ordered], dtype=object)
    cloud = np.array([float(it.properties[cloud_property]) if cloud_property and cloud_property in it.properties
                      else np.nan for it in ordered])
    tree = shapely.STRtree(fps)
    shapely.prepare(fps)  # "is this chip inside the footprint" is then a fast test
    when: list[dt.datetime] = []
    for it in ordered:
        w = it.datetime or it.common_metadata.start_datetime
        assert w is not None  # searches keep only items with a time
        when.append(w)
    days = np.array([abs((w.date() - target).days) for w in when])
    stamp = np.array([w.timestamp() for w in when])
    items_by = ItemTable(ordered, acq_of, fps, cloud, when, days, stamp)
    out: dict[tuple[str, str], list[Candidate]] = {}
    for b in range(0, len(chips), CHIP_BLOCK):  # blocks of chips: the pair geometries stay bounded
        out.update(_rank_block(chips[b : b + CHIP_BLOCK], items_by, tree, sensor, max_candidates))
    return out


@dataclass(frozen=True)
class ItemTable:
    """The items of one sensor as arrays, in acquisition order (what ranking looks up per pair)."""

    items: list[pystac.Item]
    acquisition: np.ndarray
    footprint: np.ndarray
    cloud: np.ndarray
    when: list[dt.datetime]
    days: np.ndarray
    stamp: np.ndarray


#: Chips ranked together: bounds the (chip, item) intersection geometries held at once.
CHIP_BLOCK = 8192


def _rank_block(chips: list[Chip], t: ItemTable, tree: shapely.STRtree, sensor: str,
                max_candidates: int) -> dict[tuple[str, str], list[Candidate]]:
    ordered, acq_of, fps, cloud = t.items, t.acquisition, t.footprint, t.cloud
    chip_polys = np.array([c.polygon for c in chips], dtype=object)
    chip_area = float(chips[0].size_m) ** 2
    ci, ii = tree.query(chip_polys, predicate="intersects")
    if len(ci) == 0:
        return {}
    # Most chips lie inside an item's footprint: only the others need an intersection.
    inter = chip_polys[ci].copy()
    edge = ~shapely.contains_properly(fps[ii], chip_polys[ci])
    inter[edge] = shapely.intersection(chip_polys[ci[edge]], fps[ii[edge]])
    area = shapely.area(inter)
    keep = area > 1e-6 * chip_area
    ci, ii, inter, area = ci[keep], ii[keep], inter[keep], area[keep]
    if len(ci) == 0:  # footprints touching chips by an edge or a corner only
        return {}
    ai = acq_of[ii]
    # Pairs sorted by chip, acquisition, then the item covering most of the chip first.
    order = np.lexsort((ii, -area, ai, ci))
    ci, ii, inter, area, ai = ci[order], ii[order], inter[order], area[order], ai[order]
    starts = np.flatnonzero(np.r_[True, (ci[1:] != ci[:-1]) | (ai[1:] != ai[:-1])])
    sizes = np.diff(np.r_[starts, len(ci)])
    g_chip, coverage = ci[starts], area[starts] / chip_area
    g_cloud = cloud[ii[starts]]
    members: dict[int, list[int]] = {}
    for g in np.flatnonzero(sizes > 1):  # mosaics: drop items whose part is already covered
        first = starts[g]
        chosen, union = [ii[first]], inter[first]
        for k in range(first + 1, first + sizes[g]):
            if union.contains(inter[k].buffer(-0.01)):
                continue
            chosen.append(ii[k])
            union = union.union(inter[k])
        members[int(g)] = chosen
        coverage[g] = union.area / chip_area
        ccs = cloud[chosen]
        g_cloud[g] = np.nan if np.isnan(ccs).all() else np.nanmax(ccs)
    first_item = ii[starts]
    days, stamp = t.days[first_item], t.stamp[first_item]
    coverage = np.minimum(coverage, 1.0)
    expected = coverage * np.where(np.isnan(g_cloud), 1.0, np.maximum(0.0, 1 - g_cloud / 100))
    rank_order = np.lexsort((stamp, days, -np.round(expected, 3), g_chip))
    # The first max_candidates groups of each chip in rank order: only they become objects.
    ranked_chip = g_chip[rank_order]
    pos = np.arange(len(rank_order)) - np.searchsorted(ranked_chip, ranked_chip, side="left")
    ids = [c.id for c in chips]
    out: dict[tuple[str, str], list[Candidate]] = {}
    for g in rank_order[pos < max_candidates]:
        key = (ids[g_chip[g]], sensor)
        cands = out.setdefault(key, [])
        its = tuple(ordered[i] for i in members.get(int(g), [ii[starts[g]]]))
        cands.append(Candidate(chip_id=key[0], sensor=sensor, rank=len(cands) + 1, items=its,
                               acquired=t.when[first_item[g]],
                               cloud_cover=None if np.isnan(g_cloud[g]) else float(g_cloud[g]),
                               coverage=float(coverage[g]), days_from_target=int(days[g])))
    return out


def make_plan(region: Region, recipe: Recipe, catalog: Catalog, use_cache: bool = True,
              chips: list[Chip] | None = None) -> Plan:
    """Search every sensor's source over ``region`` and rank candidates per chip.

    Raises:
        BadInputError: invalid recipe/catalog combination, a region without chips, or a sensor
            with no item at all in the time window.
        SourceError: a source failed.
    """
    gsds = sensor_gsds(recipe, catalog)
    for name in gsds:  # before any search: a spec its product cannot read
        check_sensor(catalog.sensor(name))
    chips = chips if chips is not None else chips_in(region.geometry, recipe.chip_size_m)
    if not chips:
        raise BadInputError(f"region '{region.name}' covers no chip of {recipe.chip_size_m} m")
    footprint = shapely.union_all([c.polygon for c in chips])
    bbox = tuple(float(v) for v in reproject_geometry(footprint.envelope, L93, WGS84, densify_m=500).bounds)
    candidates: dict[tuple[str, str], list[Candidate]] = {}
    found: dict[str, int] = {}
    for name in gsds:
        spec = catalog.sensor(name)
        is_label = recipe.labels is not None and name == recipe.labels.sensor
        if is_label:
            window = recipe.labels.time if recipe.labels and recipe.labels.time else None
            start, end = (window.start, window.end) if window else LABEL_WINDOW
            target, max_cc, max_cands = (window.target_date if window else start), None, 1
        else:
            sr = recipe.sensors[name]
            window = sr.time or recipe.time  # aerial surveys span years: a sensor may have its own
            start, end, target = window.start, window.end, window.target_date
            max_cc, max_cands = sr.max_cloud_cover, sr.max_candidates
        q = SearchQuery(
            collection=spec.source.collection, bbox=bbox, start=start, end=end,  # type: ignore[arg-type]
            properties=tuple(sorted(spec.source.properties.items())),
            max_cloud_cover=max_cc, cloud_cover_property=spec.cloud_cover_property,
        )
        t0 = time.perf_counter()
        log.info(f"searching {name} ({spec.source.type}:{spec.source.collection}) over {len(chips)} chips ...")
        served = search_providers(spec, catalog, q, use_cache=use_cache)
        items = served.items
        found[name] = len(items)
        by = "" if len(spec.sources) == 1 else " (" + ", ".join(
            [f"{p}: {n}" for p, n in served.kept.items()] + [f"{p}: failed" for p in served.failed]) + \
            (f"; {served.duplicates} served twice, kept once" if served.duplicates else "") + ")"
        log.info(f"  {name}: {len(items)} items{by} in {time.perf_counter() - t0:.1f} s")
        if not items:
            cc = f", cloud <= {max_cc:g}%" if max_cc is not None and spec.cloud_cover_property else ""
            raise BadInputError(
                f"no {name} items for region '{region.name}' between {start} and {end}{cc} "
                f"(source {spec.source.type}:{spec.source.collection})"
            )
        candidates.update(rank_candidates(chips, items, name, target, spec.cloud_cover_property, max_cands))
    return Plan(region, recipe, catalog, chips, gsds, candidates, found)
