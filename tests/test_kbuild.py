"""vfstrace's own kernels, line by line: names, config fragments, cache keys, patches (vfstrace/vm/build.py).

Pure parts only: nothing here runs make, apt or patch on a kernel tree.
"""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest

from vfstrace.vm import build, groundtruth
from vfstrace.vm.kernels import SERIES, boot_names

SOURCE_VERSION = {"6.1": "6.1.192-3", "6.12": "6.12.118-1~deb12u1", "5.10": "5.10.262-1"}


# ---- the table of lines and names ----------------------------------------------


def test_each_line_has_a_control_then_a_prepatch_with_its_own_patch_file():
    assert list(build.BUILT) == ["6.1-control", "6.1-prepatch", "6.12-control", "6.12-prepatch",
                                 "5.10-control", "5.10-prepatch"]
    for line in build.LINES:
        assert build.patch_path(f"{line}-control") is None
        pp = build.patch_path(f"{line}-prepatch")
        assert pp.name == f"{line}-prepatch.patch" and pp.is_file()
        assert build.line_of(f"{line}-prepatch") is build.LINES[line]


def test_lines_name_their_source_package_tree_lock_and_apt_lists():
    for name, line in build.LINES.items():
        assert line.package == f"linux-source-{name}"
        assert line.tarball == f"usr/src/linux-source-{name}.tar.xz"
        assert line.lock_name == f".build-{name}.lock"
    assert build.LINES["6.1"].lock_name == ".build-6.1.lock"  # the lock 6.1 builds took before lines
    # 6.1 and 6.12 from the host's bookworm lists, 5.10 from the private bullseye ones
    assert [SERIES[ln.apt_series].suite for ln in build.LINES.values()] == [None, None, "bullseye"]


def test_kernel_choices_are_a_closed_list_and_all_means_ci_lines():
    assert build.choices() == [*build.BUILT, "6.1", "6.12", "5.10", "all"]
    assert build.names("all") == ["6.1-control", "6.1-prepatch", "6.12-control", "6.12-prepatch"]
    assert build.names("5.10") == ["5.10-control", "5.10-prepatch"]
    assert build.names("6.12-prepatch") == ["6.12-prepatch"]
    for bad in ("6.12-fixed", "4.19", "6.1-", "-prepatch"):
        with pytest.raises(build.BuildError, match="unknown kernel to build"):
            build.names(bad)
    with pytest.raises(build.BuildError, match="unknown kernel to build"):
        build.line_of("6.12")  # a line is not a built kernel


def test_every_built_kernel_can_be_booted_by_name():
    assert [n for n in boot_names() if build.is_built_name(n)] == list(build.BUILT)


def test_release_suffix_says_control_or_prepatch_on_every_line():
    for name in build.BUILT:
        assert build.localversion(name) == "-vfstrace-" + name.rsplit("-", 1)[1]


# ---- config fragments -----------------------------------------------------------


SHARED = "# the core\nCONFIG_A=y\nCONFIG_B=y\n# old name\n# CONFIG_C is not set\nCONFIG_D=m\n"


def test_merge_without_a_line_fragment_is_the_shared_text_byte_for_byte():
    assert build.merge_fragments(SHARED, None) == SHARED


def test_merge_sets_each_option_once_with_the_lines_value():
    own = "# renamed here\n# CONFIG_B is not set\nCONFIG_E=y\n"
    merged = build.merge_fragments(SHARED, own, "9.9.config")
    opts = [m.group(1) for ln in merged.splitlines()
            if (m := re.fullmatch(r"(?:# )?(CONFIG_\w+)(?:=\S+| is not set)", ln))]
    assert sorted(opts) == ["CONFIG_A", "CONFIG_B", "CONFIG_C", "CONFIG_D", "CONFIG_E"]  # once each
    assert build.fragment_options(merged) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "n", "CONFIG_D": "m",
                                              "CONFIG_E": "y"}
    assert "# (CONFIG_B: set by 9.9.config below)" in merged
    assert merged.endswith(own)


