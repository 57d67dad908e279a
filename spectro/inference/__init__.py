"""Running a model: predictors for ``.keras`` and ``.tflite`` files, windows of long recordings, verdicts."""
