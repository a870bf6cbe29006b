"""The Keras model: class indices in, one-hot inside, stacked LSTMs, a softmax per step."""

from __future__ import annotations

import keras
from keras import layers, ops

from score.spec import Spec


@keras.saving.register_keras_serializable(package="seqscore")
class OneHot(layers.Layer):
    """One-hot encoding of integer class indices inside the model.

    A registered layer, not a Lambda (which does not survive saving) and not CategoryEncoding
    (which tf2onnx cannot trace): the exported ONNX file then takes class indices directly.
    """

    def __init__(self, depth: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.depth = int(depth)

    def call(self, inputs):
        return ops.one_hot(ops.cast(inputs, "int32"), self.depth, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.depth)

    def get_config(self) -> dict:
        return {**super().get_config(), "depth": self.depth}


def build_model(spec: Spec, lstm_layers: int, units: int, learning_rate: float,
                clipnorm: float | None = None) -> keras.Model:
    """A compiled model mapping (batch, T) class indices to (batch, T, y classes) softmax;
    ``clipnorm`` caps the norm of each gradient (None: no cap)."""
    inputs = keras.Input(shape=(None,), dtype="int32", name="x")
    hidden = OneHot(spec.x_classes, name="one_hot")(inputs)
    for layer in range(lstm_layers):
        # use_cudnn=False: tf2onnx cannot convert the cuDNN kernel, so a model trained on a GPU
        # must still use the generic LSTM implementation.
        hidden = layers.LSTM(units, return_sequences=True, use_cudnn=False, name=f"lstm_{layer}")(
            hidden
        )
    outputs = layers.Dense(spec.y_classes, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs, name="seqscore")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm),
        loss="sparse_categorical_crossentropy",  # softmax + integer targets, not sigmoid
        # Weighted: with ragged data the per-step weights (0 on padding) apply to the accuracy
        # too; without weights it is the plain accuracy.
        weighted_metrics=["accuracy"],
    )
    return model
