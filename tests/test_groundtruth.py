"""The prepatch kernel's ground truth stays apart from the detector; its reader and the build's pure parts.

The detector is scored against the kernel's own count of spurious ENOENTs
(vfstrace/vm/groundtruth.py). If a tracer, a BPF program or the correlator
ever read that record, the score would measure the detector against
itself: the first test fails if any of them so much as names it.
"""

from __future__ import annotations

import pytest

from conftest import ROOT
from vfstrace.vm import build, groundtruth

DETECTOR_DIRS = ["tracers", "bpf", "vfstrace/correlate", "vfstrace/kernel", "vfstrace/watch.py"]
MARKERS = [groundtruth.TAG, "groundtruth", "ground_truth"]


def _detector_files():
    for d in DETECTOR_DIRS:
        p = ROOT / d
        yield from ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file() and x.suffix in (".py", ".c", ".h")))


def test_no_tracer_bpf_program_or_correlator_references_the_ground_truth():
    files = list(_detector_files())
    assert len(files) > 10, "the detector's files were not found: the check would pass vacuously"
    hits = [f"{f.relative_to(ROOT)}: {m}" for f in files for m in MARKERS if m in f.read_text(errors="replace")]
    assert hits == []


def test_the_patch_logs_under_the_tag_the_reader_parses():
    patch = (build.KBUILD / "6.1-prepatch.patch").read_text()
    added = [ln for ln in patch.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert any(f'"{groundtruth.TAG} pid=%d tgid=%d dentry=%px mono_ns=%llu caller=%pS name=%pd\\n"' in ln for ln in added)
    assert any(f'.procname\t= "{groundtruth.TAG}"' in ln for ln in added)
    assert any(".mode\t\t= 0444" in ln for ln in added), "the counter must be read-only"
    # the revert itself: the negative-inode test now comes before the d_seq re-check
    body = patch[patch.index("@@ -18"):]
    assert body.index("+\t\t\tif (unlikely(!inode)) {") < body.index(
        " \t\t\tif (read_seqcount_retry(&path.dentry->d_seq, nd->next_seq))\n \t\t\t\treturn ERR_PTR(-ECHILD);")
    assert "-\t\t\tif (unlikely(!inode))\n-\t\t\t\treturn ERR_PTR(-ENOENT);" in body


TRACE_TEXT = """# tracer: nop
#
            cp-1234    [001] d..1.   812.345678: step_into: prepatch_spurious_enoent pid=1234 tgid=1230 dentry=ffff8880045a1e40 mono_ns=812345670123 caller=walk_component+0x7c/0x1a0 name=f000123.dat
  vfs-statter-99      [000] .....   813.000000: some_other_line: pid=1 dentry=ffff0000 mono_ns=5
     stat-77 [000] d..1.   814.1: step_into: prepatch_spurious_enoent pid=77 tgid=77 dentry=0xffff888004000000 mono_ns=814100000000 name=a b
"""


def test_parse_reads_task_dentry_time_and_name():
    ev = groundtruth.parse(TRACE_TEXT)
    assert [e.to_dict() for e in ev] == [
        {"tid": 1234, "pid": 1230, "dentry": 0xFFFF8880045A1E40, "ts_ns": 812345670123, "name": "f000123.dat",
         "caller": "walk_component+0x7c/0x1a0"},
        {"tid": 77, "pid": 77, "dentry": 0xFFFF888004000000, "ts_ns": 814100000000, "name": "a b", "caller": ""},
    ]


def test_match_is_one_to_one_by_task_dentry_and_time():
    truth = [{"tid": 1, "dentry": 10, "ts_ns": 1_000}, {"tid": 1, "dentry": 10, "ts_ns": 9_000_000},
             {"tid": 2, "dentry": 10, "ts_ns": 1_000}]
    verdicts = [{"tid": 1, "dentry": 10, "ts_ns": 1_500},       # the first truth
                {"tid": 1, "dentry": 10, "ts_ns": 2_000},       # same lookup again: no second match
                {"tid": 3, "dentry": 10, "ts_ns": 1_000},       # other task
                {"tid": 2, "dentry": 11, "ts_ns": 1_000}]       # other dentry
    pairs, lone_v, lone_t = groundtruth.match(verdicts, truth, tol_ns=1_000_000)
    assert pairs == [(0, 0)]
    assert lone_v == [1, 2, 3] and lone_t == [1, 2]


def test_reader_says_unavailable_on_a_kernel_without_the_patch():
    if groundtruth.available():
        pytest.skip("this kernel is the prepatch build")
    assert groundtruth.count() is None


# ---- the build's pure parts ---------------------------------------------------


def test_fragment_mismatches_name_each_dropped_option():
    # the fragment asks IPV6 off (a guest needs only loopback IPv4) and says nothing of SOUND
    cfg = "CONFIG_KPROBES=y\nCONFIG_IPV6=y\n# CONFIG_SOUND is not set\n"
    bad = build.config_mismatches(cfg)
    assert "CONFIG_KPROBES=y (asked y)" not in bad
    assert "CONFIG_IPV6=y (asked n)" in bad
    assert "CONFIG_IKHEADERS=n (asked y)" in bad
    assert not any(b.startswith("CONFIG_SOUND") for b in bad)


def test_cache_keys_follow_source_config_and_patch():
    a = build.build_key("6.1-prepatch", "6.1.192-3")
    assert a == build.build_key("6.1-prepatch", "6.1.192-3")
    assert a != build.build_key("6.1-prepatch", "6.1.193-1")
    assert a != build.build_key("6.1-control", "6.1.192-3")
    assert build.localversion("6.1-prepatch") == "-vfstrace-prepatch"


def test_a_patch_that_does_not_apply_is_refused_and_changes_nothing(tmp_path):
    (tmp_path / "fs").mkdir()
    namei = tmp_path / "fs" / "namei.c"
    namei.write_text("/* not 6.1's namei.c */\nint x;\n")
    with pytest.raises(build.BuildError, match="does not apply cleanly"):
        build._patch(tmp_path, (build.KBUILD / "6.1-prepatch.patch").read_bytes(), False, "6.1-prepatch.patch")
    assert namei.read_text() == "/* not 6.1's namei.c */\nint x;\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fs", "namei.c"]


def test_unknown_kernel_to_build_is_refused():
    with pytest.raises(build.BuildError, match="unknown kernel to build '6.1-fixed'"):
        build.build("6.1-fixed")
