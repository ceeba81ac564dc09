"""Sensor catalogs (one folder per catalog) and named regions, shipped as package data."""
