"""The sandbox's fault knobs (`--fault NAME`) and who each one hits.

A fault that hits "one provider" hits the first provider that reaches the point where the fault
acts (the first to deploy, to create an activity, to be reached over the VPN...), so it fires in
every run whatever the requestor rents; from then on that provider keeps failing the same way, as
a broken provider does. Each firing is written to the records (`faults`).

- `vm-dies`: one provider's VM dies abruptly `vm_dies_after_s` after its first VPN connection
  (after its `start` command when nothing connects), or, with `vm_dies_after_requests`, once its
  VM has been sent that many HTTP requests over the VPN (a point in the run's progress, whatever
  the machine's speed): the activity turns Terminated, connections drop.
- `provider-terminates`: one provider ends the agreement `provider_terminates_after_s` after its
  first VPN connection (or `start`), or after `provider_terminates_after_requests` requests; its
  activity ends, it sends its invoice. yapapi 0.13 never polls agreement events, so the requestor
  learns of it only from the activity.
- `deploy-fails`: one provider's `deploy` command fails.
- `activity-fails`: one provider refuses to create activities (POST /activity answers 500).
- `vpn-flaky`: each provider's first `vpn_flaky_failures` VPN connections are refused.
- `vpn-dead`: one provider's VPN never connects.
- `slow-deploy`: one provider's `deploy` takes `slow_deploy_s` (longer than a requestor's start timeout).
- `late-invoices`: every invoice comes `late_invoice_delay_s` after its agreement ends (yapapi waits 30 s).
- `expensive`: every provider's prices are `expensive_factor` times higher.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

from pydantic import BaseModel, Field

from beacon_golem.sandbox.records import FaultRecord, Records
from beacon_golem.sandbox.wire import now


class Fault(StrEnum):
    VM_DIES = "vm-dies"
    PROVIDER_TERMINATES = "provider-terminates"
    DEPLOY_FAILS = "deploy-fails"
    ACTIVITY_FAILS = "activity-fails"
    VPN_FLAKY = "vpn-flaky"
    VPN_DEAD = "vpn-dead"
    SLOW_DEPLOY = "slow-deploy"
    LATE_INVOICES = "late-invoices"
    EXPENSIVE = "expensive"


#: Faults that hit one provider (the first to get there); the others hit every provider.
SINGLE_VICTIM = frozenset(
    {
        Fault.VM_DIES,
        Fault.PROVIDER_TERMINATES,
        Fault.DEPLOY_FAILS,
        Fault.ACTIVITY_FAILS,
        Fault.VPN_DEAD,
        Fault.SLOW_DEPLOY,
    }
)


class FaultSettings(BaseModel):
    """How hard each fault hits (the defaults suit a rehearsal; tests shorten them)."""

    vm_dies_after_s: float = Field(default=20.0, ge=0)
    #: When set, vm-dies fires after this many HTTP requests reached the VM (instead of the clock).
    vm_dies_after_requests: int | None = Field(default=None, ge=1)
    provider_terminates_after_s: float = Field(default=20.0, ge=0)
    #: When set, provider-terminates fires after this many HTTP requests reached the VM.
    provider_terminates_after_requests: int | None = Field(default=None, ge=1)
    vpn_flaky_failures: int = Field(default=2, ge=1)
    slow_deploy_s: float = Field(default=1800.0, ge=0)
    late_invoice_delay_s: float = Field(default=45.0, ge=0)
    expensive_factor: float = Field(default=50.0, gt=1)


class FaultPlan:
    """The faults switched on, their settings, and the providers they have hit so far."""

    def __init__(self, faults: list[Fault], settings: FaultSettings, records: Records) -> None:
        self.active = frozenset(faults)
        self.settings = settings
        self._records = records
        self._victims: dict[Fault, str] = {}
        self._vpn_refusals: Counter[str] = Counter()

    def __contains__(self, fault: Fault) -> bool:
        return fault in self.active

    def hits(self, fault: Fault, provider_id: str, detail: str) -> bool:
        """Whether `fault` hits this provider now; a single-victim fault picks the first asker."""
        if fault not in self.active:
            return False
        if fault in SINGLE_VICTIM:
            victim = self._victims.setdefault(fault, provider_id)
            if victim != provider_id:
                return False
        self._records.faults.append(FaultRecord(fault=fault.value, provider_id=provider_id, at=now(), detail=detail))
        return True

    def victim(self, fault: Fault) -> str | None:
        return self._victims.get(fault)

    def refuse_vpn(self, provider_id: str) -> str | None:
        """Why this VPN connection to the provider is refused, or None to let it through."""
        if self.hits(Fault.VPN_DEAD, provider_id, "VPN connection refused (the VPN never connects)"):
            return "connection to the node timed out"
        if Fault.VPN_FLAKY in self.active and self._vpn_refusals[provider_id] < self.settings.vpn_flaky_failures:
            self._vpn_refusals[provider_id] += 1
            count = self._vpn_refusals[provider_id]
            self.hits(Fault.VPN_FLAKY, provider_id, f"VPN connection {count} refused")
            return "connection to the node timed out"
        return None

    @property
    def price_factor(self) -> float:
        return self.settings.expensive_factor if Fault.EXPENSIVE in self.active else 1.0

    @property
    def invoice_delay_s(self) -> float | None:
        """The invoice delay the fault imposes, or None for the normal one."""
        return self.settings.late_invoice_delay_s if Fault.LATE_INVOICES in self.active else None
