"""A run from start to end: load the suite, record the run, bring up the fleet, dispatch, finish.

The CLI calls `plan_run` (fast: the run id exists and is on disk before any node starts),
then `execute_run`; `beacon run --resume` calls `execute_run` again on the same run id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError

from beacon_golem.core.compare import FALLBACK_RUNTIME
from beacon_golem.core.config import Settings, load_settings
from beacon_golem.core.errors import BeaconError, UsageError, one_line
from beacon_golem.core.log import get_logger
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.core.suite import Suite, expand_jobs, load_suite, parse_yaml, read_text_file
from beacon_golem.core.untrusted import loads_json
from beacon_golem.imaging import lookup_image
from beacon_golem.requestor.fleets.base import Fleet, FleetEvent
from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
from beacon_golem.requestor.fleets.golem.fleet import GolemFleet
from beacon_golem.requestor.fleets.golem.records import ProviderRecord
from beacon_golem.requestor.fleets.local import LocalFleet, LocalFleetConfig
from beacon_golem.requestor.fleets.static import StaticFleet, StaticNodeSpec
from beacon_golem.requestor.store.rows import BenchResultRow, RunRow
from beacon_golem.requestor.store.store import DB_FILENAME, Store, open_store
from beacon_golem.requestor.work.accounting import save_accounting, save_spent_so_far
from beacon_golem.requestor.work.beacon_import import TINY_MODEL as TINY_MODEL_NAME
from beacon_golem.requestor.work.beacon_import import (
    ImportedJob,
    JobSpecOptions,
    enforce_signature,
    is_jobspec,
    read_jobspec_data,
)
from beacon_golem.requestor.work.dispatcher import DispatchConfig, Dispatcher, Receipts, RunProgress
from beacon_golem.requestor.work.perf_phase import PerfListener, run_suite_perf
from beacon_golem.requestor.work.receipts import receipt_issuer
from beacon_golem.requestor.work.runtime_choice import (
    AUTO,
    LOCAL_AUTO_START,
    apply_runtime_choices,
    runtime_choice_hook,
)

log = get_logger(__name__)

FleetKind = Literal["local", "static", "golem"]


class FleetChoice(BaseModel):
    """How the user asked for nodes; stored with the run so `--resume` can ask again."""

    kind: FleetKind = "local"
    nodes: int = Field(default=2, ge=1)
    node_urls: list[str] = Field(default_factory=list)
    runtime: str = "llamacpp"
    model: str | None = None
    parallel: int | None = None
    #: Region labels dealt to local nodes (default: the suite's regions).
    regions: list[str] = Field(default_factory=list)
    #: Settings for the Golem fleet (image, budget, prices...), passed through as given.
    golem: dict[str, Any] = Field(default_factory=dict)
    #: The runtime's own settings (`core.runtime_settings.RuntimeSettings.given()`), for local nodes.
    runtime_settings: dict[str, Any] = Field(default_factory=dict)


class RunInput(BaseModel):
    """What `beacon run FILE` runs: the suite, where it came from, and the JobSpec it was read from."""

    suite: Suite
    source: str
    jobspec: ImportedJob | None = None
    #: Lines to print before the run starts (an unsigned JobSpec, an expected count that differs).
    notes: list[str] = Field(default_factory=list)


def load_run_input(path: Path, options: JobSpecOptions | None = None, *, check_signature: bool = True) -> RunInput:
    """A suite (YAML) or a Project Beacon JobSpec (JSON; any of its layouts), checked.

    A JobSpec whose signature does not verify is refused (UsageError), as is an unsigned one
    under `options.require_signature`; nothing is stored before this returns. `check_signature`
    False only reads the verdict (`beacon runs plan` shows it).
    """
    options = options or JobSpecOptions()
    if path.suffix.lower() == ".json":
        text = read_text_file(path)  # a regular file, bounded in size: a FIFO or /dev/zero is one line
        data = loads_json(text, what=str(path))  # not valid JSON: say so, with line and column
        if is_jobspec(data):
            job = read_jobspec_data(
                data, str(path), text=text, base_dir=path.parent, questions=options.questions,
                model_map=options.model_map, trusted=options.trusted,
            )  # fmt: skip
            warning = enforce_signature(job, require_signature=options.require_signature) if check_signature else None
            notes = ([warning] if warning else []) + [f"note: {w}" for w in job.provenance.warnings]
            return RunInput(suite=job.suite, source=str(path), jobspec=job, notes=notes)
    return RunInput(suite=load_suite(path), source=str(path))


def plan_run(store: Store, suite: Suite, source: str, fleet: FleetChoice) -> RunRow:
    """Record the run and all its jobs as pending; returns at once with the run id."""
    check_fleet(suite, fleet)
    return store.create_run(suite, source, expand_jobs(suite), fleet.model_dump(mode="json"))


class AcceptanceVerdict(BaseModel):
    """Whether a run meets its JobSpec's constraints as Beacon judges a cross-region job."""

    met: bool
    success_rate: float
    regions_answered: list[str]
    min_regions: int
    min_success_rate: float

    def line(self) -> str:
        return (
            f"beacon acceptance: {'met' if self.met else 'NOT met'} (answers from {len(self.regions_answered)} "
            f"region(s), at least {self.min_regions} wanted; {self.success_rate:.0%} of the jobs done, "
            f"at least {self.min_success_rate:.0%} wanted)"
        )


