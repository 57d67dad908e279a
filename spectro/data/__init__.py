"""Where recordings come from: folder layouts, the image manifest, the synthetic dataset, MIMII download."""
