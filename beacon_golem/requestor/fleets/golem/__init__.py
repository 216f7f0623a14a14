"""The Golem fleet: GPU providers rented over the Golem Network, one node each.

config.py    GolemFleetConfig, what a run asks for
payload.py   the VM payload (runtime vm-nvidia, VPN, GPU constraint) and image resolution
gpu.py       reading GAP-35 GPU properties from offers, both layouts
strategy.py  which offers are acceptable and which are best (GLM per hour caps, VRAM, CUDA...)
service.py   the yapapi Service each VM runs (deploy, start script, /health, log)
ledger.py    agreements, debit notes, invoices, budget
progress.py  yapapi events as progress lines and structlog events
records.py   the pydantic rows the store persists, and ProviderRecord it gives back
fleet.py     GolemFleet, the Fleet the dispatcher uses
doctor.py    `beacon golem doctor`: is this machine ready to rent
"""

from beacon_golem.requestor.fleets.golem.config import GolemFleetConfig
from beacon_golem.requestor.fleets.golem.fleet import GolemFleet
from beacon_golem.requestor.fleets.golem.records import GolemRecord, ProviderRecord

__all__ = ["GolemFleet", "GolemFleetConfig", "GolemRecord", "ProviderRecord"]
