"""Writing the state dataset (score.state_store) atomically: the folder appears complete or not
at all, with its lineage in the part file's footer and in its _SUCCESS manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from score import atomic, pipeline, sink, sink_common, storage
from score import state_store as store
from score.errors import OutputError, SeqscoreError
from score.state_store import MANIFEST, PART_NAME, STATE_FORMAT, StateChunk, StateLayout
from score.summary import utc_now


class StateWriter:
    """Writes the state dataset atomically: the folder ``location`` appears complete or not at
    all (local); on an object store (URI) the part file is one atomic upload and the manifest
    follows it.

    ``part``: write only this part file into the existing folder ``location`` (a Spark task's
    share of a state sorted across tasks); commit() then renames the complete file into place
    and publishes nothing: the driver writes the manifest (publish_parts).
    """

    def __init__(self, location: str, layout: StateLayout, lineage: dict[str, str],
                 part: str | None = None) -> None:
        self.location = location
        self.layout = layout
        self.lineage = lineage
        self.part = part
        self._rows = 0
        self._last = None  # the last key written, for the ascending-order invariant
        self._pending: list[StateChunk] = []  # entries not yet written as a full row group
        self._digest = hashlib.sha256()  # of the content written, row group by row group
        self._fingerprint: str | None = None
        self._finished = False  # committed or aborted
        self._staging = self._sink = self._writer = self._staging_part = None
        self._background: pipeline.BackgroundWriter | None = None
        with self._failing():
            if part is not None:
                target = os.path.join(storage.local_path(location), atomic.hidden_name(part))
                self._staging_part = target
            elif storage.is_uri(location):
                self._sink = sink.open_sink(storage.join(location, PART_NAME))
                target = self._sink.target
            else:
                self._staging = _local_staging(location)
                target = os.path.join(self._staging, PART_NAME)
            # Page checksums: the reader verifies them, so a flipped bit is refused, not resumed.
            # Statistics for the key and the steps only: min/max of the state tensors serve no
            # reader, and computing them took 15% of writing a 200k-key state (0.64 -> 0.53 s).
            self._writer = pq.ParquetWriter(target, layout.schema(), use_dictionary=[layout.key],
                                            write_page_checksum=True,
                                            write_statistics=[layout.key, store.STEPS])
            # Encoding, checksums and the digest in a thread of their own (pyarrow and hashlib
            # release the GIL), beside the scoring of the next rows.
            self._background = pipeline.BackgroundWriter(_RowGroups(self._writer, self._digest))

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """On any failure, remove what was staged; an I/O error becomes one named line."""
        try:
            yield
        except (OSError, SeqscoreError) as error:
            self.abort()
            if isinstance(error, OSError):
                error = storage.write_error(self.location, error)
            raise store.named("--state-out", error) from None
        except BaseException:
            self.abort()
            raise

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def fingerprint(self) -> str:
        assert self._fingerprint is not None, "the fingerprint is known after commit"
        return self._fingerprint

    def write(self, chunk: StateChunk) -> None:
        """Add entries; they ascend and follow everything written before."""
        if not len(chunk):
            return
        assert self._last is None or chunk.keys[0] > self._last, "state keys must ascend"
        assert (chunk.keys[1:] > chunk.keys[:-1]).all(), "state keys must ascend"
        assert [state.shape for state in chunk.states] == [(len(chunk), units)
                                                           for _, units in self.layout.tensors]
        self._last = chunk.keys[-1]
        self._rows += len(chunk)
        self._pending.append(chunk)
        if sum(map(len, self._pending)) >= store.ROWS_PER_CHUNK:
            with self._failing():
                self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write full row groups of what is pending (and the remainder when ``final``)."""
        merged = StateChunk.concat(self._pending, self.layout)
        full = len(merged) if final else len(merged) - len(merged) % store.ROWS_PER_CHUNK
        for start in range(0, full, store.ROWS_PER_CHUNK):
            self._write_group(merged.take(slice(start, min(start + store.ROWS_PER_CHUNK, full))))
        self._pending = [merged.take(slice(full, None))]

    def _write_group(self, chunk: StateChunk) -> None:
        arrays = [store.key_arrow(chunk.keys, self.layout.key_type), pa.array(chunk.steps, pa.int64())]
        arrays += [pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1), pa.float32()), units)
                   for state, (_, units) in zip(chunk.states, self.layout.tensors, strict=True)]
        self._background.write((pa.Table.from_arrays(arrays, schema=self.layout.schema()), chunk))

    def commit(self) -> None:
        """Close the part file with its metadata, add the manifest, and publish."""
        assert not self._finished, "commit once, and not after abort"
        with self._failing():
            self._flush(final=True)
            self._background.finish()
            metadata = self._metadata()
            manifest = json.dumps({**metadata, "status": "succeeded"}, indent=2) + "\n"
            self._writer.add_key_value_metadata(metadata)
            self._writer.close()
            if self.part is not None:
                atomic.fsync_file(self._staging_part)
                os.replace(self._staging_part, os.path.join(storage.local_path(self.location), self.part))
            elif self._sink is not None:
                self._sink.commit(self._rows)
                sink.write_small_file(storage.join(self.location, MANIFEST), manifest.encode())
            else:
                self._publish(manifest)
        self._fingerprint = metadata["seqscore.fingerprint"]
        self._finished = True

    def _publish(self, manifest: str) -> None:
        """Write the manifest into the staging folder and move the folder into place."""
        with open(os.path.join(self._staging, MANIFEST), "w", encoding="utf-8") as stream:
            stream.write(manifest)
        with sink_common.signals_held():
            atomic.replace_directory(self._staging, os.path.abspath(storage.local_path(self.location)))

    @property
    def digest(self) -> str:
        """The sha256 of the entries written (of a part: its share of the dataset's); complete
        after commit(), when the background writer has written them all."""
        return self._digest.hexdigest()

    def _metadata(self) -> dict[str, str]:
        metadata = dataset_metadata(self.layout, self.lineage, self._rows, [self.digest])
        if self.part is not None:  # the dataset's fingerprint is the driver's, in the manifest
            metadata[f"{store.META}fingerprint"] = ""
        return metadata

    def abort(self) -> None:
        """Remove everything staged; safe to call twice and after commit."""
        if self._finished:
            return
        self._finished = True
        if self._background is not None:
            with contextlib.suppress(BaseException):  # already failing: the first error is the one reported
                self._background.finish()
        if self._writer is not None:
            with contextlib.suppress(Exception):  # already failing: the first error is the one reported
                self._writer.close()
        if self._sink is not None:
            self._sink.abort()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._staging_part is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging_part)


