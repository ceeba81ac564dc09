"""Commands that find and build data: regions, sensors, plan, build and catalog ingest."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import click

from msc_france.cli.common import cli, echo_table, print_json, progress_bar, say
from msc_france.errors import BadInputError
from msc_france.fsutil import refuse_inside_store, zarr_store_at

# --------------------------------------------------------------------------- discovery


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the regions as JSON")
def regions(as_json: bool) -> None:
    """List the named regions."""
    from msc_france.regions import named_regions, parse_region

    rows, records = [], []
    for name, feat in named_regions().items():
        if name == "france":
            continue
        r = parse_region(name, check_france=False)
        p = feat["properties"]
        rows.append([name, p.get("title", ""), p.get("kind", ""), "yes" if p.get("msc_france") else "",
                     f"{r.area_km2:,.0f}"])
        records.append({"name": name, "title": p.get("title", ""), "kind": p.get("kind", ""),
                        "msc_france": bool(p.get("msc_france")), "area_km2": round(r.area_km2, 1),
                        "bbox_wgs84": [round(v, 6) for v in r.bbox_wgs84]})
    if as_json:
        print_json(records)
        return
    echo_table(rows, ["name", "title", "kind", "msc-france city", "km2"])
    click.echo("\n--region also takes minx,miny,maxx,maxy (WGS84) or a GeoJSON/GeoPackage path.")


@cli.command()
@click.option("--catalog", "catalog_name", default="default", show_default=True,
              help="catalog name under catalogs/ or a directory of sensor YAMLs")
@click.option("--json", "as_json", is_flag=True, help="print the sensors as JSON")
def sensors(catalog_name: str, as_json: bool) -> None:
    """List the sensors of a catalog and where their items come from."""
    from msc_france.config import load_catalog
    from msc_france.products import check_catalog
    from msc_france.urls import redact

    cat = check_catalog(load_catalog(catalog_name))
    rows, records = [], []
    for s in cat.sensors.values():
        def where(src: Any) -> str:
            return redact(src.url) if src.url else (src.path or "generated demo world")  # no secrets

        rows.append([s.name, s.kind, f"{s.native_gsd:g} -> {s.default_gsd:g}", s.dtype, " ".join(s.band_names),
                     ", ".join(f"{p.provider} ({p.type}:{p.collection})" for p in s.sources), where(s.source)])
        records.append({"sensor": s.name, "kind": s.kind, "native_gsd": s.native_gsd, "store_gsd": s.default_gsd,
                        "dtype": s.dtype, "bands": list(s.band_names), "source": s.source.type,
                        "collection": s.source.collection, "location": str(where(s.source)),
                        "providers": [{"name": p.provider, "type": p.type, "collection": p.collection,
                                       "location": str(where(p))} for p in s.sources]})
    if as_json:
        print_json({"catalog": cat.name, "sensors": records})
        return
    echo_table(rows, ["sensor", "kind", "gsd m (native -> store)", "dtype", "bands", "providers, in order",
                      "first location"])


# --------------------------------------------------------------------------- plan


def _load_inputs(region: str, catalog: str | None, recipe: str) -> tuple[Any, Any, Any]:  # Region, Recipe, Catalog
    from msc_france.config import load_catalog, load_recipe
    from msc_france.products import check_catalog
    from msc_france.regions import parse_region

    rec = load_recipe(recipe)
    cat = check_catalog(load_catalog(catalog or rec.catalog))
    reg = parse_region(region)
    if reg.name == "demo" and cat.world is None:
        raise BadInputError(f"region 'demo' is the offline demo world, but catalog '{cat.name}' searches real "
                            "services: add --recipe demo")
    return reg, rec, cat


@cli.command()
@click.option("--region", required=True, help="region name, minx,miny,maxx,maxy (WGS84) or a GeoJSON/GPKG path")
@click.option("--catalog", default=None, help="catalog name or directory (default: the recipe's)")
@click.option("--recipe", default="msc-france", show_default=True, help="recipe name under pipelines/ or a YAML path")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="plan GeoParquet to write")
@click.option("--no-cache", is_flag=True, help="do not read or write the on-disk search cache")
@click.option("--json", "as_json", is_flag=True, help="print the plan's counts as JSON")
def plan(region: str, catalog: str | None, recipe: str, out: Path, no_cache: bool, as_json: bool) -> None:
    """Choose the item(s) of every sensor for every chip of a region, and write the plan."""
    from msc_france.plan import make_plan

    refuse_inside_store(out, "plan file")  # checked before any search
    reg, rec, cat = _load_inputs(region, catalog, recipe)
    p = make_plan(reg, rec, cat, use_cache=not no_cache)
    p.write(out)
    counts = p.counts()
    if as_json:
        print_json({"region": reg.name, "area_km2": reg.area_km2, "chips": len(p.chips), "chip_size_m": rec.chip_size_m,
               "catalog": cat.name, "sensors": {k: dataclasses.asdict(c) for k, c in counts.items()},
                    "out": str(out)})
        return
    say(f"region {reg.name}: {reg.area_km2:,.1f} km2, {len(p.chips)} chips of {rec.chip_size_m} m "
               f"(catalog {cat.name})")
    echo_table([c.row(s) for s, c in counts.items()], ["sensor", "items found", "chips planned", "mosaics",
                                                       "partial cover"])
    say(f"plan written to {out}")


# --------------------------------------------------------------------------- build


@cli.command()
@click.option("--region", default=None, help="region name, minx,miny,maxx,maxy (WGS84) or a GeoJSON/GPKG path")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), default=None,
              help="build exactly this plan (written by `msc-france plan --out`) instead of planning a region")
@click.option("--out", required=True, help="store directory or object-store URL (created or appended)")
@click.option("--catalog", default=None, help="catalog name or directory (default: the recipe's)")
@click.option("--recipe", default=None, help="recipe name under pipelines/ or a YAML path  [default: msc-france]")
@click.option("--workers", type=click.IntRange(1, 256), default=2, show_default=True, help="local threads/processes")
@click.option("--scheduler", default=None, help="threads (default), processes, or tcp://HOST:PORT of a dask cluster")
@click.option("--retry-failed", is_flag=True, help="rebuild chips recorded as failed")
@click.option("--dry-run", is_flag=True, help="print the plan and the work to do, write nothing")
@click.option("--no-cache", is_flag=True, help="do not use the on-disk search cache")
@click.option("--quiet", is_flag=True, help="no progress bar, warnings and errors only (as the global -q)")
@click.option("--json", "as_json", is_flag=True, help="print the build summary as JSON")
def build(region: str | None, plan_path: Path | None, out: str, catalog: str | None, recipe: str | None, workers: int,
          scheduler: str | None, retry_failed: bool, dry_run: bool, no_cache: bool, quiet: bool,
          as_json: bool) -> None:
    """Build (or complete, or extend) a store for a region, or for a plan file."""
    import dataclasses

    if quiet:  # the command's own --quiet is the global -q
        logging.getLogger("msc_france").setLevel(logging.WARNING)

    from msc_france.builder import run_build
    from msc_france.builder.scheduler import check_scheduler
    from msc_france.errors import BuildFailedError
    from msc_france.plan import make_plan, read_plan

    # The cheap checks first: an output that cannot be a store, or an unreachable cluster, is
    # refused before any catalog is searched (minutes against a real API).
    if "://" not in out:
        if Path(out).exists() and not Path(out).is_dir():
            raise BadInputError(f"--out {out} is a file, not a store directory")
        inside = zarr_store_at(Path(out).parent)
        if inside is not None:
            raise BadInputError(f"--out {out} is inside the Zarr store {inside}: a store is never built inside another")
    if not dry_run:
        check_scheduler(scheduler)
    if plan_path is not None:
        given = [f"--{k}" for k, v in (("region", region), ("recipe", recipe), ("catalog", catalog)) if v]
        if given:
            raise BadInputError(f"--plan carries its region, recipe and catalog: drop {', '.join(given)}")
        p = read_plan(plan_path)
        reg, rec = p.region, p.recipe
    elif region is None:
        raise BadInputError("give --region (to plan and build) or --plan (to build a plan file)")
    else:
        reg, rec, cat = _load_inputs(region, catalog, recipe or "msc-france")
        p = make_plan(reg, rec, cat, use_cache=not no_cache)
    counts = p.counts()
    if not as_json:
        say(f"region {reg.name}: {len(p.chips)} chips of {rec.chip_size_m} m; "
                   + ", ".join(f"{s} {c.planned}/{c.chips}" for s, c in counts.items()))
    if dry_run:
        echo_table([c.row(s) for s, c in counts.items()], ["sensor", "items found", "chips planned", "mosaics",
                                                           "partial cover"])
        click.echo("dry run: nothing written")
        return
    with progress_bar("build", "chip", quiet) as bar:
        s = run_build(p, out, workers=workers, scheduler=scheduler, retry_failed=retry_failed, progress=bar)
    if as_json:
        print_json({**dataclasses.asdict(s), "out": out})
    else:
        say(f"built {s.built} chips, skipped {s.skipped} already done, failed {len(s.failed)} "
               f"({s.flagged} flagged, {s.dropped} dropped below min valid fraction) in {s.elapsed_s:.1f} s "
               f"({s.chips_per_s:.2f} chips/s); store {'complete' if s.complete else 'incomplete'}: {out}")
        for cid, reason in list(s.failed.items())[:20]:
            say(f"  failed {cid}: {reason}")
        if len(s.failed) > 20:
            say(f"  ... and {len(s.failed) - 20} more (see msc-france info {out})")
    if s.failed:
        raise BuildFailedError(f"{len(s.failed)} chip(s) failed; rerun with --retry-failed to try them again")



# --------------------------------------------------------------------------- catalog


@cli.group()
def catalog() -> None:
    """Manage local STAC catalogs."""


@catalog.command("ingest")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output catalog directory")
@click.option("--layout", "--product", "product", type=click.Choice(["auto", "bd-ortho", "spot", "s2-safe", "theia"]),
              default="auto", show_default=True, help="how the files lie on disk (auto: detected from them); "
              "--product is its former name")
@click.option("--collection", default=None, help="collection id of the items (default: per product)")
@click.option("--datetime", "when", default=None, help="acquisition date (YYYY-MM-DD) when files carry none")
@click.option("--variant", type=click.Choice(["FRE", "SRE"]), default="FRE", show_default=True,
              help="Theia reflectance: FRE (flat, slope corrected) or SRE")
@click.option("--band-order", default=None, help="SPOT band names in file order, e.g. blue,green,red,nir")
def catalog_ingest(directory: Path, out: Path, product: str, collection: str | None, when: str | None,
                   variant: str, band_order: str | None) -> None:
    """Turn downloaded products (BD ORTHO, SPOT-6/7, Sentinel-2 SAFE, Theia L2A) into a local STAC catalog.

    Exits 6 when the catalog was written but some files were skipped (each listed with its reason).
    """
    from msc_france.errors import IngestIncompleteError
    from msc_france.ingest import ingest

    order = [b.strip().lower() for b in band_order.split(",")] if band_order else None
    refuse_inside_store(out, "catalog folder")
    r = ingest(directory, out, product=product, collection=collection, when=when, variant=variant, band_order=order)
    say(f"{r.items} items ({r.files_used} files) written to {r.catalog}; product {r.product} ({r.decided_by})")
    for path, reason in r.not_used:
        say(f"not used {path}: {reason}")
    for path, reason in r.skipped:
        say(f"skipped {path}: {reason}", err=True)
    if r.skipped:
        raise IngestIncompleteError(f"{len(r.skipped)} file(s) skipped (listed above); the catalog holds the rest")
