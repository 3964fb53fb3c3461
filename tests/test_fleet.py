"""`vfstrace fleet` and `vfstrace sql` over simulated hosts' traces, checked against `analyze` of each.

The simulated traces are buggy and fixed kernels in both tiers' views
(vfstrace/workload/simulate.py), one with kernel losses; `analyze --json`
of each trace, a separate process on the whole-trace code path's twin, is
what every fleet row and SQL count must equal. The Dask test starts a real
dask.distributed LocalCluster of two worker processes on loopback and
checks that `fleet --scheduler` gives the local table.
"""

from __future__ import annotations

import json
import shutil
import socket

import pytest
from conftest import cli, invoke
from test_hostile_traces import CASES, make_case, run_command, write_base
from test_terminal import EVIL_NAME, EVIL_PATH, assert_terminal_safe, evil_trace

from vfstrace.report.terminal import term

# (semantics, tier, seed, loss rate): races in the buggy kprobe views, none in the fixed ones.
HOSTS = [("buggy", "kprobe", 1, 0.0), ("fixed", "kprobe", 2, 0.0), ("buggy", "tracepoint", 3, 0.0),
         ("fixed", "tracepoint", 4, 0.02)]


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet") / "hosts"
    d.mkdir()
    for sem, tier, seed, loss in HOSTS:
        o = invoke(["simulate", "--semantics", sem, "--tier", tier, "--seed", seed, "-d", "0.005",
                    "--loss-rate", loss, "-o", d / f"{sem}-{tier}-{seed}.vft"])
        assert o.exit_code == 0, o.output
    return d


@pytest.fixture(scope="module")
def analyzed(fleet_dir):
    """`analyze --json` of each trace, by path."""
    out = {}
    for p in sorted(fleet_dir.iterdir()):
        o = invoke(["analyze", "--json", p])
        assert o.exit_code == 0, o.output
        out[str(p)] = json.loads(o.stdout)
    return out


@pytest.fixture(scope="module")
def local_json(fleet_dir):
    o = cli("fleet", "--json", fleet_dir)  # the console's own process, as the Dask run's
    assert o.returncode == 0, o.stderr
    return json.loads(o.stdout)


def test_fleet_rows_equal_analyze_of_each_trace(local_json, analyzed):
    rows = local_json["traces"]
    assert [r["trace"] for r in rows] == sorted(analyzed) and local_json["failed"] == 0
    for r in rows:
        a = analyzed[r["trace"]]
        assert r["verdicts"] == a["verdicts"]["counts"], r["trace"]
        assert r["races"] == a["verdicts"]["counts"].get("race", 0)
        assert r["failed_lookups"] == sum(a["verdicts"]["counts"].values())
        assert r["events"] == a["events"] and r["by_kind"] == a["by_kind"]
        assert r["lost"] == a["lost"]["total"] and r["span_s"] == a["duration_s"]
        assert (r["host"], r["kernel"]) == (a["trace"]["host"], a["trace"]["kernel_release"])
        races = [s for s in a["verdicts"]["suspects"] if s["verdict"] == "race"]
        if races:  # analyze lists races first, in time order: its first is the fleet's
            assert (r["first_race"]["path"], r["first_race"]["ts_ns"]) == (races[0]["path"], races[0]["ts_ns"])
        else:
            assert r["first_race"] is None
    by_name = {r["trace"].rsplit("/", 1)[-1]: r for r in rows}
    # The kernel semantics behind the verdicts: the buggy kprobe view proves races, the fixed ones none.
    assert by_name["buggy-kprobe-1.vft"]["races"] > 0
    assert by_name["fixed-kprobe-2.vft"]["races"] == 0 and by_name["fixed-tracepoint-4.vft"]["races"] == 0
    assert by_name["fixed-tracepoint-4.vft"]["lost"] > 0
    assert {r["tier"] for r in rows} == {"simulated-kprobe", "simulated-tracepoint"}


