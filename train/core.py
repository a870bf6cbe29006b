"""Fit the model and write the artifacts: the library behind `python -m train`."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from score.encoding import Encoder, RawSequences
from score.errors import InvalidInput, OutputError
from score.monitor import Profile
from score.spec import Spec
from train.data import Dataset, default_dataset, infer_spec, list_column, split

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


def evaluate(probabilities: np.ndarray, targets: np.ndarray, train_targets: np.ndarray) -> dict:
    """Test metrics from predicted probabilities (rows, T, classes) and true class indices."""
    predicted = probabilities.argmax(axis=-1)
    correct = predicted == targets
    ranked = np.argsort(-probabilities, axis=-1, kind="stable")
    classes = probabilities.shape[-1]

    def top(k: int) -> float:
        return float((ranked[..., : min(k, classes)] == targets[..., None]).any(axis=-1).mean())

    # The majority-class baseline: always predict each step's most common training class.
    majority = np.array(
        [np.bincount(train_targets[:, t], minlength=classes).argmax() for t in range(targets.shape[1])]
    )
    return {
        "test_rows": int(targets.shape[0]),
        "token_accuracy": float(correct.mean()),
        "token_accuracy_per_step": [float(v) for v in correct.mean(axis=0)],
        "sequence_accuracy": float(correct.all(axis=1).mean()),
        "top1_accuracy": top(1),
        "top2_accuracy": top(2),
        "top3_accuracy": top(3),
        "majority_baseline_accuracy": float((targets == majority[None, :]).mean()),
    }


def baseline_profile(spec: Spec, all_inputs: np.ndarray, test_probabilities: np.ndarray) -> Profile:
    """Inputs over all training data; predictions and confidence over the test split."""
    profile = Profile.empty(spec)
    profile.add_inputs(all_inputs)
    profile.add_predictions(test_probabilities.argmax(axis=-1), test_probabilities.max(axis=-1))
    return profile


def plot_curves(history: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, history["loss"], label="train")
    loss_axis.plot(epochs, history["val_loss"], label="validation")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("sparse categorical cross-entropy")
    loss_axis.set_title("Loss")
    loss_axis.legend()
    accuracy_axis.plot(epochs, history["accuracy"], label="train")
    accuracy_axis.plot(epochs, history["val_accuracy"], label="validation")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("token accuracy")
    accuracy_axis.set_title("Accuracy")
    accuracy_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def publish_directory(staging: str, target: str) -> None:
    """Move a complete staging folder into place, replacing the previous one.

    The previous folder is renamed aside first and put back if the final rename fails, so the
    target is always either the old folder or the new one.
    """
    previous = None
    if os.path.exists(target):
        previous = tempfile.mkdtemp(
            prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target) or "."
        )
        os.rmdir(previous)
        os.replace(target, previous)
    try:
        os.replace(staging, target)
    except BaseException:
        if previous:
            os.replace(previous, target)
        raise
    if previous:
        shutil.rmtree(previous, ignore_errors=True)


def _write_artifacts(staging: str, model, spec: Spec, metrics: dict, profile: Profile,
                     test_table, history: dict) -> None:
    """Everything `python -m export` and the scoring job need, into the staging folder."""
    import pyarrow.parquet as pq

    model.save(os.path.join(staging, "model.keras"))
    _write_json(os.path.join(staging, "spec.json"), json.loads(spec.to_json()))
    _write_json(os.path.join(staging, "metrics.json"), metrics)
    _write_json(os.path.join(staging, "baseline.json"), profile.to_dict(), indent=None)
    pq.write_table(test_table, os.path.join(staging, "test.parquet"))
    plot_curves(history, os.path.join(staging, "training_curves.png"))


def _write_json(path: str, payload: dict, indent: int | None = 2) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=indent)
        handle.write("\n")


def _test_table(dataset: Dataset, rows: np.ndarray):
    import pyarrow as pa

    return pa.table({"x": list_column(dataset.x[rows]), "y": list_column(dataset.y[rows])})


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
    inputs = _encode_inputs(spec, dataset.x)
    targets = _encode_targets(spec, dataset.y)
    try:
        parts = split(len(inputs), config.seed, config.validation_fraction, config.test_fraction)
    except InvalidInput as error:
        raise InvalidInput(f"{dataset.source}: {error}") from None

    # 3. Fit, deterministically for a given seed.
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(spec, config.lstm_layers, config.units, config.learning_rate)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    history = model.fit(
        _dataset(inputs[parts.train], targets[parts.train], config.batch_size, config.seed),
        validation_data=_dataset(
            inputs[parts.validation], targets[parts.validation], config.batch_size
        ),
        epochs=config.epochs,
        callbacks=[stop],
        shuffle=False,  # the pipeline shuffles, seeded, every epoch
        verbose=config.verbose,
    ).history

    # 4. Evaluate.
    test_probabilities = model.predict(_dataset(inputs[parts.test], None, 4096), verbose=0)
    metrics = evaluate(test_probabilities, targets[parts.test], targets[parts.train])
    metrics.update(
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
    profile = baseline_profile(spec, inputs, test_probabilities)

    # 5-6. Stage and publish.
    target = os.path.abspath(config.artifacts)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = tempfile.mkdtemp(
            prefix=f".{os.path.basename(target)}.tmp-", dir=os.path.dirname(target)
        )
    except OSError as error:
        raise OutputError(f"{target}: cannot create the artifacts folder ({error})") from None
    try:
        _write_artifacts(
            staging, model, spec, metrics, profile, _test_table(dataset, parts.test), history
        )
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the artifacts from other users
        publish_directory(staging, target)
    except OSError as error:
        raise OutputError(f"{target}: cannot write the artifacts ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return TrainResult(spec=spec, metrics=metrics, artifacts=target)


def print_report(result: TrainResult, stream=None) -> None:
    """The two-line report; ``stream`` defaults to the sys.stdout of the moment of the call."""
    stream = sys.stdout if stream is None else stream
    metrics = result.metrics
    steps = ", ".join(f"{v:.4f}" for v in metrics["token_accuracy_per_step"])
    print(
        f"test token accuracy {metrics['token_accuracy']:.4f} (per step: {steps}); "
        f"whole sequence {metrics['sequence_accuracy']:.4f}; top-3 {metrics['top3_accuracy']:.4f}; "
        f"majority-class baseline {metrics['majority_baseline_accuracy']:.4f}\n"
        f"{metrics['epochs_run']} epochs (best {metrics['best_epoch']}) in "
        f"{metrics['wall_seconds']:.1f} s; artifacts in {result.artifacts}",
        file=stream,
    )
