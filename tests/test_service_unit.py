"""examples/vfstrace-watch.service parses: `systemd-analyze verify` accepts it.

verify also checks that ExecStart='s program exists, and the example names
where a user installs vfstrace (/opt/vfstrace), which this checkout does not
have. So the copy verified is the example with only that path changed, to
the vfstrace this checkout's venv installed; every other line is verified
as shipped.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, need

UNIT = ROOT / "examples" / "vfstrace-watch.service"
SHIPPED = "/opt/vfstrace/bin/vfstrace"


def test_the_service_example_verifies(tmp_path):
    need(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (Debian's systemd)")
    installed = Path(sys.executable).parent / "vfstrace"
    need(installed.exists(), f"needs the console script `make setup` installs ({installed})")
    text = UNIT.read_text()
    assert text.count(SHIPPED) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(SHIPPED, str(installed)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr + r.stdout


def test_the_service_runs_watch_with_metrics_on_loopback_and_a_bounded_capability_set():
    lines = [x.strip() for x in UNIT.read_text().splitlines() if x.strip() and not x.lstrip().startswith("#")]
    kv = {}
    for x in lines:
        if "=" in x:
            k, v = x.split("=", 1)
            kv[k] = v
    argv = kv["ExecStart"].split()
    assert argv[:2] == [SHIPPED, "watch"] and "-o" in argv
    assert argv[argv.index("--metrics") + 1].startswith("127.0.0.1:")
    assert kv["Restart"] == "on-failure"
    assert set(kv["CapabilityBoundingSet"].split()) == {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"}
    assert kv["StandardOutput"] == kv["StandardError"] == "journal"