def record_acceptance(store: Store, run_id: str, suite: Suite) -> AcceptanceVerdict:
    """The verdict (answers in at least `min_regions` regions, `min_success_rate` of the jobs
    done), stored as a `beacon_acceptance` event; the run's own status still says whether every
    job is done."""
    assert suite.acceptance is not None
    jobs = store.jobs(run_id)
    done = [j for j in jobs if j.state == "done"]
    regions = sorted({j.region for j in done})
    rate = len(done) / len(jobs) if jobs else 0.0
    verdict = AcceptanceVerdict(
        met=len(regions) >= suite.acceptance.min_regions and rate >= suite.acceptance.min_success_rate,
        success_rate=round(rate, 4),
        regions_answered=regions,
        min_regions=suite.acceptance.min_regions,
        min_success_rate=suite.acceptance.min_success_rate,
    )
    store.add_event(run_id, "beacon_acceptance", **verdict.model_dump())
    return verdict


def acceptance_verdict(store: Store, run_id: str) -> AcceptanceVerdict | None:
    """The run's latest acceptance verdict, for runs from a Beacon JobSpec (None otherwise)."""
    events = store.events(run_id, ["beacon_acceptance"])
    return AcceptanceVerdict.model_validate(events[-1].detail) if events else None


def served_models(fleet: FleetChoice) -> list[str] | None:
    """The models the fleet's nodes will serve, when that is known before they start."""
    if fleet.kind == "local":
        if fleet.model is None:
            return [TINY_MODEL_NAME] if fleet.runtime == "llamacpp" else None
        return [Path(fleet.model).stem if fleet.runtime == "llamacpp" else fleet.model]
    return None  # static nodes, a Golem VM's model (its image, a URL, a file): known once they answer


def check_fleet(suite: Suite, fleet: FleetChoice) -> None:
    """Refuse, before anything is stored, a fleet that cannot serve the suite."""
    served = served_models(fleet)
    if served is not None:
        for m in suite.models:
            if m.name not in served:
                what = f"Beacon model {m.beacon_id} (asked as {m.name})" if m.beacon_id else f"model {m.name}"
                raise UsageError(
                    f"{what}: the {fleet.kind} fleet serves {', '.join(served)}; say what a node serves for it with "
                    f"--model-map {m.beacon_id or m.name}={served[0]} (a Beacon JobSpec), or start the fleet with "
                    "--model for it"
                )
    if fleet.kind == "local":
        runtimes = {m.runtime for m in suite.models} - {"any"}
        if fleet.runtime != AUTO and runtimes - {fleet.runtime}:
            raise UsageError(
                f"the local fleet runs {fleet.runtime}, but the suite asks for {', '.join(sorted(runtimes))}"
            )
        if fleet.nodes < len(fleet.regions):
            raise UsageError(
                f"the suite asks for {len(fleet.regions)} regions ({', '.join(fleet.regions)}): "
                f"start at least that many local nodes (--nodes {len(fleet.regions)})"
            )
    if fleet.kind == "static" and not fleet.node_urls:
        raise UsageError("the static fleet needs at least one --node URL")