def dataset_metadata(layout: StateLayout, lineage: dict[str, str], rows: int, digests: list[str]
                     ) -> dict[str, str]:
    """The state's metadata: what wrote it, from what, and its fingerprint, a sha256 over the
    model, the input's and the parent state's fingerprints, the rows and the parts' contents."""
    chain = [lineage.get("input_fingerprint", ""), lineage.get("parent_fingerprint", "")]
    fingerprint = hashlib.sha256("\n".join([layout.model_sha256, *chain, str(rows), *digests]).encode())
    tensors = [{"name": name, "units": units} for name, units in layout.tensors]
    return {
        f"{store.META}state_format": str(STATE_FORMAT),
        f"{store.META}model_sha256": layout.model_sha256,
        f"{store.META}key_column": layout.key,
        f"{store.META}state_tensors": json.dumps(tensors),
        f"{store.META}rows": str(rows),
        f"{store.META}input_fingerprint": chain[0],
        f"{store.META}parent_fingerprint": chain[1],
        f"{store.META}fingerprint": fingerprint.hexdigest(),
        f"{store.META}created_at": utc_now(),
    }


def publish_parts(staging: str, location: str, layout: StateLayout, lineage: dict[str, str],
                  parts: list[tuple[int, str]]) -> dict[str, str]:
    """Write the manifest of a staging folder of part files (rows, digest in key order) and move
    the folder into place at ``location``, atomically; returns the dataset's metadata."""
    metadata = dataset_metadata(layout, lineage, sum(rows for rows, _ in parts),
                                [digest for _, digest in parts])
    manifest = json.dumps({**metadata, "status": "succeeded", "parts": len(parts)}, indent=2) + "\n"
    with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as stream:
        stream.write(manifest)
    with sink_common.signals_held():
        atomic.replace_directory(staging, os.path.abspath(storage.local_path(location)))
    return metadata


def staging_folder(location: str) -> str:
    """A new hidden folder beside the state folder (made if missing) for a writer's parts."""
    return _local_staging(location)


def _local_staging(location: str) -> str:
    """A hidden staging folder beside the state folder, whose parent is created if missing."""
    path = os.path.abspath(storage.local_path(location))
    if os.path.isfile(path):
        raise OutputError(f"{location}: is a file; expected a folder for the state")
    try:
        return atomic.staging_directory(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return atomic.staging_directory(path)


class _RowGroups:
    """What the background writer calls: each row group written, then fed to the digest, in order."""

    def __init__(self, writer: pq.ParquetWriter, digest) -> None:
        self.writer, self.digest = writer, digest

    def write_batch(self, item: tuple[pa.Table, StateChunk]) -> None:
        table, chunk = item
        self.writer.write_table(table)
        _update_digest(self.digest, chunk)


def _update_digest(digest, chunk: StateChunk) -> None:
    """Feed the bytes of the entries to ``digest``; strings as their UTF-8 offsets and bytes."""
    if chunk.keys.dtype == object:
        _, offsets, data = pa.array(chunk.keys, pa.large_string()).buffers()
        offsets = np.frombuffer(offsets, np.int64, count=len(chunk) + 1)
        digest.update(offsets)
        digest.update(memoryview(data)[: offsets[-1]] if data is not None else b"")
    else:
        digest.update(np.ascontiguousarray(chunk.keys))
    digest.update(np.ascontiguousarray(chunk.steps, np.int64))
    for state in chunk.states:
        digest.update(np.ascontiguousarray(state, np.float32))
