"""The ``msc-france`` command line: parse, call the library, print.

Every error the project knows about becomes one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from msc_france.errors import BadInputError, MscFranceError, printable
from msc_france.fsutil import claim_output_dir, refuse_inside_store, zarr_store_at
from msc_france.progress import Bar
from msc_france.splits import ALL_SPLITS

EXIT_INTERNAL = 70
log = logging.getLogger("msc_france.cli")


def _say(text: str, err: bool = False) -> None:
    """Print one line: names from files and catalogs in it escaped (see ``printable``)."""
    click.echo(printable(text), err=err)


def _echo_table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(printable(str(x))) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header))
    click.echo(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        click.echo(fmt.format(*(printable(str(x)) for x in r)))


class _OneLineFormatter(logging.Formatter):
    """Log records on one line each: names in messages cannot forge lines (see ``printable``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The record's line, escaped (a traceback asked for with -vv stays as it is)."""
        return printable(super().formatMessage(record))


def _setup_logging(verbose: int, quiet: bool) -> None:
    """msc-france's loggers to stderr: INFO by default, DEBUG with -v, everything with -vv, WARNING with -q."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
    handler.setFormatter(_OneLineFormatter(fmt))
    ours = logging.getLogger("msc_france")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    if verbose > 1:  # third-party libraries too (dask, rasterio, urllib3)
        logging.basicConfig(level=logging.DEBUG, format=fmt, stream=sys.stderr, force=True)


def _quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.params.get("quiet"))


def _bar(desc: str, unit: str, quiet: bool = False) -> Bar:
    """A progress bar on stderr, hidden by -q (or a command's own --quiet)."""
    return Bar(desc, unit, enabled=not (quiet or _quiet()))


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=1, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="msc-france")
@click.option("-v", "--verbose", count=True, help="more log output (-v: debug, -vv: libraries too)")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only, no progress bars")
def cli(verbose: int, quiet: bool) -> None:
    """Build the multi-sensor MSC-France dataset and train X-STARS models on it."""
    _setup_logging(verbose, quiet)


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
        _json(records)
        return
    _echo_table(rows, ["name", "title", "kind", "msc-france city", "km2"])
    click.echo("\n--region also takes minx,miny,maxx,maxy (WGS84) or a GeoJSON/GeoPackage path.")


@cli.command()
@click.option("--catalog", "catalog_name", default="default", show_default=True,
              help="catalog name under catalogs/ or a directory of sensor YAMLs")
@click.option("--json", "as_json", is_flag=True, help="print the sensors as JSON")
def sensors(catalog_name: str, as_json: bool) -> None:
    """List the sensors of a catalog and where their items come from."""
    from msc_france.config import load_catalog
    from msc_france.sources.urls import redact

    cat = load_catalog(catalog_name)
    rows, records = [], []
    for s in cat.sensors.values():
        where = redact(s.source.url) if s.source.url else (s.source.path or "generated demo world")  # no secrets
        rows.append([s.name, s.kind, f"{s.native_gsd:g} -> {s.default_gsd:g}", s.dtype, " ".join(s.band_names),
                     f"{s.source.type}:{s.source.collection}", where])
        records.append({"sensor": s.name, "kind": s.kind, "native_gsd": s.native_gsd, "store_gsd": s.default_gsd,
                        "dtype": s.dtype, "bands": list(s.band_names), "source": s.source.type,
                        "collection": s.source.collection, "location": str(where)})
    if as_json:
        _json({"catalog": cat.name, "sensors": records})
        return
    _echo_table(rows, ["sensor", "kind", "gsd m (native -> store)", "dtype", "bands", "source", "location"])


# --------------------------------------------------------------------------- plan


def _load_inputs(region: str, catalog: str | None, recipe: str) -> tuple[Any, Any, Any]:  # Region, Recipe, Catalog
    from msc_france.config import load_catalog, load_recipe
    from msc_france.regions import parse_region

    rec = load_recipe(recipe)
    cat = load_catalog(catalog or rec.catalog)
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
        _json({"region": reg.name, "area_km2": reg.area_km2, "chips": len(p.chips), "chip_size_m": rec.chip_size_m,
               "catalog": cat.name, "sensors": counts, "out": str(out)})
        return
    _say(f"region {reg.name}: {reg.area_km2:,.1f} km2, {len(p.chips)} chips of {rec.chip_size_m} m "
               f"(catalog {cat.name})")
    rows = [[s, c["items"], f"{c['planned']}/{c['chips']}", c["mosaic"], c["partial"]] for s, c in counts.items()]
    _echo_table(rows, ["sensor", "items found", "chips planned", "mosaics", "partial cover"])
    _say(f"plan written to {out}")


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
        _say(f"region {reg.name}: {len(p.chips)} chips of {rec.chip_size_m} m; "
                   + ", ".join(f"{s} {c['planned']}/{c['chips']}" for s, c in counts.items()))
    if dry_run:
        rows = [[s, c["items"], f"{c['planned']}/{c['chips']}", c["mosaic"], c["partial"]] for s, c in counts.items()]
        _echo_table(rows, ["sensor", "items found", "chips planned", "mosaics", "partial cover"])
        click.echo("dry run: nothing written")
        return
    with _bar("build", "chip", quiet) as bar:
        s = run_build(p, out, workers=workers, scheduler=scheduler, retry_failed=retry_failed, progress=bar)
    if as_json:
        _json({**dataclasses.asdict(s), "out": out})
    else:
        _say(f"built {s.built} chips, skipped {s.skipped} already done, failed {len(s.failed)} "
               f"({s.flagged} flagged, {s.dropped} dropped below min valid fraction) in {s.elapsed_s:.1f} s "
               f"({s.chips_per_s:.2f} chips/s); store {'complete' if s.complete else 'incomplete'}: {out}")
        for cid, reason in list(s.failed.items())[:20]:
            _say(f"  failed {cid}: {reason}")
        if len(s.failed) > 20:
            _say(f"  ... and {len(s.failed) - 20} more (see msc-france info {out})")
    if s.failed:
        raise BuildFailedError(f"{len(s.failed)} chip(s) failed; rerun with --retry-failed to try them again")


# --------------------------------------------------------------------------- inspect

_STORE = click.STRING  # a directory or an object-store URL (s3://, gs://, az://)


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def info(store: str, as_json: bool) -> None:
    """Summarise a store."""
    from msc_france.store import Store
    from msc_france.store.validate import info as store_info

    s = store_info(Store.open(store))
    if as_json:
        _json(s)
        return
    _say(f"{s['path']}: format v{s['format_version']}, recipe {s['recipe']}, {s['n_chips']} chips of "
               f"{s['chip_size_m']} m ({s['chips_per_shard']} per shard), regions {', '.join(s['regions'])}, "
               f"{'complete' if s['complete'] else 'INCOMPLETE'}")
    click.echo("splits: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    rows = []
    for g, L in s["layers"].items():
        st = L["stats"]
        mean = " ".join(f"{v:.0f}" for v in st["mean"]) if st else "-"
        mvf = "-" if L["mean_valid_fraction"] is None else f"{L['mean_valid_fraction']:.2f}"
        rows.append([g, f"{L['gsd']:g}", L["chip_pixels"], " ".join(L["bands"]), L["dtype"],
                     " ".join(f"{k}={v}" for k, v in L["status"].items()), mvf, mean])
    _echo_table(rows, ["group", "gsd m", "px", "bands", "dtype", "status", "valid", "band means"])
    for p in s["problems"]:
        _say(f"PROBLEM: {p}")


@cli.command("index")
@click.argument("store", type=_STORE)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="write the index to a file instead: .parquet (GeoParquet), .csv (WKT geometry) or .geojson (WGS84)")
@click.option("--split", type=click.Choice(ALL_SPLITS), default=None, help="only chips of this split")
def index_cmd(store: str, out: Path | None, split: str | None) -> None:
    """Print or export the chip index (one row per chip: footprint, split, per-sensor status and dates)."""
    from msc_france.store import Store
    from msc_france.store.index_export import export_index, summary_rows

    if out is not None:
        refuse_inside_store(out, "index file")
    idx = Store.open(store).index()
    if split:
        idx = idx[idx["split"] == split]
    if out is None:
        header, rows = summary_rows(idx)
        _echo_table(rows, header)
        return
    n = export_index(idx, out)
    _say(f"wrote {n} chips to {out}")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--no-checksums", is_flag=True, help="skip re-hashing every chip")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON (exit status unchanged)")