def test_config_check_reads_the_merged_fragment_it_is_given():
    merged = build.merge_fragments(SHARED, "# CONFIG_A is not set\n")
    bad = build.config_mismatches("CONFIG_B=y\nCONFIG_D=m\n", merged)
    assert bad == []
    assert build.config_mismatches("CONFIG_A=y\nCONFIG_B=y\nCONFIG_D=m\n", merged) == ["CONFIG_A=y (asked n)"]


def test_6_1_is_configured_from_the_shared_fragment_alone():
    assert not build.LINES["6.1"].fragment.exists()
    assert build.merged_fragment(build.LINES["6.1"]) == build.FRAGMENT.read_bytes()


@pytest.mark.parametrize("line", ["6.12", "5.10"])
def test_line_fragments_hold_only_options_that_differ(line):
    own = build.fragment_options(build.LINES[line].fragment.read_text())
    shared = build.fragment_options()
    merged = build.fragment_options(build.merged_fragment(build.LINES[line]).decode())
    assert 0 < len(own) <= 6, "a line's fragment is for the few options that differ"
    assert {k: v for k, v in merged.items() if k not in own} == {k: v for k, v in shared.items() if k not in own}
    assert all(merged[k] == v for k, v in own.items())
    # every option of the line's fragment is set once in what Kconfig reads
    text = build.merged_fragment(build.LINES[line]).decode()
    for opt in own:
        assert len(re.findall(rf"^(?:# )?{opt}(?:=| is not set)", text, re.M)) == 1, opt


def test_line_fragments_turn_off_what_each_line_calls_cpu_mitigations():
    for line in ("6.12", "5.10"):
        opts = build.fragment_options(build.merged_fragment(build.LINES[line]).decode())
        assert opts["CONFIG_CPU_MITIGATIONS"] == "n"
    opts = build.fragment_options(build.merged_fragment(build.LINES["5.10"]).decode())
    assert opts["CONFIG_FPROBE"] == "n" and opts["CONFIG_DEBUG_INFO_DWARF4"] == "y"
    assert build.fragment_options(build.merged_fragment(build.LINES["6.12"]).decode())["CONFIG_BASE_FULL"] == "n"


# ---- cache keys -----------------------------------------------------------------


def _key_before_lines(name: str, version: str) -> str:
    """build_key() as it was when 6.1 was the only line (the keys of the 6.1 kernels already built)."""
    h = hashlib.sha256()
    for part in (build.RECIPE.encode(), b"linux-source-6.1", version.encode(), build.FRAGMENT.read_bytes()):
        h.update(part + b"\0")
    pp = build.patch_path(name)
    h.update(pp.read_bytes() if pp else b"(unpatched)")
    return h.hexdigest()[:16]


def test_6_1_cache_keys_are_those_of_before_lines():
    for name in ("6.1-control", "6.1-prepatch"):
        assert build.build_key(name, "6.1.192-3") == _key_before_lines(name, "6.1.192-3")


def test_every_kernel_has_its_own_cache_key():
    keys = {build.build_key(n, "1.0-1") for n in build.BUILT}
    assert len(keys) == len(build.BUILT)
    for n in build.BUILT:
        ver = SOURCE_VERSION[build.line_of(n).name]
        assert build.build_key(n, ver) == build.build_key(n, ver)
        assert build.build_key(n, ver) != build.build_key(n, ver + "+1")


def test_a_line_fragment_edit_changes_only_that_lines_keys(tmp_path, monkeypatch):
    before = {n: build.build_key(n, "1.0-1") for n in build.BUILT}
    kb = tmp_path / "kbuild"
    shutil.copytree(build.KBUILD, kb)
    (kb / "6.12.config").write_text((kb / "6.12.config").read_text() + "CONFIG_EXTRA=y\n")
    monkeypatch.setattr(build, "KBUILD", kb)
    monkeypatch.setattr(build, "FRAGMENT", kb / "vfstrace.config")
    after = {n: build.build_key(n, "1.0-1") for n in build.BUILT}
    assert {n for n in build.BUILT if before[n] != after[n]} == {"6.12-control", "6.12-prepatch"}


