"""The BPF event structs and the Python decoder agree, checked by compiling the header."""

import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, need
from vfstrace import events


def _c_layout(tmp_path, struct, fields):
    src = tmp_path / "layout.c"
    body = "\n".join(
        f'  printf("{f} %zu %zu\\n", offsetof(struct {struct}, {f}), sizeof(((struct {struct} *)0)->{f}));'
        for f in fields
    )
    src.write_text(
        f'#include <stdio.h>\n#include <stddef.h>\n#include "vfstrace.h"\n'
        f"int main(void) {{\n{body}\n"
        f'  printf("__size__ %zu 0\\n", sizeof(struct {struct}));\n  return 0;\n}}\n'
    )
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(ROOT / "bpf"), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {line.split()[0]: (int(line.split()[1]), int(line.split()[2])) for line in out.splitlines()}


def test_vfs_event_layout_matches_header(tmp_path):
    need(shutil.which("cc") is not None, "no C compiler (cc) to compile bpf/vfstrace.h")
    dt = events.BPF_EVENT_DTYPE
    layout = _c_layout(tmp_path, "vfs_event", dt.names)
    for name in dt.names:
        off, size = layout[name]
        assert (off, size) == (dt.fields[name][1], dt.fields[name][0].itemsize), name
    assert layout["__size__"][0] == dt.itemsize


def test_vfs_path_event_layout_matches_header(tmp_path):
    need(shutil.which("cc") is not None, "no C compiler (cc) to compile bpf/vfstrace.h")
    dt = events.BPF_PATH_EVENT_DTYPE
    layout = _c_layout(tmp_path, "vfs_path_event", ["path", "path2"])
    assert layout["path"] == (dt.fields["path"][1], events.PATH_LEN)
    assert layout["path2"] == (dt.fields["path2"][1], events.PATH_LEN)
    assert layout["__size__"][0] == dt.itemsize


def test_schema_columns_cover_bpf_fields():
    bpf_fields = {n for n in events.BPF_PATH_EVENT_DTYPE.names if not n.startswith("_")}
    assert bpf_fields <= set(events.COLUMNS)
    assert events.COLUMNS[0] == "event_id"


def test_empty_frame_has_schema_dtypes():
    df = events.empty_frame()
    assert list(df.columns) == list(events.COLUMNS)
    assert df["dentry"].dtype == np.uint64
    assert df["ret"].dtype == np.int64
    assert df["name"].dtype == object


@pytest.mark.parametrize("k", list(events.Kind))
def test_kind_names_round_trip(k):
    assert events.Kind[events.kind_name(k).upper()] == k
