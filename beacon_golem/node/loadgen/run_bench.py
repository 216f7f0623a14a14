"""`run_bench(target, profile, ...) -> BenchResult`: resolve the target, then run each step and measure it.

Per step: build its prompts (seeded per step, so no two steps share prompts or a cached
prefix), send the warmup, read the runtime's counters, run the load, read the counters
again, aggregate, cross-check. A sweep stops after the first step that overloaded the server
(stopped early within the step, or a median TTFT `max_ttft_growth` times the first step's).
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from beacon_golem.core.bench import BenchResult, ClientFigures, PromptSpec, StepResult, TargetSummary, rate_key
from beacon_golem.core.metrics import SLO, aggregate, detailed_lists
from beacon_golem.core.profiles import Profile, Step
from beacon_golem.node.loadgen.generator import LoadGenerator, ProgressCallback, ProgressEvent, StepRun
from beacon_golem.node.loadgen.prompts import LlamaServerTokenizer, PromptSet, Tokenizer, VLLMTokenizer, build_prompts
from beacon_golem.node.loadgen.servermetrics import ServerMetricsReader, cross_check
from beacon_golem.node.loadgen.target import ResolvedTarget, Target, is_loopback, resolve_target
from beacon_golem.node.probe.hardware import system_info

StepCallback = Callable[[StepResult], None]
#: Prompts built per step when a step stops on duration only (cycled beyond that).
DURATION_POOL = 128


async def make_tokenizer(session: aiohttp.ClientSession, resolved: ResolvedTarget, target: Target) -> Tokenizer | None:
    """The runtime's own tokenizer when it has one and answers from here; else None (estimate)."""
    base = target.tokenizer_url or resolved.runtime_url
    if base is None:
        return None
    tokenizer: Tokenizer
    if resolved.runtime in ("llamacpp",):
        tokenizer = LlamaServerTokenizer(session, base)
    elif resolved.runtime == "vllm":
        tokenizer = VLLMTokenizer(session, base, resolved.model)
    else:
        return None
    try:
        await tokenizer.tokenize("probe")
    except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
        return None
    return tokenizer


def metrics_url_for(resolved: ResolvedTarget, target: Target) -> str | None:
    if target.metrics_url:
        return target.metrics_url
    if resolved.runtime_url and resolved.runtime in ("llamacpp", "vllm", "dmr"):
        return resolved.runtime_url + "/metrics"
    return None


def prompt_count(step: Step) -> int:
    if step.num_prompts is not None:
        return step.num_prompts
    if step.mode == "rate" and step.rate not in (None, float("inf")) and step.duration_s:
        return max(1, min(DURATION_POOL * 8, int(step.rate * step.duration_s) + 1))  # type: ignore[operator]
    return max(DURATION_POOL, (step.concurrency or 1) * 4)


async def node_fingerprint(session: aiohttp.ClientSession, resolved: ResolvedTarget) -> dict[str, Any] | None:
    if resolved.node_info is not None:
        return resolved.node_info
    if is_loopback(resolved.url):
        return {"system": (await system_info()).model_dump(mode="json"), "source": "this machine (runtime on loopback)"}
    return None


def client_host() -> dict[str, Any]:

    return {
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


#: Runtimes whose server closes the connection after every streamed answer while still
#: advertising keep-alive (llama.cpp's server, measured here: the next request on the
#: connection fails with "Can not write request body"). The load to them opens a fresh
#: connection per request (`Connection: close`), which is what the server does anyway.
CLOSES_AFTER_STREAM = ("llamacpp", "dmr")


def new_session(token: str | None, force_close: bool) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=force_close)
    return aiohttp.ClientSession(connector=connector, headers=headers)


async def run_bench(
    target: Target | str,
    profile: Profile,
    prompts: PromptSpec | None = None,
    *,
    slo: SLO | None = None,
    detailed: bool = False,
    progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
    session: aiohttp.ClientSession | None = None,
) -> BenchResult:
    """Run `profile` against `target` (a shim or runtime URL) and return every step's result.

    One session carries the load (connections kept alive, except to llama.cpp's server, see
    `CLOSES_AFTER_STREAM`); a second, small one the probes (`/info`, `/tokenize`, `/metrics`).
    A `session` given is used for both.
    """
    target = Target(url=target) if isinstance(target, str) else target
    spec = prompts or PromptSpec()
    token = target.token.get_secret_value() if target.token else None
    aux = session or new_session(token, force_close=True)
    load: aiohttp.ClientSession | None = session
    try:
        resolved = await resolve_target(aux, target)
        if load is None:
            load = new_session(token, force_close=resolved.via == "runtime" and resolved.runtime in CLOSES_AFTER_STREAM)
        resolved.adapter = type(resolved.adapter)(resolved.adapter.base_url, load, settings=resolved.adapter.launch_settings)
        return await _run(aux, resolved, target, profile, spec, slo, detailed, progress, on_step)
    finally:
        if session is None:
            await aux.close()
            if load is not None:
                await load.close()


