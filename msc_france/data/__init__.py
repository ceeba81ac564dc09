"""PyTorch side of the store: the dataset, samplers, collation and augmentations."""

from msc_france.data.dataset import IGNORE_INDEX, BoundingBox, MSCFranceDataset, collate
from msc_france.data.samplers import SensorBalancedSampler, StepBatchSampler

__all__ = ["IGNORE_INDEX", "BoundingBox", "MSCFranceDataset", "SensorBalancedSampler", "StepBatchSampler", "collate"]