def fleet_for_suite(choice: FleetChoice, suite: Suite) -> FleetChoice:
    """Fill what the user left out from the suite: regions and per-node concurrency."""
    return choice.model_copy(
        update={
            "regions": choice.regions or suite.regions,
            "parallel": choice.parallel or suite.limits.per_node_concurrency,
        }
    )


def build_fleet(choice: FleetChoice, data_dir: Path, token: SecretStr | None, store: Store | None = None) -> Fleet:
    parallel = choice.parallel or 4
    if choice.kind == "local":
        return LocalFleet(
            LocalFleetConfig(
                nodes=choice.nodes,
                regions=choice.regions or ["local"],
                # --runtime auto: the embedded default first; the run then gives each node its best runtime.
                runtime=LOCAL_AUTO_START if choice.runtime == AUTO else choice.runtime,
                model=choice.model,
                parallel=parallel,
                data_dir=data_dir / "local-fleet",
                settings=RuntimeSettings.model_validate(choice.runtime_settings),
                token=token,  # local nodes require the token when one is set
            )
        )
    if choice.kind == "static":
        specs = [
            StaticNodeSpec.parse(url, token).model_copy(update={"concurrency": parallel}) for url in choice.node_urls
        ]
        return StaticFleet(specs)
    return golem_fleet(choice, data_dir, token, store)


def read_region_map(path: Path) -> dict[str, str]:
    """A YAML or JSON mapping of provider id (or name) -> region label."""

    data = parse_yaml(read_text_file(path), str(path))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"{path}: expected a mapping of provider id -> region label")
    return data


def fleet_kind(text: str) -> FleetKind:
    """The --fleet option, checked: one line naming the choices otherwise."""
    if text not in ("local", "static", "golem"):
        raise UsageError(f"--fleet {text!r}: choose local, static or golem")
    return text  # type: ignore[return-value]


def golem_options(region_map: Path | None = None, **options: Any) -> dict[str, Any]:
    """The --fleet golem options the user gave (None and False left out), a region map file read."""
    if region_map is not None:
        options["regions"] = read_region_map(region_map)
    return {k: v for k, v in options.items() if v is not None and v is not False}


GOLEM_REQUIRED = {"budget": "--budget", "max_price_glm_per_hour": "--max-price-glm-per-hour"}


def golem_fleet(choice: FleetChoice, data_dir: Path, token: SecretStr | None, store: Store | None) -> Fleet:
    """Rent nodes on Golem; providers we lost in earlier runs count against them."""

    settings = dict(choice.golem)
    configured = load_settings()
    if configured.golem_registry_url and "registry_url" not in settings:
        settings["registry_url"] = configured.golem_registry_url
    if configured.golem_image and "image" not in settings:
        settings["image"] = configured.golem_image
    missing = [flag for key, flag in GOLEM_REQUIRED.items() if key not in settings]
    if missing:
        raise UsageError(f"--fleet golem needs {' and '.join(missing)} (GLM): money is never spent without a cap")
    runtime: str | None = choice.runtime
    if choice.runtime == AUTO:
        # --runtime auto: nodes start on the fallback's image (Ollama's), or on the image given
        # with the runtime it was built with, then each switches to its machine's choice.
        runtime = None if "image" in settings else FALLBACK_RUNTIME
    if "image" not in settings:
        assert runtime is not None
        entry = lookup_image(runtime)
        if entry is None:
            raise UsageError(
                f"--fleet golem: no --image given and the image lock file has no {runtime} image "
                f"(beacon image build {runtime} && beacon image push {runtime})"
            )
        settings["image"] = entry.hash
    if choice.regions and not settings.get("regions") and not settings.get("label_regions"):
        raise UsageError(
            f"--fleet golem: the suite asks for regions {', '.join(choice.regions)}; give --region-map FILE "
            "(provider id: region) or --label-regions to deal them to nodes as labels"
        )
    if settings.pop("label_regions", False):
        settings["label_regions"] = choice.regions
    elif settings.get("regions") and choice.regions:
        settings.setdefault("allowed_regions", choice.regions)  # rent only providers in the suite's regions
    try:
        config = GolemFleetConfig(
            nodes=choice.nodes,
            runtime=runtime,
            model=choice.model,
            node_concurrency=choice.parallel or 4,
            shim_token=token,
            log_dir=data_dir / "golem-logs",
            **settings,
        )
    except ValidationError as exc:
        raise UsageError(f"--fleet golem: {one_line(exc)}") from None

    def record(provider_id: str) -> ProviderRecord | None:
        if store is None:
            return None
        runs, lost = store.provider_history(provider_id)
        return ProviderRecord(provider_id=provider_id, runs=runs, failures=lost) if runs else None

    return GolemFleet(config, provider_record=record)


