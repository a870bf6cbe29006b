"""Dynamic int8 quantisation of the published model, published beside it only where its argmax
agrees with the float model's on the test split often enough."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time

import numpy as np

from export.parity import (
    ParityRows,
    onnx_predictor,
    onnx_session,
    run_by_length,
    verify_state_carry,
)
from export.publish import int8_path_for, publish_file
from score.spec import StateTensors


def quantize_int8(model_bytes: bytes, test: ParityRows, output: str, threshold: float,
                  states: tuple[StateTensors, ...] = ()) -> dict:
    """Dynamic int8 quantisation, published beside the model at ``output`` only if its argmax
    agrees with the float model's on at least ``threshold`` of the test split's steps.

    With ``states``, the report also says how far a run resumed from a carried state is from
    the whole run. It is not a gate: int8 quantises activations with a scale taken from each
    call's whole input, so its results already depend on which rows and steps share a call.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "model.onnx")
        target = os.path.join(scratch, "model.int8.onnx")
        with open(source, "wb") as handle:
            handle.write(model_bytes)
        with _without_preprocessing_advice():
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        with open(target, "rb") as handle:
            quantized = handle.read()
    float_session, int8_session = onnx_session(model_bytes), onnx_session(quantized)

    def timed(session) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        for _ in range(3):
            probabilities = run_by_length(onnx_predictor(session), test)
        return probabilities, (time.perf_counter() - started) / 3

    float_output, float_seconds = timed(float_session)
    int8_output, int8_seconds = timed(int8_session)
    agree = float_output.argmax(-1) == int8_output.argmax(-1)
    agreement = float(agree.mean() if test.mask is None else agree[test.mask].mean())
    report = {
        "argmax_agreement": agreement,
        "threshold": threshold,
        "float_bytes": len(model_bytes),
        "int8_bytes": len(quantized),
        "float_seconds_test_split": round(float_seconds, 5),
        "int8_seconds_test_split": round(int8_seconds, 5),
        "speedup": round(float_seconds / int8_seconds, 3) if int8_seconds else None,
        "published": agreement >= threshold,
    }
    if states:
        carry = verify_state_carry(int8_session, states, {"test_split": test})["test_split"]
        report["state_carry_max_abs_difference"] = carry["max_abs_difference"]
    if report["published"]:
        publish_file(quantized, int8_path_for(output))
        report["path"] = int8_path_for(output)
    return report


@contextlib.contextmanager
def _without_preprocessing_advice():
    """Drop onnxruntime.quantization's root-logger advice to run its pre-processing first.

    It goes through ``logging.warning``, which would also install a root handler on first use;
    lending the root logger Python's last-resort handler for the call prevents that while
    still printing any other warning as usual.
    """
    root = logging.getLogger()

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    lent = logging.lastResort if not root.handlers and logging.lastResort else None
    root.addFilter(advice)
    if lent:
        root.addHandler(lent)
    try:
        yield
    finally:
        root.removeFilter(advice)
        if lent:
            root.removeHandler(lent)
