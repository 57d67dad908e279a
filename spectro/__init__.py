"""spectro: hear when an industrial machine is about to fail.

Recordings become log-mel spectrogram PNGs (:mod:`spectro.features`), a pretrained image CNN is
fine-tuned on them (:mod:`spectro.training`), and the result classifies recordings from the shell
(:mod:`spectro.inference`) or on an edge device (:mod:`spectro.export`). ``docs/architecture.md`` is the map.

Importing the package is cheap: TensorFlow and Keras are imported only by the modules that need them.
"""

__version__ = "0.1.0"

from spectro.errors import SpectroError  # noqa: E402

__all__ = ["SpectroError", "__version__"]
