"""Fixtures shaped like the files users download (see shared notes: real-products.md).

Each generator writes small files with the conventions of a real delivery: IGN's Lambert-93
WKTs without authority codes and white fill declared as nodata 255, ``rgb/`` + ``irc/`` folders
and ``_rgb`` suffixes; SPOT-6/7 PAN / MS / pansharpened products in float32 reflectance or
uint16 DN; ESA SAFE folders (JPEG 2000, baseline 04.00 offset, half-nodata orbit edge, SCL at
20 m, MTD_MSIL2A.xml); Theia/MAJA folders (int16, nodata -10000, negative values, CLM/EDG/SAT
bit masks, MTD_ALL.xml). Each returns the arrays it wrote so that tests compute their own
reference from them, never with the builder's code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from scipy.ndimage import gaussian_filter

IGN_WKT_WGS84 = (
    'PROJCS["EPSG:2154",GEOGCS["unknown",DATUM["unnamed",SPHEROID["unretrievable - using WGS84",6378137,'
    '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["latitude_of_origin",46.5],'
    'PARAMETER["central_meridian",3],PARAMETER["standard_parallel_1",49],PARAMETER["standard_parallel_2",44],'
    'PARAMETER["false_easting",700000],PARAMETER["false_northing",6600000],UNIT["metre",1],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)
IGN_WKT_TOWGS84 = (
    'PROJCS["epsg:2154",GEOGCS["unknown",DATUM["unnamed",SPHEROID["unnamed",6378137,298.257222101004],'
    'TOWGS84[0,0,0,0,0,0,0]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["latitude_of_origin",46.5],'
    'PARAMETER["central_meridian",3],PARAMETER["standard_parallel_1",49],PARAMETER["standard_parallel_2",44],'
    'PARAMETER["false_easting",700000],PARAMETER["false_northing",6600000],UNIT["metre",1],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


def field(shape: tuple[int, ...], seed: int, lo: float, hi: float, sigma: float = 2.0) -> np.ndarray:
    """A smooth random field in [lo, hi] (float64), deterministic per seed."""
    rng = np.random.default_rng(seed)
    f = gaussian_filter(rng.random(shape), sigma=(0, sigma, sigma) if len(shape) == 3 else sigma)
    f = (f - f.min()) / (f.max() - f.min())
    return lo + f * (hi - lo)


def _write(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None = None,
           driver: str = "GTiff", descriptions: tuple[str, ...] | None = None, **opts: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = CRS.from_wkt(crs) if crs.startswith(("PROJCS", "GEOGCS")) else CRS.from_user_input(crs)
    if driver == "JP2OpenJPEG":
        opts = {"QUALITY": 100, "REVERSIBLE": "YES", **opts}
    elif driver == "GTiff":
        opts = {"compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256, **opts}
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=c, transform=transform, nodata=nodata, **opts) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)


# --------------------------------------------------------------------------- IGN BD ORTHO


def bdortho_tile(path: Path, x0: float, y1: float, n: int, res: float = 0.5, bands: int = 3, seed: int = 0,
                 fill_cols: int = 0, nodata: float | None = 255, wkt: str = IGN_WKT_WGS84,
                 driver: str = "GTiff") -> np.ndarray:
    """A BD ORTHO tile: uint8, IGN's WKT, white fill (255) over the first ``fill_cols`` columns."""
    data = np.rint(field((bands, n, n), seed, 20, 230, sigma=3)).astype(np.uint8)
    data[:, :, :fill_cols] = 255
    _write(path, data, wkt, Affine(res, 0, x0, 0, -res, y1), nodata=nodata, driver=driver)
    return data


# --------------------------------------------------------------------------- SPOT-6/7


def spot_product(path: Path, x0: float, y1: float, n: int, res: float, count: int, dtype: str, seed: int = 0,
                 descriptions: tuple[str, ...] | None = ("blue", "green", "red", "nir")) -> np.ndarray:
    """A SPOT-6/7 ortho in Lambert-93: float32 TOA reflectance (0.02-0.45) or uint16 DN."""
    refl = field((count, n, n), seed, 0.02, 0.45, sigma=2)
    data = refl.astype(np.float32) if dtype == "float32" else np.rint(refl * 4000).astype(dtype)
    _write(path, data, "EPSG:2154", Affine(res, 0, x0, 0, -res, y1),
           descriptions=descriptions if count > 1 else None)
    return data


# --------------------------------------------------------------------------- Sentinel-2 L2A


@dataclass(frozen=True)
class S2Fixture:
    """What a Sentinel-2 fixture holds: its folder, grid and the arrays written."""

    path: Path
    crs: str
    transform: Affine  # 10 m bands
    bands: dict[str, np.ndarray]  # DN (SAFE, uint16) or int16 (Theia), 10 m
    masks: dict[str, np.ndarray]  # SCL at 20 m (SAFE), CLM/EDG/SAT at 10 m (Theia)


def _s2_bands(n: int, seed: int, edge_cols: int) -> dict[str, np.ndarray]:
    out = {}
    for i, (b, (lo, hi)) in enumerate({"blue": (0.02, 0.12), "green": (0.04, 0.16), "red": (0.02, 0.2),
                                        "nir": (0.15, 0.45)}.items()):
        out[b] = field((n, n), seed + i, lo, hi, sigma=1.5)
    return out


