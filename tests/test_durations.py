"""Every option that takes a duration refuses nan, inf, 1e400 and negatives: one line, exit 2."""

import pytest

from conftest import invoke
from vfstrace.cli import main

# (argv before the value, argv after it): each command that takes a duration
OPTIONS = [
    (["watch", "-d"], []),
    (["record", "-o", "/nonexistent/never-made.vft", "-d"], []),
    (["stress", "-d"], []),
    (["stress", "--stagger"], []),
    (["selftest", "-d"], []),
    (["simulate", "-d"], []),
    (["vm", "run", "--kernel", "6.1", "--timeout"], ["--", "true"]),
]
BAD = ["nan", "inf", "-inf", "1e400", "-1", "NaN", "ten"]


@pytest.mark.parametrize("before,after", OPTIONS, ids=lambda x: " ".join(x) if x else "-")
@pytest.mark.parametrize("value", BAD)
def test_bad_duration_is_one_line_exit_2(before, after, value, capsys):
    with pytest.raises(SystemExit) as e:
        main([*before, value, *after])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("vfstrace: error: ") and "is not a duration" in err[0], err
    assert "Traceback" not in err[0]


def test_messages_name_only_options_that_exist():
    """The advice on lost events names --ring-pages: record, watch and selftest take it."""
    for cmd in ("record", "watch", "selftest"):
        r = invoke([cmd, "--help"])
        assert "--ring-pages" in r.output, cmd
