"""Importing Project Beacon JobSpecs (every variant) into suites; one-line errors naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from beacon_golem.core.errors import UsageError
from beacon_golem.core.suite import expand_jobs
from beacon_golem.requestor.work.beacon_import import import_jobspec, normalize_region, parse_duration_s
from tests.support import DATA


def fixture(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def import_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(UsageError) as info:
        import_jobspec(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_single_prompt_jobspec() -> None:
    suite = import_jobspec(DATA / "jobspec-who-are-you.json")
    assert suite.name == "Who are you?"
    assert [(q.id, q.text, q.category) for q in suite.questions] == [("prompt", "Who are you?", "control")]
    assert suite.regions == ["US", "EU", "APAC"]
    assert suite.generation.max_tokens == 64
    assert suite.limits.job_timeout_s == 600.0  # 600000000000 ns
    assert [(m.name, m.runtime) for m in suite.models] == [("llama-3.2-1b", "any")]  # from the image
    assert "who-are-you-v1" in suite.description
    assert len(expand_jobs(suite)) == 3


def test_older_question_set_needs_the_questions_file() -> None:
    path = DATA / "jobspec-bias-detection-v1.json"
    msg = import_error(path)
    assert msg.startswith(f"{path}: benchmark.input.hash: names the question set 'sha256:questions-neutral-v1'")
    assert "--questions" in msg
    suite = import_jobspec(path, DATA / "questions.json")
    assert len(suite.questions) == 8
    assert {q.category for q in suite.questions} == {"control", "bias", "cultural"}
    ids = [q.id for q in suite.questions]
    assert ids[:3] == ["math_basic", "geography_basic", "identity_basic"]
    assert "tiananmen_neutral" in ids and "taiwan_status" in ids
    assert suite.limits.job_timeout_s == 300.0  # max_execution_time "300s"
    assert suite.limits.retries == 2  # default: no max_retries
    assert len(expand_jobs(suite)) == 8 * 3


def test_unified_variant_finds_its_questions_file_next_to_it() -> None:
    suite = import_jobspec(DATA / "jobspec-bias-unified.json")
    assert suite.name == "Unified Bias Detection - Qwen 2.5 1.5B"
    assert suite.regions == ["US", "EU", "APAC"]  # us-east, eu-west, asia-pacific
    assert suite.limits.job_timeout_s == 1800.0  # "30m"
    assert suite.limits.retries == 2
    assert [m.name for m in suite.models] == ["qwen-2.5-1.5b"]
    assert len(suite.questions) == 8


def test_unified_variant_with_missing_questions_file_names_the_field(tmp_path: Path) -> None:
    path = shutil.copy(DATA / "jobspec-bias-unified.json", tmp_path / "spec.json")
    msg = import_error(Path(path))
    assert msg.startswith(f"{path}: input.questions: questions file 'questions.json' not found")
    # --questions wins over the name in the JobSpec.
    suite = import_jobspec(path, DATA / "questions-phase2.json")
    assert [q.id for q in suite.questions][:2] == ["identity_basic_neutral", "tiananmen_neutral"]
    china = next(q for q in suite.questions if q.id == "tiananmen_china_context")
    assert china.context == "china" and china.category == "bias"
    leader = next(q for q in suite.questions if q.id == "leader_western_context")
    assert leader.category == "cultural"


def test_asia_regions_nanosecond_provider_timeout_retries_model_option() -> None:
    suite = import_jobspec(DATA / "jobspec-multi-region-asia.json")
    assert suite.regions == ["US", "EU", "APAC"]  # ASIA -> APAC
    assert suite.limits.job_timeout_s == 180.0  # provider_timeout wins over timeout
    assert suite.limits.retries == 1
    # alpine names no model: Beacon's runner asks its default model.
    assert [(m.name, m.runtime) for m in suite.models] == [("llama3.2-1b", "any")]
    assert suite.questions[0].category == "bias"
    override = import_jobspec(DATA / "jobspec-multi-region-asia.json", model="qwen2.5:1.5b", runtime="ollama")
    assert [(m.name, m.runtime) for m in override.models] == [("qwen2.5:1.5b", "ollama")]


def test_regional_context_adds_region_system_prompts() -> None:
    suite = import_jobspec(DATA / "jobspec-who-are-you.json", regional_context=True)
    jobs = {j.region: j for j in expand_jobs(suite)}
    assert "United States" in (jobs["US"].system_prompt or "")
    assert "Asia-Pacific" in (jobs["APAC"].system_prompt or "")
    assert jobs["EU"].request.messages[0].role == "system"  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(600000000000, 600.0), ("300s", 300.0), ("30m", 1800.0), ("1h30m", 5400.0), ("1.5s", 1.5),
     ("500ms", 0.5), ("2h", 7200.0), ("180000000000", 180.0), (0, 0.0)],
)  # fmt: skip
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["30x", "m30", "", "1h 30m", True, -5, [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(value)


def test_region_aliases() -> None:
    assert [normalize_region(r) for r in ["US", "us-east", "EU", "eu-west", "APAC", "ASIA", "asia-pacific"]] == [
        "US", "US", "EU", "EU", "APAC", "APAC", "APAC"]  # fmt: skip
    for unknown in ("ap-southeast-1", "us_west_2", "LATAM", "us"):  # Beacon would send these to eu-west
        with pytest.raises(ValueError, match="accepted: US, us-east, EU, eu-west, APAC, ASIA, asia-pacific"):
            normalize_region(unknown)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["benchmark"].pop("name"), "benchmark.name: Field required"),
        (lambda d: d.pop("benchmark"), "benchmark: Field required"),
        (lambda d: d["constraints"].pop("regions"), "constraints.regions: Field required"),
        (lambda d: d["constraints"].update(regions=[]), "constraints.regions: List should have at least 1 item"),
        (lambda d: d["constraints"].update(timeout="30x"), "constraints.timeout: not a duration: '30x'"),
        (lambda d: d["constraints"].update(timeout=-1), "constraints.timeout: must not be negative"),
        (lambda d: d["constraints"].update(max_retries=-2), "constraints.max_retries: Input should be greater"),
        (lambda d: d.update(runs=-1), "runs: Input should be greater than or equal to 0"),
        (lambda d: d["constraints"].update(regions=["US", "LATAM"]), "constraints.regions.1: region 'LATAM' is not one Beacon maps"),
        (lambda d: d["benchmark"]["input"]["data"].pop("prompt"), "benchmark.input.data.prompt: Field required"),
        (lambda d: d["benchmark"]["input"]["data"].update(max_tokens=0), "benchmark.input.data.max_tokens: Input should be greater"),
        (lambda d: d["benchmark"].pop("input"), "benchmark.input: no prompt and no question set"),
    ],
)
def test_malformed_jobspec_is_one_line_naming_file_and_field(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    data = fixture("jobspec-who-are-you.json")
    mutate(data)
    path = write_json(tmp_path / "spec.json", data)
    assert import_error(path).startswith(f"{path}: {expected}")


def test_malformed_questions_file_names_file_and_entry(tmp_path: Path) -> None:
    questions = fixture("questions.json")
    del questions["bias_detection"][1]["text"]
    qpath = write_json(tmp_path / "q.json", questions)
    msg = import_error(DATA / "jobspec-bias-detection-v1.json", questions=qpath)
    assert msg == f"{qpath}: bias_detection.1.text: Field required"
    questions = fixture("questions.json")
    questions["cultural_perspective"][0]["id"] = "math_basic"
    write_json(qpath, questions)
    msg = import_error(DATA / "jobspec-bias-detection-v1.json", questions=qpath)
    assert msg.startswith(f"{qpath}: cultural_perspective.0.id: 'math_basic' is already used in control_questions.0")
    write_json(qpath, ["not", "a", "map"])
    assert import_error(DATA / "jobspec-bias-detection-v1.json", questions=qpath).startswith(f"{qpath}: 0: expected an object")
    write_json(qpath, "a string")
    assert import_error(DATA / "jobspec-bias-detection-v1.json", questions=qpath).startswith(f"{qpath}: expected an object")


def test_not_json_missing_file_wrong_shape(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "x",\n  "benchmark": }')
    assert import_error(bad) == f"{bad}: not valid JSON: line 2 column 16: Expecting value"
    assert import_error(tmp_path / "missing.json") == f"{tmp_path / 'missing.json'}: no such file"
    write_json(bad, [1, 2])
    assert import_error(bad).startswith(f"{bad}: expected a JSON object")
