"""A suite: the questions, models and regions of one benchmark run, read from YAML.

A suite file is strict: an unknown key is an error, so a typo never silently falls back
to a default. `load_suite` turns every problem into one line naming the file, the field
path and what is wrong (`examples/x.yaml: questions.2.text: Field required`).

`expand_jobs` plans the run: one job per question x model x region x repetition, each with
a deterministic key and the exact `GenerationRequest` that will be sent.

A suite may also (or only) hold a `perf` section: a load profile and prompt spec that the run
benchmarks every node of its fleet with, after the questions (docs/benchmarks.md, "Perf in
suites and fleets").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from beacon_golem.core.bench import PerfPlan
from beacon_golem.core.canonical import canonical_json, sha256_hex
from beacon_golem.core.errors import UsageError, one_line
from beacon_golem.core.inference import ChatMessage, GenerationRequest
from beacon_golem.core.untrusted import MAX_INPUT_FILE_BYTES, check_structure, loads_json, nonfinite_path, read_bounded

#: Runtimes a model can ask for; "any" lets the dispatcher use whatever a node serves.
RuntimeName = Literal["llamacpp", "ollama", "dmr", "vllm", "any"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The separator inside job keys; no id, model name or region may contain it.
KEY_SEP = "|"
#: Longest a job may take, and longest a retry may wait: finite, and small enough for every timer.
MAX_JOB_TIMEOUT_S = 7 * 24 * 3600.0
MAX_BACKOFF_S = 24 * 3600.0






def _check_system_prompt(value: Any) -> str | dict[str, str] | None:
    """One system prompt for every region, or a map region -> system prompt."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty (leave it out for no system prompt)")
        return value
    if isinstance(value, dict):
        if not value:
            raise ValueError("the region map must not be empty")
        for region, prompt in value.items():
            if not isinstance(region, str) or not isinstance(prompt, str):
                raise ValueError("give one string, or a map of region label -> string")
            if not prompt.strip():
                raise ValueError(f"the prompt for region '{region}' must not be empty")
        return dict(value)
    raise ValueError("give one string, or a map of region label -> string")


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1)
    #: A free label: control, bias, cultural, ...
    category: str = Field(default="control", min_length=1, max_length=100)
    #: Project Beacon's `context` label for the question, kept for reference; never sent.
    context: str | None = None
    #: One system prompt, or a map region -> system prompt (regions left out get none).
    #: Overrides the suite's `system_prompt` for this question.
    system_prompt: Any = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID_RE.fullmatch(value):
            raise ValueError("use letters, digits and . _ : - (starting with a letter or digit)")
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt(cls, value: Any) -> str | dict[str, str] | None:
        return _check_system_prompt(value)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=300)
    runtime: RuntimeName = "any"
    #: The regions this model is asked in (a subset of the suite's); none: every region.
    regions: list[str] | None = Field(default=None, min_length=1)
    #: The model's id in Project Beacon (e.g. llama3.2-1b) when `name` is what a node serves for it.
    beacon_id: str | None = Field(default=None, min_length=1, max_length=300)

    @model_serializer(mode="wrap")
    def _no_empty_extras(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Leave `regions` and `beacon_id` out when unset: a suite without them hashes as before."""
        data = handler(self)
        if isinstance(data, dict):
            for key in ("regions", "beacon_id"):
                if key in data and data[key] is None:
                    del data[key]
        return data

    @field_validator("name", "beacon_id")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and (KEY_SEP in value or value != value.strip()):
            raise ValueError(f"must not contain '{KEY_SEP}' or surrounding spaces")
        return value

    @property
    def label(self) -> str:
        """How reports and job keys name the model: its Beacon id when it has one."""
        return self.beacon_id or self.name


class GenerationParams(BaseModel):
    """Sent with every request. Greedy (temperature 0) by default so regions are comparable."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=256, ge=1, le=131_072)
    temperature: float | None = Field(default=0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    #: Sent unchanged on every repetition; null lets the runtime pick.
    seed: int | None = None
    repetitions: int = Field(default=1, ge=1, le=10_000)
    ignore_eos: bool = False


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Requests kept in flight on one node.
    per_node_concurrency: int = Field(default=4, ge=1, le=1024)
    #: Seconds one generation may take before it is given up and retried.
    job_timeout_s: float = Field(default=600.0, gt=0, le=MAX_JOB_TIMEOUT_S, allow_inf_nan=False)
    #: Further attempts after the first one fails (0: never retry).
    retries: int = Field(default=2, ge=0, le=100)
    #: Delay before the first retry, doubled on each further one, capped at `backoff_max_s`.
    backoff_s: float = Field(default=2.0, ge=0, le=MAX_BACKOFF_S, allow_inf_nan=False)
    backoff_max_s: float = Field(default=60.0, ge=0, le=MAX_BACKOFF_S, allow_inf_nan=False)

    @model_validator(mode="after")
    def _backoff(self) -> Limits:
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be at least backoff_s")
        return self

    def backoff_for(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (2 = the first retry)."""
        if attempt <= 1:
            return 0.0
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 2))


class Acceptance(BaseModel):
    """When a run counts as done although some jobs failed (a Beacon JobSpec's constraints).

    Without it a run is done only when every job is.
    """

    model_config = ConfigDict(extra="forbid")

    #: Regions in which at least one job must have succeeded.
    min_regions: int = Field(default=1, ge=1)
    #: Share of the run's jobs that must have succeeded.
    min_success_rate: float = Field(default=0.67, ge=0.0, le=1.0)


class PerfSection(PerfPlan):
    """`perf:` in a suite: benchmark every node of the fleet after the questions.

    `profile` (synchronous, concurrency, sweep, rate, poisson), `prompts` (input_len,
    output_len, ...), `slo` and `model` are the load generator's own models
    (beacon_golem.node.loadgen); `where` says where the load generator runs.
    """

    #: node: on each node next to its runtime (a perf job through the shim's /jobs API);
    #: requestor: from this machine through each node's URL (what a client sees, network included).
    where: Literal["node", "requestor"] = "node"
    #: Benchmark the nodes at the same time. Default: only where=node on a static or Golem
    #: fleet (separate machines, load generated on each); one node after another otherwise,
    #: so nodes sharing a machine or one load generator do not skew each other's figures.
    parallel: bool | None = None
    #: Longest one node's benchmark may take before it is given up.
    timeout_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _files_stay_here(self) -> PerfSection:
        if self.where == "node" and self.prompts.prompt_file is not None:
            raise ValueError("prompts.prompt_file: a node cannot read this machine's files; use where: requestor")
        return self


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    #: Default system prompt for questions that set none: one string or region -> string.
    system_prompt: Any = None
    #: May be empty when the suite has a perf section (a suite needs at least one of the two).
    questions: list[Question] = Field(default_factory=list)
    #: Needed for questions; a perf-only suite may leave it out.
    models: list[ModelSpec] = Field(default_factory=list)
    regions: list[str] = Field(min_length=1)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    limits: Limits = Field(default_factory=Limits)
    perf: PerfSection | None = None
    acceptance: Acceptance | None = None

    @model_serializer(mode="wrap")
    def _no_empty_perf(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Leave `perf` and `acceptance` out when unset, so a suite without them hashes as it did before."""
        data = handler(self)
        if isinstance(data, dict):
            for key in ("perf", "acceptance"):
                if data.get(key, 0) is None:
                    del data[key]
        return data

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt(cls, value: Any) -> str | dict[str, str] | None:
        return _check_system_prompt(value)

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for label in value:
            if not _REGION_RE.fullmatch(label):
                raise ValueError(f"region '{label}': use letters, digits and . _ - (e.g. US, EU, us-east)")
        dupes = sorted({r for r in value if value.count(r) > 1})
        if dupes:
            raise ValueError(f"region listed twice: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _finite(self) -> Suite:
        """No NaN or infinity anywhere (a perf rate, an overload threshold...): JSON has no such number,
        so the stored suite would not read back, and no timer takes one."""
        where = nonfinite_path(self.model_dump())
        if where is not None:
            raise ValueError(f"{where}: must be a finite number (NaN and infinity are refused)")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Suite:
        if not self.questions and self.perf is None:
            raise ValueError("questions: a suite needs at least one question, a perf section, or both")
        if self.questions and not self.models:
            raise ValueError("models: List should have at least 1 item (the questions need a model)")
        seen: set[str] = set()
        for q in self.questions:
            if q.id in seen:
                raise ValueError(f"questions: id '{q.id}' is used twice")
            seen.add(q.id)
        pairs = [(m.label, m.runtime) for m in self.models]
        for pair in pairs:
            if pairs.count(pair) > 1:
                raise ValueError(f"models: '{pair[0]}' on runtime {pair[1]} is listed twice")
        regions = set(self.regions)
        for i, m in enumerate(self.models):
            unknown_regions = [r for r in m.regions or [] if r not in regions]
            if unknown_regions:
                raise ValueError(
                    f"models.{i}.regions: region '{unknown_regions[0]}' is not in regions ({', '.join(self.regions)})"
                )
        if self.acceptance is not None and self.acceptance.min_regions > len(self.regions):
            raise ValueError(
                f"acceptance.min_regions: {self.acceptance.min_regions} is more than the suite's "
                f"{len(self.regions)} regions"
            )
        for where, prompt in [("system_prompt", self.system_prompt)] + [
            (f"questions.{i}.system_prompt", q.system_prompt) for i, q in enumerate(self.questions)
        ]:
            if isinstance(prompt, dict):
                unknown = sorted(set(prompt) - regions)
                if unknown:
                    raise ValueError(
                        f"{where}: region '{unknown[0]}' is not in regions ({', '.join(self.regions)})"
                    )
        return self

    def system_prompt_for(self, question: Question, region: str) -> str | None:
        prompt = question.system_prompt if question.system_prompt is not None else self.system_prompt
        if isinstance(prompt, dict):
            return prompt.get(region)
        return prompt

    def canonical(self) -> dict[str, Any]:
        """Every field, defaults included, as plain JSON values."""
        return self.model_dump(mode="json")

    def suite_hash(self) -> str:
        """"sha256:" + hex of the canonical JSON (sorted keys, no whitespace) of the suite."""
        return sha256_hex(canonical_json(self.canonical()))

    def model_regions(self, model: ModelSpec) -> list[str]:
        """The regions a model is asked in, in the suite's order."""
        return [r for r in self.regions if model.regions is None or r in model.regions]

    def job_count(self) -> int:
        per_question = sum(len(self.model_regions(m)) for m in self.models)
        return len(self.questions) * per_question * self.generation.repetitions


def suite_hash(suite: Suite) -> str:
    return suite.suite_hash()


class PlannedJob(BaseModel):
    """One generation the run must get answered: a question, for a model, in a region."""

    model_config = ConfigDict(extra="forbid")

    #: `question|model|runtime|region|repetition`: unique in a run, the same for the same suite.
    key: str
    seq: int
    question_id: str
    category: str
    model: str
    runtime: RuntimeName
    region: str
    #: 0-based repetition index.
    repetition: int
    system_prompt: str | None = None
    request: GenerationRequest
    #: The model's Project Beacon id, when the suite names one (`ModelSpec.beacon_id`).
    beacon_model: str | None = None

    def spec(self, suite_hash_value: str) -> dict[str, Any]:
        """The job's spec: what a receipt's `job_spec_hash` is the hash of."""
        extra = {"beacon_model": self.beacon_model} if self.beacon_model is not None else {}
        return extra | {
            "suite_hash": suite_hash_value,
            "key": self.key,
            "question_id": self.question_id,
            "category": self.category,
            "model": self.model,
            "runtime": self.runtime,
            "region": self.region,
            "repetition": self.repetition,
            "request": self.request.model_dump(mode="json"),
        }


def job_key(question_id: str, model: str, runtime: str, region: str, repetition: int) -> str:
    return KEY_SEP.join([question_id, model, runtime, region, str(repetition)])


def expand_jobs(suite: Suite) -> list[PlannedJob]:
    """Question x model x region x repetition, in that nesting order (question outermost)."""
    gen = suite.generation
    jobs: list[PlannedJob] = []
    for question in suite.questions:
        for model in suite.models:
            for region in suite.model_regions(model):
                system = suite.system_prompt_for(question, region)
                messages = ([ChatMessage(role="system", content=system)] if system else []) + [
                    ChatMessage(role="user", content=question.text)
                ]
                request = GenerationRequest(
                    messages=messages,
                    model=model.name,
                    max_tokens=gen.max_tokens,
                    temperature=gen.temperature,
                    top_p=gen.top_p,
                    seed=gen.seed,
                    ignore_eos=gen.ignore_eos,
                )
                for rep in range(gen.repetitions):
                    jobs.append(
                        PlannedJob(
                            key=job_key(question.id, model.label, model.runtime, region, rep),
                            seq=len(jobs),
                            question_id=question.id,
                            category=question.category,
                            model=model.name,
                            runtime=model.runtime,
                            region=region,
                            repetition=rep,
                            system_prompt=system,
                            request=request,
                            beacon_model=model.beacon_id,
                        )
                    )
    return jobs


# ---------------------------------------------------------------------------------------
# Reading files


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_json(text: str, source: str) -> Any:
    """Parse JSON; a syntax error becomes `SOURCE: not valid JSON: line N column M: problem`."""
    return loads_json(text, what=source)


def parse_data(text: str, source: str) -> Any:
    """A `.json` file as JSON (its errors say JSON, with line and column), anything else as YAML."""
    if source.lower().endswith(".json"):
        return parse_json(text, source)
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML; a syntax error becomes `SOURCE: not valid YAML: line N: problem`. A document
    nested too deep, referring to itself, or growing past the bound through aliases is refused
    the same way (core/untrusted.py)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise UsageError(f"{source}: not valid YAML: nested too deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise UsageError(f"{source}: not valid YAML: {where}{problem}") from None
    check_structure(data, what=source, finite=False)  # the models say which number is not finite, and why
    return data


def read_text_file(path: Path, max_bytes: int = MAX_INPUT_FILE_BYTES) -> str:
    """A regular UTF-8 file of at most `max_bytes` (never a FIFO or a device: see `read_bounded`)."""
    try:
        return read_bounded(path, max_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    data = parse_yaml(text, source)
    if data is None:
        raise UsageError(f"{source}: the file is empty; a suite needs name, questions, models and regions")
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping (name:, questions:, ...) at the top level")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{source}: {one_line(exc)}") from None


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; any problem is one UsageError line naming file and field."""
    path = Path(path)
    return parse_suite(read_text_file(path), str(path))


def load_suite_with_source(path: str | Path) -> tuple[Suite, str]:
    """The suite and the file's text, for `Store.create_run(..., suite_source=...)`."""
    path = Path(path)
    text = read_text_file(path)
    return parse_suite(text, str(path)), text


def dump_suite_yaml(suite: Suite) -> str:
    """The suite as YAML in field order; optional prompt/context fields left out when unset.

    Generation and limits are written in full (a null temperature stays null), so loading
    the output gives back the same suite and the same suite hash.
    """
    data = suite.model_dump(mode="json")
    if data.get("system_prompt") is None:
        data.pop("system_prompt", None)
    for question in data["questions"]:
        for key in ("context", "system_prompt"):
            if question.get(key) is None:
                question.pop(key, None)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    # Never hand out a suite file that does not read back as this very suite.
    try:
        same = parse_suite(text, "<written suite>").suite_hash() == suite.suite_hash()
    except UsageError as exc:
        raise UsageError(f"the suite cannot be written as a valid suite file: {exc}") from None
    if not same:
        raise UsageError("the suite cannot be written as a suite file that reads back the same")
    return text
