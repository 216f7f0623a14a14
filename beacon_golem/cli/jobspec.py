"""`beacon jobspec verify FILE`: a Project Beacon JobSpec's Ed25519 signature, checked as Beacon checks it."""

from __future__ import annotations

from pathlib import Path

import typer

from beacon_golem.cli import app
from beacon_golem.core.errors import UsageError

jobspec_app = typer.Typer(help="Project Beacon JobSpecs: check their signatures.", no_args_is_help=True)
app.add_typer(jobspec_app, name="jobspec")

#: Exit codes of `beacon jobspec verify`.
EXIT_VALID, EXIT_INVALID, EXIT_UNSIGNED = 0, 1, 3


@jobspec_app.command("verify")
def verify(
    jobspec: Path = typer.Argument(..., help="Project Beacon JobSpec (JSON; a cross-region wrapper too)"),
    trust: Path = typer.Option(None, "--trust", help="Beacon trusted-keys file: JSON [{kid, public_key, status, not_before, not_after}]"),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON"),
) -> None:
    """Which of Beacon's schemes (V1, RAW, ZEROED, STRIPPED) the signature verifies under, with which key.

    Exit 0: valid (and trusted, with --trust); 1: invalid, or a key the trust list does not
    trust; 3: unsigned; 2: the file or the trust list cannot be read.
    """
    from beacon_golem.core.suite import read_text_file
    from beacon_golem.core.untrusted import loads_json
    from beacon_golem.requestor.work.beacon_import import is_jobspec
    from beacon_golem.requestor.work.jobspec_signature import load_trust_list, verify_jobspec_signature

    trusted = load_trust_list(trust) if trust is not None else None
    data = loads_json(read_text_file(jobspec), what=str(jobspec))
    if not is_jobspec(data):
        raise UsageError(f"{jobspec}: not a Project Beacon JobSpec (no 'benchmark', no 'jobspec')")
    body = data["jobspec"] if "benchmark" not in data else data
    verdict = verify_jobspec_signature(body, trusted=trusted)
    if as_json:
        typer.echo(verdict.model_dump_json(indent=2))
    else:
        typer.echo(f"{jobspec}: {verdict.line()}")
        for check in verdict.checks:
            state = "verifies" if check.verified else (f"cannot be built: {check.error}" if check.error else "does not verify")
            typer.echo(f"  {check.scheme:<8} {state}")
    if verdict.status == "unsigned":
        raise SystemExit(EXIT_UNSIGNED)
    if not verdict.acceptable:
        raise SystemExit(EXIT_INVALID)
