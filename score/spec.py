"""The spec: the one description of the encoding that travels with the model.

Training writes it, the export embeds it in the ONNX metadata under the key ``spec``, and the
scoring job reads it back from there. Nothing else describes value sets or sequence length.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from score.errors import ModelError

SPEC_FORMAT = 2  # bumped when a field changes meaning; readers refuse a newer format
# Fixed-length specs are still written as format 1, so that an older scorer keeps reading them;
# only a variable-length spec (which an older scorer would misread) needs format 2.
FIXED_LENGTH_FORMAT = 1

# The ONNX contract: the names of the tensors a scoring model takes and gives. The model takes the
# encoded sequences as INPUT_NAME and gives OUTPUT_NAME, (batch, steps, y classes) probabilities.
INPUT_NAME = "x"
OUTPUT_NAME = "probabilities"
# The top-k heads: a TopK over the probabilities, with K fed at run time, and one sum of the
# probabilities per step (NaN or infinity anywhere in a step makes it non-finite). The export
# writes them into the model file (export.graph); a file without them (exported before the heads,
# below opset 13, or by another exporter) is scored with numpy's top-k (score.topk).
K_INPUT = "seqscore_top_k"
TOP_PROBABILITIES = "seqscore_top_probabilities"
TOP_CLASSES = "seqscore_top_classes"
STEP_SUMS = "seqscore_step_sums"
HEADS = (TOP_PROBABILITIES, TOP_CLASSES, STEP_SUMS)


@dataclass(frozen=True)
class StateTensors:
    """Where one recurrent layer's state enters and leaves the exported graph.

    ``initial_*`` are optional graph inputs of shape (1, batch, units), zeros when not fed;
    ``final_*`` are outputs of the same shape: the state after the last step. Feeding one run's
    final state as the next run's initial state continues the sequence exactly (score.prefix).
    """

    units: int  # the layer's hidden size
    initial_h: str
    initial_c: str
    final_h: str
    final_c: str

    @classmethod
    def from_dict(cls, payload: object) -> StateTensors:
        if not isinstance(payload, dict):
            raise ValueError(f"expected a state description object, found {payload!r}")
        names = {key: payload.get(key) for key in ("initial_h", "initial_c", "final_h", "final_c")}
        bad = [key for key, value in names.items() if not isinstance(value, str) or not value]
        if bad:
            raise ValueError(f"state description lacks {', '.join(bad)}")
        return cls(units=_as_int(payload.get("units")), **names)


@dataclass(frozen=True)
class Spec:
    """Value sets and shape shared by training, export and scoring."""

    x_values: tuple[int, ...]  # the raw input value of each class index, in index order
    y_values: tuple[int, ...]  # the raw output value of each class index, in index order
    seq_len: int  # fixed length: steps in every sequence; variable length: the longest trained
    input_column: str = "x"  # column holding the input sequences
    target_column: str = "y"  # column holding the target sequences (training only)
    min_len: int | None = None  # None: fixed length; else the shortest training length
    # The recurrent state each layer exposes, in layer order (the export adds them); empty for
    # a model that exposes none (older files), which is then scored without prefix sharing.
    states: tuple[StateTensors, ...] = ()
    # Whether step t's output reads only steps 0..t. A model that reads later steps (a
    # bidirectional LSTM, imported) is scored at its one length, whole, never from a prefix.
    causal: bool = True
    format: int = field(default=0)  # version of this description (0: the one its fields need)

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_values", tuple(int(v) for v in self.x_values))
        object.__setattr__(self, "y_values", tuple(int(v) for v in self.y_values))
        for name in ("x_values", "y_values"):
            values = getattr(self, name)
            if not values:
                raise ModelError(f"spec: {name} is empty; expected at least one value")
            if len(set(values)) != len(values):
                raise ModelError(f"spec: {name} repeats a value; expected distinct values")
            if list(values) != sorted(values):
                raise ModelError(f"spec: {name} is not in increasing order")
        if int(self.seq_len) < 1:
            raise ModelError(f"spec: seq_len is {self.seq_len}; expected a positive integer")
        if self.min_len is not None and not 1 <= int(self.min_len) <= int(self.seq_len):
            raise ModelError(
                f"spec: min_len is {self.min_len}; expected 1 <= min_len <= max_len ({self.seq_len})"
            )
        if not self.causal and (self.min_len is not None or self.states):
            raise ModelError(
                "spec: a model that is not causal (it reads later steps) cannot take rows of any "
                "length or resume from a prefix's state; expected no min_len and no states"
            )
        if not self.format:
            needed = SPEC_FORMAT if self.variable_length else FIXED_LENGTH_FORMAT
            object.__setattr__(self, "format", needed)

    @property
    def variable_length(self) -> bool:
        """Whether the model takes every length 1..max_len (trained on more than one length)."""
        return self.min_len is not None

    @property
    def max_len(self) -> int:
        """The longest sequence the model was trained on (the only one, for a fixed length)."""
        return self.seq_len

    def describe_length(self) -> str:
        if self.variable_length:
            return f"1..{self.seq_len} (trained on {self.min_len}..{self.seq_len})"
        return str(self.seq_len)

    @property
    def x_classes(self) -> int:
        return len(self.x_values)

    @property
    def y_classes(self) -> int:
        return len(self.y_values)

    def describe_x(self) -> str:
        return describe_values(self.x_values)

    def describe_y(self) -> str:
        return describe_values(self.y_values)

    def to_json(self) -> str:
        payload = asdict(self)
        payload["x_values"] = list(self.x_values)
        payload["y_values"] = list(self.y_values)
        if self.states:
            payload["states"] = [asdict(state) for state in self.states]
        else:
            del payload["states"]
        if self.causal:
            del payload["causal"]  # the default, as every spec before the field was
        if self.variable_length:
            payload["max_len"] = self.seq_len
        else:
            del payload["min_len"]  # an older scorer reads this spec exactly as before
        return json.dumps(payload, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        try:
            payload = json.loads(text)
        except (TypeError, ValueError) as error:
            raise ModelError(f"spec: not valid JSON ({error})") from None
        if not isinstance(payload, dict):
            raise ModelError("spec: expected a JSON object")
        return cls.from_dict(payload)

    @classmethod
    def from_dict(cls, payload: dict) -> Spec:
        missing = [key for key in ("x_values", "y_values", "seq_len") if key not in payload]
        if missing:
            raise ModelError(f"spec: missing {', '.join(missing)}")
        spec_format = payload.get("format", 0)
        if not isinstance(spec_format, int) or spec_format > SPEC_FORMAT:
            raise ModelError(
                f"spec: format {spec_format!r} is newer than this scorer understands "
                f"({SPEC_FORMAT}); upgrade seqscore"
            )
        try:
            return cls(
                x_values=tuple(_as_int(v) for v in payload["x_values"]),
                y_values=tuple(_as_int(v) for v in payload["y_values"]),
                seq_len=_as_int(payload["seq_len"]),
                input_column=str(payload.get("input_column", "x")),
                target_column=str(payload.get("target_column", "y")),
                min_len=None if payload.get("min_len") is None else _as_int(payload["min_len"]),
                states=_states(payload.get("states", [])),
                causal=_as_bool(payload.get("causal", True)),
                format=spec_format,
            )
        except (TypeError, ValueError) as error:
            raise ModelError(f"spec: {error}") from None


def _states(payload: object) -> tuple[StateTensors, ...]:
    if not isinstance(payload, list):
        raise ValueError(f"states: expected a list, found {payload!r}")
    return tuple(StateTensors.from_dict(item) for item in payload)


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, found {value!r}")
    return value


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, found {value!r}")
    return value


def describe_values(values: tuple[int, ...]) -> str:
    """'0..10' for a contiguous range, else the values separated by commas."""
    if len(values) > 1 and values[-1] - values[0] == len(values) - 1:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(str(v) for v in values)


def parse_values(text: str) -> tuple[int, ...]:
    """Parse '0..10' (inclusive range) or '1,2,5' into sorted distinct integers."""
    text = text.strip()
    try:
        if ".." in text:
            low_text, high_text = text.split("..", 1)
            low, high = int(low_text), int(high_text)
            if high < low:
                raise ValueError
            return tuple(range(low, high + 1))
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(
            f"{text!r} is not a value set; expected a range like 0..10 or a list like 1,2,5"
        ) from None
    if not values:
        raise ValueError(f"{text!r} is not a value set; expected a range like 0..10")
    return tuple(values)
