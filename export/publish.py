"""Publishing: the model appears whole with its checksum and its report, or not at all.

Every file goes through score.atomic (a temporary file beside it, fsynced, renamed over it,
the folder fsynced). A refused model publishes nothing: its figures go to
export_report.failed.json and the previous model, its report and its int8 twin stay as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable

from export.parity import ParityError
from score import atomic
from score.errors import OutputError

REPORT_NAME = "export_report.json"  # describes the published model.onnx
FAILED_REPORT_NAME = "export_report.failed.json"  # the figures of a refused conversion


def int8_path_for(output: str) -> str:
    """Where the int8 model of the model at ``output`` goes."""
    return os.path.splitext(output)[0] + ".int8.onnx"


def publish_file(data: bytes, path: str) -> str:
    """Write ``data`` to ``path`` atomically with a sha256sum-format sidecar; return the digest.

    Both files are written and fsynced under temporary names first, then renamed back to back,
    so a reader sees a model and a sidecar that disagree only for the instant between renames.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = f"{digest}  {os.path.basename(path)}\n".encode()
    with atomic.AtomicFile(f"{path}.sha256") as staged_sidecar, atomic.AtomicFile(path) as staged:
        staged_sidecar.write(sidecar)
        staged.write(data)
        staged.rename()
        staged_sidecar.rename()
    atomic.fsync_directory(directory)
    return digest


def publish_with_report(model_bytes: bytes, output: str, report: dict, refusal: str | None,
                        after_publishing: Callable[[dict], None] | None = None) -> dict:
    """Publish ``model_bytes`` at ``output`` with export_report.json beside it, or, with a
    ``refusal``, publish nothing, leave the figures in export_report.failed.json and raise
    ParityError(refusal). ``after_publishing(report)`` may add an int8 model; an int8 file
    left beside the new model from an older one is removed."""
    directory = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(directory, exist_ok=True)
        if refusal is not None:
            report["published"] = False
            atomic.write_file(os.path.join(directory, FAILED_REPORT_NAME), _json_bytes(report))
            raise ParityError(refusal)
        report["sha256"] = publish_file(model_bytes, output)
        report["published"] = True
        if after_publishing is not None:
            after_publishing(report)
        if not report.get("int8", {}).get("published"):
            int8 = int8_path_for(output)  # quantised from an older model
            _remove([int8, int8 + ".sha256"])
        atomic.write_file(os.path.join(directory, REPORT_NAME), _json_bytes(report))
        _remove([os.path.join(directory, FAILED_REPORT_NAME)])
    except OSError as error:
        raise OutputError(f"{output}: cannot write the model ({error})") from None
    return report


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _json_bytes(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()
