"""Training stage: fit the sequence LSTM and write the artifacts the export step needs.

Importing the package registers the model's custom layer, so that
``import train; keras.saving.load_model("artifacts/model.keras")`` works in a plain session.
"""

import os

# Importing the package imports TensorFlow, and `python -m train` imports the package before
# train/__main__.py runs: keep TensorFlow's C++ start-up info and warnings (CPU feature notes,
# absl's preamble) off the terminal here, unless the caller chose a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21 prints its oneDNN notice (and absl's preamble) at import whatever the level
# above says; only switching the oneDNN kernels off keeps stderr to our one line. The LSTM's
# results stay within the export's parity tolerance either way.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from train.model import OneHot  # noqa: F401  (registers the layer with Keras)
