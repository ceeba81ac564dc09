"""Commands that look at a store: info, index, validate, preview, export and card."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from msc_france.cli.common import cli, echo_table, print_json, progress_bar, say, selection_options
from msc_france.fsutil import output_dir, refuse_inside_store

if TYPE_CHECKING:
    from msc_france.selection import ChipSelection

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
        print_json(s.to_json())
        return
    say(s.line())
    click.echo("splits: " + ", ".join(f"{k} {v}" for k, v in s.splits.items()))
    rows = []
    for g, L in s.layers.items():
        mean = " ".join(f"{v:.0f}" for v in L.stats.mean) if L.stats else "-"
        mvf = "-" if L.mean_valid_fraction is None else f"{L.mean_valid_fraction:.2f}"
        rows.append([g, f"{L.gsd:g}", L.chip_pixels, " ".join(L.bands), L.dtype,
                     " ".join(f"{k}={v}" for k, v in L.status.items()), mvf, mean])
    echo_table(rows, ["group", "gsd m", "px", "bands", "dtype", "status", "valid", "band means"])
    for p in s.problems:
        say(f"PROBLEM: {p}")


@cli.command("index")
@click.argument("store", type=_STORE)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="write the index to a file instead: .parquet (GeoParquet), .csv (WKT geometry) or .geojson (WGS84)")
@selection_options
def index_cmd(store: str, out: Path | None, selection: ChipSelection) -> None:
    """Print or export the chip index (one row per chip: footprint, split, per-sensor status and dates)."""
    from msc_france.selection import select
    from msc_france.store import Store
    from msc_france.store.index_export import export_index, summary_rows

    if out is not None:
        refuse_inside_store(out, "index file")
    idx = select(Store.open(store).index(), selection, store)
    if out is None:
        header, rows = summary_rows(idx)
        echo_table(rows, header)
        return
    n = export_index(idx, out)
    say(f"wrote {n} chips to {out}")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--no-checksums", is_flag=True, help="skip re-hashing every chip")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON (exit status unchanged)")
def validate(store: str, no_checksums: bool, as_json: bool) -> None:
    """Check a store's schema, shapes, chunking, completeness and checksums."""
    from msc_france.errors import StoreError
    from msc_france.store import Store
    from msc_france.store.validate import validate as store_validate

    with progress_bar("validate", "chip-sensor") as bar:
        rep = store_validate(Store.open(store), checksums=not no_checksums, progress=bar)
    if as_json:
        print_json({"store": store, "valid": rep.ok, "corrupt": rep.corrupt, "incomplete": rep.incomplete,
               "checked_chips": rep.checked_chips})
    for p in ([] if as_json else rep.corrupt):
        say(f"CORRUPT: {p}")
    for p in ([] if as_json else rep.incomplete):
        say(f"INCOMPLETE: {p}")
    if rep.corrupt:
        raise StoreError(f"store {store} is corrupt ({len(rep.corrupt)} problem(s))")
    if rep.incomplete:
        raise StoreError(f"store {store} is incomplete ({len(rep.incomplete)} problem(s)); run build again")
    if not as_json:
        say(f"store {store} is valid ({rep.checked_chips} chip checksums verified)")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="directory for the PNGs")
@click.option("--chips", "n_chips", type=click.IntRange(1, 64), default=6, show_default=True)
@selection_options
def preview(store: str, out: Path, n_chips: int, selection: ChipSelection) -> None:
    """Write PNGs: sensor views side by side for sample chips, and chip footprints by status."""
    from msc_france.render import preview as render_preview
    from msc_france.store import Store

    st = Store.open(store)
    st.index()  # a damaged store is refused before any folder is made
    with output_dir(out, "preview"), progress_bar("preview", "chip") as bar:
        paths = render_preview(st, out, n_chips=n_chips, progress=bar, selection=selection)
    for p in paths:
        say(f"wrote {p}")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--format", "fmt", type=click.Choice(["xstars-folders"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@selection_options
def export(store: str, fmt: str, out: Path, selection: ChipSelection) -> None:
    """Export a store to another layout (the X-STARS reference code's PNG folders)."""
    from msc_france.render import export_xstars
    from msc_france.store import Store

    st = Store.open(store)
    st.index()  # a damaged store is refused before any folder is made
    with output_dir(out, "export"), progress_bar("export", "chip") as bar:
        n = export_xstars(st, out, selection=selection, progress=bar)
    say(f"exported {n} chips to {out}")


@cli.command()
@click.argument("store", type=_STORE)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for card.md, card.json and "
              "the figures")
@selection_options
def card(store: str, out: Path, selection: ChipSelection) -> None:
    """Write a dataset card: counts per sensor and split, a map of the splits, dates, valid fractions,
    measured shifts, sources and licences, and the recipe (from the index and attributes only).
    """
    from msc_france.card import write_card
    from msc_france.store import Store

    st = Store.open(store)
    st.index()  # a damaged store is refused before any folder is made
    with output_dir(out, "card"):
        written = write_card(st, out, selection)
    for p in written:
        say(f"wrote {p}")
