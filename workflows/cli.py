"""The ``digipat`` command line: one parser; each room of ``workflows`` registers its commands.

Every room registers the same way, ``register(subparsers)``, and each of its parsers sets
``func(args) -> int``:

=========================  ===========================================================
``workflows.flow.cli``     ``flow`` (image → lumen → mesh → blood flow), ``synth``
``workflows.dose.cli``     ``dose`` (Monte Carlo scenario or CT protocol), ``phantom``, ``ctdi``
``workflows.study.cli``    ``study run`` (geometric sensitivity studies)
``workflows.demo``         ``demo`` (the whole digital patient, ending in a report)
``workflows.segment.cli``  ``segment synth | train | predict | evaluate`` (the U-Net)
``workflows.labels.cli``   ``labels instances | pq`` (semantic / instance / panoptic maps, PQ)
``workflows.topology.cli`` ``topology`` (Betti numbers, skeleton graph, clDice, tree repair)
``workflows.measure.cli``  ``measure thickness | distance | agreement | prevalence``
``workflows.monitor.cli``  ``monitor baseline | check`` (drift of incoming scans)
=========================  ===========================================================

Errors. Every failure prints one line ``digipat: error: ...`` to standard error and exits
non-zero: 1 for bad input and for what the machine refused (a missing file, an output path
that is a file, permission denied, a missing ``mpiexec``), 3 for an internal error (a bug:
please report it with the traceback; the one exception is ``monitor check``, whose exit 3
means drift was found, printed as ``DRIFT: ...`` on standard output), 130 on Ctrl-C (finished stages are kept); argparse
usage errors exit 2. ``--debug`` (anywhere on the line) prints the traceback as well.
"""

from __future__ import annotations

import argparse
import sys
import traceback

__all__ = ["build_parser", "main", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED"]

EXIT_INPUT = 1
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``digipat`` parser with every room's subcommands."""
    from workflows import demo
    from workflows.dose import cli as dose_cli
    from workflows.flow import cli as flow_cli
    from workflows.labels import cli as labels_cli
    from workflows.measure import cli as measure_cli
    from workflows.monitor import cli as monitor_cli
    from workflows.segment import cli as segment_cli
    from workflows.study import cli as study_cli
    from workflows.topology import cli as topology_cli

    p = argparse.ArgumentParser(
        prog="digipat",
        description="digipat: a segmented medical image becomes a digital patient "
                    "(vessel blood flow with FEniCSx; CT organ dose with a Monte Carlo photon-transport engine).",
    )
    p.add_argument("--debug", action="store_true", help="on an error, print the Python traceback too "
                                                        "(accepted anywhere on the command line)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for room in (flow_cli, demo, dose_cli, study_cli, segment_cli, labels_cli, topology_cli, measure_cli, monitor_cli):
        room.register(sub)
    return p


def _describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception escaping a command."""
    if isinstance(exc, ValueError):  # every digipat input error derives from ValueError
        return str(exc), EXIT_INPUT
    if isinstance(exc, FileExistsError) or isinstance(exc, NotADirectoryError):
        return (f"{exc.filename or exc}: a file is in the way where a folder is needed "
                "(give --out a new or existing folder, not a file)"), EXIT_INPUT
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc} (choose a folder you can write to)", EXIT_INPUT
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename or exc} (check the path, or that the program is installed)", EXIT_INPUT
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''} ({type(exc).__name__})".rstrip(), EXIT_INPUT
    return (f"internal error {type(exc).__name__}: {exc} (a bug in digipat; rerun with --debug and "
            "report the traceback)"), EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    """Run ``digipat`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [x for x in args if x != "--debug"]
    a = build_parser().parse_args(args)
    try:
        return a.func(a)
    except KeyboardInterrupt:
        print("digipat: interrupted (finished stages are kept; rerun to continue)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 (the command line's last line of defence)
        if debug:
            traceback.print_exc()
        message, status = _describe(exc)
        print(f"digipat: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
