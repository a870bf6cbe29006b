"""Fit the model and write the artifacts: the library behind `python -m train`."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from score import atomic
from score.arrays import to_padded
from score.encoding import Encoder
from score.errors import InvalidInput, OutputError
from score.monitor import Profile
from score.quality import baseline_quality
from score.sequences import RaggedSequences, RawSequences
from score.spec import Spec
from train.data import Dataset, default_dataset, infer_spec, list_column, split

RAGGED_CLIPNORM = 1.0  # gradient norm cap when training on rows of different lengths
LENGTH_BUCKETS = 8  # token accuracy by row length: this many equal-width buckets over 1..max_len

PRESETS = {
    # name: (LSTM layers, units)
    "default": (2, 64),
    "question": (4, 24),  # the shape from the original question: four LSTM layers of 24 units
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on."""

    artifacts: str = "artifacts"  # folder that receives model.keras, spec.json, metrics.json ...
    lstm_layers: int = 2  # stacked LSTM layers, each returning sequences
    units: int = 64  # units per LSTM layer
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 32  # rows per gradient step
    learning_rate: float = 0.005  # Adam step size
    patience: int = 5  # epochs without a better validation loss before stopping
    seed: int = 0  # drives the split, the initial weights and the shuffling
    validation_fraction: float = 0.1  # share of rows held out for early stopping
    test_fraction: float = 0.1  # share of rows held out for the reported metrics and parity
    verbose: int | str = "auto"  # Keras progress: 'auto' shows a bar on a terminal


@dataclass
class TrainResult:
    spec: Spec
    metrics: dict
    artifacts: str


def _encode_inputs(spec: Spec, values: np.ndarray) -> np.ndarray:
    """Encode raw values with the scoring contract, so training cannot encode differently."""
    rows, steps = values.shape
    raw = RawSequences(
        values=values,
        row_null=np.zeros(rows, dtype=bool),
        lengths=np.full(rows, steps, dtype=np.int64),
        element_null=np.zeros((rows, steps), dtype=bool),
        labels=tuple(f"x[{t}]" for t in range(steps)),
        column="x",
    )
    return Encoder(spec, np.int32).encode_strict(raw)


def _encode_targets(spec: Spec, values: np.ndarray) -> np.ndarray:
    y_spec = Spec(spec.y_values, spec.y_values, spec.seq_len)
    return _encode_inputs(y_spec, values)


