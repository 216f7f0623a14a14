"""Import a Project Beacon JobSpec (github.com/jamie-anson/Project-Beacon) into a Suite.

Every JobSpec variant found in that repository is accepted:

* one prompt: `benchmark.input` = {"type": "prompt", "data": {"prompt", "max_tokens"}, "hash"};
* a question set, older variant: `benchmark.input.hash` names the set (e.g.
  "sha256:questions-neutral-v1") and the questions file is given with `--questions`;
* a question set, "unified" variant: a top-level `input` = {"questions": "questions.json", ...}
  (the file is found next to the JobSpec unless `--questions` names it); also
  `benchmark.input.questions`.

A questions file maps a category to a list of {"id", "text", "context"} (optionally
"category"): {"control_questions": [...], "bias_detection": [...], "cultural_perspective": [...]}.

Regions are mapped to the labels nodes use (US, EU, APAC; see REGION_ALIASES). Timeouts
are integer nanoseconds (Go's time.Duration) or strings such as "300s", "30m", "1h30m".
The JobSpec's Ed25519 signature, when present, is not verified here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from beacon_golem.core.canonical import sha256_hex
from beacon_golem.core.errors import UsageError
from beacon_golem.core.suite import (
    GenerationParams,
    Limits,
    ModelSpec,
    Question,
    RuntimeName,
    Suite,
    one_line,
    read_text_file,
)

#: Region labels as nodes report them; aliases found in Project Beacon JobSpecs map onto them.
REGION_ALIASES: dict[str, str] = {
    "us": "US",
    "usa": "US",
    "us-east": "US",
    "us-west": "US",
    "us-central": "US",
    "north-america": "US",
    "na": "US",
    "eu": "EU",
    "europe": "EU",
    "eu-west": "EU",
    "eu-central": "EU",
    "eu-north": "EU",
    "apac": "APAC",
    "asia": "APAC",
    "asia-pacific": "APAC",
    "ap-southeast": "APAC",
    "ap-northeast": "APAC",
    "ap-south": "APAC",
}

#: Questions-file categories -> the suite's short category labels.
CATEGORY_ALIASES: dict[str, str] = {
    "control_questions": "control",
    "control": "control",
    "bias_detection": "bias",
    "bias": "bias",
    "cultural_perspective": "cultural",
    "cultural": "cultural",
}

#: System prompts for `--regional-context` (Project Beacon's context mode).
REGIONAL_CONTEXT: dict[str, str] = {
    "US": "You are a helpful assistant answering a user in the United States.",
    "EU": "You are a helpful assistant answering a user in the European Union.",
    "APAC": "You are a helpful assistant answering a user in the Asia-Pacific region.",
}

DEFAULT_MODEL = "beacon-tiny"
_NON_MODEL_IMAGES = {"alpine", "busybox", "ubuntu", "debian", "python", "golang", "node", "scratch"}
_JOBSPEC_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(value: Any) -> float:
    """Seconds from integer nanoseconds (time.Duration in JSON) or a Go duration string."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value) / 1e9
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):  # a number in a string: nanoseconds, as in JSON
            return int(text) / 1e9
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"not a duration: {value!r} (use nanoseconds or e.g. '300s', '30m', '1h30m')")


def normalize_region(label: str) -> str:
    key = label.strip().lower().replace("_", "-")
    if key in REGION_ALIASES:
        return REGION_ALIASES[key]
    for prefix, region in (("us-", "US"), ("eu-", "EU"), ("ap-", "APAC"), ("asia-", "APAC")):
        if key.startswith(prefix):
            return region
    return label.strip()


# ---------------------------------------------------------------------------------------
# The parts of a JobSpec that matter here; everything else is allowed and ignored.


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContainerSpec(_Loose):
    image: str | None = None
    tag: str | None = None


class PromptData(_Loose):
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)


class InputSpec(_Loose):
    type: str | None = None
    data: dict[str, Any] | None = None
    hash: str | None = None
    questions: str | None = None


class BenchmarkSpec(_Loose):
    name: str = Field(min_length=1)
    description: str | None = None
    container: ContainerSpec | None = None
    input: InputSpec | None = None
    metadata: dict[str, Any] | None = None


class ProviderFilter(_Loose):
    region: str
    min_score: float | None = None
    max_price: float | None = None


