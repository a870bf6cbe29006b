"""`python -m score.delta_log LOCATION [VERSION]`: replay a Delta Lake table's log with delta-rs
and print one JSON line: the version read, the latest, the Arrow schema (IPC, base64), and the
live files with their row counts and partition values; or the error, named as the job names it.
`python -m score.delta_log --target LOCATION APP`: an OUTPUT table's version, schema, and the
version APP's transactions have reached.

The scoring job runs this in a short child process (score.delta.open_snapshot), so delta-rs's
runtime and the log's state never take memory in the scoring process.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import sys
import urllib.parse

import pyarrow as pa

from score import storage
from score.errors import InvalidInput, SeqscoreError, StorageError, first_line

# Reader features whose tables this reader reads exactly: delta-rs replays the log (checkpoints
# of either kind), and each live file is read whole. Any other (deletion vectors, column mapping,
# ...) is refused by name rather than read wrong.
READABLE_FEATURES = frozenset({"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"})


def check_readable(location: str, table) -> None:
    """Refuse (65) a table whose protocol needs what this reader does not do."""
    protocol = table.protocol()
    features = set(protocol.reader_features or ())
    unknown = sorted(features - READABLE_FEATURES)
    if unknown:
        raise InvalidInput(f"{location}: the table uses reader feature(s) {', '.join(unknown)}, which "
                           f"this reader does not read exactly; nothing was scored")
    if protocol.min_reader_version > 3:
        raise InvalidInput(f"{location}: the table needs a Delta reader of version "
                           f"{protocol.min_reader_version}; this one reads up to 3")
    mode = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    if mode not in ("none", None):
        raise InvalidInput(f"{location}: the table uses column mapping ({mode}), which this reader "
                           f"does not read; nothing was scored")


def live_files(location: str, table) -> list[dict]:
    """The snapshot's live files in the log's order, as the job's storage opens them."""
    # Not flattened: flattening the statistics of every file cost 50 MB at 5 files of 1M rows.
    actions = pa.table(table.get_add_actions(flatten=False))
    actions = actions.select([name for name in ("path", "num_records", "partition")
                              if name in actions.column_names]).to_pylist()
    root = location.rstrip("/")
    files = []
    for action in actions:
        relative = urllib.parse.unquote(action["path"])
        where = relative if "://" in relative or relative.startswith("/") else storage.join(root, relative)
        partition = {name: _text(value) for name, value in (action.get("partition") or {}).items()}
        rows = action.get("num_records")
        files.append({"location": where, "rows": None if rows is None else int(rows),
                      "partition": partition})
    return files


def table_uri(location: str) -> str:
    """What delta-rs takes: an absolute local path, or the URI without its query."""
    if not storage.is_uri(location):
        return os.path.abspath(storage.local_path(location))
    return location.split("?", 1)[0]


def storage_options(location: str) -> dict[str, str]:
    """The job's object storage settings (score.storage's environment) as delta-rs takes them."""
    if not location.startswith("s3://"):
        return {}
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN"):
        if os.environ.get(name):
            options[name] = os.environ[name]
    options.setdefault("AWS_REGION", options.get("AWS_DEFAULT_REGION", "us-east-1"))
    return options


def translate(location: str, error: BaseException, version: int | None = None) -> Exception:
    """delta-rs' failure as the job's named error, in one line."""
    from deltalake.exceptions import DeltaProtocolError, TableNotFoundError

    detail = first_line(error).removeprefix("Kernel error: ").removeprefix("Generic delta kernel error: ")
    if isinstance(error, TableNotFoundError):
        return InvalidInput(f"{location}: not a readable Delta Lake table ({detail})")
    if isinstance(error, DeltaProtocolError):
        return InvalidInput(f"{location}: the table uses a feature this reader does not support "
                            f"({detail}); nothing was scored")
    text = str(error)
    if "contiguous commit" in text:  # a commit file missing between two others
        missing = re.search(r"_delta_log/(\d+\.json)", text)
        after = f" before {missing.group(1)}" if missing else ""
        return InvalidInput(f"{location}: the table's _delta_log cannot be read (a commit file is "
                            f"missing{after})")
    if "Json error" in text or "parsing" in text:
        return InvalidInput(f"{location}: the table's _delta_log cannot be read ({detail[:300]})")
    if isinstance(error, OSError) or "Object Store" in text or "ObjectStore" in text:
        return StorageError(f"{location}: cannot read the table ({detail})")
    at = f" at version {version}" if version is not None else ""
    return InvalidInput(f"{location}: the Delta Lake table cannot be read{at} ({detail[:300]})")


def resolve(location: str, version: int | None) -> dict:
    """What the scoring process needs of the table at ``version`` (None: the latest)."""
    from deltalake import DeltaTable

    try:
        table = DeltaTable(table_uri(location), storage_options=storage_options(location))
        latest = table.version()
    except Exception as error:  # noqa: BLE001  (delta-rs' exceptions, named by translate)
        raise translate(location, error) from None
    if version is not None and version != latest:
        if version > latest:
            raise InvalidInput(f"{location}: --input-version {version} is past the table's latest "
                               f"version, {latest}")
        try:
            table.load_as_version(version)
        except Exception as error:  # noqa: BLE001
            raise translate(location, error, version) from None
    try:
        check_readable(location, table)
        schema = pa.schema(table.schema().to_arrow())
        files = live_files(location, table)
    except SeqscoreError:
        raise
    except Exception as error:  # noqa: BLE001
        raise translate(location, error, version) from None
    return {"version": latest if version is None else version, "latest": latest,
            "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
            "files": files}


def _text(value) -> str | None:
    """A partition value as text that pyarrow casts back to its column's type."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def target(location: str, app: str) -> dict:
    """What a run writing into the table must know of it first: its version, its schema, and
    the version APP's transactions have reached (None: none recorded, or no APP)."""
    from deltalake import DeltaTable

    try:
        table = DeltaTable(table_uri(location), storage_options=storage_options(location))
        schema = pa.schema(table.schema().to_arrow())
        return {"version": table.version(), "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
                "recorded": table.transaction_version(app) if app else None}
    except Exception as error:  # noqa: BLE001  (delta-rs' exceptions, named by translate)
        raise translate(location, error) from None


def main(argv: list[str] | None = None) -> int:
    arguments = argv if argv is not None else sys.argv[1:]
    location = arguments[1] if arguments[0] == "--target" else arguments[0]
    try:
        if arguments[0] == "--target":
            answer = target(arguments[1], arguments[2])
        else:
            answer = resolve(location, int(arguments[1]) if arguments[1] else None)
    except SeqscoreError as error:
        answer = {"error": str(error), "exit_code": error.exit_code}
    except Exception as error:  # noqa: BLE001  (one line for the parent, never a traceback)
        answer = {"error": f"{location}: the table's log cannot be read ({first_line(error)})",
                  "exit_code": 65}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    from score.cli import WithoutPandas

    sys.meta_path.insert(0, WithoutPandas())  # pyarrow's first conversion would import it: 0.3 s, 60 MB
    sys.exit(main())