def dispatch_config(suite: Suite, choice: FleetChoice) -> DispatchConfig:
    settings = load_settings()
    return DispatchConfig(
        limits=suite.limits,
        health_timeout_s=settings.health_timeout_s,
        max_body_bytes=settings.max_node_body_bytes,
        per_node_concurrency=choice.parallel or suite.limits.per_node_concurrency,
        # Golem fleets replace lost nodes: give them time before failing unservable jobs.
        unmatched_wait_s=300.0 if choice.kind == "golem" else 0.0,
    )


@dataclass
class PreparedRun:
    """A run recorded (or reopened) with its fleet built, ready for `execute_run`."""

    store: Store
    run: RunRow
    suite: Suite
    fleet: Fleet
    config: DispatchConfig
    receipts: Receipts
    #: The run's lock in the store (one run, one process), handed to `execute_run`, which releases it.
    lock: str | None = None
    #: Lines to show before the run starts (an unsigned JobSpec, what its import said).
    notes: list[str] = field(default_factory=list)


def failure_reason(exc: BaseException) -> str:
    """One line saying why a run failed: a validation error's first problem, any other error's text."""
    if isinstance(exc, ValidationError):
        return one_line(exc)
    if isinstance(exc, Exception):
        return " ".join(str(exc).split()) or type(exc).__name__
    return type(exc).__name__


def _abandon(store: Store, run_id: str, lock: str | None, exc: BaseException) -> None:
    """A run recorded but never driven: closed `failed` with the reason, its lock released."""
    store.add_event(run_id, "run_failed", reason=failure_reason(exc))
    store.finish_run(run_id, "failed")
    if lock is not None:
        store.unlock_run(run_id, lock)


def prepare_run(
    settings: Settings,
    given: dict[str, Any],
    *,
    suite_path: Path | None = None,
    resume: str | None = None,
    db: Path | None = None,
    keep_failed: bool = False,
    jobspec: JobSpecOptions | None = None,
) -> PreparedRun:
    """`beacon run SUITE` or `beacon run --resume RUN`: every check that can fail before a node
    starts, the run recorded (a new run) or reopened (a resumed one), the fleet built.

    `given` holds the FleetChoice fields the user set; a resumed run fills the rest from what
    its first start stored. The run is locked for this process before anything of it changes: a
    second `--resume` of a run that a live process drives raises `RunLocked` (exit 2) and
    touches nothing. A resumed run's failed jobs go back to pending (another full set of
    attempts) unless `keep_failed`.
    """
    if (suite_path is None) == (resume is None):
        raise UsageError("give a SUITE file or --resume RUN_ID (not both)")
    path = db or settings.data_dir / DB_FILENAME
    if suite_path is not None:
        loaded = load_run_input(suite_path, jobspec)  # a bad suite or signature fails here, before the store is touched
        suite, source = loaded.suite, loaded.source
        notes = loaded.notes
        choice = fleet_for_suite(FleetChoice(**given), suite)
        check_fleet(suite, choice)
        store = open_store(path)
        fleet = build_fleet(choice, settings.data_dir, settings.shim_token, store)
        provenance = loaded.jobspec.provenance if loaded.jobspec is not None else None
        run = store.create_run(suite, source, expand_jobs(suite), choice.model_dump(mode="json"), jobspec=provenance)
        lock = store.lock_run(run.run_id)
    else:
        assert resume is not None
        notes = []
        store = open_store(path, create=False)
        found = store.find_run(resume)
        if found.kind == "pilot":
            raise UsageError(f"run {found.run_id} is a compatibility pilot, not a suite run: run `beacon pilot` again")
        if store.comparison_plan(found.run_id) is not None:
            raise UsageError(f"run {found.run_id} is a runtime comparison: run `beacon compare` again")
        if found.suite is None:
            raise BeaconError(
                f"run {found.run_id} cannot be resumed: its stored suite does not read ({found.suite_error})"
            )
        suite = found.suite
        choice = FleetChoice(**{**(found.fleet_desc or {}), **given})
        fleet = build_fleet(choice, settings.data_dir, settings.shim_token, store)
        lock = store.lock_run(found.run_id)  # before anything of the run changes
        try:
            store.reopen_run(found.run_id)
            if not keep_failed:
                retried = store.retry_failed(found.run_id)
                if retried:
                    store.add_event(found.run_id, "failed_retried", jobs=retried)
            run = store.get_run(found.run_id)
        except BaseException:
            store.unlock_run(found.run_id, lock)
            raise
    try:
        receipts = receipt_issuer(settings.data_dir, run)
    except BaseException as exc:
        _abandon(store, run.run_id, lock, exc)
        raise
    return PreparedRun(store, run, suite, fleet, dispatch_config(suite, choice), receipts, lock, notes)


