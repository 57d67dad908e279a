"""The CNN: backbones with in-model preprocessing, the label space, the loss."""
