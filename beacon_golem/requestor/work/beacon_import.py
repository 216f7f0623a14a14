"""Project Beacon JobSpecs (github.com/jamie-anson/Project-Beacon, branch main), read as Beacon's
runner reads them, or refused with the reason.

Three layouts:

* **struct**: the runner's Go `JobSpec` (runner-app/pkg/models/types.go): `benchmark`
  {name, container, input {type, data, hash}}, `constraints` {regions, min_regions,
  min_success_rate, timeout, provider_timeout (integer nanoseconds)}, `metadata`, and
  optionally `questions`, `models`, `runs`, `signature`, `public_key`;
* **cross-region**: the portal's wrapper `{jobspec, target_regions, min_regions,
  min_success_rate, enable_analysis}` (`target_regions` replace the job's regions; only the
  inner `jobspec` is signed);
* **legacy**: Website/llm-benchmark/jobspecs/: `container` and `input` {questions,
  advanced_questions: files, hash} at the top level, string timeouts ("30m"), lowercase regions.

Questions: the top-level `questions` are question ids, resolved through a questions file
(`--questions FILE`, else the files the job names, found beside it), or the question texts
themselves; ids that no file holds are refused, all named in one line (Beacon drops them
silently). Without `questions`: `input.data.prompt`, else the named questions file.

Models: `models[]` (each with its regions), else `metadata.models` (strings or {id, name}),
else Beacon's single model (`metadata.model`, `metadata.model_name`, the benchmark name, the
container image, "llama3.2-1b"). `model_map` says what a node serves for each Beacon model.

Regions map as Beacon's runner maps them (US, us-east -> US; EU, eu-west -> EU; APAC, ASIA,
asia-pacific -> APAC); any other region is refused with that list. `runs` becomes the
repetitions; a missing `id` gets Beacon's `<benchmark.name>-<unix seconds>`; an expected
execution count the job states is checked against the plan.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from beacon_golem.core.beacon import JobSpecLayout, JobSpecProvenance, SignatureVerdict, UnknownRegion, beacon_region
from beacon_golem.core.canonical import sha256_hex
from beacon_golem.core.errors import UsageError
from beacon_golem.core.gojson import GoJSONError, go_json_loads
from beacon_golem.core.suite import (
    Acceptance,
    GenerationParams,
    Limits,
    ModelSpec,
    Question,
    RuntimeName,
    Suite,
    one_line,
    parse_data,
    parse_json,
    parse_yaml,
    read_text_file,
)
from beacon_golem.requestor.work.jobspec_signature import TrustedKey, verify_jobspec_signature

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

#: The model Beacon's runner asks when a job names none (`extractModel`).
BEACON_DEFAULT_MODEL = "llama3.2-1b"
#: `metadata.model_name` display names Beacon's runner maps to model ids.
BEACON_MODEL_NAMES: dict[str, str] = {
    "Llama 3.2-1B Instruct": "llama3.2-1b",
    "Mistral 7B Instruct": "mistral-7b",
    "Qwen 2.5-1.5B Instruct": "qwen2.5-1.5b",
}
#: Benchmark names Beacon's runner reads a model from.
BEACON_BENCHMARK_MODELS: dict[str, str] = {
    "bias-detection-mistral": "mistral-7b",
    "bias-detection-qwen": "qwen2.5-1.5b",
    "bias-detection-llama": "llama3.2-1b",
    "bias-detection": "llama3.2-1b",
}
TINY_MODEL = "beacon-tiny"
_NON_MODEL_IMAGES = {"alpine", "busybox", "ubuntu", "debian", "python", "golang", "node", "scratch"}
_QUESTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: The cross-region wrapper's defaults (runner-app/internal/handlers/cross_region_handlers.go).
WRAPPER_MIN_REGIONS = 3
BEACON_MIN_SUCCESS_RATE = 0.67


def parse_duration_s(value: Any) -> float:
    """Seconds from integer nanoseconds (time.Duration in JSON) or a Go duration string."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of nanoseconds")
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
            if not math.isfinite(total):
                raise ValueError(f"not a finite duration: {value!r}")
            return total
    raise ValueError(f"not a duration: {value!r} (use nanoseconds or e.g. '300s', '30m', '1h30m')")


