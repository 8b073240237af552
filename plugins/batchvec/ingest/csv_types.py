"""The types CSV metadata columns keep in the documents (CSV itself has none): inferred per
file from its first batch, applied to every batch, a misfit cell kept as text."""

from __future__ import annotations


def infer_type(col):
    """The type a CSV metadata column keeps in the documents, from the file's first batch:
    int64 if every non-empty cell is an integer, else float64, else bool (true/false), else
    text; a number written with a leading zero stays text. Ids and texts are always text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        text = pc.cast(col, pa.string())
    except pa.ArrowInvalid:  # not UTF-8: rows are rejected one by one as they decode
        return None
    cells = pc.drop_null(pc.if_else(pc.equal(pc.utf8_trim_whitespace(text), ""), None, text))
    if len(cells) == 0:
        return None
    # A leading zero (zip codes, phone numbers, ids) means text: a number would drop it.
    numeric_ok = not pc.any(pc.match_substring_regex(cells, r"^\s*[+-]?0[0-9]")).as_py()
    for candidate in (pa.int64(), pa.float64(), pa.bool_()):
        if candidate != pa.bool_() and not numeric_ok:
            continue
        try:
            pc.cast(cells, candidate)
            return candidate
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def typed_values(col, typ) -> list:
    """One batch's column as Python values: typed if the file's type fits this batch (an
    empty cell is absent), else raw bytes, decoded per row (a misfit cell stays text)."""
    if typ is None:
        return col.to_pylist()
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        text = pc.cast(col, pa.string())
        blank = pc.equal(pc.utf8_trim_whitespace(text), "")
        return pc.cast(pc.if_else(blank, None, pc.utf8_trim_whitespace(text)), typ).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return col.to_pylist()