def validate(store: str, no_checksums: bool, as_json: bool) -> None:
    """Check a store's schema, shapes, chunking, completeness and checksums."""
    from msc_france.errors import StoreError
    from msc_france.store import Store
    from msc_france.store.validate import validate as store_validate

    with _bar("validate", "chip-sensor") as bar:
        rep = store_validate(Store.open(store), checksums=not no_checksums, progress=bar)
    if as_json:
        _json({"store": store, "valid": rep.ok, "corrupt": rep.corrupt, "incomplete": rep.incomplete,
               "checked_chips": rep.checked_chips})
    for p in ([] if as_json else rep.corrupt):
        _say(f"CORRUPT: {p}")
    for p in ([] if as_json else rep.incomplete):
        _say(f"INCOMPLETE: {p}")
    if rep.corrupt:
        raise StoreError(f"store {store} is corrupt ({len(rep.corrupt)} problem(s))")
    if rep.incomplete:
        raise StoreError(f"store {store} is incomplete ({len(rep.incomplete)} problem(s)); run build again")
    if not as_json:
        _say(f"store {store} is valid ({rep.checked_chips} chip checksums verified)")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="directory for the PNGs")
@click.option("--chips", "n_chips", type=click.IntRange(1, 64), default=6, show_default=True)
def preview(store: str, out: Path, n_chips: int) -> None:
    """Write PNGs: sensor views side by side for sample chips, and chip footprints by status."""
    from msc_france.render import preview as render_preview
    from msc_france.store import Store

    claim_output_dir(out, "preview", lambda n: n in ("chips.png", "footprints.png") or n.startswith(".chips.png")
                     or n.startswith(".footprints.png"))
    with _bar("preview", "chip") as bar:
        paths = render_preview(Store.open(store), out, n_chips=n_chips, progress=bar)
    for p in paths:
        _say(f"wrote {p}")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--format", "fmt", type=click.Choice(["xstars-folders"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--split", type=click.Choice(ALL_SPLITS), default=None)