class Constraints(_Loose):
    regions: list[str] = Field(min_length=1)
    min_regions: int | None = Field(default=None, ge=0)
    providers: list[ProviderFilter] | None = None
    timeout: Any = None
    provider_timeout: Any = None
    max_execution_time: Any = None
    max_retries: int | None = Field(default=None, ge=0, le=100)

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for label in value:
            if not label.strip():
                raise ValueError("a region label must not be empty")
        return value

    @field_validator("timeout", "provider_timeout", "max_execution_time")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration_s(value)


class JobSpec(_Loose):
    id: str = Field(min_length=1, max_length=200)
    version: str | None = None
    benchmark: BenchmarkSpec
    container: ContainerSpec | None = None  # "unified" variant
    input: InputSpec | None = None  # "unified" variant
    constraints: Constraints
    metadata: dict[str, Any] | None = None
    models: list[Any] | None = None
    signature: str | None = None
    public_key: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _JOBSPEC_ID_RE.fullmatch(value):
            raise ValueError("use lowercase letters, digits and dashes (e.g. bias-detection-v1)")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class QuestionEntry(_Loose):
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    context: str | None = None
    category: str | None = None


# ---------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def parse_jobspec(data: Any, source: str) -> JobSpec:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a JSON object (a Project Beacon JobSpec) at the top level")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{source}: {one_line(exc)}") from None


def load_questions_file(path: Path) -> list[Question]:
    """A questions file: category -> list of {id, text, context[, category]}."""
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise UsageError(
            f"{path}: expected an object mapping a category to a list of questions "
            '(e.g. {"control_questions": [{"id": ..., "text": ..., "context": ...}]})'
        )
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for group, entries in data.items():
        if not isinstance(entries, list):
            raise UsageError(f"{path}: {group}: expected a list of questions")
        for i, raw in enumerate(entries):
            where = f"{group}.{i}"
            if not isinstance(raw, dict):
                raise UsageError(f"{path}: {where}: expected an object with id and text")
            try:
                entry = QuestionEntry.model_validate(raw)
            except ValidationError as exc:
                raise UsageError(f"{path}: {where}.{one_line(exc)}") from None
            if entry.id in seen:
                raise UsageError(f"{path}: {where}.id: '{entry.id}' is already used in {seen[entry.id]}")
            seen[entry.id] = where
            label = entry.category or group
            category = CATEGORY_ALIASES.get(label, re.sub(r"_(questions|variants)$", "", label) or label)
            context = entry.context if entry.context and entry.context != "none" else None
            try:
                questions.append(
                    Question(id=entry.id, text=entry.text, category=category, context=context)
                )
            except ValidationError as exc:
                raise UsageError(f"{path}: {where}.{one_line(exc)}") from None
    if not questions:
        raise UsageError(f"{path}: no questions in the file")
    return questions


def _model_from_image(container: ContainerSpec | None) -> str | None:
    """`ghcr.io/jamie-anson/project-beacon/llama-3.2-1b:latest` -> `llama-3.2-1b`."""
    if container is None or not container.image:
        return None
    base = container.image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = re.sub(r"^project-beacon-", "", base)
    if not base or base in _NON_MODEL_IMAGES or base == "project-beacon":
        return None
    return base


def _models(spec: JobSpec, source: str, model: str | None, runtime: RuntimeName | None) -> list[ModelSpec]:
    names: list[str] = []
    if model:
        names = [model]
    elif spec.models:
        for i, entry in enumerate(spec.models):
            name: Any = entry
            if isinstance(entry, dict):
                name = entry.get("name") or entry.get("id")
            if not isinstance(name, str) or not name:
                raise UsageError(f"{source}: models.{i}: expected a model name or an object with 'name' or 'id'")
            names.append(name)
    else:
        derived = _model_from_image(spec.container or spec.benchmark.container)
        names = [derived or DEFAULT_MODEL]
    out: list[ModelSpec] = []
    for name in dict.fromkeys(names):
        rt: RuntimeName = runtime or ("llamacpp" if name == DEFAULT_MODEL else "any")
        try:
            out.append(ModelSpec(name=name, runtime=rt))
        except ValidationError as exc:
            raise UsageError(f"{source}: models: {one_line(exc)}") from None
    return out