def _encode_ragged(spec: Spec, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of ragged data as right-padded class indices (padding: index 0),
    encoded flat with the scoring contract's ragged encoder."""
    lengths = dataset.row_lengths
    mask = dataset.mask
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = np.arange(lengths.size)
    encoder = Encoder(spec, np.int32)

    def flat(values: np.ndarray, column: str) -> RaggedSequences:
        return RaggedSequences(values[mask], None, offsets, lengths, np.zeros(lengths.size, bool),
                               column, spec.max_len)

    inputs = encoder.encode_ragged_strict(flat(dataset.x, "x"))
    targets = encoder.encode_y_ragged(flat(dataset.y, "y"))
    return (to_padded(inputs, offsets, rows, spec.max_len)[0],
            to_padded(targets, offsets, rows, spec.max_len)[0])


def length_buckets(max_len: int, buckets: int = LENGTH_BUCKETS) -> list[tuple[int, int]]:
    """Equal-width row-length ranges (first, last) covering 1..max_len: 1-4, 5-8, ... for 32."""
    width = -(-max_len // buckets)
    return [(first, min(first + width - 1, max_len)) for first in range(1, max_len + 1, width)]


def _bucket_name(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def evaluate(probabilities: np.ndarray, targets: np.ndarray, train_targets: np.ndarray,
             mask: np.ndarray | None = None, train_mask: np.ndarray | None = None) -> dict:
    """Test metrics from predicted probabilities (rows, T, classes) and true class indices.

    ``mask`` / ``train_mask`` mark the real steps of right-padded rows (None: every step is
    real): padding never counts in any figure. Ragged data adds accuracy by row length.
    """
    predicted = probabilities.argmax(axis=-1)
    correct = predicted == targets
    ranked = np.argsort(-probabilities, axis=-1, kind="stable")
    classes = probabilities.shape[-1]
    real = np.ones(targets.shape, dtype=bool) if mask is None else mask
    train_real = np.ones(train_targets.shape, dtype=bool) if train_mask is None else train_mask

    def top(k: int) -> float:
        hit = (ranked[..., : min(k, classes)] == targets[..., None]).any(axis=-1)
        return float(hit[real].mean())

    # The majority-class baseline: always predict each step's most common training class.
    steps = targets.shape[1]
    positions = np.nonzero(train_real)[1]
    counts = np.bincount(positions * classes + train_targets[train_real],
                         minlength=steps * classes).reshape(steps, classes)
    majority = counts.argmax(axis=1)
    per_step_real = real.sum(axis=0)
    per_step = np.where(real, correct, False).sum(axis=0) / np.maximum(per_step_real, 1)
    metrics = {
        "test_rows": int(targets.shape[0]),
        "token_accuracy": float(correct[real].mean()),
        # A position no test row reaches has no accuracy: null.
        "token_accuracy_per_step": [
            float(v) if n else None for v, n in zip(per_step, per_step_real)
        ],
        "sequence_accuracy": float((correct | ~real).all(axis=1).mean()),
        "top1_accuracy": top(1),
        "top2_accuracy": top(2),
        "top3_accuracy": top(3),
        "majority_baseline_accuracy": float((targets == majority[None, :])[real].mean()),
    }
    if mask is not None:
        lengths = mask.sum(axis=1)
        by_length, rows_by_length = {}, {}
        for first, last in length_buckets(steps):
            rows = (lengths >= first) & (lengths <= last)
            if rows.any():
                name = _bucket_name(first, last)
                by_length[name] = float(correct[rows][mask[rows]].mean())
                rows_by_length[name] = int(rows.sum())
        metrics["token_accuracy_by_length"] = by_length
        metrics["test_rows_by_length"] = rows_by_length
    return metrics


def baseline_profile(spec: Spec, all_inputs: np.ndarray, test_probabilities: np.ndarray,
                     all_mask: np.ndarray | None = None,
                     test_mask: np.ndarray | None = None) -> Profile:
    """Inputs over all training data; predictions and confidence over the test split; with
    masks, only real steps count (and the length histogram is the rows' own lengths)."""
    profile = Profile.empty(spec)
    profile.add_inputs(all_inputs, all_mask)
    profile.add_predictions(test_probabilities.argmax(axis=-1), test_probabilities.max(axis=-1),
                            test_mask)
    return profile


def plot_curves(history: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    panels = (("loss", "sparse categorical cross-entropy", "Loss"),
              ("accuracy", "token accuracy", "Accuracy"))
    for axis, (key, label, title) in zip(axes, panels, strict=True):
        axis.plot(epochs, history[key], label="train")
        axis.plot(epochs, history[f"val_{key}"], label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _write_artifacts(staging: str, model, spec: Spec, metrics: dict, baseline: dict,
                     test_table, history: dict) -> None:
    """Everything `python -m export` and the scoring job need, into the staging folder."""
    import pyarrow.parquet as pq

    model.save(os.path.join(staging, "model.keras"))
    _write_json(os.path.join(staging, "spec.json"), json.loads(spec.to_json()))
    _write_json(os.path.join(staging, "metrics.json"), metrics)
    _write_json(os.path.join(staging, "baseline.json"), baseline, indent=None)
    pq.write_table(test_table, os.path.join(staging, "test.parquet"))
    plot_curves(history, os.path.join(staging, "training_curves.png"))


def _write_json(path: str, payload: dict, indent: int | None = 2) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=indent)
        handle.write("\n")


def _test_table(dataset: Dataset, rows: np.ndarray):
    """The test rows as list columns x and y, ragged rows at their own lengths."""
    import pyarrow as pa

    lengths = None if dataset.lengths is None else dataset.lengths[rows]
    return pa.table({"x": list_column(dataset.x[rows], lengths),
                     "y": list_column(dataset.y[rows], lengths)})


def _dataset(inputs: np.ndarray, targets: np.ndarray | None, batch_size: int,
             shuffle_seed: int | None = None):
    """A tf.data pipeline over in-memory arrays, seeded when shuffled.

    Keras would build one from numpy arrays itself, but its pipeline has a map step that, under
    op determinism, makes TensorFlow log a spurious C++ error on every epoch after the first
    ('NodeDef mentions attribute use_unbounded_threadpool'): the command line must stay quiet.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(inputs if targets is None else (inputs, targets))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(inputs), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(1)


def bucket_batches(lengths: np.ndarray, batch_size: int, generator: np.random.Generator | None
                   ) -> list[np.ndarray]:
    """Row numbers of each batch: rows sorted by length and cut into batches, so that a batch
    padded to its own longest row carries little padding. With a generator, rows of equal
    length are shuffled first and the batch order is shuffled; without, the order is fixed."""
    order = np.arange(lengths.size) if generator is None else generator.permutation(lengths.size)
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[start : start + batch_size] for start in range(0, order.size, batch_size)]
    if generator is not None:
        batches = [batches[i] for i in generator.permutation(len(batches))]
    return batches


def padding_overhead(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Padded steps over real steps: what padding each batch to its longest row costs."""
    padded = sum(int(lengths[rows].max()) * rows.size for rows in batches)
    return padded / int(lengths.sum()) - 1


def _bucketed(inputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray, batch_size: int,
              shuffle_seed: int | None = None):
    """A tf.data pipeline of length-bucketed batches (x, y, w), each padded to its own longest
    row; w is 1 on real steps and 0 on padding, so padding never counts in the loss or the
    metrics. Shuffled (seeded, anew every epoch) when a seed is given."""
    import tensorflow as tf

    generator = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)

    def batches():
        for rows in bucket_batches(lengths, batch_size, generator):
            width = int(lengths[rows].max())
            weights = (np.arange(width) < lengths[rows][:, None]).astype(np.float32)
            yield inputs[rows, :width], targets[rows, :width], weights

    signature = (
        tf.TensorSpec((None, None), tf.int32),
        tf.TensorSpec((None, None), tf.int32),
        tf.TensorSpec((None, None), tf.float32),
    )
    count = -(-lengths.size // batch_size)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    # A known length lets Keras count the steps of an epoch instead of running out of data.
    return dataset.apply(tf.data.experimental.assert_cardinality(count)).prefetch(1)


def train(
    config: TrainConfig,
    dataset: Dataset | None = None,
    x_values: tuple[int, ...] | None = None,
    y_values: tuple[int, ...] | None = None,
) -> TrainResult:
    """Fit on ``dataset`` (the embedded default when None) and publish the artifacts.

    Steps: 1. infer the spec and encode through the scoring contract; 2. split; 3. fit with
    early stopping; 4. evaluate on the test split; 5. write everything into a staging folder
    beside the target; 6. move it into place. Bad data fails in 1-2, before any fitting.
    """
    import keras
    import tensorflow as tf

    from train.model import build_model

    started = time.perf_counter()
    dataset = dataset if dataset is not None else default_dataset()

    # 1-2. Spec, encoding, split.
    spec = infer_spec(dataset, x_values, y_values)
    if spec.variable_length:
        inputs, targets = _encode_ragged(spec, dataset)
        mask = dataset.mask
    else:
        inputs = _encode_inputs(spec, dataset.x)
        targets = _encode_targets(spec, dataset.y)
        mask = None
    lengths = dataset.row_lengths
    try:
        parts = split(len(inputs), config.seed, config.validation_fraction, config.test_fraction)
    except InvalidInput as error:
        raise InvalidInput(f"{dataset.source}: {error}") from None

    # 3. Fit, deterministically for a given seed.
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    # Long rows make the LSTM's gradients spike now and then (the loss jumps back up for a few
    # epochs): capping their norm keeps ragged training steady. Fixed-length training as before.
    clipnorm = RAGGED_CLIPNORM if spec.variable_length else None
    model = build_model(spec, config.lstm_layers, config.units, config.learning_rate, clipnorm)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    if spec.variable_length:
        # Length buckets with per-step weights, not a Masking layer: the model is causal, so
        # right padding never changes a real step's output, and the export stays a fused LSTM.
        fit_data = _bucketed(inputs[parts.train], targets[parts.train], lengths[parts.train],
                             config.batch_size, config.seed)
        validation_data = _bucketed(inputs[parts.validation], targets[parts.validation],
                                    lengths[parts.validation], config.batch_size)
    else:
        fit_data = _dataset(inputs[parts.train], targets[parts.train], config.batch_size,
                            config.seed)
        validation_data = _dataset(inputs[parts.validation], targets[parts.validation],
                                   config.batch_size)
    history = model.fit(
        fit_data,
        validation_data=validation_data,
        epochs=config.epochs,
        callbacks=[stop],
        shuffle=False,  # the pipeline shuffles, seeded, every epoch
        verbose=config.verbose,
    ).history

    # 4. Evaluate.
    # Causal model: the test rows padded to the longest give each real step its own output.
    test_probabilities = model.predict(_dataset(inputs[parts.test], None, 4096), verbose=0)
    test_mask = None if mask is None else mask[parts.test]
    metrics = evaluate(test_probabilities, targets[parts.test], targets[parts.train], test_mask,
                       None if mask is None else mask[parts.train])
    # The test split's calibration travels with the drift baseline: a scoring run without
    # labels estimates its accuracy from its confidence, which holds as far as this does.
    quality = baseline_quality(test_probabilities, targets[parts.test], test_mask)
    metrics.update(
        ece=quality["ece"],
        epochs_run=len(history["loss"]),
        best_epoch=int(np.argmin(history["val_loss"])) + 1,
        wall_seconds=round(time.perf_counter() - started, 2),
        data_fingerprint=dataset.fingerprint(),
        data_source=dataset.source,
        rows={
            "train": int(parts.train.size),
            "validation": int(parts.validation.size),
            "test": int(parts.test.size),
        },
        config={
            key: value
            for key, value in asdict(config).items()
            if key not in ("artifacts", "verbose")
        },
    )
    if spec.variable_length:
        train_lengths = lengths[parts.train]
        overhead = padding_overhead(train_lengths, bucket_batches(train_lengths, config.batch_size,
                                                                  np.random.default_rng(config.seed)))
        metrics.update(min_len=spec.min_len, max_len=spec.max_len,
                       padding_overhead=round(overhead, 4), gradient_clipnorm=clipnorm)
    baseline = {**baseline_profile(spec, inputs, test_probabilities, mask, test_mask).to_dict(),
                "quality": quality}

    # 5-6. Stage and publish.
    target = os.path.abspath(config.artifacts)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = atomic.staging_directory(target)
    except OSError as error:
        raise OutputError(f"{target}: cannot create the artifacts folder ({error})") from None
    try:
        _write_artifacts(
            staging, model, spec, metrics, baseline, _test_table(dataset, parts.test), history
        )
        atomic.replace_directory(staging, target)
    except OSError as error:
        raise OutputError(f"{target}: cannot write the artifacts ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return TrainResult(spec=spec, metrics=metrics, artifacts=target)


def print_report(result: TrainResult, stream=None) -> None:
    """The two-line report; ``stream`` defaults to the sys.stdout of the moment of the call."""
    stream = sys.stdout if stream is None else stream
    metrics = result.metrics
    per_step = [v for v in metrics["token_accuracy_per_step"] if v is not None]
    if len(metrics["token_accuracy_per_step"]) <= 8:
        steps = "per step: " + ", ".join(f"{v:.4f}" for v in per_step)
    else:  # too many to read: the range over the steps
        steps = (f"{len(per_step)} steps, per step {min(per_step):.4f} to {max(per_step):.4f}")
    lengths = ""
    if "max_len" in metrics:
        lengths = (f"lengths {metrics['min_len']}..{metrics['max_len']}, padding overhead "
                   f"{metrics['padding_overhead']:.1%}; ")
    print(
        f"test token accuracy {metrics['token_accuracy']:.4f} ({steps}); "
        f"whole sequence {metrics['sequence_accuracy']:.4f}; top-3 {metrics['top3_accuracy']:.4f}; "
        f"majority-class baseline {metrics['majority_baseline_accuracy']:.4f}; "
        f"ECE {metrics['ece']:.4f}\n"
        f"{metrics['epochs_run']} epochs (best {metrics['best_epoch']}) in "
        f"{metrics['wall_seconds']:.1f} s; {lengths}artifacts in {result.artifacts}",
        file=stream,
    )