def export(store: str, fmt: str, out: Path, split: str | None) -> None:
    """Export a store to another layout (the X-STARS reference code's PNG folders)."""
    from msc_france.render import XSTARS_NAMES, export_xstars
    from msc_france.store import Store

    claim_output_dir(out, "export", lambda n: n in XSTARS_NAMES.values())
    with _bar("export", "chip") as bar:
        n = export_xstars(Store.open(store), out, split=split, progress=bar)
    _say(f"exported {n} chips to {out}")


# --------------------------------------------------------------------------- training


@cli.command()
@click.option("--config", "config_path", required=True, help="pretraining config (pipelines/pretrain-*.yaml)")
@click.option("--data", "store", default=None, help="store to train on (overrides data.store)")
@click.option("--out", default=None, help="run directory (overrides run.out); an existing run is resumed")
@click.option("--set", "overrides", multiple=True, help="override a config value: key.sub=value (repeatable)")
@click.option("--quiet", is_flag=True, help="no per-step output")
def pretrain(config_path: str, store: str | None, out: str | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Pretrain an X-STARS (or DINO-only, or continual) model; resumes from the run's last checkpoint."""
    from msc_france.xstars.config import load_train_config
    from msc_france.xstars.train import pretrain as run_pretrain

    cfg = load_train_config(config_path, list(overrides), **{"data.store": store, "run.out": out})
    s = run_pretrain(cfg, progress=not (quiet or _quiet()))
    first = f"{s['losses'][0]:.4f}" if s["losses"] else "-"
    lastv = f"{s['losses'][-1]:.4f}" if s["losses"] else "-"
    _say(f"trained steps {s['start']}..{s['start'] + s['steps']} on {s['device']} in {s['elapsed_s']:.1f} s "
               f"({s['images_per_s']:.1f} images/s); loss {first} -> {lastv}; run in {s['out']}")


@cli.command("eval")
@click.option("--config", "config_path", default="eval", show_default=True, help="evaluation config")
@click.option("--checkpoint", default=None, help="evaluate this checkpoint (instead of the config's models)")
@click.option("--data", "store", default=None, help="store to evaluate on (overrides store)")
@click.option("--out", default=None, help="report directory (overrides out)")
def eval_cmd(config_path: str, checkpoint: str | None, store: str | None, out: str | None) -> None:
    """Evaluate frozen encoders (and baselines) and write report.json, report.md and figures."""
    from msc_france.eval.run import evaluate, load_eval_config

    cfg = load_eval_config(config_path, store=store, out=out, checkpoint=checkpoint)
    claim_output_dir(Path(cfg.out), "eval", lambda n: n.startswith(("report.", "retrieval", "segmentation",
                                                                     "transfer", "summary")) or n == "features")
    r = evaluate(cfg)
    click.echo((Path(cfg.out) / "report.md").read_text())
    _say(f"report written to {cfg.out} (report.json, report.md, retrieval.png, transfer.png, "
               f"segmentation.png) in {r['elapsed_s']} s")


# --------------------------------------------------------------------------- catalog


@cli.group()
def catalog() -> None:
    """Manage local STAC catalogs."""


@catalog.command("ingest")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output catalog directory")
@click.option("--product", type=click.Choice(["auto", "bd-ortho", "spot", "s2-safe", "theia"]), default="auto",
              show_default=True, help="product family of the files (auto: detected from the files)")
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
    _say(f"{r.items} items ({r.files_used} files) written to {r.catalog}; product {r.product} ({r.decided_by})")
    for path, reason in r.not_used:
        _say(f"not used {path}: {reason}")
    for path, reason in r.skipped:
        _say(f"skipped {path}: {reason}", err=True)
    if r.skipped:
        raise IngestIncompleteError(f"{len(r.skipped)} file(s) skipped (listed above); the catalog holds the rest")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map errors to one-line messages and exit codes."""
    try:
        rv = cli.main(args=argv, prog_name="msc-france", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as e:
        _say(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except MscFranceError as e:
        _say(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except OSError as e:  # the environment: disk full, read-only or missing directory, permissions
        where = f": {e.filename}" if e.filename else ""
        _say(f"error: {e.strerror or type(e).__name__}{where}", err=True)
        return 4
    except Exception as e:  # a bug: say so in one line, traceback on request
        if os.environ.get("MSC_FRANCE_DEBUG"):
            traceback.print_exc()
        first = printable(str(e).splitlines()[0] if str(e) else "")
        _say(f"internal error: {type(e).__name__}: {first} (set MSC_FRANCE_DEBUG=1 for a traceback)", err=True)
        return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry point: run the command, then leave without interpreter finalisation.

    Native thread pools (Arrow's, behind every GeoParquet read and write) can abort CPython's
    finalisation with "terminate called without an active exception" (SIGABRT, exit -6) after a
    command that succeeded and wrote everything (apache/arrow#34314; seen once here on ``plan``).
    Every file, client and cluster a command opens is closed before :func:`main` returns, so once
    Python-level garbage is collected and the streams are flushed, ``os._exit`` ends the process with
    the command's own exit code.
    """
    code = main()
    gc.collect()  # release native objects while their libraries are still alive
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``) or a closed stream
            pass
    os._exit(code)


__all__ = ["cli", "main", "entry", "BadInputError"]


if __name__ == "__main__":  # python -m msc_france.cli (torchrun uses this form)
    entry()
