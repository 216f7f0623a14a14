"""The options that say how to read a Project Beacon JobSpec, declared once (run, runs plan, import-jobspec)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from beacon_golem.requestor.work.beacon_import import JobSpecOptions, load_model_map
from beacon_golem.requestor.work.jobspec_signature import load_trust_list

Questions = Annotated[
    list[Path] | None,
    typer.Option("--questions", help="JobSpec: questions file the job's question ids resolve through (repeat)"),
]
ModelMap = Annotated[
    list[str] | None,
    typer.Option("--model-map", help="JobSpec: BEACON_ID=NODE_MODEL, what a node serves for a Beacon model (repeat), or a YAML/JSON file"),
]
Trust = Annotated[
    Path | None, typer.Option("--trust", help="JobSpec: Beacon trusted-keys file; the signing key must be trusted in it")
]
RequireSignature = Annotated[
    bool, typer.Option("--require-signature", help="JobSpec: refuse an unsigned job (default: run it with a warning)")
]


def jobspec_options(
    questions: list[Path] | None, model_map: list[str] | None, trust: Path | None, require_signature: bool
) -> JobSpecOptions:
    """The options as given, files read: a bad map or trust file is one line (exit 2)."""
    return JobSpecOptions(
        questions=list(questions) if questions else None,
        model_map=load_model_map(model_map),
        trusted=load_trust_list(trust) if trust is not None else None,
        require_signature=require_signature,
    )
