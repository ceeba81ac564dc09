"""Build recipes and train/eval configs, shipped as package data."""
