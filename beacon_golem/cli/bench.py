"""`beacon bench`: load a node (or a runtime) and report vLLM-style serving metrics per step."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from beacon_golem.cli import app, fail
from beacon_golem.cli.golem_options import Budget, Image, ImageHash, MaxPrice
from beacon_golem.core.bench import BenchResult, PromptSpec, StepResult
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import UsageError
from beacon_golem.core.metrics import SLO
from beacon_golem.core.profiles import (
    DEFAULT_SWEEP,
    PROFILE_KINDS,
    ConcurrencyProfile,
    OverloadPolicy,
    PoissonProfile,
    Profile,
    RateProfile,
    SweepProfile,
    SynchronousProfile,
)
from beacon_golem.node.loadgen.generator import ProgressEvent
from beacon_golem.node.loadgen.run_bench import run_bench
from beacon_golem.node.loadgen.target import Target
from beacon_golem.node.runtimes import RUNTIME_NAMES

out = Console()
err = Console(stderr=True)


def parse_concurrency(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"--concurrency {text}: give a number or a comma-separated list like 1,2,4") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--concurrency {text}: every level must be at least 1")
    return values


def build_profile(
    kind: str,
    concurrency: list[int] | None,
    rate: float | None,
    burstiness: float,
    num_prompts: int | None,
    duration: float | None,
    warmup: int,
    seed: int,
    overload: OverloadPolicy,
) -> Profile:
    common: dict[str, Any] = {
        "num_prompts": num_prompts,
        "duration_s": duration,
        "warmup": warmup,
        "seed": seed,
        "overload": overload,
    }
    if kind == "synchronous":
        return SynchronousProfile(**common)
    if kind == "concurrency":
        if not concurrency or len(concurrency) != 1:
            raise UsageError("--profile concurrency needs one --concurrency N")
        return ConcurrencyProfile(concurrency=concurrency[0], **common)
    if kind == "sweep":
        return SweepProfile(concurrencies=concurrency or list(DEFAULT_SWEEP), **common)
    cap = None
    if concurrency:
        if len(concurrency) != 1:
            raise UsageError(f"--profile {kind} takes one --concurrency (the in-flight cap)")
        cap = concurrency[0]
    if rate is None:
        raise UsageError(f"--profile {kind} needs --rate (requests per second; inf sends all at once)")
    if kind == "rate":
        return RateProfile(rate=rate, max_concurrency=cap, **common)
    if kind == "poisson":
        return PoissonProfile(rate=rate, burstiness=burstiness, max_concurrency=cap, **common)
    raise UsageError(f"--profile {kind}: choose one of {', '.join(PROFILE_KINDS)}")


def _ms(value: float) -> str:
    return f"{value:,.2f}"


def step_table(step: StepResult) -> Table:
    """One step as vLLM prints it: counts, throughputs, then each latency metric's statistics."""
    table = Table(title=f"step {step.step}: {step.step_label}", show_header=True, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("Successful requests", str(step.completed)),
        ("Failed requests", str(step.failed)),
        ("Benchmark duration (s)", f"{step.duration:.2f}"),
        ("Total input tokens", str(step.total_input_tokens)),
        ("Total generated tokens", str(step.total_output_tokens)),
        ("Request throughput (req/s)", f"{step.request_throughput:.2f}"),
    ]
    if step.request_goodput is not None:
        rows.append(("Request goodput (req/s)", f"{step.request_goodput:.2f}"))
    rows += [
        ("Output token throughput (tok/s)", f"{step.output_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{step.total_token_throughput:.2f}"),
        ("Peak concurrent requests", str(step.max_concurrent_requests)),
    ]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")):
        rows.append((f"{label} mean / median / p99 (ms)", " / ".join(
            _ms(getattr(step, f"{stat}_{name}_ms")) for stat in ("mean", "median", "p99")
        )))
    check = step.server_check
    if check.available and check.server_output_tokens is not None:
        pct = check.output_tokens_discrepancy_pct
        rows.append(("Server output tokens (discrepancy)", f"{check.server_output_tokens:.0f} ({pct:+.2f}%)" if pct is not None else f"{check.server_output_tokens:.0f}"))
    rows.append(("Client CPU (one core = 100%)", f"{step.client.cpu_util:.0%}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _short(step: StepResult) -> str:
    if step.mode == "concurrency":
        return f"c={step.max_concurrency}"
    cap = f" c<={step.max_concurrency}" if step.max_concurrency else ""
    return f"{step.request_rate}/s{cap}"


def summary_table(result: BenchResult) -> Table:
    """One row per step; latencies in ms."""
    table = Table(title="sweep (latencies in ms)", title_justify="left")
    for col in ("step", "ok/fail", "req/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "E2EL p99", "srv Δ%"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for s in result.steps:
        pct = s.server_check.output_tokens_discrepancy_pct
        table.add_row(
            _short(s) + (" !" if s.overloaded else ""), f"{s.completed}/{s.failed}", f"{s.request_throughput:.1f}",
            f"{s.output_throughput:.0f}", f"{s.median_ttft_ms:.1f}", f"{s.p99_ttft_ms:.1f}", f"{s.median_tpot_ms:.2f}",
            f"{s.p99_e2el_ms:.1f}", "" if pct is None else f"{pct:+.1f}",
        )  # fmt: skip
    if any(s.overloaded for s in result.steps):
        table.caption = "! overloaded: the sweep stopped there"
    return table


def write_result(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        # vLLM's --append-result layout: one flat result per line.
        text = "".join(json.dumps(s.to_vllm_dict()) + "\n" for s in result.steps)
    else:
        text = json.dumps(result.to_json_dict(), indent=2) + "\n"
    path.write_text(text)


class ProgressView:
    """Maps the load generator's progress events onto a rich progress bar (at most 20 updates a second)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[int, Any] = {}
        self.last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.phase == "running" and now - self.last < 0.05 and event.completed + event.failed:
            return
        self.last = now
        task = self.tasks.get(event.step)
        total = event.total
        if task is None:
            task = self.tasks[event.step] = self.progress.add_task(event.label, total=total)
        done = event.completed + event.failed
        description = f"{event.label} [{event.phase}]" + (f" {event.failed} failed" if event.failed else "")
        if total is None and event.duration_s:
            self.progress.update(task, description=description, total=event.duration_s, completed=min(event.elapsed_s, event.duration_s))
        else:
            self.progress.update(task, description=description, completed=done if event.phase != "done" else total or done)


@app.command("bench")
def bench(
    url: str = typer.Option(None, "--url", help="Node shim URL or runtime URL (e.g. http://127.0.0.1:8080)"),
    local: bool = typer.Option(False, "--local", help="Start a local node (llama-server + shim) and benchmark it"),
    runtime: str = typer.Option(None, help=f"Runtime behind the URL ({', '.join(RUNTIME_NAMES)}); default: detected"),
    model: str = typer.Option(None, help="Model name; default: the first the server lists"),
    profile: str = typer.Option("sweep", help=f"Load profile: {', '.join(PROFILE_KINDS)}"),
    concurrency: str = typer.Option(None, help="Concurrency N; sweep: comma list (default 1,2,4,...,256); rate/poisson: in-flight cap"),
    rate: float = typer.Option(None, help="Requests per second for rate and poisson (inf: all at once)"),
    burstiness: float = typer.Option(1.0, help="Poisson burstiness (gamma shape; 1 = Poisson)"),
    num_prompts: int = typer.Option(100, help="Requests per step (0: no count limit; then give --duration)"),
    duration: float = typer.Option(None, help="Seconds per step (stops sending; in-flight requests finish)"),
    warmup: int = typer.Option(0, help="Requests before each step, not counted"),
    input_len: int = typer.Option(128, help="Prompt length in tokens (exact where the server tokenizes)"),
    output_len: int = typer.Option(128, help="Output tokens per request (fixed with ignore_eos where the runtime takes it)"),
    fixed_output: bool = typer.Option(True, "--fixed-output/--no-fixed-output", help="Send ignore_eos for a fixed output length"),
    prompt_file: Path = typer.Option(None, help="Prompts from a .jsonl (prompt/text/messages) or .txt file instead of random ones"),
    seed: int = typer.Option(0, help="Seed for prompts and Poisson arrivals"),
    temperature: float = typer.Option(None, help="Sampling temperature (default: the server's)"),
    slo_ttft_ms: float = typer.Option(None, "--slo-ttft-ms", help="Goodput SLO: TTFT at most this many ms"),
    slo_tpot_ms: float = typer.Option(None, "--slo-tpot-ms", help="Goodput SLO: TPOT at most this many ms"),
    slo_e2el_ms: float = typer.Option(None, "--slo-e2el-ms", help="Goodput SLO: E2EL at most this many ms"),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop a step and the sweep on overload"),
    max_error_rate: float = typer.Option(0.5, help="Overload: failed share of finished requests above this"),
    max_ttft_growth: float = typer.Option(20.0, help="Overload: median TTFT this many times the start's (or the first step's)"),
    max_server_queue: int = typer.Option(None, help="Overload: the runtime's queue gauge above this (llama-server requests_deferred, vLLM num_requests_waiting)"),
    out_path: Path = typer.Option(None, "--out", help="Write the result: .json (whole run, vLLM keys per step) or .jsonl (one vLLM result per line)"),
    detailed: bool = typer.Option(False, help="Keep per-request lists in the result (vLLM's --save-detailed)"),
    local_model: str = typer.Option(None, help="--local: model file (default: the generated tiny model)"),
    parallel: int = typer.Option(8, help="--local, --fleet local: the runtime's parallel slots"),
    via: str = typer.Option("shim", help="--local: send the load through the shim or straight to the runtime"),
    data_dir: Path = typer.Option(None, help="--local: node data directory"),
    fleet: str = typer.Option(None, "--fleet", help="Benchmark every node of a fleet (local, static, golem) as a stored run"),
    nodes: int = typer.Option(None, help="--fleet local/golem: how many nodes [default: 2]"),
    node: list[str] = typer.Option(None, "--node", help="--fleet static: node URL, optionally with @REGION (repeat)"),
    where: str = typer.Option("node", help="--fleet: load generated on each node (node) or here through its URL (requestor)"),
    db: Path = typer.Option(None, help="--fleet: run store [default: <data dir>/beacon.db]"),
    budget: Budget = None,
    max_price_glm_per_hour: MaxPrice = None,
    image: Image = None,
    image_hash: ImageHash = None,
) -> None:
    """Benchmark a node: load profile, streamed requests, TTFT/TPOT/ITL/E2EL, throughput, server cross-check."""
    if fleet is not None and (url is not None or local):
        raise UsageError("--fleet benchmarks the fleet's nodes: leave out --url and --local")
    if fleet is None and (url is None) == (not local):
        raise UsageError("give --url URL or --local")
    if via not in ("shim", "runtime"):
        raise UsageError("--via: shim or runtime")
    settings = load_settings()
    overload = OverloadPolicy(
        enabled=early_stop,
        max_error_rate=max_error_rate,
        max_ttft_growth=max_ttft_growth,
        max_server_queue=max_server_queue,
    )
    chosen = build_profile(
        profile, parse_concurrency(concurrency), rate, burstiness, num_prompts or None, duration, warmup, seed, overload
    )
    spec = PromptSpec(
        input_len=input_len,
        output_len=output_len,
        fixed_output=fixed_output,
        prompt_file=prompt_file,
        seed=seed,
        temperature=temperature,
    )
    slo = SLO(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms, e2el_ms=slo_e2el_ms)
    if fleet is not None:  # a stored run over a fleet: beacon_golem.requestor.work.perf_phase
        from beacon_golem.cli.bench_fleet import run_bench_fleet
        from beacon_golem.requestor.work.driver import golem_options

        golem = golem_options(budget=budget, max_price_glm_per_hour=max_price_glm_per_hour, image=image, image_hash=image_hash)
        final = run_bench_fleet(
            fleet=fleet, nodes=nodes, node_urls=node or [], where=where, db=db, profile=chosen, prompts=spec, slo=slo,
            model=model, detailed=detailed, runtime=runtime, local_model=local_model, parallel=parallel,
            golem=golem, out_path=out_path,
        )  # fmt: skip
        if final.status != "done":
            raise SystemExit(1)
        return
    token = settings.shim_token

    async def go() -> BenchResult:
        from beacon_golem.core.net import free_port
        from beacon_golem.node.launcher import LocalNode, NodeConfig

        node: LocalNode | None = None
        target_url = url
        if local:
            config = NodeConfig(
                model=local_model,
                port=free_port(),
                data_dir=data_dir or settings.data_dir / "bench-node",
                parallel=parallel,
                token=token,
            )
            with err.status("starting a local node (llama-server + shim)..."):
                node = LocalNode(config)
                await node.__aenter__()
            target_url = node.url if via == "shim" else node.runtime_url
            err.print(f"local node at {node.url} (runtime at {node.runtime_url}); load goes {'through the shim' if via == 'shim' else 'straight to the runtime'}")
        try:
            target = Target(url=target_url, runtime=runtime, model=model, token=SecretStr(token.get_secret_value()) if token else None)
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
            ) as bar:
                view = ProgressView(bar)

                def on_step(step: StepResult) -> None:
                    bar.console.print(step_table(step))
                    for warning in step.warnings:
                        bar.console.print(f"[yellow]warning:[/] {warning}")

                return await run_bench(target, chosen, spec, slo=slo, detailed=detailed, progress=view, on_step=on_step)
        finally:
            if node is not None:
                await node.stop()

    result = asyncio.run(go())
    if len(result.steps) > 1:
        out.print(summary_table(result))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    if result.stopped_early:
        err.print(f"[red]stopped early:[/] {result.stop_reason}")
    best = result.best_step()
    if best is not None:
        out.print(
            f"best: {best.step_label}: {best.output_throughput:,.1f} output tok/s, {best.request_throughput:.2f} req/s, "
            f"median TTFT {best.median_ttft_ms:.1f} ms ({result.target.runtime} via {result.target.via}, model {result.target.model})"
        )
    if out_path is not None:
        write_result(result, out_path)
        out.print(f"result written to {out_path}")
    if result.steps and all(s.completed == 0 for s in result.steps):
        first = next((e for s in result.steps for e in s.error_counts), "no request completed")
        fail(f"every request failed: {first}")
