"""The scored file's columns: which inputs can be scored, the output schema, and building the
output columns from a batch's top-k."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from score import labels
from score.arrays import offsets_from_lengths
from score.encoding import LABEL_REASONS, VALID, Encoded, EncodedRagged
from score.errors import InvalidInput, UsageError
from score.model import Scorer
from score.options import ScoreOptions
from score.sequences import (
    RaggedSequences,
    RawSequences,
    column_type_error,
    integer_column_type,
    integer_list_value_type,
)

OUTPUT_COLUMNS = ("y_pred", "top_k_values", "top_k_probs", "error")
_EXTENSION_KEY = b"ARROW:extension:name"


# Schemas --------------------------------------------------------------------------------------
def output_fields(top_k: int, labelled: bool = False) -> list[pa.Field]:
    """The scored columns; with --labels also label_prob and correct (score.labels)."""
    del top_k  # K is a property of the data (list lengths), recorded in the file metadata
    fields = [
        pa.field("y_pred", pa.list_(pa.int64())),
        pa.field("top_k_values", pa.list_(pa.list_(pa.int64()))),
        pa.field("top_k_probs", pa.list_(pa.list_(pa.float32()))),
        pa.field("error", pa.string()),
    ]
    return fields + list(labels.LABEL_FIELDS) if labelled else fields


def _extension_field(data_type: pa.DataType, field_: pa.Field) -> bool:
    if isinstance(data_type, pa.BaseExtensionType):
        return True
    if field_.metadata and _EXTENSION_KEY in field_.metadata:
        return True
    for index in range(data_type.num_fields):
        child = data_type.field(index)
        if _extension_field(child.type, child):
            return True
    if pa.types.is_dictionary(data_type):
        return isinstance(data_type.value_type, pa.BaseExtensionType)
    return False


def check_input_schema(schema: pa.Schema, scorer: Scorer, options: ScoreOptions) -> None:
    """Refuse, before reading any rows, a file the model cannot score."""
    for field_ in schema:
        if _extension_field(field_.type, field_):
            raise InvalidInput(
                f"column {field_.name!r} carries Arrow extension-type metadata, which is refused "
                f"(never deserialised); write plain Arrow types"
            )
    for name in OUTPUT_COLUMNS:
        if name in schema.names:
            raise InvalidInput(
                f"the input already has a column named {name!r}, which the output adds; "
                f"rename or drop it"
            )
    if options.labels is not None:
        labels.check_schema(schema, options.labels, options.input_columns or (options.column(scorer),))
    if options.input_columns is not None:
        for name in options.input_columns:
            _require_column(schema, name, "--input-columns")
            data_type = schema.field(name).type
            if integer_column_type(data_type) is None:
                raise column_type_error(name, data_type, "wide")
        return
    name = options.column(scorer)
    _require_column(schema, name, "--input-column")
    data_type = schema.field(name).type
    if integer_list_value_type(data_type) is None:
        raise column_type_error(name, data_type, "list")


def _require_column(schema: pa.Schema, name: str, flag: str) -> None:
    if schema.get_field_index(name) < 0:
        if schema.names.count(name) > 1:
            raise InvalidInput(f"column {name!r} appears more than once in the input")
        found = ", ".join(schema.names) or "none"
        raise InvalidInput(
            f"column {name!r} not found (the file has: {found}); name the sequence column "
            f"with {flag}"
        )


def output_schema(input_schema: pa.Schema, options: ScoreOptions) -> pa.Schema:
    fields = output_fields(options.top_k, options.labels is not None)
    return pa.schema(list(input_schema) + fields, metadata=input_schema.metadata)


# Columns --------------------------------------------------------------------------------------
def assemble(batch: pa.RecordBatch, scorer: Scorer, options: ScoreOptions,
             raw: RawSequences | RaggedSequences, encoded: Encoded | EncodedRagged,
             best: np.ndarray, probabilities: np.ndarray, lengths: int | np.ndarray,
             labelled: labels.Labels | None = None, resolved: labels.Resolved | None = None
             ) -> pa.RecordBatch:
    """Every input column, then y_pred, top_k_values, top_k_probs and error; with --labels
    also label_prob and correct.

    ``best`` and ``probabilities`` hold the top-k of every step of the valid rows, in row order
    (any shape that ends in k); ``lengths`` says how many steps each row has (one count for
    every row, or one per row). ``labelled``: the batch's labels; ``resolved``: its valid steps'.
    """
    k = options.top_k
    valid = encoded.reasons == VALID
    top_values = scorer.encoder.decode_y(best).reshape(-1, k)
    columns = [
        _list_array(pa.array(top_values[:, 0]), valid, lengths),
        _nested_list_array(top_values, valid, lengths, k),
        _nested_list_array(probabilities.astype(np.float32, copy=False), valid, lengths, k),
        _error_column(raw, encoded, scorer, labelled),
    ]
    if labelled is not None:
        columns += [_list_array(pa.array(resolved.probability.astype(np.float32, copy=False)), valid, lengths),
                    _list_array(pa.array(resolved.correct), valid, lengths)]
    return pa.RecordBatch.from_arrays(list(batch.columns) + columns,
                                      schema=output_schema(batch.schema, options))


def _list_array(values: pa.Array, valid: np.ndarray, lengths: int | np.ndarray) -> pa.Array:
    """A list array with ``lengths`` items per valid row (one count, or one per row) and null
    (empty) invalid rows."""
    offsets = offsets_from_lengths(np.where(valid, lengths, 0))
    if offsets[-1] > np.iinfo(np.int32).max:
        raise UsageError("--batch-size is too large for one list array; use a smaller one")
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, mask=mask)


def _nested_list_array(values: np.ndarray, valid: np.ndarray, lengths: int | np.ndarray, k: int) -> pa.Array:
    """A list (steps) of lists (k) per valid row, from a flat (valid steps * k) buffer."""
    inner_rows = values.size // k
    inner_offsets = pa.array((np.arange(inner_rows + 1, dtype=np.int64) * k).astype(np.int32))
    inner = pa.ListArray.from_arrays(inner_offsets, pa.array(values.reshape(-1)))
    return _list_array(inner, valid, lengths)


def _error_column(raw: RawSequences | RaggedSequences, encoded: Encoded | EncodedRagged,
                  scorer: Scorer, labelled: labels.Labels | None = None) -> pa.Array:
    rows = encoded.reasons.size
    bad = np.flatnonzero(encoded.reasons)
    if bad.size == 0:
        return pa.nulls(rows, pa.string())
    messages = scorer.encoder.messages(raw, encoded, bad)
    if labelled is not None:
        for_labels = np.isin(encoded.reasons[bad], list(LABEL_REASONS))
        if for_labels.any():
            label_messages = labelled.messages(bad[for_labels], scorer)
            slot = np.cumsum(for_labels) - 1
            taken = label_messages.take(pa.array(np.where(for_labels, slot, 0)))
            messages = pc.if_else(pa.array(for_labels), taken, messages)
    slot = np.full(rows, bad.size, dtype=np.int64)
    slot[bad] = np.arange(bad.size)
    with_null = pa.concat_arrays([messages, pa.nulls(1, pa.string())])
    return with_null.take(pa.array(slot))


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Every Parquet column but the probabilities (top_k_probs, and label_prob with --labels),
    which are floats that rarely repeat: a dictionary for them is built and abandoned page
    after page. Without it the scored file of 1M rows of 16 steps was written in 2.8 s instead
    of 5.4 s, and 20% smaller."""
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    paths = [parquet_schema.column(index).path for index in range(len(parquet_schema))]
    return [path for path in paths if path.split(".")[0] not in ("top_k_probs", "label_prob")]
