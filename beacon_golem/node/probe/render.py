"""The probe report as Rich tables for a terminal."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from beacon_golem.core.probe import ProbeReport

STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def _status(status: str) -> Text:
    return Text(status.upper(), style=f"bold {STYLE.get(status, '')}")


def report_tables(report: ProbeReport) -> Group:
    checks = Table(title="Machine checks", title_justify="left", expand=False)
    checks.add_column("Check", no_wrap=True)
    checks.add_column("Result", no_wrap=True)
    checks.add_column("Value", overflow="fold")
    checks.add_column("Reason", overflow="fold")
    for c in report.checks:
        checks.add_row(c.title, _status(c.status), c.value or "-", c.reason)

    runtimes = Table(title="Runtimes on this machine", title_justify="left", expand=False)
    runtimes.add_column("Runtime", no_wrap=True)
    runtimes.add_column("Result", no_wrap=True)
    runtimes.add_column("Runs on", no_wrap=True)
    runtimes.add_column("Why", overflow="fold")
    for r in report.runtimes:
        runtimes.add_row(r.runtime, _status(r.status), (r.accelerator or "-").upper(), "; ".join(r.reasons))

    summary = Text.assemble("Overall: ", _status(report.status), f"  (beacon-golem {report.beacon_version})")
    return Group(checks, Text(""), runtimes, Text(""), summary)


def print_report(report: ProbeReport, console: Console | None = None) -> None:
    (console or Console()).print(report_tables(report))
