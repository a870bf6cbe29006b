"""Where a profiled job's time goes: cProfile's functions counted by the module they live in.

A function's own time goes to the category of its module: a file of score/ by its path
(score/prefix.py, score/encoding.py, ...), a library by its package (pyarrow's Parquet module,
which both reads and writes, by its public method), a built-in by the module or class it belongs
to (onnxruntime's InferenceSession.run), and a module's body to start-up (it runs at import). A
function in no category (numpy, most of pyarrow, most built-ins) passes its time on to its
callers, in proportion to the time each call took, until a categorised function takes it. So
every second the profiler saw is counted once; what reaches none is "not attributed".
"""

from __future__ import annotations

import os
import pstats
import re
import sys
from collections import defaultdict

from bench import measure
from bench.workloads import REPO, Workload

PROFILE_FUNCTIONS = 8  # the functions with the most own time, listed beside the categories
ONNXRUNTIME_RUN = "onnxruntime session.run"
START_UP = "start-up: imports and arguments"
NOT_ATTRIBUTED = "not attributed (interpreter, runpy, profiler)"
# Each category and the modules it takes (prefixes of module_of()'s names); the first that
# matches wins, so score/ as a whole comes last.
MODULE_CATEGORIES = (
    (ONNXRUNTIME_RUN, ("onnxruntime.capi.onnxruntime_pybind11_state.run",
                       "onnxruntime.capi.onnxruntime_pybind11_state.InferenceSession.run",
                       "onnxruntime/capi/onnxruntime_inference_collection.py:run")),
    (START_UP, ("<frozen ", "importlib", "runpy", "argparse", "score/__init__.py",
                "score/__main__.py", "score/cli.py", "bench/variant.py")),
    ("model load and inference (score/model.py, onnxruntime)",
     ("score/model.py", "score/model_audit.py", "score/spec.py", "score/topk.py", "onnxruntime",
      "onnx/")),
    ("prefix planning and state gathering (score/prefix.py)", ("score/prefix.py",)),
    ("reading and encoding the sequences (score/sequences.py, score/encoding.py)",
     ("score/sequences.py", "score/encoding.py")),
    # The job advances its record batches with next() (score/job.py), whose own time is
    # pyarrow decoding them; no other next() of the job takes measurable time.
    ("Parquet reading", ("score/inputs.py", "score/storage.py", "builtins.next",
                         "pyarrow/parquet/core.py:iter_batches", "pyarrow/parquet/core.py:read",
                         "pyarrow._parquet.ParquetReader")),
    ("output columns and Parquet writing",
     ("score/columns.py", "score/sink", "score/local_sink.py", "score/remote_sink.py",
      "score/atomic.py", "score/pipeline.py", "pyarrow/parquet/core.py:write",
      "pyarrow/parquet/core.py:close", "pyarrow._parquet.ParquetWriter")),
    ("carried state: reading, merging and writing it (score/state_store.py, score/keyed_job.py)",
     ("score/state_store.py", "score/keyed_job.py")),
    ("resumed scoring: states in and out, assembly (score/keyed.py, score/resume.py)",
     ("score/keyed.py", "score/resume.py")),
    ("monitoring: drift profile and summary (score/monitor.py, score/summary.py)",
     ("score/monitor.py", "score/summary.py")),
    ("labels: reading and checking them, ranks, quality figures (score/labels.py,"
     " score/quality.py)", ("score/labels.py", "score/quality.py")),
    ("the rest of score/: de-duplication, result cache, top-k scatter, job loop", ("score/",)),
)
# cProfile's names for built-ins: "<method 'run' of 'package.Class' objects>" and
# "<built-in method package.function>".
_BUILTIN = re.compile(r"<method '(?P<method>\w+)' of '(?P<owner>[\w.]+)' objects>"
                      r"|<built-in method (?P<function>[\w.]+)>")


