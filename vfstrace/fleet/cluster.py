"""`fleet --scheduler`: the same rows, one Dask task per trace on a dask.distributed cluster.

Why Dask: a fleet larger than one machine's disks or cores. Each task runs
vfstrace.fleet.row.fleet_row() on a worker, which reads the trace there (the
verdict step runs where the trace's events are), so every worker must see
the trace paths under the names given (a shared file system, or the same
layout on every worker) and have this vfstrace installed. Rows come back
in the order of the traces, as the local run gives them.
"""

from __future__ import annotations

import re

from vfstrace.errors import MissingDependency, VfstraceError
from vfstrace.store.files import _one_line

_ADDRESS = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
CONNECT_SECONDS = 10


def check_address(address: str) -> str:
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise VfstraceError(f"--scheduler: {address!r} is not a scheduler address: give tcp://HOST:PORT", exit_code=2)
    return address


def rows_on_cluster(address: str, paths: list[str], *, connect_s: float = CONNECT_SECONDS) -> list[dict]:
    """fleet_row() of every path, run as one task each on the scheduler at ``address``."""
    check_address(address)
    try:
        from distributed import Client
    except ImportError:
        raise MissingDependency("--scheduler needs dask.distributed: pip install 'vfstrace[fleet]'") from None
    from vfstrace.fleet.row import fleet_row

    try:
        client = Client(address, timeout=connect_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise VfstraceError(f"--scheduler {address}: cannot reach a Dask scheduler ({_one_line(e)})",
                            exit_code=2) from None
    try:
        # pure=False: the same path read twice is two readings (the file may have changed).
        futures = client.map(fleet_row, paths, pure=False)
        return client.gather(futures)
    finally:
        client.close()
