"""Table formats on top of Parquet: a folder that is a Delta Lake, Apache Iceberg or Apache Hudi
table is never read as loose Parquet files.

Such a folder keeps the files of every version of the table until a vacuum: an overwrite, a
delete, a compaction or an update leaves the old files in place, and only the table's log says
which are live. Reading every *.parquet file would score rows the table no longer has, and
exit 0. The job finds the format's marker at the folder's root (one listing, also on a store)
and refuses it with one line (exit 65) saying what to do instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from score.errors import InvalidInput

# (format, the marker at the table's root as a person would look for it, what to do instead)
DELTA = ("a Delta Lake table", "_delta_log/")
ICEBERG = ("an Apache Iceberg table", "metadata/*.metadata.json")
HUDI = ("an Apache Hudi table", ".hoodie/")
SNAPSHOT = ("score a snapshot exported to plain Parquet (the table's live rows, for example with "
            "Spark, DuckDB or Polars), not the table's folder")


def format_of(relatives: Iterable[str]) -> tuple[tuple[str, str], str] | None:
    """The first table (its format, and its folder relative to the listing's: '' for the root)
    among the paths under a folder (directories end with '/'); None when there is none.

    A folder of several tables is found too: their dead files would be read just the same.
    """
    for relative in relatives:
        parts = relative.split("/")
        for index, part in enumerate(parts[:-1]):  # a folder of the path
            root = "/".join(parts[:index])
            if part == "_delta_log":
                return DELTA, root
            if part == ".hoodie":
                return HUDI, root
            if part == "metadata" and index == len(parts) - 2 and parts[-1].endswith(".metadata.json"):
                return ICEBERG, root
    return None


def refusal(location: str, found: tuple[tuple[str, str], str]) -> InvalidInput:
    """The one line for a table's folder given as INPUT (or found inside it), saying what to do:
    a Delta table at the root is read with the `delta` extra (score.delta)."""
    (what, marker), root = found
    where = f"is {what} ({marker} at its root)" if not root else \
        f"holds {what} in {root}/ ({root}/{marker})"
    if (what, marker) == DELTA and not root:
        todo = f"reading its live rows needs the delta extra (pip install -e '.[delta]'); or {SNAPSHOT}"
    elif root:
        todo = f"score each table by its own folder, or {SNAPSHOT}"
    else:
        todo = f"this version cannot read the table itself; {SNAPSHOT}"
    return InvalidInput(
        f"{location}: {where}, not plain Parquet files: a table's folder also holds files the "
        f"table no longer has, so it is never read as loose Parquet. {todo[0].upper()}{todo[1:]}"
    )


def check_not_a_table(location: str, relatives: Iterable[str]) -> None:
    """Refuse (InvalidInput, 65) a folder that is, or holds, a table of one of these formats."""
    found = format_of(relatives)
    if found is not None:
        raise refusal(location, found)
