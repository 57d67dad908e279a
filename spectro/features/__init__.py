"""The images stage: feature settings, audio reading, log-mel spectrograms, the PNG codec and the image reader."""
