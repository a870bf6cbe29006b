"""python -m export: convert artifacts/model.keras (or, with --onnx or --keras, import a sequence
model made elsewhere) to a verified, self-describing model.onnx."""

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

from score.cli import OneLineParser, positive_int, run_stage, value_set

DESCRIPTION = """\
Convert DIR/model.keras to ONNX with tf2onnx (on the CPU), check it against Keras on the test
split and on random sequences, embed the spec and the training summary in its metadata, and
publish it atomically with a .sha256 beside it. Nothing is published if the check fails.

With --onnx PATH instead: import a sequence model exported elsewhere (torch.onnx.export of an
nn.LSTM / nn.GRU, or any exporter), wrap it so that it takes x (class indices, (batch, time)) and
gives per-step softmax probabilities, check it against the source and for causality, and publish
it the same way. No TensorFlow is needed.

With --keras PATH instead: convert a .keras or .h5 sequence model made elsewhere with tf2onnx (on
the CPU, at its own input signature) and import it as --onnx does, checked against Keras too."""


def parser() -> argparse.ArgumentParser:
    from export.core import ExportConfig
    from export.imported import ImportConfig

    defaults = ExportConfig()
    p = OneLineParser(prog="python -m export", description=DESCRIPTION)
    source = p.add_mutually_exclusive_group()
    # No default here: argparse lets a mutually exclusive flag pass when its value is the default.
    source.add_argument("--artifacts", metavar="DIR",
                        help=f"folder written by `python -m train` (default {defaults.artifacts})")
    source.add_argument("--onnx", metavar="PATH",
                        help="import this ONNX sequence model made elsewhere instead (needs "
                             "--x-values and --y-values)")
    source.add_argument("--keras", metavar="PATH",
                        help="import this .keras or .h5 sequence model made elsewhere instead, "
                             "converted with tf2onnx (needs --x-values and --y-values)")
    p.add_argument("--output", metavar="PATH",
                   help=f"where to write the ONNX file (default DIR/model.onnx; with --onnx or "
                        f"--keras {ImportConfig.output})")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help=f"ONNX opset (default {defaults.opset}, loadable by older onnxruntime builds)")
    p.add_argument("--quantize", choices=["int8"],
                   help="also write model.int8.onnx (dynamic int8) if it agrees with the float model")
    p.add_argument("--quantize-agreement", type=float, default=defaults.quantize_agreement,
                   metavar="SHARE",
                   help=f"minimum argmax agreement of int8 with float on the test split "
                        f"(default {defaults.quantize_agreement})")
    imported = p.add_argument_group("--onnx and --keras only")
    imported.add_argument("--x-values", type=value_set, metavar="SET",
                          help="the raw input value of each input class index: a range like 0..10 "
                               "or a list like 1,2,5")
    imported.add_argument("--y-values", type=value_set, metavar="SET",
                          help="the raw output value of each output class, in the model's order")
    imported.add_argument("--outputs", choices=["probabilities", "logits"],
                          help="what the model's output is (default: detected; a softmax is added "
                               "to logits)")
    imported.add_argument("--time-axis", type=int, choices=[0, 1],
                          help="--onnx only: the input's time axis (default: the axis whose name "
                               "says time, seq, step or length, else 1; a Keras model's is 1)")
    imported.add_argument("--reference", metavar="DATA.parquet",
                          help="rows (list column x of raw values) to check on and to take the "
                               "drift baseline from; an optional list column y of true y values "
                               "(one per step of x) adds the accuracy and calibration to it "
                               "(default: none, no drift monitoring)")
    imported.add_argument("--max-length", type=positive_int, metavar="N",
                          help=f"the longest sequence accepted when the time axis is dynamic; a "
                               f"model that reads later steps is scored at exactly N "
                               f"(default {ImportConfig.max_length})")
    imported.add_argument("--renormalize", action="store_true", default=None,
                          help="divide outputs in [0, 1] that do not sum to 1 per step (a sigmoid) "
                               "by their sum per step instead of refusing them: scores, not "
                               "calibrated probabilities")
    return p