def normalize_region(label: str) -> str:
    """A JobSpec region as Beacon's runner maps it (US, EU, APAC); ValueError for any other."""
    return beacon_region(label)


# ---------------------------------------------------------------------------------------
# The parts of a JobSpec that matter here; everything else is allowed and ignored.


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContainerSpec(_Loose):
    image: str | None = None
    tag: str | None = None
    environment: dict[str, Any] | None = None


class PromptData(_Loose):
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)


class InputSpec(_Loose):
    type: str | None = None
    data: dict[str, Any] | None = None
    hash: str | None = None
    questions: str | None = None
    advanced_questions: str | None = None


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
    min_success_rate: float | None = Field(default=None, ge=0.0, le=1.0)
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


class BeaconModel(_Loose):
    """`models[]`: {id, name, provider, container_image, regions}."""

    id: str | None = None
    name: str | None = None
    provider: str | None = None
    container_image: str | None = None
    regions: list[str] | None = None


class JobSpec(_Loose):
    id: str | None = Field(default=None, max_length=200)
    jobspec_id: str | None = Field(default=None, max_length=200)
    version: str | None = None
    benchmark: BenchmarkSpec
    container: ContainerSpec | None = None  # legacy layout
    input: InputSpec | None = None  # legacy layout
    constraints: Constraints
    metadata: dict[str, Any] | None = None
    questions: list[str] | None = None
    models: list[BeaconModel] | None = None
    runs: int | None = Field(default=None, ge=0, le=10_000)
    expected_executions: int | None = None
    signature: str | None = None
    public_key: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: list[str] | None) -> list[str] | None:
        for i, q in enumerate(value or []):
            if not q.strip():
                raise ValueError(f"entry {i} is empty")
        return value


class CrossRegionRequest(_Loose):
    """The portal's POST /api/v1/jobs/cross-region body."""

    jobspec: dict[str, Any]
    target_regions: list[str] = Field(min_length=1)
    min_regions: int = Field(default=0, ge=0)
    min_success_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    enable_analysis: bool = False


class QuestionEntry(_Loose):
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    context: str | None = None
    category: str | None = None


class JobSpecOptions(BaseModel):
    """How `beacon run` and `beacon runs plan` read a JobSpec: questions files, model map, trust."""

    questions: list[Path] | None = None
    model_map: dict[str, str] = Field(default_factory=dict)
    trusted: list[TrustedKey] | None = None
    require_signature: bool = False


class ImportedJob(BaseModel):
    """A JobSpec read: the suite it plans, and where it came from (stored with the run)."""

    suite: Suite
    provenance: JobSpecProvenance


# ---------------------------------------------------------------------------------------


def is_jobspec(data: Any) -> bool:
    """A Beacon JobSpec (any layout) rather than a suite."""
    return isinstance(data, dict) and ("benchmark" in data or isinstance(data.get("jobspec"), dict))


def _read_json(path: Path) -> Any:
    return parse_json(read_text_file(path), str(path))


def parse_jobspec(data: Any, source: str) -> JobSpec:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a JSON object (a Project Beacon JobSpec) at the top level")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{source}: {one_line(exc)}") from None


def _load_question_entries(path: Path) -> list[Question]:
    """A questions file: category -> list of {id, text, context[, category]}, or one list of them."""
    data = _read_json(path)
    groups: list[tuple[str, Any]]
    if isinstance(data, list):
        groups = [("questions", data)]
    elif isinstance(data, dict) and data:
        groups = list(data.items())
    else:
        raise UsageError(
            f"{path}: expected an object mapping a category to a list of questions "
            '(e.g. {"control_questions": [{"id": ..., "text": ..., "context": ...}]})'
        )
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for group, entries in groups:
        if not isinstance(entries, list):
            raise UsageError(f"{path}: {group}: expected a list of questions")
        for i, raw in enumerate(entries):
            where = f"{group}.{i}" if group != "questions" or isinstance(data, dict) else str(i)
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
                questions.append(Question(id=entry.id, text=entry.text, category=category, context=context))
            except ValidationError as exc:
                raise UsageError(f"{path}: {where}.{one_line(exc)}") from None
    if not questions:
        raise UsageError(f"{path}: no questions in the file")
    return questions


def load_questions_file(path: Path) -> list[Question]:
    return _load_question_entries(path)


