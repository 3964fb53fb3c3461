"""The one kernel-side base: generated defines, one way to build a program, counts in old traces."""

import re

import pyarrow as pa
import pyarrow.parquet as pq

import bpf
from vfstrace import events


def test_every_program_gets_its_own_counter_slots_from_python():
    for prog in bpf.PROGRAMS:
        enum_ = events.PROGRAM_COUNTERS[prog][0]
        text = events.c_defines(prog)
        slots = dict(re.findall(r"#define VFS_C_([A-Z_]+) (\d+)\n", text))
        assert {k: int(v) for k, v in slots.items()} == {c.name: int(c) for c in enum_}
        assert f"#define VFS_NCOUNTERS {len(enum_)}\n" in text
        assert sorted(int(c) for c in enum_) == list(range(len(enum_)))  # dense: they index an array
        assert events.counter_names(prog) == tuple(c.name.lower() for c in sorted(enum_))


def test_errnos_come_from_python_and_no_program_spells_them():
    text = events.c_defines()
    assert "#define VFS_ENOENT (-2)" in text and "#define VFS_ECHILD (-10)" in text
    for prog in bpf.PROGRAMS:
        src = bpf.source(prog)
        assert not re.search(r"[!=]= *-\d+\b", src), prog  # compares with a literal errno
        assert not re.search(r"\benum *\{[^}]*C_", src), prog  # a counter enum kept by hand


def test_each_program_is_built_with_common_h_pasted_in_place():
    common = bpf.source(bpf.COMMON)
    for prog in bpf.PROGRAMS:
        assert bpf.COMMON_INCLUDE in bpf.source(prog).splitlines()
        text = bpf.program(prog)
        assert text.count(common) == 1 and bpf.COMMON_INCLUDE not in text.splitlines()
        assert text.startswith(events.c_defines(prog))


def test_options_share_one_prefix():
    """Every option a program tests with #if/#ifdef/#ifndef is VFS_<X> (or a
    kernel or BCC name it only reads)."""
    for prog in bpf.PROGRAMS + (bpf.COMMON,):
        for name in re.findall(r"^#\s*(?:if|ifdef|ifndef|elif)\s+!?\(?\s*([A-Za-z_][A-Za-z0-9_]*)", bpf.source(prog), re.M):
            assert name.startswith("VFS_") or name == "VFSTRACE_COMMON_H", (prog, name)


def test_a_trace_part_without_the_count_column_loads_with_count_one(tmp_path):
    from vfstrace.store import load
    from vfstrace.store.files import SCHEMA_KEY

    old_schema = pa.schema([f for f in events.ARROW_SCHEMA if f.name != "count"])
    cols = {f.name: pa.array(["" if pa.types.is_string(f.type) else 0] * 2, type=f.type) for f in old_schema}
    cols["event_id"] = pa.array([1, 2], type=pa.uint64())
    cols["kind"] = pa.array([int(events.Kind.PATH_SYSCALL)] * 2, type=pa.uint8())
    t = pa.table(cols, schema=old_schema.with_metadata({SCHEMA_KEY: str(events.SCHEMA_VERSION).encode()}))
    part = tmp_path / "old.parquet"
    pq.write_table(t, part)
    df = load(part)
    assert list(df["count"]) == [1, 1] and list(df.columns) == list(events.COLUMNS)


def test_records_that_leave_count_zero_stand_for_one():
    import numpy as np

    from tracers.stream import records_to_frame

    rec = np.zeros(3, dtype=events.BPF_EVENT_DTYPE)
    rec["count"] = [0, 1, 7]
    assert list(records_to_frame(rec)["count"]) == [1, 1, 7]
    assert list(events.frame_from_records(rec)["count"]) == [1, 1, 7]