IMPORT_ONLY = ("x_values", "y_values", "outputs", "time_axis", "reference", "max_length", "renormalize")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    importing = args.onnx is not None or args.keras is not None
    if importing:
        _check_import_arguments(p, args)
    else:
        given = [f"--{name.replace('_', '-')}" for name in IMPORT_ONLY if getattr(args, name) is not None]
        if given:
            p.error(f"{', '.join(given)}: only with --onnx or --keras")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before TensorFlow loads: never the cuDNN kernel

    def stage() -> int:
        if importing:
            _print_import_report(_import(args))
        else:
            _print_report(_export(args))
        return 0

    return run_stage(stage, "interrupted; the previous model.onnx is unchanged")


def _check_import_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--onnx and --keras need the value sets, and have no conversion or quantisation to tune."""
    mode = "--onnx" if args.onnx is not None else "--keras"
    missing = [flag for flag, value in (("--x-values", args.x_values), ("--y-values", args.y_values))
               if value is None]
    if missing:
        p.error(f"{mode} needs {' and '.join(missing)}")
    if args.keras is not None and args.time_axis is not None:
        p.error("--time-axis: only with --onnx (a Keras model is batch-major: its time axis is 1)")
    if args.renormalize and args.outputs == "logits":
        p.error("--renormalize: not with --outputs logits (logits get a softmax)")
    given = [flag for flag, value in (("--opset", args.opset), ("--quantize", args.quantize))
             if value is not None]
    if given:
        p.error(f"{', '.join(given)}: only with --artifacts (an imported model keeps its own opset)")


def _export(args: argparse.Namespace) -> dict:
    from export.core import ExportConfig, export

    config = ExportConfig(
        artifacts=args.artifacts if args.artifacts is not None else ExportConfig.artifacts,
        output=args.output,
        opset=args.opset if args.opset is not None else ExportConfig.opset,
        quantize=args.quantize,
        quantize_agreement=args.quantize_agreement,
    )
    return export(config)


def _import(args: argparse.Namespace) -> dict:
    from export.imported import ImportConfig, import_model

    optional = {"output": args.output, "outputs": args.outputs, "time_axis": args.time_axis,
                "reference": args.reference, "max_length": args.max_length,
                "renormalize": args.renormalize}
    framework, source = ("onnx", args.onnx) if args.onnx is not None else ("keras", args.keras)
    config = ImportConfig(source=source, framework=framework, x_values=args.x_values,
                          y_values=args.y_values,
                          **{key: value for key, value in optional.items() if value is not None})
    return import_model(config)


def _print_import_report(report: dict) -> None:
    source, wrapping, checks, spec = report["source"], report["wrapping"], report["checks"], report["spec"]
    if source.get("framework") == "keras":
        producer = f"keras {source['keras_version']}, converted by tf2onnx {source['tf2onnx_version']}"
    else:
        producer = " ".join(part for part in (source["producer_name"], source["producer_version"]) if part)
    print(f"imported {source['path']} ({producer or 'unknown producer'}, sha256 {source['sha256'][:16]}...): "
          f"{wrapping['input']}, {wrapping['output']}"
          f"{', time-major' if wrapping['input_time_major'] or wrapping['output_time_major'] else ''}")
    print(f"verified against the source ({_parity(checks)})")
    if "keras" in checks:
        print(f"verified the conversion against Keras predict ({_parity(checks['keras'])})")
    causality = checks["causality"]
    if spec.get("min_len") is not None:
        print(f"causal: scored at any length 1..{spec['seq_len']}")
    elif causality["causal"]:
        print(f"causal, with a fixed time axis: scored at exactly {spec['seq_len']} steps")
    else:
        print(f"not causal (changing later steps moves earlier outputs by up to "
              f"{causality['later_steps_changed_max_abs_difference']:.2g}): scored at exactly "
              f"{spec['seq_len']} steps")
    interface = report["scoring_interface"]
    if "state_carry" in checks:
        print(_state_carry_line(checks["state_carry"], interface["states"]))
    elif interface["states_withheld"]:
        print(f"no LSTM state exposed, so no prefix is shared in scoring: {interface['states_withheld']}")
    if report["baseline"] is None:
        print("no drift baseline (no --reference): the scoring job will not monitor drift")
    print(f"wrote {report['output']} ({report['bytes']} bytes, sha256 {report['sha256'][:16]}...)")


def _parity(checks: dict) -> str:
    """'random: 256 rows, max |diff| 1e-07; reference: ...' for the sets of rows checked."""
    return "; ".join(f"{name}: {checks[name]['rows']} rows, max |diff| {checks[name]['max_abs_difference']:.2g}"
                     for name in ("random", "reference") if name in checks)


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
