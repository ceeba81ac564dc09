"""PyTorch side of the store: the dataset, samplers, collation and augmentations."""

from msc_france.data.dataset import MSCFranceDataset, collate
from msc_france.data.samplers import SensorBalancedSampler, StepBatchSampler

__all__ = ["MSCFranceDataset", "collate", "SensorBalancedSampler", "StepBatchSampler"]