def profiled_run(workload: Workload, work: str, threads: int, name: str) -> tuple[pstats.Stats, float]:
    """The job under cProfile (profile kept in the folder ``work`` as ``name``), reading and
    writing in its main thread (bench.variant --serial-io) so that one profile sees all of it:
    its statistics and the run's wall time."""
    profile_path = os.path.join(work, name)
    output = os.path.join(work, "scored.parquet")
    job = measure.job_command(workload, output, threads, variant=("--serial-io",))
    command = [sys.executable, "-m", "cProfile", "-o", profile_path, *job[1:]]
    child = measure.run_child(command)
    os.unlink(output)
    return pstats.Stats(profile_path), child.seconds


def relative_file(filename: str) -> str:
    """A profiled file relative to the library folder it was imported from, or to the repository
    (the innermost of the two: the virtual environment may lie inside the repository)."""
    roots = [root for root in (REPO, *sys.path) if root and filename.startswith(root + os.sep)]
    return os.path.relpath(filename, max(roots, key=len)) if roots else filename


def function_name(filename: str, line: int, function: str) -> str:
    """module-relative `path:line(function)`, or the built-in's name."""
    if filename == "~":
        return function
    return f"{relative_file(filename)}:{line}({function})"


def module_of(filename: str, function: str) -> str:
    """Where a profiled function lives: `path:function` for a function of a file (the path as
    relative_file gives it), `package.Class.method` or `package.function` for a built-in."""
    if filename != "~":
        return f"{relative_file(filename)}:{function}"
    match = _BUILTIN.fullmatch(function)
    if match is None:
        return function
    if match["function"]:
        return match["function"]
    return f"{match['owner']}.{match['method']}"


def category(filename: str, function: str) -> str | None:
    """The category a function's own time counts in, or None: passed on to its callers."""
    if function == "<module>":
        return START_UP
    module = module_of(filename, function)
    for name, prefixes in MODULE_CATEGORIES:
        if module.startswith(prefixes):
            return name
    return None


def where_time_goes(
    stats: pstats.Stats, functions: int
) -> tuple[dict[str, float], list[tuple[str, str, float, float]]]:
    """Seconds per category (MODULE_CATEGORIES), largest first, and the ``functions``
    functions with the most time of their own: (name, category, own s, cumulative s)."""
    table = stats.stats  # type: ignore[attr-defined]
    categories = {function: category(function[0], function[2]) for function in table}
    totals: dict[str, float] = defaultdict(float)

    def pass_on(function, seconds: float, weight: int, pending: dict) -> None:
        """Hand ``seconds`` of ``function`` to its callers, weighted by each call's own time
        (weight 2) or cumulative time (weight 3)."""
        callers = table[function][4]
        total = sum(edge[weight] for edge in callers.values())
        if total <= 0 and weight == 2:  # own time too small to split: by cumulative time
            weight, total = 3, sum(edge[3] for edge in callers.values())
        if total <= 0:
            totals[NOT_ATTRIBUTED] += seconds
            return
        for caller, edge in callers.items():
            share = seconds * edge[weight] / total
            if categories.get(caller):
                totals[categories[caller]] += share
            else:
                pending[caller] += share

    pending: dict = defaultdict(float)
    for function, (_, _, own, _, _) in table.items():
        if categories[function]:
            totals[categories[function]] += own
        elif own > 0:
            pass_on(function, own, 2, pending)
    for _ in range(100):  # up the call graph; a cycle of unnamed functions keeps a remainder
        if not pending:
            break
        handed, pending = pending, defaultdict(float)
        for function, seconds in handed.items():
            pass_on(function, seconds, 3, pending)
    totals[NOT_ATTRIBUTED] += sum(pending.values())

    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:functions]
    listed = [
        (function_name(*function), categories[function] or "(passed on to its callers)", own,
         cumulative)
        for function, (_, _, own, cumulative, _) in top
    ]
    ordered = dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))
    return ordered, listed


def top_functions(stats: pstats.Stats, count: int) -> list[tuple[str, float, float]]:
    """The ``count`` functions with the most time of their own: (name, own s, cumulative s)."""
    entries = [(function_name(*function), own, cumulative)
               for function, (_, _, own, cumulative, _) in stats.stats.items()]  # type: ignore[attr-defined]
    entries.sort(key=lambda entry: entry[1], reverse=True)
    return entries[:count]