#: One phase of a run, on a fleet that is up: dispatch the jobs, benchmark the nodes, probe them.
#: Returns whether everything in it succeeded.
Phase = Callable[[Fleet], Awaitable[bool]]
#: Called with each fleet event while the fleet is still starting (a Golem fleet's nodes come up one by one).
StartWatcher = Callable[[FleetEvent], None]


async def drive(
    store: Store,
    run: RunRow,
    fleet: Fleet,
    phases: Sequence[Phase],
    *,
    on_note: Callable[[str], None] | None = None,
    while_starting: StartWatcher | None = None,
    on_stopped: Callable[[Fleet], None] | None = None,
    lock: str | None = None,
) -> RunRow:
    """The one way every run goes (suite, bench, pilot, resume): the fleet's notes stored, the
    fleet up, each phase in turn, the fleet down, what it cost stored, the run closed.

    The run ends `done` only when every phase succeeded and every job of the run is `done`
    (a `run_incomplete` event counts the others); `failed` otherwise; `failed` too, with the
    reason as a `run_failed` event, when the fleet (its start included) or a phase raised;
    `interrupted` on Ctrl-C or cancellation. While it runs, the run's `lock` (when given) is
    kept alive with a heartbeat.
    """
    run_id = run.run_id
    heartbeat = asyncio.create_task(_heartbeat(store, run_id, lock)) if lock is not None else None
    spending = asyncio.create_task(_keep_spent(store, run_id, fleet))
    fleet.on_note(lambda n: store.add_event(run_id, "fleet_progress", message=n.message))
    if on_note is not None:
        fleet.on_note(lambda n: on_note(n.message))
    ok = True
    watcher = asyncio.create_task(_watch_start(fleet, while_starting)) if while_starting is not None else None
    try:
        try:
            async with fleet:
                if watcher is not None:  # from here on, the phases take the events
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                for phase in phases:
                    ok = await phase(fleet) and ok
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            if on_stopped is not None:
                on_stopped(fleet)
            for task in (heartbeat, spending):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            # Once the fleet has stopped: its agreements are closed, and the last invoices (yapapi's
            # engine waits for them while it shuts down) are in.
            save_accounting(store, run_id, fleet)
    except (KeyboardInterrupt, asyncio.CancelledError):
        store.finish_run(run_id, "interrupted")
        raise
    except BaseException as exc:
        store.add_event(run_id, "run_failed", reason=failure_reason(exc))
        store.finish_run(run_id, "failed")
        raise
    counts = store.get_run(run_id).job_counts
    if sum(counts.values()) != counts.get("done", 0):  # never `done` with a job that is not
        store.add_event(run_id, "run_incomplete", **{k: v for k, v in counts.items() if k != "done" and v})
        ok = False
    return store.finish_run(run_id, "done" if ok else "failed")


#: Seconds between two heartbeats of a run's lock (a holder on another machine is taken for dead
#: after `LOCK_STALE_S` without one).
HEARTBEAT_S = 15.0


async def _heartbeat(store: Store, run_id: str, lock: str) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        if not store.heartbeat_run_lock(run_id, lock):
            log.warning("run_lock_lost", run=run_id)
            return


async def _keep_spent(store: Store, run_id: str, fleet: Fleet) -> None:
    """Every `spent_save_s` (BEACON_SPENT_SAVE_S), what each node has cost so far."""
    interval = load_settings().spent_save_s
    while True:
        await asyncio.sleep(interval)
        try:
            save_spent_so_far(store, run_id, fleet)
        except Exception as exc:  # a busy database: the next save, or the final one, will do
            log.warning("spent_save_failed", run=run_id, error=failure_reason(exc))