async def _run(
    session: aiohttp.ClientSession,
    resolved: ResolvedTarget,
    target: Target,
    profile: Profile,
    spec: PromptSpec,
    slo: SLO | None,
    detailed: bool,
    progress: ProgressCallback | None,
    on_step: StepCallback | None,
) -> BenchResult:
    runtime_session = session
    if resolved.via == "shim" and target.runtime_token is not None:  # the runtime's own key, not the shim's token
        runtime_session = new_session(target.runtime_token.get_secret_value(), force_close=True)
    try:
        return await _run_with(session, runtime_session, resolved, target, profile, spec, slo, detailed, progress, on_step)
    finally:
        if runtime_session is not session:
            await runtime_session.close()


async def _run_with(
    session: aiohttp.ClientSession,
    runtime_session: aiohttp.ClientSession,
    resolved: ResolvedTarget,
    target: Target,
    profile: Profile,
    spec: PromptSpec,
    slo: SLO | None,
    detailed: bool,
    progress: ProgressCallback | None,
    on_step: StepCallback | None,
) -> BenchResult:
    tokenizer = await make_tokenizer(runtime_session, resolved, target)
    reader = ServerMetricsReader(runtime_session, metrics_url_for(resolved, target), resolved.runtime)
    generator = LoadGenerator(resolved.adapter, resolved.model, reader, progress)
    fixed = spec.fixed_output and resolved.adapter.supports_ignore_eos
    result = BenchResult(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        target=TargetSummary(
            url=resolved.url,
            via=resolved.via,
            runtime=resolved.runtime,
            model=resolved.model,
            endpoint=resolved.endpoint,
            runtime_url=resolved.runtime_url,
            runtime_version=resolved.runtime_version,
        ),
        node=await node_fingerprint(session, resolved),
        server_settings=resolved.server_settings,
        profile=profile,
        prompts=spec,
        slo=slo if slo is not None and slo.given() else None,
        client_host=client_host(),
    )
    if spec.fixed_output and not fixed:
        result.warnings.append(
            f"{resolved.runtime} has no ignore_eos: output length was not fixed "
            f"(max_tokens={spec.output_len} only caps it)"
        )
    if tokenizer is None and spec.prompt_file is None:
        result.warnings.append(
            f"no /tokenize reachable for {resolved.runtime}: prompt lengths are estimated (one common word a token)"
        )
    if await reader.scrape() is None and reader.reason:
        result.warnings.append(f"server cross-check: {reader.reason}")

    baseline_ttft: float | None = None
    for step in profile.steps():
        step_result = await run_step(generator, resolved, step, spec, tokenizer, reader, slo, detailed, fixed, progress)
        policy = step.overload
        if step_result.completed and baseline_ttft is None:
            baseline_ttft = step_result.median_ttft_ms
        elif (
            policy.enabled
            and policy.max_ttft_growth is not None
            and baseline_ttft
            and step_result.median_ttft_ms > policy.min_ttft_ms
            and step_result.median_ttft_ms / baseline_ttft > policy.max_ttft_growth
        ):
            step_result.overloaded = True
            result.stop_reason = (
                f"{step.label}: median TTFT {step_result.median_ttft_ms:.0f} ms is "
                f"{step_result.median_ttft_ms / baseline_ttft:.0f}x the first step's: requests are queueing"
            )
        if step_result.stopped_early:
            step_result.overloaded = True
            result.stop_reason = f"{step.label}: {step_result.stop_reason}"
        result.steps.append(step_result)
        if on_step is not None:
            on_step(step_result)
        if step_result.overloaded:
            result.stopped_early = True
            remaining = len(profile.steps()) - step.index - 1
            if remaining:
                result.warnings.append(f"sweep stopped on overload; {remaining} higher step(s) not run")
            break
    return result


async def step_prompts(step: Step, spec: PromptSpec, tokenizer: Tokenizer | None) -> tuple[PromptSet, PromptSet]:
    count = prompt_count(step)
    main = await build_prompts(count, spec, seed=spec.seed * 1_000_003 + step.seed * 2 + 1, tokenizer=tokenizer)
    warm = (
        await build_prompts(step.warmup, spec, seed=spec.seed * 1_000_003 + step.seed * 2, tokenizer=tokenizer, offset=count)
        if step.warmup
        else PromptSet([], main.method, [])
    )
    return main, warm


