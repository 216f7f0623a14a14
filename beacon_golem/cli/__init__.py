"""The `beacon` command: parse, call one function, print. One module per command group."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from beacon_golem.core.errors import BeaconError, one_line
from beacon_golem.core.log import configure_logging

app = typer.Typer(
    name="beacon",
    help="Run Project Beacon LLM benchmarks on local nodes, static nodes or rented Golem GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    log_level: str = typer.Option("warning", "--log-level", envvar="BEACON_LOG_LEVEL", help="debug, info, warning, error"),
    log_format: str = typer.Option("auto", "--log-format", envvar="BEACON_LOG_FORMAT", help="auto, json or console"),
) -> None:
    configure_logging(log_level, log_format)


def _register() -> None:
    """Import every command module: each registers its commands on `app`."""
    from beacon_golem.cli import bench, compare, golem, images, jobspec, node, pilot, probe, report, router, run, runs  # noqa: F401


def fail(message: str, code: int = 1) -> None:
    """Print one clear line to stderr and exit; never a traceback."""
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except BeaconError as exc:
        fail(str(exc), exc.exit_code)
    except ValidationError as exc:
        fail(one_line(exc), 2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
