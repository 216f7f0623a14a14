"""`beacon compare`: which runtime for this model on this machine? and `beacon compare show RUN [--json]`.

Parses the runtimes, their settings and the sweep (the same options as `beacon bench`), calls
`requestor/work/compare.py:compare_fleet`, prints a line per runtime as it is measured, then the
answer per machine; `show` reads a stored comparison back (reports/comparison.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from beacon_golem.cli import app
from beacon_golem.cli.bench import build_profile, parse_concurrency
from beacon_golem.cli.golem_options import Budget, Image, ImageHash, MaxPrice
from beacon_golem.core.bench import PromptSpec
from beacon_golem.core.compare import RUNTIME_KINDS, ComparisonPlan, RuntimeVariant
from beacon_golem.core.config import load_settings
from beacon_golem.core.errors import UsageError, one_line
from beacon_golem.core.metrics import SLO
from beacon_golem.core.profiles import PROFILE_KINDS, OverloadPolicy
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.core.suite import PerfSection
from beacon_golem.reports.comparison import comparison_json, machine_notes, machine_rows
from beacon_golem.requestor.fleets.static import StaticNodeSpec
from beacon_golem.requestor.store.comparison import Comparison, comparison_from_store
from beacon_golem.requestor.store.rows import RunRow
from beacon_golem.requestor.store.store import Store, default_db_path
from beacon_golem.requestor.work.compare import compare_fleet
from beacon_golem.requestor.work.driver import FleetChoice, fleet_kind, golem_options

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    """`RUNTIME=VALUE` options, the runtime checked."""
    pairs = []
    for text in values or []:
        runtime, sep, value = text.partition("=")
        if not sep or runtime not in RUNTIME_KINDS:
            raise UsageError(f"{option} {text!r}: give RUNTIME=VALUE with RUNTIME one of {', '.join(RUNTIME_KINDS)}")
        pairs.append((runtime, value))
    return pairs


def build_variants(
    runtimes: str,
    *,
    model: str | None,
    model_for: list[str] | None,
    common: RuntimeSettings,
    per_runtime: dict[str, RuntimeSettings],
) -> list[RuntimeVariant]:
    """The `--runtimes` list with each variant's model and settings: its own `:key=value` settings over
    the `--RUNTIME-...` flags over the flags for every runtime (`--parallel`, `--ctx-size`)."""
    models = dict(_pairs(model_for, "--model-for"))
    variants = []
    for text in [t for t in runtimes.split(",") if t.strip()]:
        variant = RuntimeVariant.parse(text)
        base = RuntimeSettings.model_validate({k: v for k, v in common.given().items()
                                               if k not in common.unsupported(variant.runtime)})  # fmt: skip
        settings = base.merged(per_runtime.get(variant.runtime, RuntimeSettings())).merged(variant.settings)
        settings.check_for(variant.runtime)
        chosen = variant.model or models.get(variant.runtime) or model
        variants.append(variant.model_copy(update={"settings": settings, "model": chosen}))
    if not variants:
        raise UsageError("--runtimes: name at least one runtime (ollama, dmr, vllm, llamacpp)")
    return variants


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def machine_table(comparison: Comparison) -> list[Table]:
    tables = []
    c = comparison.plan.beacon_concurrency
    for m in comparison.machines:
        table = Table(title=f"{m.machine} ({m.gpu or 'no GPU'}): recommended {m.recommended or 'none'}", title_justify="left")
        for col in ("runtime", "status", "best tok/s", "TTFT p50 c=1", f"tok/s c={c}", "cold start s", "load s",
                    "GLM/1M tok", "verdict"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("runtime", "status", "verdict") else "right")
        for r in machine_rows(m, comparison):
            best = r["best"]
            table.add_row(
                r["variant"], r["status"], _fmt(best.output_throughput if best else None),
                _fmt(r["at_1"].ttft_p50_ms if r["at_1"] else None), _fmt(r["at_beacon"].output_throughput if r["at_beacon"] else None),
                _fmt(r["cold_start_s"], 2), _fmt(r["model_load_s"], 2), _fmt(r["glm_per_mtok"], 4),
                ("RECOMMENDED: " if r["recommended"] else "") + r["reason"],
            )  # fmt: skip
        notes = machine_notes(m)
        if notes:
            table.caption = "; ".join(notes)
        tables.append(table)
    return tables


compare_app = typer.Typer(
    help="Compare inference runtimes on the same machines: sweep, cold start, GLM per million tokens, a recommendation.",
    invoke_without_command=True,
)
app.add_typer(compare_app, name="compare")


@compare_app.callback()
def compare(
    ctx: typer.Context,
    runtimes: str = typer.Option(None, help="Comma list: ollama, dmr, vllm, llamacpp; a runtime twice needs its own "
                                 "settings, e.g. llamacpp:parallel=1,llamacpp:parallel=4"),  # fmt: skip
    model: str = typer.Option(None, help="Model for every runtime (GGUF file for llama.cpp, name for Ollama/DMR, "
                              "Hugging Face id or directory for vLLM)"),  # fmt: skip
    model_for: list[str] = typer.Option(None, "--model-for", help="RUNTIME=MODEL for one runtime (repeat)"),
    fleet: str = typer.Option("local", help="local, static or golem"),
    nodes: int = typer.Option(None, help="local/golem: how many machines [default: 1]"),
    node: list[str] = typer.Option(None, "--node", help="static: a node URL (started with `beacon node up`), @REGION optional"),
    db: Path = typer.Option(None, help="Run store [default: <data dir>/beacon.db]"),
    # the sweep, as beacon bench
    profile: str = typer.Option("sweep", help=f"Load profile: {', '.join(PROFILE_KINDS)}"),
    concurrency: str = typer.Option(None, help="Sweep levels (default 1,2,4,...,256), or N for one level"),
    rate: float = typer.Option(None, help="rate/poisson: requests per second"),
    burstiness: float = typer.Option(1.0, help="poisson: gamma shape"),
    num_prompts: int = typer.Option(100, help="Requests per step"),
    duration: float = typer.Option(None, help="Seconds per step"),
    warmup: int = typer.Option(0, help="Requests before each step, not counted"),
    input_len: int = typer.Option(128, help="Prompt tokens"),
    output_len: int = typer.Option(128, help="Output tokens (fixed with ignore_eos where the runtime takes it)"),
    seed: int = typer.Option(0, help="Seed for prompts and arrivals"),
    slo_ttft_ms: float = typer.Option(None, "--slo-ttft-ms", help="SLO: TTFT at most this many ms"),
    slo_tpot_ms: float = typer.Option(None, "--slo-tpot-ms", help="SLO: TPOT at most this many ms"),
    slo_e2el_ms: float = typer.Option(None, "--slo-e2el-ms", help="SLO: E2EL at most this many ms"),
    slo_share: float = typer.Option(0.9, help="A step meets the SLOs when this share of its requests meets them"),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop a step and the sweep on overload"),
    where: str = typer.Option("node", help="Load generated on the node (node) or here through its URL (requestor)"),
    # what else is measured
    idle_s: float = typer.Option(0.0, help="Seconds idle before one more timed request (0: not measured; DMR unloads after 300)"),
    beacon_concurrency: int = typer.Option(4, help="The concurrency Beacon's jobs use on a node (a suite's per_node_concurrency)"),
    glm_per_hour: float = typer.Option(None, help="local/static: the machine's price, for GLM per million tokens"),
    ready_timeout: float = typer.Option(900.0, help="Seconds a runtime may take to start and load its model"),
    keep_page_cache: bool = typer.Option(False, "--keep-page-cache", help="Do not drop the page cache before each "
                                         "start (the default drops it where the node runs as root)"),  # fmt: skip
    # runtime settings (docs/benchmarks.md)
    parallel: int = typer.Option(None, help="Every runtime: requests served at once (--parallel, OLLAMA_NUM_PARALLEL, --max-num-seqs)"),
    ctx_size: int = typer.Option(None, help="Every runtime: context (--ctx-size, OLLAMA_CONTEXT_LENGTH, --max-model-len)"),
    llamacpp_parallel: int = typer.Option(None, help="llama.cpp --parallel"),
    llamacpp_ctx_size: int = typer.Option(None, help="llama.cpp --ctx-size (shared by the slots)"),
    dmr_parallel: int = typer.Option(None, help="Docker Model Runner: --parallel in LLAMA_ARGS"),
    dmr_ctx_size: int = typer.Option(None, help="Docker Model Runner: --ctx-size in LLAMA_ARGS"),
    ollama_num_parallel: int = typer.Option(None, help="Ollama OLLAMA_NUM_PARALLEL (Ollama's own default: 1)"),
    ollama_max_queue: int = typer.Option(None, help="Ollama OLLAMA_MAX_QUEUE (default 512)"),
    ollama_keep_alive: str = typer.Option(None, help="Ollama OLLAMA_KEEP_ALIVE (this node's default: -1, never unload)"),
    vllm_quantization: str = typer.Option(None, help="vLLM --quantization (fp8, ...)"),
    vllm_max_num_seqs: int = typer.Option(None, help="vLLM --max-num-seqs"),
    vllm_gpu_memory_utilization: float = typer.Option(None, help="vLLM --gpu-memory-utilization"),
    vllm_max_model_len: int = typer.Option(None, help="vLLM --max-model-len"),
    runtime_arg: list[str] = typer.Option(None, "--runtime-arg", help="RUNTIME=ARG: one more argument for a runtime (repeat)"),
    runtime_env: list[str] = typer.Option(None, "--runtime-env", help="RUNTIME=NAME=VALUE for a runtime's environment (repeat)"),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON at the end"),
    budget: Budget = None,
    max_price_glm_per_hour: MaxPrice = None,
    image: Image = None,
    image_hash: ImageHash = None,
) -> None:
    """Benchmark each runtime on each machine in turn (same prompts, load and output lengths); store it as one run."""
    if ctx.invoked_subcommand is not None:
        return
    if not runtimes:
        raise UsageError("give --runtimes (e.g. --runtimes ollama,dmr,vllm,llamacpp), or `beacon compare show RUN`")
    kind = fleet_kind(fleet)
    if node and kind != "static":
        raise UsageError("--node URL is for --fleet static")
    if where not in ("node", "requestor"):
        raise UsageError(f"--where {where!r}: choose node or requestor")

    def settings_of(**values: Any) -> RuntimeSettings:
        return RuntimeSettings.model_validate({k: v for k, v in values.items() if v is not None})

    try:
        per_runtime = {
            "llamacpp": settings_of(parallel=llamacpp_parallel, ctx_size=llamacpp_ctx_size),
            "dmr": settings_of(parallel=dmr_parallel, ctx_size=dmr_ctx_size),
            "ollama": settings_of(parallel=ollama_num_parallel, max_queue=ollama_max_queue, keep_alive=ollama_keep_alive),
            "vllm": settings_of(quantization=vllm_quantization, parallel=vllm_max_num_seqs,
                                gpu_memory_utilization=vllm_gpu_memory_utilization, ctx_size=vllm_max_model_len),
        }  # fmt: skip
        for runtime, arg in _pairs(runtime_arg, "--runtime-arg"):
            per_runtime[runtime] = per_runtime[runtime].merged(RuntimeSettings(extra_args=[arg]))
        for runtime, pair in _pairs(runtime_env, "--runtime-env"):
            name, sep, value = pair.partition("=")
            if not sep:
                raise UsageError(f"--runtime-env {runtime}={pair}: give RUNTIME=NAME=VALUE")
            per_runtime[runtime] = per_runtime[runtime].merged(RuntimeSettings(env={name: value}))
        common = settings_of(parallel=parallel, ctx_size=ctx_size)
        variants = build_variants(runtimes, model=model, model_for=model_for, common=common, per_runtime=per_runtime)
        overload = OverloadPolicy(enabled=early_stop)
        chosen = build_profile(profile, parse_concurrency(concurrency), rate, burstiness, num_prompts or None, duration,
                               warmup, seed, overload)  # fmt: skip
        slo = SLO(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms, e2el_ms=slo_e2el_ms)
        section = PerfSection(profile=chosen, prompts=PromptSpec(input_len=input_len, output_len=output_len, seed=seed),
                              slo=slo if slo.given() else None, where=where, parallel=False)  # fmt: skip
        plan = ComparisonPlan(variants=variants, beacon_concurrency=beacon_concurrency, idle_s=idle_s,
                              glm_per_hour=glm_per_hour, slo_share=slo_share, drop_page_cache=not keep_page_cache)  # fmt: skip
    except ValidationError as exc:
        raise UsageError(one_line(exc)) from None
    regions = [r for r in dict.fromkeys(StaticNodeSpec.parse(u).region for u in node or []) if r]
    # A comparison asks no region of its machines: on Golem its one label ("local") is dealt to every node.
    golem = golem_options(budget=budget, max_price_glm_per_hour=max_price_glm_per_hour, image=image, image_hash=image_hash,
                          label_regions=kind == "golem")  # fmt: skip
    choice = FleetChoice(kind=kind, nodes=nodes or 1, node_urls=node or [], parallel=parallel, regions=regions, golem=golem)
    if kind == "golem" and len({v.runtime for v in variants}) > 1:
        err.print("[yellow]note:[/] on Golem each runtime after the first needs an image that holds it "
                  "(docs/images.md, one image for a comparison)")  # fmt: skip

    say = err if as_json else out  # with --json, stdout holds the JSON alone

    def planned(store: Store, run: RunRow) -> None:
        say.print(f"run {run.run_id}  (comparing {', '.join(v.label for v in variants)}; store {store.path})")

    def listener(kind: str, d: dict[str, Any]) -> None:
        who = f"{d.get('machine')} {d.get('variant')}"
        if kind == "compare_switching":
            err.print(f"{who}: starting {d.get('runtime')} ({d.get('settings')})")
        elif kind == "trial_done":
            cold = d.get("cold_start_s")
            err.print(f"{who}: measured" + (f", cold start {cold:.2f} s" if isinstance(cold, float) else ""))
        elif kind in ("trial_failed", "trial_lost", "perf_failed"):
            err.print(f"[red]{who}: {kind.removeprefix('trial_').replace('_', ' ')}:[/] {d.get('reason')}")

    settings = load_settings()
    store, final, _ = asyncio.run(
        compare_fleet(settings, plan, section, choice, db=db, on_planned=planned, listener=listener,
                      ready_timeout_s=ready_timeout)  # fmt: skip
    )
    comparison = comparison_from_store(store, final.run_id)
    if comparison is not None:
        if as_json:
            typer.echo(json.dumps(comparison_json(comparison), indent=2))
        else:
            for table in machine_table(comparison):
                out.print(table)
    say.print(f"run {final.run_id} {final.status}; beacon compare show {final.run_id} --json; "
              f"beacon report {final.run_id} --html report.html")  # fmt: skip
    if final.status != "done":
        raise SystemExit(1)


@compare_app.command("show")
def show(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix of it, or 'latest'"),
    as_json: bool = typer.Option(False, "--json", help="Per node and runtime: runtime, started, cold_start_s, "
                                 "model_load_s, best_output_throughput, ttft_p50_ms_at_1, glm_per_million_tokens, "
                                 "recommended, reason"),  # fmt: skip
    db: Path = typer.Option(None, "--db", envvar="BEACON_DB", help="Run store [default: <data dir>/beacon.db]"),
) -> None:
    """A stored comparison: per machine and runtime, the figures and the recommendation."""
    with Store(db or default_db_path(), readonly=True) as store:
        run = store.find_run(run_id)
        comparison = comparison_from_store(store, run.run_id)
    if comparison is None:
        raise UsageError(f"run {run.run_id} is not a runtime comparison (beacon compare)")
    if as_json:
        typer.echo(json.dumps(comparison_json(comparison), indent=2))
        return
    for table in machine_table(comparison):
        out.print(table)
