"""The offline demo world: one seeded synthetic ground truth observed by every sensor.

The ground truth is a set of vector features in Lambert-93 (crop parcels, forests, a river and a
lake, a town with roads and buildings, and bright calibration markers at known coordinates), each
with its own surface-reflectance spectrum. Every sensor observes it the way the real product
does, in its own CRS and pixel grid:

* Sentinel-2 L2A-like: two overlapping UTM 31N tiles at 10 m, area-averaged (5x supersampling)
  and blurred by a PSF, uint16 DN with the baseline >= 04.00 offset where the item says so,
  SCL at 20 m with clouds, shadows, water and vegetation.
* Landsat-8 C2 L2-like: one UTM 31N scene at 30 m, DN = (rho + 0.2) / 2.75e-5, qa_pixel bits.
  (Plus one Landsat-9 scene, which the catalog's platform filter must drop.)
* Aerial (BD ORTHO-like): Lambert-93 tiles at 0.5 m, uint8 R G B NIR, JPEG-compressed.
* WorldCover-like labels: EPSG:4326 at 1/12000 degree.

Clouds are per-date smooth random fields in Lambert-93, sampled by each sensor at its pixel
centres, so a cloud covers the same ground in every sensor that flies that day. Landsat flies on
its own dates (``landsat_dates``) under its own clouds when the world gives them.

The sensors differ the way real ones do, so that telling whether an encoder is sensor-agnostic is
not trivial, and so that no hand-made feature can (version 6; see ``SENSOR_MODELS``):

* every parcel keeps its own calendar (:func:`phenology`): crops sown weeks apart close their
  canopy over the soil, yellow and are harvested on their own days, grassland is mown on its own
  day, so the parcels of one place change colour differently between any two dates, all season
  long, and a per-tile normalisation cannot undo it;
* each sensor acquires on its own dates, so co-located chips of different sensors differ in
  phenology and clouds;
* ground detail only the aerial resolution resolves (:func:`aerial_texture`): tree crowns, crop
  rows, grass texture, building shadows;
* each sensor has its own spectral response, radiometric gain and offset, residual haze and
  noise (Landsat adds detector striping); the aerial camera adds a per-tile gain and a
  non-linear (gamma) DN curve; and every satellite product is mis-registered by a realistic
  fraction of a pixel (S2 tiles by 2-3 m, Landsat by ~7 m).

Everything is written as COGs plus STAC items shaped like Planetary Computer's, into a cache
directory keyed by the world spec, atomically (temp dir + rename) under a file lock.
"""

from __future__ import annotations

from msc_france.sources.demo_world.cache import CACHE_MARKER, GENERATOR_VERSION, ensure_world, world_key
from msc_france.sources.demo_world.sensors import SENSOR_MODELS, SHADOW_M, SensorModel, aerial_texture
from msc_france.sources.demo_world.world import CLASSES, Feature, LandClass, Renderer, make_features, phenology

__all__ = ["CACHE_MARKER", "CLASSES", "GENERATOR_VERSION", "SENSOR_MODELS", "SHADOW_M", "Feature", "LandClass",
           "Renderer", "SensorModel", "aerial_texture", "ensure_world", "make_features", "phenology", "world_key"]
