"""Columns and tables: numpy/pyarrow in the one schema of vfstrace/events.py, both ways."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vfstrace.errors import VfstraceError
from vfstrace.events import ARROW_SCHEMA, COLUMN_DEFAULTS, COLUMNS, NUMPY_DTYPES, STRING_COLUMNS


def _default_column(name: str, n: int) -> np.ndarray:
    if name in STRING_COLUMNS:
        return np.full(n, "", dtype=object)
    return np.full(n, COLUMN_DEFAULTS.get(name, 0), dtype=NUMPY_DTYPES[name])


def to_table(data) -> pa.Table:
    """A pyarrow Table in ARROW_SCHEMA from a DataFrame, Table or dict of arrays.

    Missing columns are filled with 0 / "" (or events.COLUMN_DEFAULTS) and extra columns are dropped;
    null strings become "". Raises VfstraceError when a value does not fit
    its column (e.g. a negative inode number).
    """
    if isinstance(data, pa.Table):
        names = set(data.column_names)
        n = data.num_rows

        def get(c):
            return data.column(c)
    else:
        if hasattr(data, "columns"):  # pandas DataFrame
            names = set(data.columns)
            n = len(data)

            def get(c):
                # A string column goes to pyarrow as the Series: pandas >= 3
                # keeps strings in Arrow already (taken over at the cost of
                # a cast, about 70x faster than through a numpy array of
                # str objects); an object column converts the same either way.
                return data[c] if c in STRING_COLUMNS else data[c].to_numpy()
        elif isinstance(data, dict):
            names = set(data)
            lens = {len(v) for v in data.values()}
            if len(lens) > 1:
                raise VfstraceError(f"event columns have different lengths: {sorted(lens)}")
            n = lens.pop() if lens else 0

            def get(c):
                return data[c]
        else:
            raise VfstraceError(f"cannot write events of type {type(data).__name__}")
    arrays = []
    for field in ARROW_SCHEMA:
        c = field.name
        if c not in names:
            arrays.append(pa.array(_default_column(c, n), type=field.type))
            continue
        v = get(c)
        try:
            if isinstance(v, (pa.Array, pa.ChunkedArray)):
                a = v.cast(field.type)
            else:
                a = pa.array(v, type=field.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            raise VfstraceError(f"column {c!r} does not fit {field.type}: {str(e).splitlines()[0]}") from None
        if a.null_count:
            a = a.fill_null("" if c in STRING_COLUMNS else 0)
        arrays.append(a)
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def _column_numpy(col: pa.ChunkedArray, name: str) -> np.ndarray:
    if name not in STRING_COLUMNS:
        return col.to_numpy().astype(NUMPY_DTYPES[name], copy=False)
    out = np.empty(len(col), dtype=object)
    off = 0
    for ch in col.chunks:
        k = len(ch)
        if pa.types.is_dictionary(ch.type):
            values = np.array(ch.dictionary.to_pylist() + [""], dtype=object)
            idx = ch.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
            out[off : off + k] = values[idx]
        else:
            out[off : off + k] = ch.fill_null("").to_numpy(zero_copy_only=False)
        off += k
    return out


def _frame(table: pa.Table):
    import pandas as pd

    cols = {c: _column_numpy(table.column(c), c) for c in COLUMNS}
    ids = cols["event_id"]
    dup = False
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        order = np.argsort(ids, kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        dup = bool((np.diff(cols["event_id"]) == 0).any())
    # dtype=object explicitly: pandas >= 3 would otherwise re-infer string
    # columns as its Arrow-backed "str" dtype (slow, and not NUMPY_DTYPES).
    df = pd.DataFrame({c: pd.Series(v, dtype=NUMPY_DTYPES[c], copy=False) for c, v in cols.items()})
    if dup:
        df.attrs["_dup_ids"] = True
    return df