async def _watch_start(fleet: Fleet, watcher: StartWatcher) -> None:
    async for event in fleet.events():
        watcher(event)


async def execute_run(
    store: Store,
    run: RunRow,
    fleet: Fleet,
    config: DispatchConfig,
    receipts: Receipts | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    on_fleet_ready: Callable[[Fleet], None] | None = None,
    on_perf: PerfListener | None = None,
    on_fleet_note: Callable[[str], None] | None = None,
    lock: str | None = None,
) -> RunRow:
    """A suite run (new or resumed): dispatch every unfinished job, then benchmark the nodes (suite `perf`).

    The run is driven under its lock in the store: `lock` (from `prepare_run`) or one taken here
    (`RunLocked` when another live process holds it); either is released when the run ends.
    """
    lock = lock or store.lock_run(run.run_id)
    try:
        return await _execute_locked(
            store, run, fleet, config, receipts, on_progress, on_fleet_ready, on_perf, on_fleet_note, lock
        )
    finally:
        store.unlock_run(run.run_id, lock)


async def _execute_locked(
    store: Store,
    run: RunRow,
    fleet: Fleet,
    config: DispatchConfig,
    receipts: Receipts | None,
    on_progress: Callable[[RunProgress], None] | None,
    on_fleet_ready: Callable[[Fleet], None] | None,
    on_perf: PerfListener | None,
    on_fleet_note: Callable[[str], None] | None,
    lock: str,
) -> RunRow:
    reset = store.reset_running(run.run_id)
    if reset:
        store.add_event(run.run_id, "resumed", reset=reset)

    async def dispatch(up: Fleet) -> bool:
        if on_fleet_ready:
            on_fleet_ready(up)
        await Dispatcher(store, run.run_id, up, config, receipts, on_progress).run()
        counts = store.get_run(run.run_id).job_counts
        if run.suite is not None and run.suite.acceptance is not None:
            record_acceptance(store, run.run_id, run.suite)
        return counts.get("done", 0) == sum(counts.values())  # the store says, not the dispatcher's count

    async def perf(up: Fleet) -> bool:
        return all(o.ok for o in await run_suite_perf(store, run, up, on_perf))

    async def choose_runtimes(up: Fleet) -> bool:
        await apply_runtime_choices(store, run.run_id, up)
        return True

    phases: list[Phase] = [dispatch]
    if isinstance(run.fleet_desc, dict) and run.fleet_desc.get("runtime") == AUTO:
        # --runtime auto: each node its best runtime before any job. A fleet that adds nodes as
        # they come up (Golem: the first ones and every replacement) prepares each before adding
        # it; the phase does it for the nodes of the others.
        fleet.prepare_node = runtime_choice_hook(store, run.run_id)
        phases.insert(0, choose_runtimes)
    if run.suite is not None and run.suite.perf is not None:
        phases.append(perf)
    return await drive(store, run, fleet, phases, on_note=on_fleet_note, lock=lock)


async def bench_fleet(
    settings: Settings,
    suite: Suite,
    choice: FleetChoice,
    *,
    db: Path | None = None,
    on_planned: Callable[[Store, RunRow], None] | None = None,
    listener: PerfListener | None = None,
) -> tuple[Store, RunRow, list[BenchResultRow]]:
    """`beacon bench --fleet`: record a perf-only run, bring the fleet up, benchmark every node, close the run.

    Returns the store, the finished run and its stored results.
    """
    if suite.perf is None:
        raise BeaconError("bench_fleet needs a suite with a perf section")
    choice = fleet_for_suite(choice, suite)
    check_fleet(suite, choice)  # before the store is touched
    store = open_store(db or settings.data_dir / DB_FILENAME)
    fleet = build_fleet(
        choice, settings.data_dir, settings.shim_token, store
    )  # a bad fleet setting fails before the run exists
    run = store.create_run(suite, "beacon bench --fleet", expand_jobs(suite), choice.model_dump(mode="json"))
    if on_planned is not None:
        on_planned(store, run)
    final = await execute_run(store, run, fleet, dispatch_config(suite, choice), on_perf=listener)
    return store, final, store.bench_results(run.run_id)
