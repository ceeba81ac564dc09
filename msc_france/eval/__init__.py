"""Evaluation of frozen encoders: retrieval, classification, transfer, segmentation, external data."""
