"""`python -m beacon_golem.sandbox`: serve an offline Golem network until Ctrl-C or SIGTERM.

It prints, as `export NAME=VALUE` lines a shell can eval, what a requestor needs to use it
(YAGNA_API_URL, YAGNA_APPKEY, BEACON_GOLEM_REGISTRY_URL, BEACON_GOLEM_IMAGE, ...), then serves.
The lines also go to `--env-file` (written once the API answers), for a shell to source:

    python -m beacon_golem.sandbox --providers 3 --fault vpn-flaky --env-file sandbox.env &
    while [ ! -s sandbox.env ]; do sleep 0.2; done; . ./sandbox.env
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import TextIO

import structlog
from pydantic import SecretStr, ValidationError

from beacon_golem.core.config import load_settings
from beacon_golem.sandbox.faults import Fault, FaultSettings
from beacon_golem.sandbox.image import ImageError, build_image, write_tiny_model
from beacon_golem.sandbox.payment import PaymentSettings
from beacon_golem.sandbox.providers import ProviderSettings
from beacon_golem.sandbox.registry import RegistryImage
from beacon_golem.sandbox.server import DEFAULT_IMAGE_TAG, Sandbox, SandboxConfig

log = structlog.get_logger(__name__)


def _faults(values: list[str]) -> list[Fault]:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    known = {f.value: f for f in Fault}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault {unknown[0]!r}; known: {', '.join(known)}")
    return list(dict.fromkeys(known[n] for n in names))


def _fault_settings(values: list[str]) -> FaultSettings:
    pairs = {}
    for value in values:
        name, sep, number = value.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in FaultSettings.model_fields:
            known = ", ".join(FaultSettings.model_fields)
            raise argparse.ArgumentTypeError(f"--fault-setting {value!r}: give NAME=VALUE, NAME one of {known}")
        pairs[name] = number.strip()
    return FaultSettings.model_validate(pairs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="beacon golem sandbox",
        description="An offline Golem network on loopback: yagna's REST API, scripted GPU providers, "
        "VMs that run the node image, a VPN and an image registry.",
    )
    p.add_argument("--providers", type=int, default=3, help="how many providers offer themselves (default 3)")
    p.add_argument("--port", type=int, default=0, help="port of the API (default: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="switch a fault on (repeatable, or comma-separated): " + ", ".join(f.value for f in Fault),
    )
    p.add_argument(
        "--fault-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="tune a fault (repeatable): "
        + ", ".join(f"{k}={v.default}" for k, v in FaultSettings.model_fields.items()),
    )
    p.add_argument("--seed", type=int, default=0, help="names the market: providers, GPUs, prices (default 0)")
    p.add_argument("--subnet", default="public", help="the providers' subnet (default public)")
    p.add_argument("--app-key", default=None, help="the app key to require (default: a random one)")
    p.add_argument("--workdir", type=Path, default=None, help="where VMs keep their files (default: a temp dir)")
    p.add_argument(
        "--image-tag", default=DEFAULT_IMAGE_TAG, help=f"the tag the registry serves (default {DEFAULT_IMAGE_TAG})"
    )
    p.add_argument("--runtime", default="llamacpp", help="the image's runtime (default llamacpp)")
    p.add_argument(
        "--bake-model", type=Path, default=None, help="a model file to bake into the image (default: the tiny model)"
    )
    p.add_argument("--debit-note-interval", type=float, default=10.0, help="seconds between debit notes (default 10)")
    p.add_argument("--env-file", type=Path, default=None, help="also write the export lines to this file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def exports(env: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


async def serve(config: SandboxConfig, images: list[RegistryImage], out: TextIO, env_file: Path | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Sandbox(config, images=images) as sandbox:
            lines = exports(sandbox.env())
            if env_file is not None:
                part = env_file.with_name(env_file.name + ".part")
                part.write_text(lines)
                part.chmod(0o600)  # it holds the app key
                part.replace(env_file)
            out.write(lines)
            out.flush()
            await stop.wait()
            log.info("sandbox stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        if not 1 <= args.providers <= 200:
            raise argparse.ArgumentTypeError("--providers: give 1 to 200")
        faults = _faults(args.fault)
        config = SandboxConfig(
            host=args.host,
            port=args.port,
            app_key=SecretStr(args.app_key) if args.app_key else None,
            faults=faults,
            workdir=args.workdir,
            image_tag=args.image_tag,
            providers=ProviderSettings(count=args.providers, seed=args.seed, subnet=args.subnet),
            payment=PaymentSettings(debit_note_interval_s=args.debit_note_interval),
            fault_settings=_fault_settings(args.fault_setting),
        )
    except (argparse.ArgumentTypeError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        else:
            message = str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
    try:
        # The node image serves the generated tiny model unless told otherwise, as the embedded default does.
        model = args.bake_model or write_tiny_model(load_settings().data_dir / "sandbox" / "beacon-tiny.gguf")
        data = build_image(args.runtime, model)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(config, [RegistryImage(tag=args.image_tag, data=data)], sys.stdout, args.env_file))
    except OSError as exc:  # the port is taken, say
        print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