def load_questions_files(paths: list[Path]) -> list[Question]:
    """Several questions files as one catalogue; an id in two files must have the same text."""
    merged: dict[str, tuple[Question, Path]] = {}
    for path in paths:
        for q in _load_question_entries(path):
            if q.id in merged:
                if merged[q.id][0].text != q.text:
                    raise UsageError(f"{path}: question '{q.id}' has another text in {merged[q.id][1]}")
                continue
            merged[q.id] = (q, path)
    return [q for q, _ in merged.values()]


def load_model_map(values: list[str] | None) -> dict[str, str]:
    """`--model-map BEACON_ID=NODE_MODEL` (repeatable), or a YAML/JSON file mapping ids to models."""
    mapping: dict[str, str] = {}
    for value in values or []:
        if "=" in value and not Path(value).is_file():
            beacon_id, _, node_model = value.partition("=")
            if not beacon_id.strip() or not node_model.strip():
                raise UsageError(f"--model-map {value!r}: give BEACON_ID=NODE_MODEL (e.g. llama3.2-1b=beacon-tiny)")
            mapping[beacon_id.strip()] = node_model.strip()
            continue
        path = Path(value)
        data = parse_data(read_text_file(path), str(path))
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()):
            raise UsageError(f"{path}: expected a mapping of Beacon model id -> the model a node serves")
        mapping.update(data)
    return mapping


def _model_from_image(container: ContainerSpec | None) -> str | None:
    """`ghcr.io/jamie-anson/project-beacon/llama-3.2-1b:latest` -> `llama-3.2-1b`."""
    if container is None or not container.image:
        return None
    base = container.image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = re.sub(r"^project-beacon-", "", base)
    if not base or base in _NON_MODEL_IMAGES or base == "project-beacon":
        return None
    return base


def _regions(labels: list[str], where: str, source: str) -> list[str]:
    out: list[str] = []
    for i, label in enumerate(labels):
        try:
            region = beacon_region(label)
        except UnknownRegion as exc:
            raise UsageError(f"{source}: {where}.{i}: {exc}") from None
        if region not in out:
            out.append(region)
    return out


def _beacon_models(spec: JobSpec, regions: list[str], source: str, warnings: list[str]) -> list[tuple[str, list[str] | None]]:
    """(Beacon model id, its regions or None for all) in the job's order, as Beacon's runner reads them."""
    if spec.models:
        out: list[tuple[str, list[str] | None]] = []
        for i, m in enumerate(spec.models):
            model_id = m.id or m.name
            if not model_id:
                raise UsageError(f"{source}: models.{i}: needs an id (or a name)")
            if any(model_id == seen for seen, _ in out):
                warnings.append(f"models.{i}: '{model_id}' is listed twice; asked once")
                continue
            if not m.regions:
                raise UsageError(f"{source}: models.{i}.regions: '{model_id}' lists no regions, so Beacon runs it nowhere")
            own = _regions(m.regions, f"models.{i}.regions", source)
            inside = [r for r in own if r in regions]
            if not inside:
                raise UsageError(
                    f"{source}: models.{i}.regions: '{model_id}' runs in {', '.join(own)}, none of the job's regions "
                    f"({', '.join(regions)})"
                )
            if len(inside) < len(own):
                warnings.append(f"models.{i}: '{model_id}' also lists {', '.join(r for r in own if r not in regions)}, "
                                "which the job does not run in (Beacon skips them too)")  # fmt: skip
            out.append((model_id, inside if len(inside) < len(regions) else None))
        return out
    meta = spec.metadata or {}
    if "models" in meta:
        raw = meta["models"]
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"{source}: metadata.models: expected a list of model ids (or objects with id and name)")
        ids: list[str] = []
        for i, entry in enumerate(raw):
            model_id = entry if isinstance(entry, str) else entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(model_id, str) or not model_id:
                raise UsageError(f"{source}: metadata.models.{i}: expected a model id or an object with an 'id'")
            if model_id in ids:
                warnings.append(f"metadata.models.{i}: '{model_id}' is listed twice; asked once (as Beacon does)")
                continue
            ids.append(model_id)
        return [(m, None) for m in ids]
    benchmark_name = spec.benchmark.name
    single = (
        (meta.get("model") if isinstance(meta.get("model"), str) and meta.get("model") else None)
        or BEACON_MODEL_NAMES.get(str(meta.get("model_name") or ""))
        or BEACON_BENCHMARK_MODELS.get(benchmark_name)
        or _model_from_image(spec.container or spec.benchmark.container)
        or BEACON_DEFAULT_MODEL
    )
    return [(single, None)]


