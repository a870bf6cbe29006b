"""The files of a run with --key (score.keyed_job): reading its inputs with every reader failure
named, and its scored files, written as their rows come and published only at the end."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from score import inputs, pipeline
from score.columns import dictionary_columns
from score.errors import InvalidInput
from score.sink import open_sink, write_error

READ_ROWS = 65_536  # rows per record batch read


class CountedRows:
    """What a keyed run counts of each input file's scored rows: written and invalid, and at the
    end, that they are the rows its footer claims."""

    input: str
    rows: int
    written: int = 0
    invalid: int = 0

    def count(self, batch: pa.RecordBatch) -> None:
        self.written += batch.num_rows
        self.invalid += batch.num_rows - batch.column("error").null_count

    def check_rows(self) -> None:
        if self.written != self.rows:
            raise InvalidInput(f"{self.input}: corrupt Parquet file (the footer claims {self.rows} "
                               f"rows but {self.written} were read)")


class KeyedOutput(CountedRows):
    """One scored file: written as its rows come, published only when the whole run is done."""

    def __init__(self, input_location: str, location: str, rows: int, schema: pa.Schema) -> None:
        self.input, self.location, self.rows, self.schema = input_location, location, rows, schema
        self.sink = open_sink(location)
        try:
            self.writer = pq.ParquetWriter(self.sink.target, schema, use_dictionary=dictionary_columns(schema))
        except OSError as error:
            self.sink.abort()
            raise write_error(location, error) from None
        self.background = pipeline.BackgroundWriter(self.writer)  # encoding beside the scoring

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.background.write(batch)
        except OSError as error:
            raise write_error(self.location, error) from None
        self.count(batch)

    def close(self, metadata: dict[str, str]) -> None:
        try:
            self.background.finish()
            self.check_rows()
            self.writer.add_key_value_metadata(metadata)
            self.writer.close()
        except OSError as error:
            raise write_error(self.location, error) from None
        self.writer = None

    def abort(self) -> None:
        try:
            self.background.finish()
        except BaseException:  # noqa: BLE001  (the first error is the one to report)
            pass
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001  (the first error is the one to report)
                pass
        self.sink.abort()



def schema_of(parquet: pq.ParquetFile, location: str) -> pa.Schema:
    try:
        return parquet.schema_arrow
    except Exception as error:  # noqa: BLE001
        raise inputs.read_failure(location, error) from None


def batches(parquet: pq.ParquetFile, location: str, rows: int, columns: list[str] | None = None):
    """The file's record batches, every reader failure named (65 corrupt, 74 storage)."""
    read = parquet.iter_batches(batch_size=rows, columns=columns, use_threads=True)
    while True:
        try:
            batch = next(read)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001
            raise inputs.read_failure(location, error) from None
        yield batch


def read_all(parquet: pq.ParquetFile, location: str, columns: list[str] | None = None) -> pa.Table:
    """The whole file (or ``columns`` of it), its rows checked against the footer's count."""
    schema = schema_of(parquet, location)
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    table = pa.Table.from_batches(list(batches(parquet, location, READ_ROWS, columns)), schema=schema)
    if table.num_rows != parquet.metadata.num_rows:
        raise InvalidInput(f"{location}: corrupt Parquet file (the footer claims "
                           f"{parquet.metadata.num_rows} rows but {table.num_rows} were read)")
    return table


def fingerprint_part(relative: str, parquet: pq.ParquetFile) -> bytes:
    """One input file's share of the input fingerprint the state records (its name within
    INPUT and its Parquet footer: row groups, sizes, statistics), the local job's and Spark's."""
    return relative.encode() + b"\0" + repr(parquet.metadata.to_dict()).encode()
