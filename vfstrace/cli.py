"""The `vfstrace` command line.

Each command lives in the module named for what it does and is registered
here; any VfstraceError a command raises becomes one line on stderr and its
exit code.
"""

from __future__ import annotations

import faulthandler
import importlib
import sys

import click

from vfstrace import __version__, log
from vfstrace.errors import VfstraceError
from vfstrace.report.terminal import term

# (module, attribute) of every command; imported when the CLI starts.
COMMANDS = [
    ("vfstrace.vm.cli", "vm_group"),
    ("vfstrace.kernel.doctor", "doctor_cmd"),
    ("vfstrace.store.convert", "convert"),
    ("vfstrace.report.analyze", "analyze"),
    ("vfstrace.report.correlated", "report"),
    ("vfstrace.report.perfetto", "export"),
    ("vfstrace.watch", "watch_cmd"),
    ("vfstrace.watch", "record_cmd"),
    ("vfstrace.workload.simulate", "simulate_cmd"),
    ("vfstrace.workload.stress", "stress_cmd"),
    ("vfstrace.selftest.cli", "selftest_cmd"),
    ("vfstrace.fleet.cli", "fleet_cmd"),
    ("vfstrace.fleet.sql", "sql_cmd"),

]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vfstrace")
@click.option("-v", "--verbose", count=True,
              help="Say more on stderr: the full clang or verifier log when a BPF program does not build or load.")
def cli(verbose):
    """Watch path lookups and dentry pruning; find lookup/prune races.

    \b
    Start with `vfstrace doctor` to see what this kernel allows.
    `vfstrace -v COMMAND ...` shows the full logs behind an error.
    """
    log.setup(verbose)


for _mod, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_mod), _attr))


def main(argv=None):
    # A crash in native code (libbcc, numpy, pyarrow) then prints every
    # thread's Python stack on stderr, not only an exit status of 139.
    try:
        faulthandler.enable()
    except (OSError, ValueError, AttributeError):
        pass  # stderr without a file descriptor (embedded, tests)
    try:
        rv = cli.main(args=argv, prog_name="vfstrace", standalone_mode=False)
    except VfstraceError as e:
        # One line, whatever the message quotes from a trace or the command line.
        click.echo(f"vfstrace: error: {term(str(e))}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("vfstrace: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
