"""X-STARS: ViT backbone, DINO, the MSAD loss, and the pretraining loop."""