# ---- the patches: one revert, one ground-truth interface ------------------------


def _added(line: str) -> list[str]:
    patch = build.patch_path(f"{line}-prepatch").read_text()
    return [ln[1:] for ln in patch.splitlines() if ln.startswith("+") and not ln.startswith("+++")]


@pytest.mark.parametrize("line", list(build.LINES))
def test_each_patch_logs_the_line_groundtruth_parses(line):
    added = "\n".join(_added(line))
    fmt = re.search(r'trace_printk\("([^"]*)\\n"', added)
    assert fmt, "no trace_printk line"
    assert fmt.group(1) == f"{groundtruth.TAG} pid=%d tgid=%d dentry=%px mono_ns=%llu caller=%pS name=%pd"
    # what tracefs renders from it, read back by the unchanged reader
    sample = fmt.group(1).replace("%d", "42", 2).replace("%px", "ffff888004a1b2c0").replace(
        "%llu", "123456789").replace("%pS", "walk_component+0x6c/0x1f0").replace("%pd", "f0001.dat")
    ev = groundtruth.parse(f"  cp-42 [001] d..1. 12.5: lookup_fast: {sample}\n")
    assert [(e.tid, e.dentry, e.ts_ns, e.name) for e in ev] == [(42, 0xFFFF888004A1B2C0, 123456789, "f0001.dat")]
    assert f'.procname\t= "{groundtruth.TAG}"' in added
    assert ".mode\t\t= 0444" in added, "the counter must be read-only"
    assert "atomic_long_inc(&prepatch_spurious_enoent);" in added


@pytest.mark.parametrize("line", ["6.1", "6.12"])
def test_step_into_lines_put_the_negative_inode_test_before_the_d_seq_recheck(line):
    patch = build.patch_path(f"{line}-prepatch").read_text()
    body = patch[patch.index("\n--- a/fs/namei.c"):]
    assert body.index("+\t\t\tif (unlikely(!inode)) {") < body.index(
        " \t\t\tif (read_seqcount_retry(&path.dentry->d_seq, nd->next_seq))\n \t\t\t\treturn ERR_PTR(-ECHILD);")
    assert "-\t\t\tif (unlikely(!inode))\n-\t\t\t\treturn ERR_PTR(-ENOENT);" in body


def test_5_10_skips_the_lookup_fast_recheck_for_a_negative_inode_only():
    patch = build.patch_path("5.10-prepatch").read_text()
    body = patch[patch.index("\n--- a/fs/namei.c"):]
    assert "-\t\tif (unlikely(read_seqcount_retry(&dentry->d_seq, seq)))" in body
    assert ("+\t\tif (unlikely(!*inode))\n+\t\t\tprepatch_stale = read_seqcount_retry(&dentry->d_seq, seq);\n"
            "+\t\telse if (unlikely(read_seqcount_retry(&dentry->d_seq, seq)))\n \t\t\treturn ERR_PTR(-ECHILD);") in body
    # recorded only where the negative dentry is returned to step_into(), past every check that could
    # still make the walk -ECHILD
    assert body.index("if (likely(status > 0)) {") < body.index("if (unlikely(prepatch_stale))")


@pytest.mark.parametrize("line", list(build.LINES))
def test_each_patch_header_says_what_it_reverts_and_where(line):
    header = build.patch_path(f"{line}-prepatch").read_text().split("\n--- a/fs/namei.c")[0]
    assert header.startswith(f"vfstrace {line}-prepatch: ")
    assert '"vfs: fix race in rcu lookup of pruned dentry"' in header
    assert f"Where it lives in {line}:" in header
    assert f"linux-source-{line}" in header
