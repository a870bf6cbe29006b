"""Export stage: convert the trained Keras model to one verified, self-describing ONNX file."""
