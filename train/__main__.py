"""python -m train: fit the sequence LSTM on the embedded default or on your own data."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

# TensorFlow's log level is set in train/__init__.py, which Python imports before this module.
from score.cli import OneLineParser, positive_int, run_stage, value_set
from score.errors import UsageError

DESCRIPTION = """\
Fit a Keras LSTM that maps integer sequences to integer sequences and write artifacts/.
Without --data or --x/--y it trains on the embedded default: 10,000 rows of x in 0..10
(4 steps) with y_t = (x_0 + ... + x_t) mod 25; `--example ragged` takes the same rule on rows
of lengths 1..32 instead."""


# The ragged example's fitting defaults: its long rows learn more slowly and less smoothly than
# the 4-step default (measured: >= 0.99 test token accuracy in under 240 s on 2 cores).
RAGGED_EXAMPLE_FIT = {"epochs": 85, "batch_size": 64, "learning_rate": 0.003, "patience": 10}
# The flags of those four settings: (flag, type, metavar, what it sets); each help ends with both
# defaults.
FITTING_FLAGS = (
    ("--epochs", positive_int, "N", "maximum epochs; early stopping may end sooner"),
    ("--batch-size", positive_int, "N", "rows per gradient step"),
    ("--learning-rate", float, "LR", "Adam learning rate"),
    ("--patience", positive_int, "N", "epochs without a better validation loss before stopping"),
)


def parser() -> argparse.ArgumentParser:
    from train.core import PRESETS, TrainConfig
    from train.data import EXAMPLES

    defaults = TrainConfig()
    p = OneLineParser(prog="python -m train", description=DESCRIPTION)
    source = p.add_argument_group("data (default: the embedded dataset)")
    source.add_argument("--data", metavar="PATH",
                        help="Parquet file with list-of-integer columns x and y")
    source.add_argument("--x", metavar="X.txt", dest="x_text",
                        help="text file of input sequences, whitespace-separated, one per line")
    source.add_argument("--y", metavar="Y.txt", dest="y_text",
                        help="text file of target sequences, one per line, aligned with --x")
    source.add_argument("--x-values", type=value_set, metavar="SET",
                        help="input value set, e.g. 0..10 or 1,3,5 (default: min..max of the data)")
    source.add_argument("--y-values", type=value_set, metavar="SET",
                        help="output value set, e.g. 0..24 (default: min..max of the data)")
    source.add_argument("--example", choices=EXAMPLES, default="default",
                        help="the embedded dataset used without --data or --x/--y: default (4 "
                             "steps) or ragged (lengths 1..32) (default: default)")
    source.add_argument("--write-default", metavar="PATH",
                        help="write the embedded dataset (--example) to PATH as Parquet and exit")
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS),
                       help="default: 2 LSTM layers of 64 units; question: 4 layers of 24")
    model.add_argument("--layers", type=positive_int, metavar="N",
                       help=f"stacked LSTM layers (default {defaults.lstm_layers})")
    model.add_argument("--units", type=positive_int, metavar="N",
                       help=f"units per LSTM layer (default {defaults.units})")
    fit = p.add_argument_group("fitting")
    for flag, kind, metavar, text in FITTING_FLAGS:
        name = flag[2:].replace("-", "_")
        fit.add_argument(flag, type=kind, metavar=metavar,
                         help=f"{text} (default {getattr(defaults, name)}; ragged example "
                              f"{RAGGED_EXAMPLE_FIT[name]})")
    fit.add_argument("--seed", type=int, default=defaults.seed, metavar="N",
                     help=f"seed for the split, the weights and the shuffling (default {defaults.seed}); "
                          f"with --write-default, the seed of the rows written (0: the embedded rows)")
    p.add_argument("--artifacts", default=defaults.artifacts, metavar="DIR",
                   help=f"where to write the artifacts (default {defaults.artifacts})")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_stage(lambda: _run(args), "interrupted; the previous artifacts are unchanged")


def _run(args: argparse.Namespace) -> int:
    from train import data
    from train.core import PRESETS, TrainConfig, print_report, train

    if args.write_default:
        dataset = data.example_dataset(args.example, seed=args.seed)
        data.write_parquet(dataset, args.write_default)
        print(f"wrote {len(dataset.x)} rows of {dataset.source} to {args.write_default}")
        return 0
    if args.data and (args.x_text or args.y_text):
        raise UsageError("give either --data or --x/--y, not both")
    if args.example != "default" and (args.data or args.x_text):
        raise UsageError("--example chooses an embedded dataset: not with --data or --x/--y")
    if bool(args.x_text) != bool(args.y_text):
        raise UsageError("--x and --y go together: one file of inputs, one of targets")

    layers, units = PRESETS[args.preset or "default"]
    fit = asdict(TrainConfig())
    if args.example == "ragged" and not (args.data or args.x_text):
        fit.update(RAGGED_EXAMPLE_FIT)
    for name in ("epochs", "batch_size", "learning_rate", "patience"):
        if getattr(args, name) is not None:
            fit[name] = getattr(args, name)
    config = TrainConfig(
        artifacts=args.artifacts,
        lstm_layers=args.layers or layers,
        units=args.units or units,
        epochs=fit["epochs"],
        batch_size=fit["batch_size"],
        learning_rate=fit["learning_rate"],
        patience=fit["patience"],
        seed=args.seed,
        verbose=0 if args.quiet else "auto",
    )
    if args.data:
        dataset = data.read_parquet(args.data)
    elif args.x_text:
        dataset = data.read_text(args.x_text, args.y_text)
    else:
        dataset = data.example_dataset(args.example)
    result = train(config, dataset, args.x_values, args.y_values)
    print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
