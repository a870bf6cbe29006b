"""Scoring stage: the lightweight runtime (numpy, pyarrow, onnxruntime; never TensorFlow).

It also owns the encoding contract (score.spec, score.encoding) that training imports, so that
training and scoring can never encode differently.
"""

__version__ = "0.1.0"