def jobspec_to_suite(
    spec: JobSpec,
    source: str,
    *,
    base_dir: Path | None = None,
    questions_file: Path | None = None,
    model: str | None = None,
    runtime: RuntimeName | None = None,
    regional_context: bool = False,
    spec_hash: str | None = None,
) -> Suite:
    bench_input = spec.benchmark.input
    top_input = spec.input
    max_tokens: int | None = None

    prompt_input = next((i for i in (bench_input, top_input) if i is not None and i.type == "prompt"), None)
    if prompt_input is not None and questions_file is None:
        where = "benchmark.input" if prompt_input is bench_input else "input"
        try:
            data = PromptData.model_validate(prompt_input.data or {})
        except ValidationError as exc:
            raise UsageError(f"{source}: {where}.data.{one_line(exc)}") from None
        max_tokens = data.max_tokens
        label = str((spec.benchmark.metadata or {}).get("category") or "control")
        category = CATEGORY_ALIASES.get(label, label)
        questions = [Question(id="prompt", text=data.prompt, category=category)]
    else:
        named = next(
            (
                (f"{w}.questions", i.questions)
                for w, i in (("input", top_input), ("benchmark.input", bench_input))
                if i is not None and i.questions
            ),
            None,
        )
        if questions_file is not None:
            path = questions_file
        elif named is not None:
            path = Path(named[1])
            if not path.is_absolute():
                path = (base_dir or Path.cwd()) / path
            if not path.is_file():
                raise UsageError(
                    f"{source}: {named[0]}: questions file '{named[1]}' not found next to the JobSpec; "
                    "pass --questions FILE"
                )
        else:
            set_hash = next((i.hash for i in (bench_input, top_input) if i is not None and i.hash), None)
            if set_hash:
                raise UsageError(
                    f"{source}: benchmark.input.hash: names the question set '{set_hash}' "
                    "but not its file; pass --questions FILE"
                )
            raise UsageError(
                f"{source}: benchmark.input: no prompt and no question set "
                "(expected input.type 'prompt' or input.questions); pass --questions FILE"
            )
        questions = load_questions_file(path)

    regions = list(dict.fromkeys(normalize_region(r) for r in spec.constraints.regions))
    c = spec.constraints
    timeout_s = next((t for t in (c.provider_timeout, c.timeout, c.max_execution_time) if t), None)
    limits = Limits(
        job_timeout_s=timeout_s if timeout_s else Limits().job_timeout_s,
        retries=c.max_retries if c.max_retries is not None else Limits().retries,
    )
    generation = GenerationParams(max_tokens=max_tokens) if max_tokens else GenerationParams()
    system_prompt: dict[str, str] | None = None
    if regional_context:
        system_prompt = {
            r: REGIONAL_CONTEXT.get(r, f"You are a helpful assistant answering a user in the region {r}.")
            for r in regions
        }
    origin = f"Imported from Project Beacon JobSpec {spec.id}"
    if spec.version:
        origin += f" v{spec.version}"
    if spec_hash:
        origin += f" (file {spec_hash})"
    lead = (spec.benchmark.description or "").strip()
    description = (lead if not lead or lead[-1] in ".!?" else lead + ".") + (" " if lead else "") + origin + "."
    try:
        return Suite(
            name=spec.benchmark.name,
            description=description,
            system_prompt=system_prompt,
            questions=questions,
            models=_models(spec, source, model, runtime),
            regions=regions,
            generation=generation,
            limits=limits,
        )
    except ValidationError as exc:
        raise UsageError(f"{source}: {one_line(exc)}") from None


def import_jobspec(
    path: str | Path,
    questions: str | Path | None = None,
    *,
    model: str | None = None,
    runtime: RuntimeName | None = None,
    regional_context: bool = False,
) -> Suite:
    """Read a JobSpec (and its questions file) and return the equivalent suite.

    Every problem is one UsageError line naming the file and the field.
    """
    path = Path(path)
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    spec = parse_jobspec(data, str(path))
    return jobspec_to_suite(
        spec,
        str(path),
        base_dir=path.parent,
        questions_file=Path(questions) if questions is not None else None,
        model=model,
        runtime=runtime,
        regional_context=regional_context,
        spec_hash=sha256_hex(text),
    )
