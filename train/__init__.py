"""Training stage: fit the sequence LSTM and write the artifacts the export step needs.

Importing the package registers the model's custom layer, so that
``import train; keras.saving.load_model("artifacts/model.keras")`` works in a plain session.
"""

from train.model import OneHot  # noqa: F401  (registers the layer with Keras)
