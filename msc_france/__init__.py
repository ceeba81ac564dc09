"""msc-france: build the multi-sensor MSC-France dataset and train X-STARS models on it."""

__version__ = "0.1.0"
