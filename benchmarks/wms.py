"""Aerial imagery through a WMS vs the same tiles through ``catalog ingest``: Debian's MapServer on
127.0.0.1 serving the real IGN BD ORTHO patches of ``../shared/realdata/f5`` (RGB and IRC), one
48 m chip at 1.5 m built both ways by ``msc-france build``, for each GetMap format and request
resolution; and what the default (a fifth of the store's GSD) costs for a 1,920 m chip and for
France at IGN's published rate limit.

Needs ``mapserv`` (Debian's cgi-mapserver) and ``../shared/realdata``; without them the section
returns no row and says why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: France métropolitaine, km² (IGN), for the projection.
FRANCE_KM2 = 543_940.0
CHIP_M = 1920
STORE_GSD = 1.5
IGN_RATE = 40.0


def bench_wms(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows: agreement with the tiles at the default request GSD, bytes per km², requests per chip
    and the France projection; details: the whole format x resolution table.
    """
    from benchmarks.common import row
    from msc_france.sources.wms import plan_requests
    from tests import helpers
    from tests.servers import mapserver

    src = helpers.REALDATA / "f5_l93"
    if mapserver() is None or not src.exists():
        print("  wms: skipped (needs mapserv and ../shared/realdata/f5_l93)")
        return [], {"skipped": "needs mapserv and ../shared/realdata/f5_l93"}
    import tests.sources.test_wms as t

    cases = [("image/tiff", 0.3)] if quick else [
        (f, g) for f in ("image/tiff", "image/png", "image/jpeg") for g in (0.75, 0.5, 0.3, 0.2)]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _, tiles = t._build(base, t._ingested_catalog(base, src), "tiles", [(t.X0, t.Y0)])
        ref, ref_valid = t._chip(tiles)
        for fmt, gsd in cases:
            d = base / f"{fmt.split('/')[1]}-{gsd}"
            d.mkdir()
            with t._server(d, src) as wms:
                code, web = t._build(d, t._catalog(d, wms.wms_url, request_gsd=gsd, formats=[fmt]), "web",
                                     [(t.X0, t.Y0)])
                nbytes, requests = wms.bytes_served, wms.count("GetMap")
            got, valid = t._chip(web)
            both = valid & ref_valid
            diff = np.abs(got.astype(float) - ref.astype(float))[:, both]
            table.append({"format": fmt, "request_gsd": gsd, "exit": code, "mean_dn": round(float(diff.mean()), 3),
                          "within_1dn": round(float((diff <= 1).mean()), 4), "max_dn": float(diff.max()),
                          "bytes_per_km2": round(nbytes / (48 * 48) * 1e6), "requests": requests})
    default = next(r for r in table if r["format"] == "image/tiff" and r["request_gsd"] == 0.3)
    _, _, pieces = plan_requests((0, 0, CHIP_M, CHIP_M), STORE_GSD / 5, 4096)
    per_chip = 2 * len(pieces)
    chips = FRANCE_KM2 * 1e6 / CHIP_M**2
    tb = default["bytes_per_km2"] * FRANCE_KM2 / 1e12
    rows = [
        row("WMS chip vs ingested tiles, mean absolute difference (TIFF, 0.3 m requests, 1.5 m store)", default["mean_dn"],
            "DN", None, "the same real IGN patches through catalog ingest", "<= 1 DN", higher_is_better=False,
            met=default["mean_dn"] <= 1.0, note=f"{default['within_1dn'] * 100:.1f} % within 1 DN, max "
            f"{default['max_dn']:.0f}; MapServer 8.0 on 127.0.0.1"),
        row("WMS bytes per km2 (both layers, TIFF, 0.3 m)", default["bytes_per_km2"] / 1e6, "MB/km2", None, "",
            "report only", note=f"{default['bytes_per_km2'] * CHIP_M**2 / 1e6 / 1e6:.0f} MB per {CHIP_M} m chip"),
        row(f"WMS requests per {CHIP_M} m chip", per_chip, "requests", None, "", "report only",
            note="two layers, 6,400 px a side in pieces of at most 4,096"),
        row("France through the WMS at IGN's 40 requests/s", per_chip * chips / IGN_RATE / 3600, "hours", None, "",
            "report only", note=f"{chips:,.0f} chips, {per_chip * chips / 1e6:.2f} M requests, {tb:.0f} TB as TIFF "
            f"({tb * 1e12 * 8 / 1e9 / 3600:.0f} h of transfer at 1 Gbit/s)"),
    ]
    return rows, {"table": table}
