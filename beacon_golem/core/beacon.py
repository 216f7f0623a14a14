"""Project Beacon's own shapes, shared by every side: regions, a JobSpec's signature verdict and
provenance, Receipt v0.1.0, and the hybrid router's inference bodies.

What Beacon's Go and Python code does is in docs/runs.md ("Project Beacon, exactly"); the
models here follow its structs field for field (runner-app/pkg/models/receipt_types.go,
Website/hybrid_router/models/requests.py, runner-app/internal/hybrid/client.go).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------------------------------
# Regions (runner-app/internal/worker/helpers.go `mapRegionToRouter`)

#: Every region label Beacon's runner maps, -> the label our nodes and suites use.
BEACON_REGIONS: dict[str, str] = {
    "US": "US",
    "us-east": "US",
    "EU": "EU",
    "eu-west": "EU",
    "APAC": "APAC",
    "ASIA": "APAC",
    "asia-pacific": "APAC",
}
#: Our label -> the region name Beacon's hybrid router uses.
ROUTER_REGION: dict[str, str] = {"US": "us-east", "EU": "eu-west", "APAC": "asia-pacific"}
#: What Beacon's router also accepts as `region_preference` (`_normalize_region_alias`, lower-cased).
_ROUTER_ALIASES: dict[str, str] = {
    "us": "US", "usa": "US", "na": "US", "us-east": "US",
    "eu": "EU", "europe": "EU", "eu-west": "EU",
    "apac": "APAC", "asia": "APAC", "asia-pacific": "APAC",
}  # fmt: skip


class UnknownRegion(ValueError):
    def __init__(self, label: str) -> None:
        accepted = ", ".join(BEACON_REGIONS)
        super().__init__(
            f"region '{label}' is not one Beacon maps (accepted: {accepted}); "
            "Beacon's runner would send it to eu-west without a word"
        )
        self.label = label


def beacon_region(label: str) -> str:
    """A JobSpec's region label as our nodes name it (US, EU, APAC); UnknownRegion otherwise."""
    if label in BEACON_REGIONS:
        return BEACON_REGIONS[label]
    raise UnknownRegion(label)


def router_region_label(value: str) -> str | None:
    """A `region_preference` of Beacon's router (us-east, EU, asia...) as our label, or None."""
    return BEACON_REGIONS.get(value) or _ROUTER_ALIASES.get(value.strip().lower())


def router_region_name(label: str | None) -> str | None:
    """Our region label as Beacon's router names it (US -> us-east); other labels unchanged."""
    if label is None:
        return None
    return ROUTER_REGION.get(label, ROUTER_REGION.get(BEACON_REGIONS.get(label, ""), label))


# ---------------------------------------------------------------------------------------
# A JobSpec's signature and where a run came from

Scheme = Literal["V1", "RAW", "ZEROED", "STRIPPED"]
SignatureStatus = Literal["valid", "invalid", "unsigned"]
TrustStatus = Literal["trusted", "revoked", "expired", "not_yet_valid", "unknown"]


class SchemeCheck(BaseModel):
    scheme: Scheme
    verified: bool
    #: Why the scheme's bytes could not be built (Beacon's struct refuses the job), if so.
    error: str | None = None


class SignatureVerdict(BaseModel):
    """What `beacon jobspec verify --json` prints and what is stored with a run."""

    status: SignatureStatus
    #: The scheme that verified (None when none did or the job is unsigned).
    scheme: Scheme | None = None
    public_key: str | None = None
    #: Why the signature is invalid (bad base64, wrong key length, no scheme verified).
    reason: str | None = None
    checks: list[SchemeCheck] = Field(default_factory=list)
    #: With a trust list: the key's standing and the entry's kid.
    trust: TrustStatus | None = None
    kid: str | None = None

    def line(self) -> str:
        """One line for a person."""
        if self.status == "unsigned":
            return "unsigned: no signature and public_key (Beacon accepts it unsigned)"
        if self.status == "invalid":
            return f"invalid: {self.reason}"
        trust = ""
        if self.trust is not None:
            trust = f"; key {self.trust}" + (f" (kid {self.kid})" if self.kid else "")
        return f"valid: Ed25519, scheme {self.scheme}, public key {self.public_key}{trust}"

    @property
    def acceptable(self) -> bool:
        """Valid, and trusted where a trust list was given."""
        return self.status == "valid" and self.trust in (None, "trusted")


JobSpecLayout = Literal["struct", "cross-region", "legacy"]


