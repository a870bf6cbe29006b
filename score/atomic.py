"""Atomic files on a local disk: a file or a folder appears under its name only when complete.

One primitive for every stage: the scoring job's output (score.local_sink), the export's model,
its checksum and its reports (export.publish), and training's artifacts folder (train.core).
Write under a hidden name in the same folder (so the rename never crosses a file system), fsync,
rename over the final name, fsync the folder. A process killed at any moment (SIGKILL included)
leaves the final name absent, the previous complete version, or the new complete one; at worst
a hidden temporary beside it, which Spark, Hive and pyarrow datasets skip.

Only the standard library: score imports this without TensorFlow or pyarrow.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil


def hidden_name(name: str, kind: str = "tmp") -> str:
    """'.NAME.KIND-PID-RANDOM': hidden, and unique per run, so two runs never share one."""
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def beside(path: str, kind: str = "tmp") -> str:
    """A hidden, unique path in the folder of ``path``."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, hidden_name(name, kind))


def fsync_file(path: str) -> None:
    _fsync(path, os.O_RDONLY)


def fsync_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int) -> None:
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class AtomicFile:
    """A new empty temporary file beside ``path`` that becomes ``path`` on commit.

    As a context manager, the temporary file is removed on leaving the block unless it was
    committed (renamed) by then, whatever ended the block.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.temporary = beside(self.path)
        # Exclusive: never someone else's file. 0o666 less the umask, as any new file.
        os.close(os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

    def write(self, data: bytes) -> None:
        """Fill the temporary file with ``data`` and fsync it."""
        with open(self.temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())

    def rename(self) -> None:
        """Rename the complete temporary file over ``path`` (the folder not yet fsynced)."""
        os.replace(self.temporary, self.path)

    def commit(self) -> None:
        """Rename the complete temporary file over ``path`` and fsync the folder."""
        self.rename()
        fsync_directory(self.directory)

    def abort(self) -> None:
        """Remove the temporary file; nothing to do once it was committed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temporary)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exception) -> None:
        self.abort()


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: the old file or the new one, never a part."""
    with AtomicFile(path) as staged:
        staged.write(data)
        staged.commit()


def staging_directory(target: str) -> str:
    """A new empty hidden folder beside ``target``, to fill and then pass to replace_directory."""
    staging = beside(target)
    os.mkdir(staging)  # 0o777 less the umask, as any new folder
    return staging


def replace_directory(staging: str, target: str) -> None:
    """Move a complete staging folder into place, replacing the previous one.

    Everything in it is fsynced first and the parent folder after. The previous folder is
    renamed aside first and put back if the final rename fails, so ``target`` is always either
    the old folder or the new one. The caller removes ``staging`` if this raises.
    """
    for folder, _, files in os.walk(staging):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_directory(folder)
    previous = None
    if os.path.exists(target):
        previous = beside(target, "old")
        os.replace(target, previous)
    try:
        os.replace(staging, target)
    except BaseException:
        if previous:
            os.replace(previous, target)
        raise
    fsync_directory(os.path.dirname(os.path.abspath(target)))
    if previous:
        shutil.rmtree(previous, ignore_errors=True)
