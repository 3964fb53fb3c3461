"""The installed package stands on its own: nothing under vfstrace/, tracers/
or bpf/ imports from tests/ or reads a file from it (a wheel has no tests/),
and only tracers/ imports bcc (pure logic stays testable without it)."""

import ast
import re

from conftest import ROOT

INSTALLED = ("vfstrace", "tracers", "bpf")
MAX_LINES = 450


def _sources():
    for top in INSTALLED:
        yield from sorted((ROOT / top).rglob("*.py"))


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_installed_code_never_imports_tests():
    bad = [(p.relative_to(ROOT), m) for p in _sources() for m in _imports(p)
           if m.split(".")[0] in ("tests", "conftest")]
    assert bad == []


def test_installed_code_never_names_a_path_under_tests():
    # A path built from a "tests" component ("tests/vm", ROOT / "tests") would
    # be read from a checkout that an installed package does not have.
    pat = re.compile(r"""["']tests["']|["']tests/""")
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in _sources()
           for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert bad == []


# doctor asks whether bcc imports at all; the symbol capture runs inside a guest.
BCC_PROBES = {"vfstrace/kernel/features.py", "vfstrace/vm/guest/capture_symbols.py"}


def test_only_tracers_import_bcc():
    bad = [str(p.relative_to(ROOT)) for p in _sources()
           if p.parts[len(ROOT.parts)] != "tracers" and str(p.relative_to(ROOT)) not in BCC_PROBES
           and any(m.split(".")[0] == "bcc" for m in _imports(p))]
    assert bad == []


def test_long_modules_say_why():
    # A module past MAX_LINES must say in its docstring why it is one module.
    bad = []
    for p in _sources():
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > MAX_LINES and "one module" not in doc:
            bad.append(f"{p.relative_to(ROOT)} ({n} lines)")
    assert bad == []
