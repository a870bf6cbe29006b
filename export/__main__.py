"""python -m export: convert artifacts/model.keras to a verified, self-describing model.onnx."""

from __future__ import annotations

import argparse
import os
import sys

# Before TensorFlow loads: keep its start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21 prints its oneDNN notice (and absl's preamble) at import whatever the level
# above says; only switching the oneDNN kernels off keeps stderr to our one line. The LSTM's
# results stay within the export's parity tolerance either way.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from score.errors import EXIT_SIGINT, SeqscoreError

DESCRIPTION = """\
Convert DIR/model.keras to ONNX with tf2onnx (on the CPU), check it against Keras on the test
split and on random sequences, embed the spec and the training summary in its metadata, and
publish it atomically with a .sha256 beside it. Nothing is published if the check fails."""


def parser() -> argparse.ArgumentParser:
    from export.core import ExportConfig

    defaults = ExportConfig()
    p = argparse.ArgumentParser(prog="python -m export", description=DESCRIPTION)
    p.add_argument("--artifacts", default=defaults.artifacts, metavar="DIR",
                   help=f"folder written by `python -m train` (default {defaults.artifacts})")
    p.add_argument("--output", metavar="PATH",
                   help="where to write the ONNX file (default DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=defaults.opset, metavar="N",
                   help=f"ONNX opset (default {defaults.opset}, loadable by older onnxruntime builds)")
    p.add_argument("--quantize", choices=["int8"],
                   help="also write model.int8.onnx (dynamic int8) if it agrees with the float model")
    p.add_argument("--quantize-agreement", type=float, default=defaults.quantize_agreement,
                   metavar="SHARE",
                   help=f"minimum argmax agreement of int8 with float on the test split "
                        f"(default {defaults.quantize_agreement})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before TensorFlow loads: never the cuDNN kernel
    from export.core import ExportConfig, export

    config = ExportConfig(
        artifacts=args.artifacts,
        output=args.output,
        opset=args.opset,
        quantize=args.quantize,
        quantize_agreement=args.quantize_agreement,
    )
    try:
        report = export(config)
    except SeqscoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; the previous model.onnx is unchanged", file=sys.stderr)
        return EXIT_SIGINT
    _print_report(report)
    return 0


def _print_report(report: dict) -> None:
    parity = report["parity"]
    checks = "; ".join(
        f"{name}: {figures['rows']} rows{_lengths(figures)}, "
        f"max |diff| {figures['max_abs_difference']:.2g}, "
        f"argmax disagreements {figures['argmax_disagreements']}"
        for name, figures in parity.items()
        if isinstance(figures, dict) and name != "state_carry"
    )
    print(f"verified against Keras ({checks})")
    interface = report["scoring_interface"]
    if "state_carry" in parity:
        print(_state_carry_line(parity["state_carry"], interface["states"]))
    elif interface["states_withheld"]:
        print(f"no LSTM state exposed, so no prefix is shared in scoring: {interface['states_withheld']}")
    print(f"wrote {report['output']} ({report['bytes']} bytes, sha256 {report['sha256'][:16]}...)")
    if "int8" in report:
        int8 = report["int8"]
        verdict = f"wrote {int8['path']}" if int8["published"] else "not written"
        print(
            f"int8: argmax agreement {int8['argmax_agreement']:.4f} (threshold {int8['threshold']}), "
            f"{int8['int8_bytes']} bytes vs {int8['float_bytes']}, speed-up x{int8['speedup']}: {verdict}"
        )


def _state_carry_line(carry: dict, states: list[dict]) -> str:
    """How far runs resumed from a carried state are from whole runs, per set of rows."""
    checks = "; ".join(
        f"{name}: split after steps {_span(figures['split_points'])}, "
        f"max |diff| {figures['max_abs_difference']:.2g}"
        for name, figures in carry.items()
        if isinstance(figures, dict)
    )
    return f"exposed the state of {len(states)} LSTM layer(s); resumed runs match whole runs ({checks})"


def _span(values: list[int]) -> str:
    """'1..31' for a run of three or more consecutive values, else '1, 2' (or 'none')."""
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(str(value) for value in values) or "none"


def _lengths(figures: dict) -> str:
    """' of lengths 1..32' for ragged rows (every length in between covered), else ''."""
    lengths = figures.get("lengths")
    if not lengths:
        return ""
    every = lengths == list(range(lengths[0], lengths[-1] + 1))
    return f" of {'lengths' if every else 'lengths among'} {lengths[0]}..{lengths[-1]}"


if __name__ == "__main__":
    sys.exit(main())