def _node_models(
    beacon_models: list[tuple[str, list[str] | None]],
    model_map: dict[str, str],
    model: str | None,
    runtime: RuntimeName | None,
    source: str,
    warnings: list[str],
) -> list[ModelSpec]:
    out: list[ModelSpec] = []
    for beacon_id, regions in beacon_models:
        name = model or model_map.get(beacon_id, beacon_id)
        rt: RuntimeName = runtime or ("llamacpp" if name == TINY_MODEL else "any")
        try:
            out.append(ModelSpec(name=name, runtime=rt, regions=regions, beacon_id=beacon_id if name != beacon_id else None))
        except ValidationError as exc:
            raise UsageError(f"{source}: models: {one_line(exc)}") from None
    unused = sorted(set(model_map) - {b for b, _ in beacon_models})
    if unused and model is None:
        warnings.append(f"--model-map: {', '.join(unused)} not in this job's models")
    return out


def _question_files(
    spec: JobSpec, source: str, base_dir: Path | None, given: list[Path] | None
) -> tuple[list[Path], list[Path], str | None]:
    """(files for resolving ids, files to ask all of, where they came from)."""
    if given:
        return given, given, None
    base = base_dir or Path.cwd()
    advanced = False
    for container in (spec.container, spec.benchmark.container):
        mode = (container.environment or {}).get("BENCHMARK_MODE") if container is not None else None
        advanced = advanced or mode == "advanced"
    named: list[tuple[str, str, bool]] = []  # (field, file, asked in this mode)
    for where, inp in (("input", spec.input), ("benchmark.input", spec.benchmark.input)):
        if inp is None:
            continue
        if inp.questions:
            named.append((f"{where}.questions", inp.questions, not advanced))
        if inp.advanced_questions:
            named.append((f"{where}.advanced_questions", inp.advanced_questions, advanced))
    catalogue: list[Path] = []
    asked: list[Path] = []
    for field, name, in_mode in named:
        path = Path(name)
        candidates = [path] if path.is_absolute() else [base / path, base.parent / path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UsageError(
                f"{source}: {field}: questions file '{name}' not found next to the JobSpec "
                f"(looked in {', '.join(str(c.parent) for c in candidates)}); pass --questions FILE"
            )
        catalogue.append(found)
        if in_mode:
            asked.append(found)
    if named and not asked:
        asked = catalogue[:1]
    return catalogue, asked, named[0][0] if named else None


def _questions(
    spec: JobSpec, source: str, base_dir: Path | None, given: list[Path] | None, warnings: list[str]
) -> tuple[list[Question], int | None]:
    """The questions and the max_tokens of a prompt job."""
    category_label = str((spec.benchmark.metadata or {}).get("category") or "control")
    category = CATEGORY_ALIASES.get(category_label, category_label)
    if spec.questions:
        entries = list(dict.fromkeys(spec.questions))
        if len(entries) < len(spec.questions):
            warnings.append("questions: an entry is listed twice; asked once")
        ids = [e for e in entries if _QUESTION_ID.match(e)]
        resolved: dict[str, Question] = {}
        if ids:
            catalogue, _, _ = _question_files(spec, source, base_dir, given)
            if not catalogue:
                raise UsageError(
                    f"{source}: questions: {', '.join(ids)} are question ids and no questions file holds them; "
                    "pass --questions FILE (Beacon's questions.json)"
                )
            known = {q.id: q for q in load_questions_files(catalogue)}
            missing = [i for i in ids if i not in known]
            if missing:
                where = ", ".join(str(p) for p in catalogue)
                raise UsageError(
                    f"{source}: questions: not in {where}: {', '.join(missing)} "
                    "(Beacon would drop them without a word; fix the ids or pass the right --questions FILE)"
                )
            resolved = {i: known[i] for i in ids}
        questions: list[Question] = []
        for n, entry in enumerate(entries):
            if entry in resolved:
                questions.append(resolved[entry])
            else:
                questions.append(Question(id=f"text-{n + 1}", text=entry, category=category))
        return questions, None
    prompt_input = next(
        (i for i in (spec.benchmark.input, spec.input) if i is not None and (i.type == "prompt" or (i.data or {}).get("prompt"))),
        None,
    )
    if prompt_input is not None and not given:
        where = "benchmark.input" if prompt_input is spec.benchmark.input else "input"
        try:
            data = PromptData.model_validate(prompt_input.data or {})
        except ValidationError as exc:
            raise UsageError(f"{source}: {where}.data.{one_line(exc)}") from None
        return [Question(id="prompt", text=data.prompt, category=category)], data.max_tokens
    _, asked, _ = _question_files(spec, source, base_dir, given)
    if asked:
        return load_questions_files(asked), None
    set_hash = next((i.hash for i in (spec.benchmark.input, spec.input) if i is not None and i.hash), None)
    if set_hash:
        raise UsageError(
            f"{source}: benchmark.input.hash: names the question set '{set_hash}' but not its file; pass --questions FILE"
        )
    raise UsageError(
        f"{source}: benchmark.input: no prompt and no question set "
        "(expected questions, input.data.prompt or input.questions); pass --questions FILE"
    )


def _expected(spec: JobSpec) -> tuple[int | None, str | None]:
    meta = spec.metadata or {}
    for where, value in (
        ("metadata.total_executions_expected", meta.get("total_executions_expected")),
        ("metadata.expected_executions", meta.get("expected_executions")),
        ("expected_executions", spec.expected_executions),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value, where
    return None, None


def jobspec_to_suite(
    spec: JobSpec,
    source: str,
    *,
    base_dir: Path | None = None,
    questions: list[Path] | None = None,
    model: str | None = None,
    model_map: dict[str, str] | None = None,
    runtime: RuntimeName | None = None,
    regional_context: bool = False,
    spec_hash: str | None = None,
    jobspec_id: str | None = None,
    region_labels: list[str] | None = None,
    acceptance: Acceptance | None = None,
    warnings: list[str] | None = None,
) -> Suite:
    warnings = warnings if warnings is not None else []
    question_list, max_tokens = _questions(spec, source, base_dir, questions, warnings)
    if region_labels is not None:
        regions = _regions(region_labels, "target_regions", source)
    else:
        regions = _regions(spec.constraints.regions, "constraints.regions", source)
    c = spec.constraints
    timeout_s = next((t for t in (c.provider_timeout, c.timeout, c.max_execution_time) if t), None)
    try:
        limits = Limits(
            job_timeout_s=timeout_s if timeout_s else Limits().job_timeout_s,
            retries=c.max_retries if c.max_retries is not None else Limits().retries,
        )
    except ValidationError as exc:  # a finite timeout too long for any timer (1e30 ns)
        named = (("provider_timeout", c.provider_timeout), ("timeout", c.timeout), ("max_execution_time", c.max_execution_time))
        field = next((n for n, t in named if t), "timeout")
        raise UsageError(f"{source}: constraints.{field}: {one_line(exc).split(': ', 1)[-1]} (seconds)") from None
    generation = GenerationParams(
        max_tokens=max_tokens or GenerationParams().max_tokens, repetitions=spec.runs or 1
    )
    system_prompt: dict[str, str] | None = None
    if regional_context:
        system_prompt = {r: REGIONAL_CONTEXT[r] for r in regions}
    origin = f"Imported from Project Beacon JobSpec {jobspec_id or spec.id}"
    if spec.version:
        origin += f" v{spec.version}"
    if spec_hash:
        origin += f" (file {spec_hash})"
    lead = (spec.benchmark.description or "").strip()
    description = (lead if not lead or lead[-1] in ".!?" else lead + ".") + (" " if lead else "") + origin + "."
    beacon_models = _beacon_models(spec, regions, source, warnings)
    models = _node_models(beacon_models, model_map or {}, model, runtime, source, warnings)
    try:
        return Suite(
            name=spec.benchmark.name[:200],
            description=description,
            system_prompt=system_prompt,
            questions=question_list,
            models=models,
            regions=regions,
            generation=generation,
            limits=limits,
            acceptance=acceptance,
        )
    except ValidationError as exc:
        raise UsageError(f"{source}: {one_line(exc)}") from None


def _acceptance(min_regions: int | None, min_success_rate: float | None, default_regions: int, regions: int,
                where: str, source: str, warnings: list[str]) -> Acceptance:  # fmt: skip
    """Beacon's defaults for what counts as success: explicit values kept, zeros defaulted."""
    if min_regions and min_regions > regions:
        raise UsageError(f"{source}: {where}min_regions: {min_regions} is more than the job's {regions} regions: "
                         "the run could never succeed")  # fmt: skip
    chosen = min_regions or default_regions
    if chosen > regions:
        warnings.append(f"{where}min_regions: Beacon's default {chosen} is more than the job's {regions} regions; using {regions}")
        chosen = regions
    return Acceptance(min_regions=max(1, chosen), min_success_rate=min_success_rate or BEACON_MIN_SUCCESS_RATE)


def read_jobspec_data(
    data: Any,
    source: str,
    *,
    text: str,
    base_dir: Path | None = None,
    questions: list[Path] | None = None,
    model: str | None = None,
    model_map: dict[str, str] | None = None,
    runtime: RuntimeName | None = None,
    regional_context: bool = False,
    trusted: list[TrustedKey] | None = None,
    now: float | None = None,
) -> ImportedJob:
    """A JobSpec (any layout) already parsed: the suite, the signature verdict, what was said."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a JSON object (a Project Beacon JobSpec) at the top level")
    warnings: list[str] = []
    layout: JobSpecLayout
    region_labels: list[str] | None = None
    if "benchmark" not in data and isinstance(data.get("jobspec"), dict):
        layout = "cross-region"
        try:
            wrapper = CrossRegionRequest.model_validate(data)
        except ValidationError as exc:
            raise UsageError(f"{source}: {one_line(exc)}") from None
        body = wrapper.jobspec
        inner_source = f"{source}: jobspec"
        body_for_model = dict(body)
        body_for_model.setdefault("constraints", {})
        if isinstance(body_for_model["constraints"], dict) and not body_for_model["constraints"].get("regions"):
            body_for_model["constraints"] = {**body_for_model["constraints"], "regions": wrapper.target_regions}
        spec = parse_jobspec(body_for_model, inner_source)
        region_labels = wrapper.target_regions
        n_regions = len(_regions(wrapper.target_regions, "target_regions", source))
        acceptance = _acceptance(wrapper.min_regions, wrapper.min_success_rate, WRAPPER_MIN_REGIONS, n_regions,
                                 "", source, warnings)  # fmt: skip
        if spec.constraints.regions != wrapper.target_regions:
            warnings.append("target_regions replace jobspec.constraints.regions (as Beacon's cross-region endpoint does)")
    else:
        body = data
        inner_source = source
        spec = parse_jobspec(body, source)
        layout = "legacy" if ("container" in body or "input" in body) else "struct"
        n_regions = len(_regions(spec.constraints.regions, "constraints.regions", source))
        acceptance = _acceptance(spec.constraints.min_regions, spec.constraints.min_success_rate, 1, n_regions,
                                 "constraints.", source, warnings)  # fmt: skip
    if not source.lower().endswith((".yaml", ".yml")):
        try:  # a JSON number Go cannot hold (1e400) is refused, as Beacon's decoder refuses it
            go_json_loads(text)
        except GoJSONError as exc:
            raise UsageError(f"{source}: {exc}") from None

    jobspec_id = spec.id or spec.jobspec_id
    id_generated = jobspec_id is None
    if jobspec_id is None:
        jobspec_id = f"{spec.benchmark.name}-{int(now if now is not None else time.time())}"
        warnings.append(f"no id: Beacon's rule names it {jobspec_id} (<benchmark.name>-<unix seconds>)")
    version = (spec.version or str((spec.benchmark.model_extra or {}).get("version") or "")).strip()
    if version.lower() == "v1" and "bias" in spec.benchmark.name.lower() and not spec.questions:
        raise UsageError(f"{inner_source}: questions: required for a bias-detection v1 job (Beacon refuses it without)")

    file_hash = sha256_hex(text)
    suite = jobspec_to_suite(
        spec,
        inner_source,
        base_dir=base_dir,
        questions=questions,
        model=model,
        model_map=model_map,
        runtime=runtime,
        regional_context=regional_context,
        spec_hash=file_hash,
        jobspec_id=jobspec_id,
        region_labels=region_labels,
        acceptance=acceptance,
        warnings=warnings,
    )
    if layout != "legacy":
        container = spec.benchmark.container
        if container is None or not container.image:
            raise UsageError(f"{inner_source}: benchmark.container.image: required (Beacon refuses a job without one)")
        if spec.benchmark.input is None or not spec.benchmark.input.hash:
            raise UsageError(
                f"{inner_source}: benchmark.input.hash: required for integrity verification (Beacon refuses a job without one)"
            )
        for field in ("timeout", "provider_timeout"):
            if isinstance(body.get("constraints", {}).get(field), str):
                warnings.append(f"constraints.{field}: a string duration; Beacon's runner refuses it (400) and "
                                "takes integer nanoseconds")  # fmt: skip
    expected, expected_where = _expected(spec)
    planned = suite.job_count()
    if expected is not None and expected != planned:
        shape = (f"{len(suite.questions)} questions x {len(suite.models)} models x {len(suite.regions)} regions"
                 + (f" x {suite.generation.repetitions} runs" if suite.generation.repetitions > 1 else ""))  # fmt: skip
        warnings.append(f"{expected_where} says {expected}, the plan has {planned} executions ({shape})")
    verdict: SignatureVerdict = verify_jobspec_signature(body, trusted=trusted)
    bench_input = spec.benchmark.input or spec.input
    container = spec.benchmark.container or spec.container
    provenance = JobSpecProvenance(
        jobspec_id=jobspec_id,
        id_generated=id_generated,
        layout=layout,
        source=source,
        file_hash=file_hash,
        signature=verdict,
        benchmark_hash=bench_input.hash if bench_input is not None else None,
        container_image=container.image if container is not None else None,
        expected_executions=expected,
        planned_executions=planned,
        warnings=warnings,
    )
    return ImportedJob(suite=suite, provenance=provenance)


def read_jobspec(
    path: str | Path,
    questions: str | Path | list[Path] | None = None,
    *,
    model: str | None = None,
    model_map: dict[str, str] | None = None,
    runtime: RuntimeName | None = None,
    regional_context: bool = False,
    trusted: list[TrustedKey] | None = None,
    now: float | None = None,
) -> ImportedJob:
    """Read a JobSpec file (and its questions files): every problem is one UsageError line."""
    path = Path(path)
    text = read_text_file(path)
    source = str(path)
    data = parse_yaml(text, source) if source.lower().endswith((".yaml", ".yml")) else parse_json(text, source)
    given = [Path(q) for q in questions] if isinstance(questions, list) else [Path(questions)] if questions else None
    return read_jobspec_data(
        data,
        source,
        text=text,
        base_dir=path.parent,
        questions=given,
        model=model,
        model_map=model_map,
        runtime=runtime,
        regional_context=regional_context,
        trusted=trusted,
        now=now,
    )


def import_jobspec(
    path: str | Path,
    questions: str | Path | None = None,
    *,
    model: str | None = None,
    runtime: RuntimeName | None = None,
    regional_context: bool = False,
) -> Suite:
    """Read a JobSpec (and its questions file) and return the equivalent suite (signature not enforced)."""
    return read_jobspec(path, questions, model=model, runtime=runtime, regional_context=regional_context).suite


def enforce_signature(job: ImportedJob, *, require_signature: bool = False) -> str | None:
    """Refuse (UsageError) a job whose signature does not verify, or an unsigned one under
    `require_signature`; returns the warning to print for an unsigned job, else None."""
    verdict = job.provenance.signature
    source = job.provenance.source
    if verdict.status == "invalid":
        raise UsageError(f"{source}: signature {verdict.line()}")
    if verdict.status == "valid" and verdict.trust not in (None, "trusted"):
        raise UsageError(f"{source}: signed by a key that is {verdict.trust} in the trust list ({verdict.public_key})")
    if verdict.status == "unsigned":
        if require_signature:
            raise UsageError(f"{source}: unsigned (no signature and public_key) and --require-signature was given")
        return f"warning: {source} is unsigned: nobody vouches for what it asks"
    return None
