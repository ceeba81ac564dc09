"""PyTorch side of the store: the dataset, its selection and view, batches, samplers and augmentations."""

from msc_france.data.batch import Batch, collate, collate_batch
from msc_france.data.dataset import IGNORE_INDEX, BoundingBox, DatasetView, MSCFranceDataset
from msc_france.data.samplers import SensorBalancedSampler, StepBatchSampler
from msc_france.selection import ChipSelection

__all__ = ["IGNORE_INDEX", "Batch", "BoundingBox", "ChipSelection", "DatasetView", "MSCFranceDataset",
           "SensorBalancedSampler", "StepBatchSampler", "collate", "collate_batch"]