def safe_product(root: Path, when: dt.datetime, x0: float, y1: float, n: int = 80, baseline: str = "04.00",
                 crs: str = "EPSG:32630", tile: str = "30TXQ", edge_cols: int = 30, seed: int = 3) -> S2Fixture:
    """An ESA S2 L2A SAFE folder: JP2 bands with the BOA_ADD_OFFSET of ``baseline``, nodata 0
    west of ``edge_cols`` (orbit edge), SCL at 20 m with a cloud and a shadow block.
    """
    stamp = when.strftime("%Y%m%dT%H%M%S")
    nb = baseline.replace(".", "")
    pid = f"S2B_MSIL2A_{stamp}_N{nb}_R094_T{tile}_{when.strftime('%Y%m%d')}T140000"
    safe = root / f"{pid}.SAFE"
    gran = safe / "GRANULE" / f"L2A_T{tile}_A000000_{stamp}" / "IMG_DATA"
    offset = 1000 if baseline >= "04.00" else 0
    refl = _s2_bands(n, seed, edge_cols)
    bands = {}
    t10 = Affine(10, 0, x0, 0, -10, y1)
    for key, name in (("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir")):
        dn = np.rint(refl[name] * 10000 + offset).astype(np.uint16)
        dn[:, :edge_cols] = 0
        _write(gran / "R10m" / f"T{tile}_{stamp}_{key}_10m.jp2", dn[None], crs, t10, nodata=0, driver="JP2OpenJPEG")
        bands[key] = dn
    m = n // 2
    scl = np.full((m, m), 4, np.uint8)
    scl[:, : edge_cols // 2] = 0
    scl[15:20, 22:28] = 9  # cloud, high probability
    scl[22:24, 22:28] = 3  # its shadow
    scl[28:31, 18:22] = 6  # water: clear ground
    _write(gran / "R20m" / f"T{tile}_{stamp}_SCL_20m.jp2", scl[None], crs, Affine(20, 0, x0, 0, -20, y1), nodata=0,
           driver="JP2OpenJPEG")
    safe.mkdir(parents=True, exist_ok=True)
    offs = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{-offset}</BOA_ADD_OFFSET>' for i in range(13))
    (safe / "MTD_MSIL2A.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">'
        f"<n1:General_Info><Product_Info><PRODUCT_START_TIME>{when.strftime('%Y-%m-%dT%H:%M:%S.024Z')}"
        f"</PRODUCT_START_TIME><PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>"
        "<Datatake><SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME></Datatake></Product_Info>"
        f"<Product_Image_Characteristics><BOA_ADD_OFFSET_VALUES_LIST>{offs}</BOA_ADD_OFFSET_VALUES_LIST>"
        "<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit=\"none\">10000</BOA_QUANTIFICATION_VALUE>"
        "</QUANTIFICATION_VALUES_LIST></Product_Image_Characteristics></n1:General_Info>"
        "<n1:Quality_Indicators_Info><Cloud_Coverage_Assessment>7.5</Cloud_Coverage_Assessment>"
        "</n1:Quality_Indicators_Info></n1:Level-2A_User_Product>\n")
    (safe / "manifest.safe").write_text("<xfdu/>\n")
    return S2Fixture(safe, crs, t10, bands, {"SCL": scl})


def theia_product(root: Path, when: dt.datetime, x0: float, y1: float, n: int = 80, crs: str = "EPSG:32630",
                  tile: str = "30TXQ", edge_cols: int = 30, seed: int = 5,
                  masks: tuple[str, ...] = ("CLM", "EDG", "SAT")) -> S2Fixture:
    """A Theia/MAJA L2A folder: FRE and SRE int16 bands (x 10000, nodata -10000 west of
    ``edge_cols``, some negative reflectances), MASKS/ CLM (bit field), EDG, SAT at R1.
    """
    name = f"SENTINEL2B_{when.strftime('%Y%m%d-%H%M%S')}-455_L2A_T{tile}_C_V3-0"
    d = root / name
    refl = _s2_bands(n, seed, edge_cols)
    t = Affine(10, 0, x0, 0, -10, y1)
    bands = {}
    for key, b in (("B2", "blue"), ("B3", "green"), ("B4", "red"), ("B8", "nir")):
        v = np.rint(refl[b] * 10000).astype(np.int16)
        if key == "B2":
            v[20:24, 50:54] = -35  # MAJA's blue band goes negative over dark water
        v[:, :edge_cols] = -10000
        for variant, delta in (("FRE", 0), ("SRE", 7)):
            vv = np.where(v == -10000, v, v + delta).astype(np.int16)
            _write(d / f"{name}_{variant}_{key}.tif", vv[None], crs, t, nodata=-10000)
        bands[key] = v
    # 20 m bands exist too and are not read.
    _write(d / f"{name}_FRE_B11.tif", np.full((1, n // 2, n // 2), 1500, np.int16), crs, Affine(20, 0, x0, 0, -20, y1),
           nodata=-10000)
    mk = {}
    clm = np.zeros((n, n), np.uint8)
    clm[30:38, 45:55] = 0b00000010  # "all clouds except the thinnest"
    clm[42:45, 45:55] = 0b00100000  # cloud shadow bit
    edg = np.zeros((n, n), np.uint8)
    edg[:, :edge_cols] = 1
    sat = np.zeros((n, n), np.uint8)
    sat[55:57, 55:57] = 0b00000100  # band 3 saturated
    for key, arr in (("CLM", clm), ("EDG", edg), ("SAT", sat)):
        mk[key] = arr
        if key in masks:
            _write(d / "MASKS" / f"{name}_{key}_R1.tif", arr[None], crs, t)
    (d / f"{name}_MTD_ALL.xml").write_text(
        "<Muscate_Metadata_Document><Quality_Informations><Current_Product><Product_Quality_List>"
        "<Product_Quality><Global_Index_List><QUALITY_INDEX name=\"CloudPercent\">12</QUALITY_INDEX>"
        "</Global_Index_List></Product_Quality></Product_Quality_List></Current_Product>"
        "</Quality_Informations><CloudPercent>12</CloudPercent></Muscate_Metadata_Document>\n")
    return S2Fixture(d, crs, t, bands, mk)
