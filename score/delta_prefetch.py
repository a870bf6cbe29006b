"""Starting the Delta Lake log's reader (score.delta_log) the moment the command line is read.

The child spends most of its ~0.35 s starting Python and importing pyarrow and delta-rs. Started
before the job imports its own libraries and loads the model, it runs beside them on another
core, and the job finds its answer waiting: a Delta INPUT then costs about what its files do.
The same holds for an OUTPUT table's state (its version, schema and
transactions) under --output-format delta. Only a local table is started early (a folder with
`_delta_log/`, found without a request); a table on an object store is read when the job comes
to it. Standard library only, so that
starting costs nothing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

_started: dict[tuple[str, ...], subprocess.Popen] = {}  # the child's arguments -> the child


def reading(location: str, version: int | None) -> tuple[str, ...]:
    """The log reader's arguments for a snapshot of ``location`` (score.delta_log.resolve)."""
    return (location, "" if version is None else str(version))


def inspecting(location: str, app: str | None) -> tuple[str, ...]:
    """Its arguments for an OUTPUT table's state (score.delta_log.target)."""
    return ("--target", location, app or "")


def _spawn(arguments: tuple[str, ...]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "score.delta_log", *arguments], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def is_local_table(location: str) -> bool:
    """A local folder with `_delta_log/` in it, found without importing anything."""
    path = location.removeprefix("file://")
    return "://" not in path and os.path.isdir(os.path.join(path, "_delta_log"))


def start(arguments: tuple[str, ...]) -> None:
    """Start the child for ``arguments`` now, when delta-rs is there."""
    if arguments in _started or importlib.util.find_spec("deltalake") is None:
        return
    try:
        _started[arguments] = _spawn(arguments)
    except OSError:
        pass  # started again, and its failure reported, when the job asks for it


def start_for(input_location: str, input_version: int | None, output_location: str,
              output_format: str, txn_id: str | None) -> None:
    """What the command line says the run will ask of a local table: INPUT's snapshot, and an
    existing OUTPUT table's state."""
    if is_local_table(input_location):
        start(reading(input_location, input_version))
    if output_format == "delta" and is_local_table(output_location):
        start(inspecting(output_location, (txn_id or "").partition(":")[0]))


def take(arguments: tuple[str, ...]) -> subprocess.Popen:
    """The child started for ``arguments``, else one started now."""
    child = _started.pop(arguments, None)
    return child if child is not None else _spawn(arguments)


def stop() -> None:
    """End the children the run never asked for (it stopped before it needed them)."""
    while _started:
        _, child = _started.popitem()
        child.kill()
        child.communicate()
