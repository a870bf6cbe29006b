"""Atomic output: a file appears under its final name only when it is complete.

The facade over the two sinks; the job calls only this. Local disks: score.local_sink.
Object stores: score.remote_sink, imported only when OUTPUT is a URI, so a local run never
pays for it. Both sinks share score.sink_common and never import this module.
"""

from __future__ import annotations

from score import local_sink, storage
from score.storage import write_error

__all__ = ["open_sink", "write_error", "write_small_file"]


def open_sink(location: str):
    """The sink for OUTPUT: a local temporary file, or a multipart upload on an object store."""
    if storage.is_uri(location):
        from score import remote_sink

        return remote_sink.RemoteSink(location)
    return local_sink.LocalSink(location)


def write_small_file(location: str, data: bytes) -> None:
    """Write a small file (summary, _SUCCESS) with the same all-or-nothing guarantee."""
    if storage.is_uri(location):
        from score import remote_sink

        remote_sink.write_small_object(location, data)
        return
    local_sink.write_small_file(location, data)
