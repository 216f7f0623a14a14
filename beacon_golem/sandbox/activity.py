"""The activity API (ya-client `activity-api.yaml`, requestor side): each activity is a VM.

`POST /activity` (body: the agreement id as a JSON string, as ya-aioclient sends it, or
`{"agreementId": ...}`) creates the provider's exe-unit: here a VM from the injected factory.
`POST /activity/{id}/exec` runs an exe-script for real, command by command, on that VM: `deploy`
fetches the agreement's image (`golem.srv.comp.task_package`, hash checked) and creates the volumes,
`start` boots it, `run` executes a command, `transfer` copies files (`gftp://` URLs of the local gftp
stand-in become `file://` paths, `container:` paths stay). `GET .../exec/{batch}` long-polls the
results, `GET .../state` and `.../usage` report, `DELETE` ends the exe-unit.

yapapi does not say which results it has seen, so a poll waits until there are more results than
the previous poll of the same batch returned (or `commandIndex` is reached), or `timeout` passes.
When a VM dies or its provider ends the agreement the activity turns `Terminated`; a poll of an
unfinished batch then answers 500 with yagna's GSB error, and yapapi raises "Activity terminated by
provider" from its activity state.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from beacon_golem.core import gftp
from beacon_golem.sandbox.faults import Fault, FaultPlan
from beacon_golem.sandbox.market import Agreement, Market
from beacon_golem.sandbox.payment import Payments, Usage
from beacon_golem.sandbox.providers import PROP_TASK_PACKAGE
from beacon_golem.sandbox.records import ActivityRecord, ActivityStateName, CommandRecord, Records
from beacon_golem.sandbox.registry import Registry
from beacon_golem.sandbox.wire import (
    ApiError,
    WireModel,
    new_id,
    not_found,
    now,
    query_float,
    read_body,
    read_typed,
    respond,
)

log = structlog.get_logger(__name__)


# ---- the VM an activity drives (beacon_golem/sandbox/vm.py implements it) ----------------------
class CommandOutputLike(Protocol):
    rc: int
    stdout: str
    stderr: str


class VmLike(Protocol):
    vm_id: str
    alive: bool

    async def deploy(self, image: bytes) -> None: ...
    async def start(self) -> None: ...
    async def run(self, entry_point: str, args: list[str], timeout_s: float) -> CommandOutputLike: ...
    async def transfer(self, source: str, destination: str) -> None: ...
    async def open_tcp(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...
    async def kill(self) -> None: ...
    async def terminate(self) -> None: ...


VmFactory = Callable[[Path, str], Awaitable[VmLike]]


# ---- exe-script commands (what yapapi's script/command.py evaluates to) -----------------------
class _Args(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class DeployNet(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    ip: str
    mask: str | None = None
    node_ip: str = Field(alias="nodeIp")
    nodes: dict[str, str] = Field(default_factory=dict)


class DeployArgs(_Args):
    net: list[DeployNet] = Field(default_factory=list)


class StartArgs(_Args):
    args: list[str] = Field(default_factory=list)


class RunArgs(_Args):
    entry_point: str
    args: list[str] = Field(default_factory=list)
    capture: dict[str, Any] | None = None


class TransferArgs(_Args):
    from_: str = Field(alias="from")
    to: str


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeployCommand(_Command):
    deploy: DeployArgs


class StartCommand(_Command):
    start: StartArgs


class RunCommand(_Command):
    run: RunArgs


class TransferCommand(_Command):
    transfer: TransferArgs


class TerminateCommand(_Command):
    terminate: dict[str, Any] = Field(default_factory=dict)


class SignCommand(_Command):
    sign: dict[str, Any] = Field(default_factory=dict)


ExeCommand = DeployCommand | StartCommand | RunCommand | TransferCommand | TerminateCommand | SignCommand
EXE_SCRIPT = TypeAdapter(list[ExeCommand])


def command_name(command: ExeCommand) -> str:
    if isinstance(command, RunCommand):
        return f"run {command.run.entry_point}"
    if isinstance(command, TransferCommand):
        return f"transfer {command.transfer.from_} -> {command.transfer.to}"
    return next(iter(type(command).model_fields))


# ---- wire models ------------------------------------------------------------------------------
class CreateActivityBody(WireModel):
    agreement_id: str
    requestor_pub_key: str | None = None


CREATE_BODY = TypeAdapter(str | CreateActivityBody)


class CreateActivityResultWire(WireModel):
    activity_id: str


class ExeScriptBody(WireModel):
    text: str


class CommandResultWire(WireModel):
    index: int
    event_date: datetime
    result: Literal["Ok", "Error"]
    stdout: str | None = None
    stderr: str | None = None
    message: str | None = None
    is_batch_finished: bool = False


class ActivityStateWire(WireModel):
    state: tuple[str, str | None]
    reason: str | None = None
    error_message: str | None = None


class ActivityUsageWire(WireModel):
    current_usage: list[float]
    timestamp: int


# ---- state ------------------------------------------------------------------------------------
class ActivitySettings(BaseModel):
    command_timeout_s: float = Field(default=3600.0, gt=0)
    image_download_timeout_s: float = Field(default=600.0, gt=0)
    vm_stop_timeout_s: float = Field(default=30.0, gt=0)


class CommandFailed(Exception):
    """A command ended in an exe-script `Error` result."""

    def __init__(self, message: str, stdout: str | None = None, stderr: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stdout = stdout
        self.stderr = stderr


class Batch:
    def __init__(self, batch_id: str, commands: list[ExeCommand]) -> None:
        self.batch_id = batch_id
        self.commands = commands
        self.results: list[CommandResultWire] = []
        self.finished = False
        self.changed = asyncio.Condition()
        self.delivered = 0
        self.task: asyncio.Task[None] | None = None

    async def add(self, result: CommandResultWire) -> None:
        async with self.changed:
            self.results.append(result)
            if result.is_batch_finished:
                self.finished = True
            self.changed.notify_all()

    async def poke(self) -> None:
        async with self.changed:
            self.changed.notify_all()


class Activity:
    """One exe-unit: its VM, its state, its usage counters (the `payment.Metered` protocol)."""

    def __init__(self, activity_id: str, agreement: Agreement, vm: VmLike) -> None:
        self._activity_id = activity_id
        self._agreement = agreement
        self.vm = vm
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self.ended_at: float | None = None
        self.cpu_s = 0.0
        self.running_since: float | None = None
        self.batches: dict[str, Batch] = {}
        self.lock = asyncio.Lock()
        self.state: ActivityStateName = "Initialized"
        self.next_state: ActivityStateName | None = None
        self.error: str | None = None
        self.fault_anchor: float | None = None
        self.vpn_anchored = False
        self.connections: set[asyncio.StreamWriter] = set()
        #: The VM's stop (terminate, or kill when that fails), once begun: shared by whoever waits for it.
        self.vm_stop: asyncio.Task[None] | None = None
        self.record = ActivityRecord(
            activity_id=activity_id,
            agreement_id=agreement.agreement_id,
            provider_id=agreement.provider.provider_id,
            vm_id=vm.vm_id,
            created_at=now(),
        )

    @property
    def activity_id(self) -> str:
        return self._activity_id

    @property
    def agreement(self) -> Agreement:
        return self._agreement

    @property
    def ended(self) -> bool:
        return self.state == "Terminated"

    def usage(self) -> Usage:
        end = self.ended_at if self.ended_at is not None else self.loop.time()
        cpu = self.cpu_s
        if self.running_since is not None:
            cpu += end - self.running_since
        return Usage(duration_s=max(end - self.started_at, 0.0), cpu_s=cpu)

    def set_state(self, state: ActivityStateName, next_state: ActivityStateName | None = None) -> None:
        self.state = state
        self.next_state = next_state
        self.record.state = state

    def wire_state(self) -> ActivityStateWire:
        return ActivityStateWire(
            state=(self.state, self.next_state),
            reason=self.record.reason if self.ended else None,
            error_message=self.error,
        )


class Activities:
    def __init__(
        self,
        market: Market,
        payments: Payments,
        registry: Registry,
        faults: FaultPlan,
        records: Records,
        vm_factory: VmFactory,
        root: Path,
        settings: ActivitySettings,
    ) -> None:
        self.market = market
        self.payments = payments
        self.registry = registry
        self.faults = faults
        self.records = records
        self.vm_factory = vm_factory
        self.root = root
        self.settings = settings
        self.activities: dict[str, Activity] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._vm_count = 0
        market.on_agreement_ended.append(self._agreement_ended)
        payments.activities_of = self.of_agreement

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def of_agreement(self, agreement_id: str) -> list[Activity]:
        return [a for a in self.activities.values() if a.agreement.agreement_id == agreement_id]

    def live_for_provider(self, provider_id: str) -> Activity | None:
        """The provider's running exe-unit (the one its VPN address reaches), if any."""
        for activity in reversed(list(self.activities.values())):
            if activity.agreement.provider.provider_id == provider_id and not activity.ended:
                return activity
        return None

    def activity(self, activity_id: str) -> Activity:
        activity = self.activities.get(activity_id)
        if activity is None:
            raise not_found("Activity", activity_id)
        return activity

    async def checked(self, activity_id: str) -> Activity:
        """The activity, ended first if its started VM died by itself (the exe-unit noticed)."""
        activity = self.activity(activity_id)
        if activity.state == "Ready" and not activity.vm.alive:
            await self.end(activity, "the VM died", error="ExeUnit terminated unexpectedly: the VM is dead")
        return activity

    async def close(self) -> None:
        for activity in list(self.activities.values()):
            if not activity.ended:
                await self.end(activity, "sandbox shut down", stop_vm=False)
        await asyncio.gather(*(self.stop_vm(a) for a in self.activities.values()), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- lifecycle --------------------------------------------------------------------------
    async def create(self, agreement_id: str) -> Activity:
        agreement = self.market.agreement(agreement_id)
        if agreement.state != "Approved":
            raise ApiError(400, f"Agreement {agreement_id} is {agreement.state}; an activity needs an Approved one")
        provider = agreement.provider
        if self.faults.hits(Fault.ACTIVITY_FAILS, provider.provider_id, "activity creation refused"):
            raise ApiError(
                500,
                f"GSB error: remote service at `/net/{provider.provider_id}/activity` error: "
                "Failed to create activity: ExeUnit failed to start (sandbox fault activity-fails)",
            )
        self._vm_count += 1
        vm_id = f"{provider.name}-{self._vm_count}"
        activity_id = new_id()
        vm = await self.vm_factory(self.root, vm_id)
        activity = Activity(activity_id, agreement, vm)
        self.activities[activity_id] = activity
        self.records.activities[activity_id] = activity.record
        agreement.record.activity_ids.append(activity_id)
        self.payments.start_metering(activity)
        log.info("activity created", activity_id=activity_id, provider=provider.name, vm_id=vm_id)
        return activity

    async def end(self, activity: Activity, reason: str, error: str | None = None, stop_vm: bool = True) -> None:
        """The exe-unit ends: usage stops counting, batches fail, the VM is stopped (in the background)."""
        if activity.ended:
            return
        activity.ended_at = activity.loop.time()
        if activity.running_since is not None:
            activity.cpu_s += activity.ended_at - activity.running_since
            activity.running_since = None
        activity.set_state("Terminated")
        activity.error = error
        activity.record.reason = reason
        activity.record.terminated_at = now()
        self.payments.stop_metering(activity.activity_id)
        for writer in list(activity.connections):
            writer.close()
        for batch in activity.batches.values():
            if batch.task is not None and not batch.task.done():
                batch.task.cancel()
            await batch.poke()
        log.info("activity ended", activity_id=activity.activity_id, reason=reason, error=error)
        if stop_vm:
            self.stop_vm(activity)

    def stop_vm(self, activity: Activity) -> asyncio.Task[None]:
        """Stop the activity's VM (once; later calls get the same task to wait on)."""
        if activity.vm_stop is None:
            activity.vm_stop = asyncio.get_running_loop().create_task(self._stop_vm(activity))
        return activity.vm_stop

    async def _stop_vm(self, activity: Activity) -> None:
        try:
            await asyncio.wait_for(activity.vm.terminate(), self.settings.vm_stop_timeout_s)
        except Exception as exc:  # a VM that cannot stop cleanly is killed
            log.warning("VM did not stop cleanly", vm_id=activity.vm.vm_id, error=str(exc))
            try:
                await activity.vm.kill()
            except Exception as kill_exc:
                log.warning("VM could not be killed", vm_id=activity.vm.vm_id, error=str(kill_exc))

    async def destroy(self, activity_id: str) -> None:
        """DELETE /activity/{id}: as yagna, answer once the exe-unit is gone."""
        activity = self.activity(activity_id)
        await self.end(activity, "destroyed by the requestor")
        await asyncio.shield(self.stop_vm(activity))

    async def _agreement_ended(self, agreement: Agreement) -> None:
        by = agreement.record.terminated_by or "Requestor"
        for activity in self.of_agreement(agreement.agreement_id):
            if not activity.ended:
                error = None if by == "Requestor" else f"agreement ended by the provider: {agreement.record.reason}"
                await self.end(activity, f"agreement {agreement.state.lower()} by the {by.lower()}", error=error)

    async def kill_vm(self, activity: Activity, detail: str) -> None:
        """The VM dies abruptly (fault vm-dies)."""
        if activity.ended:
            return
        log.warning("VM dies", vm_id=activity.vm.vm_id, detail=detail)
        try:
            await activity.vm.kill()
        except Exception as exc:
            log.warning("killing the VM failed", vm_id=activity.vm.vm_id, error=str(exc))
        await self.end(activity, "the VM died", error=f"ExeUnit terminated unexpectedly: {detail}", stop_vm=False)

    # ---- faults anchored on the VM's life -------------------------------------------------------
    def _arm(self, activity: Activity) -> None:
        """After `start`: arm vm-dies / provider-terminates for the provider they hit."""
        activity.fault_anchor = activity.loop.time()
        provider_id = activity.agreement.provider.provider_id
        settings = self.faults.settings
        dies_after = settings.vm_dies_after_requests
        when = f"{dies_after} requests" if dies_after else f"{settings.vm_dies_after_s:g}s"
        if self.faults.hits(Fault.VM_DIES, provider_id, f"VM dies {when} into its run"):
            self._spawn(self._after(activity, settings.vm_dies_after_s, dies_after, lambda: self._die(activity)))
        ends_after = settings.provider_terminates_after_requests
        when = f"{ends_after} requests" if ends_after else f"{settings.provider_terminates_after_s:g}s"
        if self.faults.hits(Fault.PROVIDER_TERMINATES, provider_id, f"provider ends the agreement {when} into its run"):
            delay = settings.provider_terminates_after_s
            self._spawn(self._after(activity, delay, ends_after, lambda: self._terminate(activity)))

    async def _die(self, activity: Activity) -> None:
        await self.kill_vm(activity, "the VM process was killed (sandbox fault vm-dies)")

    async def _terminate(self, activity: Activity) -> None:
        reason = "Provider ended the agreement (sandbox fault provider-terminates)"
        await self.market.end(activity.agreement, "Provider", reason)

    async def _after(
        self, activity: Activity, delay: float, requests: int | None, action: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `action` once the VM has been sent `requests` HTTP requests over the VPN, or, without
        a count, `delay` s after the activity's fault anchor (which may move once, to the VPN)."""
        if requests is not None:
            while activity.record.vpn_requests < requests and not activity.ended:
                await asyncio.sleep(0.02)
        else:
            while True:
                assert activity.fault_anchor is not None
                wait = activity.fault_anchor + delay - activity.loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        if not activity.ended:
            await action()

    def note_vpn_connection(self, activity: Activity) -> None:
        """A VPN connection reached the VM: the faults' clock restarts from the first one."""
        activity.record.vpn_connections += 1
        if not activity.vpn_anchored:
            activity.vpn_anchored = True
            activity.fault_anchor = activity.loop.time()

    # ---- exe-scripts --------------------------------------------------------------------------
    async def exec(self, activity_id: str, text: str) -> str:
        activity = await self.checked(activity_id)
        if activity.ended:
            raise _gsb_error(activity)
        try:
            commands = EXE_SCRIPT.validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(400, f"invalid exe-script: {first.get('msg', 'invalid')}") from exc
        batch = Batch(new_id(), commands)
        activity.batches[batch.batch_id] = batch
        batch.task = self._spawn(self._run_batch(activity, batch))
        return batch.batch_id

    async def _run_batch(self, activity: Activity, batch: Batch) -> None:
        async with activity.lock:
            await self._run_commands(activity, batch)
        if any(isinstance(c, TerminateCommand) for c in batch.commands) and batch.results[-1].result == "Ok":
            # The exe-unit stops after `terminate`: end it from outside this batch's own task.
            self._spawn(self.end(activity, "terminated by its exe-script"))

    async def _run_commands(self, activity: Activity, batch: Batch) -> None:
        for index, command in enumerate(batch.commands):
            last = index == len(batch.commands) - 1
            started = now()
            stdout = stderr = message = None
            ok = True
            try:
                stdout, stderr = await self._execute(activity, command)
            except CommandFailed as failure:
                ok, message, stdout, stderr = False, failure.message, failure.stdout, failure.stderr
            result = CommandResultWire(
                index=index,
                event_date=now(),
                result="Ok" if ok else "Error",
                stdout=stdout,
                stderr=stderr,
                message=message,
                is_batch_finished=last or not ok,
            )
            activity.record.commands.append(
                CommandRecord(
                    batch_id=batch.batch_id,
                    index=index,
                    command=command_name(command),
                    ok=ok,
                    message=message,
                    started_at=started,
                    finished_at=result.event_date,
                )
            )
            if not ok and activity.state == "Ready" and not activity.vm.alive:
                # The exe-unit died under the command: the batch never finishes (ended from outside this task).
                self._spawn(self.end(activity, "the VM died", error=f"ExeUnit terminated unexpectedly: {message}"))
                return
            await batch.add(result)
            if not ok:
                return

    async def _execute(self, activity: Activity, command: ExeCommand) -> tuple[str | None, str | None]:
        vm = activity.vm
        provider_id = activity.agreement.provider.provider_id
        try:
            if isinstance(command, DeployCommand):
                image = await self._image(activity)
                if self.faults.hits(
                    Fault.SLOW_DEPLOY, provider_id, f"deploy takes {self.faults.settings.slow_deploy_s:g}s"
                ):
                    await asyncio.sleep(self.faults.settings.slow_deploy_s)
                if self.faults.hits(Fault.DEPLOY_FAILS, provider_id, "deploy fails"):
                    raise CommandFailed(
                        "Deploy failed: the VM runtime could not mount the image (sandbox fault deploy-fails)"
                    )
                activity.set_state("Initialized", "Deployed")
                await vm.deploy(image)
                activity.set_state("Deployed")
                return None, None
            if isinstance(command, StartCommand):
                if activity.state != "Deployed":
                    raise CommandFailed(f"Start failed: the activity is {activity.state}, deploy it first")
                activity.set_state("Deployed", "Ready")
                await vm.start()
                activity.set_state("Ready")
                self._arm(activity)
                return None, None
            if isinstance(command, RunCommand):
                if activity.state != "Ready":
                    raise CommandFailed(f"Run failed: the activity is {activity.state}, start it first")
                activity.running_since = activity.loop.time()
                try:
                    out = await vm.run(command.run.entry_point, list(command.run.args), self.settings.command_timeout_s)
                finally:
                    if activity.running_since is not None:
                        activity.cpu_s += activity.loop.time() - activity.running_since
                        activity.running_since = None
                if out.rc != 0:
                    raise CommandFailed(f"ExeScriptCommand exited with code {out.rc}", out.stdout, out.stderr)
                return out.stdout, out.stderr
            if isinstance(command, TransferCommand):
                if activity.state not in ("Deployed", "Ready"):
                    raise CommandFailed(f"Transfer failed: the activity is {activity.state}, deploy it first")
                await vm.transfer(_local(command.transfer.from_), _local(command.transfer.to))
                return None, None
            if isinstance(command, TerminateCommand):
                return None, None
            raise CommandFailed(f"{command_name(command)}: not supported by the sandbox's VM runtime")
        except CommandFailed:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # VmError, OSError, timeouts: the command's error message
            raise CommandFailed(f"{command_name(command)} failed: {exc}") from exc

    async def _image(self, activity: Activity) -> bytes:
        package = activity.agreement.requestor_properties.get(PROP_TASK_PACKAGE)
        match = re.fullmatch(r"hash:sha3:([0-9a-fA-F]{56}):(.+)", str(package or ""))
        if match is None:
            raise CommandFailed(f"Deploy failed: no usable {PROP_TASK_PACKAGE} in the agreement: {package!r}")
        want, url = match.group(1).lower(), match.group(2)
        data = self.registry.local_bytes(url)
        if data is None:
            try:
                timeout = aiohttp.ClientTimeout(total=self.settings.image_download_timeout_s)
                async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
                    if resp.status != 200:
                        raise CommandFailed(f"Deploy failed: downloading {url}: HTTP {resp.status}")
                    data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise CommandFailed(f"Deploy failed: downloading {url}: {exc}") from exc
        got = hashlib.sha3_224(data).hexdigest()
        if got != want:
            raise CommandFailed(f"Deploy failed: invalid image hash: expected {want}, got {got}")
        return data

    async def results(
        self, activity_id: str, batch_id: str, command_index: int | None, timeout: float
    ) -> list[CommandResultWire]:
        activity = await self.checked(activity_id)
        batch = activity.batches.get(batch_id)
        if batch is None:
            raise not_found("Batch", batch_id)
        wanted = command_index + 1 if command_index is not None else batch.delivered + 1

        def ready() -> bool:
            return batch.finished or len(batch.results) >= wanted or activity.ended

        if not ready():
            async with batch.changed:
                try:
                    await asyncio.wait_for(batch.changed.wait_for(ready), timeout)
                except TimeoutError:
                    pass
        if activity.ended and not batch.finished:
            raise _gsb_error(activity)
        batch.delivered = len(batch.results)
        return list(batch.results)

    # ---- HTTP ---------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        p = "/activity-api/v1"
        return [
            web.post(f"{p}/activity", self._h_create),
            web.delete(f"{p}/activity/{{id}}", self._h_destroy),
            web.post(f"{p}/activity/{{id}}/exec", self._h_exec),
            web.get(f"{p}/activity/{{id}}/exec/{{batch}}", self._h_results),
            web.get(f"{p}/activity/{{id}}/state", self._h_state),
            web.get(f"{p}/activity/{{id}}/usage", self._h_usage),
        ]

    async def _h_create(self, request: web.Request) -> web.Response:
        body = await read_typed(request, CREATE_BODY)
        if isinstance(body, str):
            return respond((await self.create(body)).activity_id, status=201)
        activity = await self.create(body.agreement_id)
        return respond(CreateActivityResultWire(activity_id=activity.activity_id), status=201)

    async def _h_destroy(self, request: web.Request) -> web.Response:
        await self.destroy(request.match_info["id"])
        return respond(None)

    async def _h_exec(self, request: web.Request) -> web.Response:
        body = await read_body(request, ExeScriptBody)
        return respond(await self.exec(request.match_info["id"], body.text))

    async def _h_results(self, request: web.Request) -> web.Response:
        raw_index = request.query.get("commandIndex")
        try:
            command_index = int(raw_index) if raw_index not in (None, "") else None
        except ValueError as exc:
            raise ApiError(400, f"query parameter commandIndex: not an integer: {raw_index!r}") from exc
        timeout = query_float(request, "timeout", 5.0, maximum=60.0)
        results = await self.results(request.match_info["id"], request.match_info["batch"], command_index, timeout)
        return respond(results)

    async def _h_state(self, request: web.Request) -> web.Response:
        return respond((await self.checked(request.match_info["id"])).wire_state())

    async def _h_usage(self, request: web.Request) -> web.Response:
        activity = self.activity(request.match_info["id"])
        return respond(ActivityUsageWire(current_usage=activity.usage().vector(), timestamp=int(now().timestamp())))


def _gsb_error(activity: Activity) -> ApiError:
    return ApiError(
        500,
        f"GSB error: remote service at `/public/exeunit/{activity.activity_id}` error: "
        f"endpoint address not found (the activity is Terminated: {activity.record.reason})",
    )


def _local(url: str) -> str:
    """A transfer end as the VM takes it: `file://` for the local gftp stand-in's URLs."""
    if url.startswith("gftp://"):
        try:
            return gftp.path_for(url).as_uri()
        except ValueError as exc:
            raise CommandFailed(f"transfer failed: {exc} (the sandbox reaches only the local gftp stand-in)") from exc
    return url
