"""Training: splits, augmentation, the training loop and its quantisation-aware phase."""