async def run_step(
    generator: LoadGenerator,
    resolved: ResolvedTarget,
    step: Step,
    spec: PromptSpec,
    tokenizer: Tokenizer | None,
    reader: ServerMetricsReader,
    slo: SLO | None,
    detailed: bool,
    fixed: bool,
    progress: ProgressCallback | None,
) -> StepResult:
    if progress is not None:
        progress(ProgressEvent(step.index, step.label, "prompts", total=step.num_prompts, duration_s=step.duration_s))
    main, warm = await step_prompts(step, spec, tokenizer)
    model = resolved.model
    requests = [p.request(spec, model) for p in main.prompts]
    warm_failed = await generator.warmup(step, [p.request(spec, model) for p in warm.prompts])
    before = await reader.scrape()
    run = await generator.run(step, main.prompts, requests)
    after = await reader.scrape()
    return build_step_result(resolved, step, spec, run, main, warm_failed, before, after, reader, slo, detailed, fixed)


def build_step_result(
    resolved: ResolvedTarget,
    step: Step,
    spec: PromptSpec,
    run: StepRun,
    prompts: PromptSet,
    warm_failed: int,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    reader: ServerMetricsReader,
    slo: SLO | None,
    detailed: bool,
    fixed: bool,
) -> StepResult:
    records = run.records
    metrics = aggregate(records, run.duration_s, slo)
    check = cross_check(resolved.runtime, before, after, records, run.duration_s, reader, run.max_server_queue)
    warnings = list(prompts.warnings)
    if warm_failed:
        warnings.append(f"{warm_failed} of {step.warmup} warmup requests failed")
    ok = [r for r in records if r.ok]
    if fixed:
        off = sum(1 for r in ok if r.output_tokens != spec.output_len)
        if off:
            warnings.append(f"{off} of {len(ok)} requests returned other than {spec.output_len} output tokens")
    estimated = sum(1 for r in ok if r.token_count_source != "server")
    if estimated:
        warnings.append(f"{estimated} requests had no server token count: output tokens estimated from text")
    no_ttft = sum(1 for r in ok if r.ttft_ms is None)
    if no_ttft:
        warnings.append(f"{no_ttft} requests streamed no content: no TTFT")
    if run.client.cpu_util > 0.9:
        warnings.append(
            f"the load generator was busy {run.client.cpu_util:.0%} of one core: figures may be limited by the client"
        )
    if run.client.loop_lag_p99_ms > 5.0:
        warnings.append(
            f"client event-loop lag p99 {run.client.loop_lag_p99_ms:.1f} ms: TTFT and ITL include up to that much client delay"
        )
    if step.mode == "concurrency" and step.concurrency and metrics.max_concurrent_requests < step.concurrency:
        warnings.append(f"only {metrics.max_concurrent_requests} of {step.concurrency} requests were ever in flight at once")
    if not check.available and check.note:
        warnings.append(f"server cross-check unavailable: {check.note}")
    elif check.output_tokens_discrepancy_pct is not None and abs(check.output_tokens_discrepancy_pct) > 2.0:
        warnings.append(
            f"client and server disagree on output tokens by {check.output_tokens_discrepancy_pct:+.1f}% "
            "(another client on the server, or a miscount)"
        )
    errors = Counter(r.error for r in records if r.outcome == "failed" and r.error)
    settings = resolved.server_settings
    slots = settings.get("total_slots") or settings.get("num_parallel") or settings.get("max_num_seqs")
    if step.concurrency and isinstance(slots, int) and step.concurrency > slots:
        warnings.append(f"concurrency {step.concurrency} is above the server's {slots} parallel slots: the rest queue")
    values: dict[str, Any] = metrics.model_dump(by_alias=True)
    values.update(
        date=datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        backend=resolved.runtime,
        label=step.label,
        model_id=resolved.model,
        tokenizer_id=None,
        num_prompts=step.num_prompts if step.num_prompts is not None else len(records),
        request_rate=rate_key(step.rate) if step.mode == "rate" else "inf",
        burstiness=step.burstiness if step.burstiness is not None else 1.0,
        max_concurrency=step.concurrency,
        step=step.index,
        step_label=step.label,
        mode=step.mode,
        via=resolved.via,
        endpoint=resolved.endpoint,
        warmup_requests=step.warmup,
        cancelled=sum(1 for r in records if r.outcome == "cancelled"),
        input_len=spec.input_len if spec.prompt_file is None else None,
        output_len=spec.output_len,
        output_len_fixed=fixed,
        input_tokens_method=prompts.method,
        stopped_early=run.stop_reason is not None,
        stop_reason=run.stop_reason,
        client=ClientFigures(
            cpu_s=run.client.cpu_s,
            cpu_util=run.client.cpu_util,
            loop_lag_p50_ms=run.client.loop_lag_p50_ms,
            loop_lag_p99_ms=run.client.loop_lag_p99_ms,
            loop_lag_max_ms=run.client.loop_lag_max_ms,
        ),
        server_check=check,
        error_counts=dict(errors.most_common(10)),
        warnings=warnings,
    )
    if detailed:
        values.update(detailed_lists(records))
    return StepResult.model_validate(values)


def run_bench_sync(*args: Any, **kwargs: Any) -> BenchResult:
    """`run_bench` for callers without an event loop."""
    return asyncio.run(run_bench(*args, **kwargs))
