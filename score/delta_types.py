"""The Arrow types a Delta Lake table keeps, for the data files the job writes into one.

Delta has fewer types than Arrow: signed integers only, one list, one string, timestamps in
microseconds. The run's output is written in the nearest type that holds every value (an
unsigned integer in the next wider signed one, never a narrower one that would wrap), so that
delta-rs, Spark, Polars and DuckDB read the files as the table's log describes them. Pure
pyarrow: the job decides this before it scores, without importing delta-rs.
"""

from __future__ import annotations

import pyarrow as pa

from score.errors import InvalidInput

_WIDER = {pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64(), pa.uint64(): pa.int64(),
          pa.float16(): pa.float32(), pa.date64(): pa.date32()}
_KEPT = (pa.types.is_boolean, pa.types.is_signed_integer, pa.types.is_float32, pa.types.is_float64,
         pa.types.is_date32, pa.types.is_decimal128)


def delta_type(data_type: pa.DataType) -> pa.DataType:
    """The type a Delta table keeps for ``data_type``; TypeError for one it has none for."""
    if data_type in _WIDER:
        return _WIDER[data_type]
    if any(test(data_type) for test in _KEPT):
        return data_type
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or str(data_type) == "string_view":
        return pa.string()
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type) or \
            pa.types.is_fixed_size_binary(data_type) or str(data_type) == "binary_view":
        return pa.binary()
    if pa.types.is_dictionary(data_type):
        return delta_type(data_type.value_type)
    if pa.types.is_timestamp(data_type):
        return pa.timestamp("us", tz="UTC" if data_type.tz is not None else None)
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or \
            pa.types.is_fixed_size_list(data_type) or pa.types.is_list_view(data_type) or \
            pa.types.is_large_list_view(data_type):
        item = data_type.value_field
        return pa.list_(pa.field("element", delta_type(item.type), item.nullable))
    if pa.types.is_struct(data_type):
        return pa.struct([delta_field(data_type.field(index)) for index in range(data_type.num_fields)])
    if pa.types.is_map(data_type):
        return pa.map_(delta_type(data_type.key_type), delta_type(data_type.item_type))
    raise TypeError(str(data_type))


def delta_field(field_: pa.Field) -> pa.Field:
    return pa.field(field_.name, delta_type(field_.type), field_.nullable)


def delta_schema(schema: pa.Schema, location: str) -> pa.Schema:
    """``schema`` in the types a Delta table keeps; InvalidInput (65) naming a column that has
    none, before anything is scored."""
    fields = []
    for field_ in schema:
        try:
            fields.append(delta_field(field_))
        except TypeError as error:
            raise InvalidInput(f"{location}: column {field_.name} is of type {field_.type}, which a "
                               f"Delta Lake table cannot hold ({error}); drop or cast it") from None
    return pa.schema(fields)