class JobSpecProvenance(BaseModel):
    """A run imported from a Beacon JobSpec: which job, read how, signed by whom. Stored with the run."""

    jobspec_id: str
    #: True when the job had no id and got Beacon's `<benchmark.name>-<unix seconds>`.
    id_generated: bool = False
    layout: JobSpecLayout
    source: str
    #: "sha256:" + hex of the file's bytes.
    file_hash: str
    signature: SignatureVerdict
    #: `benchmark.input.hash` (legacy: `input.hash`): a receipt's `provenance.benchmark_hash`.
    benchmark_hash: str | None = None
    container_image: str | None = None
    #: What the job says it will execute, when it says (`metadata.total_executions_expected`, ...).
    expected_executions: int | None = None
    planned_executions: int
    #: Things said while reading it: a mismatch with the expected count, defaults applied, ...
    warnings: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Receipt v0.1.0 (runner-app/pkg/models/receipt_types.go)

RECEIPT_SCHEMA_VERSION = "v0.1.0"


def go_time(value: datetime) -> str:
    """A time as Go's `time.Time` marshals it in UTC (RFC 3339, fraction without trailing zeros, `Z`)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_duration_ns(started: datetime, ended: datetime) -> int:
    """`CompletedAt.Sub(StartedAt)` in integer nanoseconds (microsecond clocks here)."""
    delta = ended - started
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


class ExecutionDetails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str
    provider_id: str
    region: str
    started_at: str
    completed_at: str
    #: Go time.Duration: integer nanoseconds.
    duration: int
    status: str


class ExecutionOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Any = None
    #: SHA-256 hex (no prefix) of the JSON of `data`.
    hash: str
    metadata: dict[str, Any] | None = None


class ProvenanceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmark_hash: str
    provider_info: dict[str, Any] | None = None
    execution_env: dict[str, Any] | None = None


class ExecutionAttestation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    source: str
    timestamp: str
    statement: str
    evidence: str
    signature: str
    public_key: str


class BeaconReceipt(BaseModel):
    """Receipt v0.1.0 as Beacon's runner signs and verifies it; every field of its Go struct.

    `cross_region_data` and `attestations` are `omitempty` in Go: left out when unset, so the
    JSON written is the JSON Beacon's struct writes back, and the signature holds there.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: str = RECEIPT_SCHEMA_VERSION
    id: str
    jobspec_id: str
    execution_details: ExecutionDetails
    output: ExecutionOutput
    cross_region_data: dict[str, Any] | None = None
    provenance: ProvenanceInfo
    attestations: list[ExecutionAttestation] | None = None
    created_at: str
    completed_at: str
    signature: str = ""
    public_key: str = ""

    def wire(self) -> dict[str, Any]:
        """The receipt as Go's struct marshals it (omitempty fields left out when empty)."""
        data = self.model_dump(mode="json")
        if not data.get("cross_region_data"):
            data.pop("cross_region_data", None)
        if not data.get("attestations"):
            data.pop("attestations", None)
        return data


def is_beacon_receipt(value: Any) -> bool:
    return isinstance(value, dict) and value.get("schema_version") == RECEIPT_SCHEMA_VERSION and "execution_details" in value


# ---------------------------------------------------------------------------------------
# The hybrid router's inference contract (Website/hybrid_router/models/requests.py)


class BeaconInferenceRequest(BaseModel):
    """What Beacon's router posts to a provider's /inference, and its runner to the router's."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    temperature: float = Field(default=0.1, ge=0.0, le=2.0)
    max_tokens: int = Field(default=500, ge=1, le=131_072)
    region_preference: str | None = None
    cost_priority: bool = True
    trace_id: str | None = None


#: The prompt Beacon's runner builds (`formatRegionalPrompt`): "system\n<S>\nuser\n<Q>\nassistant\n".
_ROLE_PROMPT = re.compile(r"\Asystem\n(?P<system>.*?)\nuser\n(?P<user>.*)\nassistant\n?\Z", re.DOTALL)


def split_role_prompt(prompt: str) -> tuple[str | None, str]:
    """Beacon's flattened prompt back into (system, user); a plain prompt is (None, prompt)."""
    match = _ROLE_PROMPT.match(prompt)
    if match is None:
        return None, prompt
    return match.group("system"), match.group("user")


ErrorCode = Literal[
    "INVALID_REQUEST", "MODEL_NOT_SERVED", "PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT",
    "PROVIDER_ERROR", "PROVIDER_HTTP_ERROR", "ROUTER_INTERNAL_ERROR", "AUTH_REQUIRED", "NOT_FOUND",
]  # fmt: skip


class BeaconFailure(BaseModel):
    """The `failure` object Beacon's router builds (`_build_failure`), None fields left out."""

    model_config = ConfigDict(extra="allow")

    code: str
    stage: str
    component: str
    subcomponent: str = "inference"
    message: str
    provider: str | None = None
    provider_type: str | None = None
    region: str | None = None
    model: str | None = None
    transient: bool = False
    http_status: int | None = None
    timestamp: str