def test_fleet_text_table_and_globs(fleet_dir, local_json):
    o = invoke(["fleet", fleet_dir / "*-kprobe-*.vft"])
    assert o.exit_code == 0, o.output
    lines = o.stdout.splitlines()
    assert lines[0].startswith("2 trace(s): ")
    assert sum("kprobe-" in ln for ln in lines) == 2 and "tracepoint-" not in o.stdout
    buggy = next(r for r in local_json["traces"] if "buggy-kprobe" in r["trace"])
    row = next(ln for ln in lines if "buggy-kprobe" in ln)
    assert f"{buggy['races']:,}: {buggy['first_race']['path']} at " in row


def test_fleet_on_a_local_dask_cluster_equals_the_local_table(fleet_dir, local_json):
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://127.0.0.1:")
        o = cli("fleet", "--json", "--scheduler", addr, fleet_dir, timeout=120)
        assert o.returncode == 0, o.stderr
        assert json.loads(o.stdout) == local_json
        text = cli("fleet", "--scheduler", addr, fleet_dir, timeout=120)
        assert text.returncode == 0 and text.stdout == invoke(["fleet", fleet_dir]).stdout
    finally:
        cluster.close()


def test_a_bad_trace_among_many_gets_its_row_the_others_are_reported(fleet_dir, tmp_path):
    d = tmp_path / "hosts"
    shutil.copytree(fleet_dir, d)
    part = next((d / "fixed-kprobe-2.vft").glob("part-*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64
    part.write_bytes(bytes(data))
    (d / "empty.vft").mkdir()
    o = cli("fleet", "--json", d)
    assert o.returncode == 3
    assert o.stderr.splitlines() == ["vfstrace: error: 2 of 5 trace(s) could not be read (their rows say why)"]
    rows = {r["trace"].rsplit("/", 1)[-1]: r for r in json.loads(o.stdout)["traces"]}
    assert "corrupt" in rows["fixed-kprobe-2.vft"]["error"] and "no _meta.json" in rows["empty.vft"]["error"]
    assert all(not r["error"] and r["events"] > 0 for n, r in rows.items() if n not in ("fixed-kprobe-2.vft",
                                                                                        "empty.vft"))
    text = cli("fleet", d)
    assert text.returncode == 3 and "not read" in text.stdout and "buggy-kprobe-1.vft" in text.stdout


# test_hostile_traces' corruptions that must be refused, and some that are read (test_hostile_traces runs
# them all through the readers fleet shares).
HOSTILE = ("meta FIFO", "meta -> /dev/zero", "meta invalid JSON", "part FIFO", "part foreign Parquet",
           "part of another trace", "listed part missing", "parts swapped", "part ts_ns all null",
           "part name all null", "meta nested 1000 deep", "parts[].first_event_id 2^64")


def test_hostile_trace_directories_are_one_row_each_as_analyze_judges_them(tmp_path):
    # Each corruption beside a good trace: the fleet says one line for it where analyze refuses it,
    # reads it where analyze does, and always reports the good one.
    base = write_base(tmp_path / "base.vft")
    good = write_base(tmp_path / "good.vft")
    problems = []
    cases = [c for c in CASES if c[0] in HOSTILE]
    assert len(cases) == len(HOSTILE)
    for i, (name, mutate) in enumerate(cases):
        work = tmp_path / f"case{i}"
        work.mkdir()
        bad = make_case(base, work, mutate)
        f = run_command("fleet", bad, work / "out", argv=["fleet", "--json", str(good), str(bad)])
        a = run_command("analyze", bad, work / "out")
        if f.problem() or f.exit_code != (3 if a.exit_code == 3 else 0):
            problems.append(f"{name}: fleet exit {f.exit_code} ({f.problem()}), analyze exit {a.exit_code}")
            continue
        rows = json.loads(f.stdout)["traces"]
        err = rows[1]["error"]
        if rows[0]["error"] or (err is None) != (a.exit_code == 0) or (err and "\n" in err):
            problems.append(f"{name}: rows {rows}")
    assert problems == []


def test_no_traces_match_is_one_line(tmp_path):
    for args in ([tmp_path / "nothing-*.vft"], [tmp_path]):
        o = cli("fleet", *args)
        assert o.returncode == 2 and o.stdout == ""
        assert len(o.stderr.splitlines()) == 1 and o.stderr.startswith("vfstrace: error: ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_scheduler_address_is_one_line(fleet_dir):
    for addr in ("localhost:8786", "tcp://127.0.0.1:99999", "tcp://host name:1"):
        o = cli("fleet", "--scheduler", addr, fleet_dir)
        assert o.returncode == 2 and o.stderr.splitlines() == [
            f"vfstrace: error: --scheduler: {addr!r} is not a scheduler address: give tcp://HOST:PORT"]
    addr = f"tcp://127.0.0.1:{_free_port()}"
    o = cli("fleet", "--scheduler", addr, "--connect-timeout", "0.5", fleet_dir, timeout=60)
    assert o.returncode == 2 and o.stdout == "", o.stderr
    assert o.stderr.splitlines()[0].startswith(f"vfstrace: error: --scheduler {addr}: cannot reach a Dask scheduler")
    assert len(o.stderr.splitlines()) == 1, o.stderr


def test_sql_counts_by_kind_and_verdict_equal_analyze(fleet_dir, analyzed):
    o = invoke(["sql", "SELECT trace, kind_name, count(*) AS n FROM events GROUP BY ALL", fleet_dir, "--json"])
    assert o.exit_code == 0, o.output
    got: dict = {}
    for r in json.loads(o.stdout):
        got.setdefault(r["trace"], {})[r["kind_name"]] = r["n"]
    assert got == {p: a["by_kind"] for p, a in analyzed.items()}
    o = invoke(["sql", "SELECT trace, verdict, sum(count)::BIGINT AS n FROM verdicts GROUP BY ALL", fleet_dir,
                "--json"])
    assert o.exit_code == 0, o.output
    got = {}
    for r in json.loads(o.stdout):
        got.setdefault(r["trace"], {})[r["verdict"]] = r["n"]
    assert got == {p: a["verdicts"]["counts"] for p, a in analyzed.items() if a["verdicts"]["counts"]}


def test_sql_escapes_trace_strings_and_json_keeps_them(tmp_path):
    p = evil_trace(tmp_path)
    q = "SELECT trace, comm, path FROM events WHERE path <> '' ORDER BY event_id"
    o = cli("sql", q, p)
    assert o.returncode == 0, o.stderr
    assert_terminal_safe(o.stdout, "sql")
    assert term(EVIL_PATH) in o.stdout
    j = cli("sql", q, p, "--json")
    assert EVIL_PATH in [r["path"] for r in json.loads(j.stdout)]
    f = cli("fleet", p)
    assert f.returncode == 0, f.stderr
    assert_terminal_safe(f.stdout, "fleet")
    assert term(EVIL_NAME) in f.stdout  # the first race's name (a walk's race has no path), escaped


def test_sql_reads_only_the_traces(fleet_dir, tmp_path):
    for q in (f"COPY (SELECT * FROM events) TO '{tmp_path / 'out.csv'}'", "SELECT * FROM read_csv('/etc/passwd')",
              f"ATTACH '{tmp_path / 'x.db'}' AS x", "SET enable_external_access = true", "SELEC 1"):
        o = run_command("sql", fleet_dir, tmp_path / "out", argv=["sql", q, str(fleet_dir)])
        assert o.exit_code == 2 and len(o.stderr.splitlines()) == 1 and o.stderr.startswith("vfstrace: error: sql: ")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not list((tmp_path / "out").iterdir())
