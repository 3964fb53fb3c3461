"""The HTML report as a browser renders it: headless chromium (Debian's package).

The page chromium builds (``--dump-dom``) must lead with the answer
sentence, show the workload as a table and mark the events a verdict cites;
``--screenshot`` must paint a page of real size. The fixture is the
hand-written race of tests/fixtures/traces/race.jsonl: a stat walk finds
dentry D while the shrinker runs __dentry_kill -> ___d_drop ->
dentry_unlink_inode on D, and the walk returns -ENOENT without a d_seq
re-check, so the race verdict must cite exactly that prune, unhash and
iput, and the judged walk return.
"""

import html.parser
import shutil
import struct
import subprocess

from conftest import FIXTURES, need
from vfstrace import store
from vfstrace.correlate import correlate
from vfstrace.report import correlated as report
from vfstrace.report.page import render_html

RACE = FIXTURES / "traces" / "race.jsonl"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
WINDOW = (1100, 2400)


def _chromium():
    exe = shutil.which("chromium")
    need(exe is not None, "chromium is not installed: run `bash scripts/setup.sh` (installs Debian's chromium)")
    return exe


def _page(tmp_path):
    df = store.load(RACE)
    rep = report.build_report(df, correlate(df), df.attrs["meta"])
    page = tmp_path / "report.html"
    page.write_text(render_html(rep), encoding="utf-8")
    return rep, page


def _run(exe, tmp_path, *args):
    r = subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


class _Dom(html.parser.HTMLParser):
    """The parts of the rendered DOM the report promises: paragraphs, tables, rows with their classes."""

    def __init__(self):
        super().__init__()
        self.paragraphs: list[str] = []
        self.tables: list[dict] = []  # {"attrs": {...}, "rows": [(class, [cell text])]}
        self._p = None
        self._cell = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "p":
            self._p = []
        elif tag == "table":
            self.tables.append({"attrs": a, "rows": []})
        elif tag == "tr" and self.tables:
            self._row = (a.get("class") or "", [])
            self.tables[-1]["rows"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "p" and self._p is not None:
            self.paragraphs.append(" ".join("".join(self._p).split()))
            self._p = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._p is not None:
            self._p.append(data)
        if self._cell is not None:
            self._cell.append(data)


def test_rendered_dom_leads_with_the_answer_and_marks_cited_events(tmp_path):
    exe = _chromium()
    rep, page = _page(tmp_path)
    dom = _Dom()
    dom.feed(_run(exe, tmp_path, "--dump-dom", page.as_uri()).stdout)

    answer = rep["summary"]["answer"]
    assert dom.paragraphs and dom.paragraphs[0] == answer
    assert answer.startswith("1 lookup/prune race seen:") and "kprobe tier" in answer

    workload = [t for t in dom.tables if t["attrs"].get("id") == "workload"]
    assert len(workload) == 1
    assert workload[0]["rows"] == [("", ["command", "stat loop under drop_caches (hand-written)"])]

    timelines = [t for t in dom.tables if "timeline" in (t["attrs"].get("class") or "")]
    assert len(timelines) == 1  # the one race
    cited = {int(cells[0]): cells[4] for cls, cells in timelines[0]["rows"] if "cited" in cls.split()}
    judged = [int(cells[0]) for cls, cells in timelines[0]["rows"] if "judged" in cls.split()]
    # The prune of the walk's own dentry, in the kernel's order, and the walk's -ENOENT return.
    assert {k for k in cited.values()} >= {"prune", "unhash", "iput", "walk_return"}
    assert [cited[i] for i in sorted(cited) if cited[i] in ("prune", "unhash", "iput")] == ["prune", "unhash", "iput"]
    assert judged == [rep["suspects"][0]["event_id"]] and cited[judged[0]] == "walk_return"
    uncited = [cells[4] for cls, cells in timelines[0]["rows"] if "cited" not in cls.split()]
    assert "lookup_return" in uncited  # the lookup that found D is context, not evidence


def test_screenshot_is_a_real_page(tmp_path):
    exe = _chromium()
    _, page = _page(tmp_path)
    png = tmp_path / "report.png"
    _run(exe, tmp_path, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={png}", page.as_uri())
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == WINDOW
    # A blank page of this size compresses to a few kB; text, tables and charts do not.
    assert len(data) > 50_000, len(data)
