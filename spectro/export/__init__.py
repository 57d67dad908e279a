"""TFLite export: calibration, conversion, bias correction and verification against the Keras model."""
