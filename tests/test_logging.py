"""Library code logs; the CLI's -v shows the full clang or verifier log behind a one-line error."""

import ast
import logging
import os

import pytest

from conftest import FIXTURES, ROOT, invoke
from tracers import BuildError, build_bpf
from vfstrace import log

# A clang failure as libbcc writes it to fd 2: a screenful of header warnings,
# the error, and a long tail (a verifier log runs to thousands of lines).
WARNINGS = "".join(f"include/linux/percpu.h:{i}: warning: address space {i}\n" for i in range(200))
ERROR = "/virtual/main.c:42:5: error: use of undeclared identifier '" + "x" * 400 + "'\n"
TAIL = "".join(f"{i}: (b7) r1 = {i}\n" for i in range(3000)) + "processed 3000 insns (limit 1000000)\n"


class _FakeBcc:
    class BPF:
        def __init__(self, text, cflags):
            os.write(2, (WARNINGS + ERROR + TAIL).encode())
            raise Exception("Failed to compile BPF module <text>")


@pytest.fixture
def vfstrace_logger():
    lg = logging.getLogger(log.LOGGER)
    saved = (lg.level, list(lg.handlers), lg.propagate)
    yield lg
    lg.setLevel(saved[0])
    lg.handlers[:] = saved[1]
    lg.propagate = saved[2]


def test_without_v_one_line_naming_the_error_and_where_the_rest_is(vfstrace_logger, capfd):
    log.setup(0)
    with pytest.raises(BuildError) as ei:
        build_bpf(_FakeBcc, "int x;", [])
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("Failed to compile BPF module <text> (/virtual/main.c:42:5: error: use of undeclared")
    assert msg.endswith("; `vfstrace -v` shows the full log")
    err = capfd.readouterr().err
    assert "warning: address space" not in err and "processed 3000 insns" not in err


def test_with_v_the_whole_log_reaches_stderr(vfstrace_logger, capfd):
    log.setup(1)
    with pytest.raises(BuildError) as ei:
        build_bpf(_FakeBcc, "int x;", [])
    assert "vfstrace -v" not in str(ei.value)
    err = capfd.readouterr().err
    assert err.startswith("vfstrace: debug: the full compiler and verifier output:\n")
    assert ERROR.strip() in err  # not cut at 300 characters
    assert "include/linux/percpu.h:199: warning" in err and "2999: (b7) r1 = 2999" in err
    assert err.rstrip().endswith("processed 3000 insns (limit 1000000)")


def test_cli_v_sets_debug_and_default_is_info(vfstrace_logger):
    trace = str(FIXTURES / "traces" / "race.jsonl")
    r = invoke(["-v", "analyze", trace, "--no-verdicts"])
    assert r.exit_code == 0, r.output
    assert vfstrace_logger.getEffectiveLevel() == logging.DEBUG
    r = invoke(["analyze", trace, "--no-verdicts"])
    assert r.exit_code == 0 and vfstrace_logger.getEffectiveLevel() == logging.INFO


LIBRARY = ["tracers", "vfstrace/kernel", "vfstrace/store", "vfstrace/correlate", "vfstrace/vm",
           "vfstrace/recorder.py", "vfstrace/selftest/live.py"]


def _stderr_writes(path):
    """Lines that print to stderr: print(..., file=sys.stderr), sys.stderr.write, click.echo(..., err=True)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = ast.unparse(f)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (name == "print" and kw.get("file") == "sys.stderr") or name == "sys.stderr.write" or (
                name == "click.echo" and kw.get("err") == "True"):
            yield node.lineno


def test_library_code_logs_instead_of_printing_to_stderr():
    files = []
    for p in LIBRARY:
        q = ROOT / p
        files += [q] if q.is_file() else sorted(q.rglob("*.py"))
    # Inside a guest nothing configures logging: guest scripts write their own stderr.
    files = [f for f in files if "guest" not in f.parts]
    # A command module: `vfstrace vm run` passes the guest's own stderr through as its output.
    commands = {"vfstrace/vm/cli.py"}
    bad = [f"{f.relative_to(ROOT)}:{n}" for f in files if str(f.relative_to(ROOT)) not in commands
           for n in _stderr_writes(f)]
    assert bad == []
