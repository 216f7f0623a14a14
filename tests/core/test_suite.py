"""Suite files: strict parsing, one-line errors naming file and field, job expansion, hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from beacon_golem.core.errors import UsageError
from beacon_golem.core.suite import (
    Limits,
    dump_suite_yaml,
    expand_jobs,
    load_suite,
    load_suite_with_source,
    parse_suite,
)
from tests.support import ROOT

QUICKSTART = ROOT / "examples" / "quickstart.yaml"

MINIMAL = """\
name: mini
questions:
  - {id: q1, text: "Who are you?", category: control}
  - {id: q2, text: "What is the current status of Taiwan?", category: bias}
models:
  - {name: beacon-tiny, runtime: llamacpp}
regions: [US, EU]
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


def test_quickstart_loads_and_plans_ten_jobs() -> None:
    suite = load_suite(QUICKSTART)
    assert suite.regions == ["US", "EU"]
    assert [m.name for m in suite.models] == ["beacon-tiny"]
    assert {q.category for q in suite.questions} == {"control", "bias", "cultural"}
    assert any("Tiananmen" in q.text for q in suite.questions)
    assert any("Taiwan" in q.text for q in suite.questions)
    assert suite.generation.max_tokens == 32
    jobs = expand_jobs(suite)
    assert len(jobs) == suite.job_count() == 10
    assert len({j.key for j in jobs}) == 10
    assert [j.seq for j in jobs] == list(range(10))


def test_regional_system_prompts_reach_the_request() -> None:
    jobs = {j.key: j for j in expand_jobs(load_suite(QUICKSTART))}
    us = jobs["identity_basic|beacon-tiny|llamacpp|US|0"].request
    eu = jobs["identity_basic|beacon-tiny|llamacpp|EU|0"].request
    assert us.messages is not None and eu.messages is not None
    assert [m.role for m in us.messages] == ["system", "user"]
    assert "United States" in us.messages[0].content
    assert "European Union" in eu.messages[0].content
    assert us.messages[1].content == eu.messages[1].content == "Who are you?"
    # A question's own prompt overrides the suite's map, the same in every region.
    math_us = jobs["math_basic|beacon-tiny|llamacpp|US|0"].request.messages
    math_eu = jobs["math_basic|beacon-tiny|llamacpp|EU|0"].request.messages
    assert math_us == math_eu and math_us is not None and math_us[0].content == "You are a helpful assistant."
    assert us.model == "beacon-tiny" and us.max_tokens == 32 and us.temperature == 0.0 and us.seed == 42


def test_no_system_prompt_and_partial_region_map(tmp_path: Path) -> None:
    suite = parse_suite(MINIMAL.replace(
        "category: bias}", "category: bias, system_prompt: {EU: Answer as a European.}}"))  # fmt: skip
    jobs = {j.key: j for j in expand_jobs(suite)}
    assert jobs["q1|beacon-tiny|llamacpp|US|0"].request.messages[0].role == "user"  # type: ignore[index]
    assert jobs["q2|beacon-tiny|llamacpp|US|0"].system_prompt is None
    eu = jobs["q2|beacon-tiny|llamacpp|EU|0"]
    assert eu.system_prompt == "Answer as a European."
    assert eu.request.messages[0].content == "Answer as a European."  # type: ignore[index]


def test_expansion_order_repetitions_and_determinism() -> None:
    text = MINIMAL + "generation: {repetitions: 3, max_tokens: 16, temperature: 0.7, top_p: 0.9, seed: 7, ignore_eos: true}\n"
    text = text.replace("models:\n", "models:\n  - {name: 'qwen2.5:1.5b', runtime: ollama}\n")
    suite = parse_suite(text)
    jobs = expand_jobs(suite)
    assert len(jobs) == 2 * 2 * 2 * 3
    assert jobs[0].key == "q1|qwen2.5:1.5b|ollama|US|0"
    assert jobs[2].key == "q1|qwen2.5:1.5b|ollama|US|2"
    assert jobs[3].key == "q1|qwen2.5:1.5b|ollama|EU|0"
    assert [j.repetition for j in jobs[:6]] == [0, 1, 2, 0, 1, 2]
    req = jobs[0].request
    assert (req.max_tokens, req.temperature, req.top_p, req.seed, req.ignore_eos) == (16, 0.7, 0.9, 7, True)
    again = expand_jobs(parse_suite(text))
    assert [j.model_dump() for j in again] == [j.model_dump() for j in jobs]


def test_suite_hash_is_canonical_json() -> None:
    suite = parse_suite(MINIMAL)
    expected = hashlib.sha256(
        json.dumps(suite.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert suite.suite_hash() == "sha256:" + expected
    # Formatting, key order and spelled-out defaults do not change it...
    reordered = """\
regions: [US, EU]
models: [{runtime: llamacpp, name: beacon-tiny}]
name: mini
generation: {max_tokens: 256, temperature: 0.0}
questions:
  - text: Who are you?
    id: q1
  - {category: bias, text: "What is the current status of Taiwan?", id: q2}
"""
    assert parse_suite(reordered).suite_hash() == suite.suite_hash()
    # ...but any change to what is asked does.
    assert parse_suite(MINIMAL.replace("Who are you?", "Who are you ?!")).suite_hash() != suite.suite_hash()
    assert parse_suite(MINIMAL.replace("[US, EU]", "[EU, US]")).suite_hash() != suite.suite_hash()


def test_dump_round_trips(tmp_path: Path) -> None:
    suite = load_suite(QUICKSTART)
    again = load_suite(write(tmp_path, dump_suite_yaml(suite)))
    assert again == suite
    assert again.suite_hash() == suite.suite_hash()
    nulled = parse_suite(MINIMAL + "generation: {temperature: null}\n")
    assert parse_suite(dump_suite_yaml(nulled)).generation.temperature is None


def test_load_with_source_returns_the_text() -> None:
    suite, source = load_suite_with_source(QUICKSTART)
    assert source == QUICKSTART.read_text()
    assert suite == load_suite(QUICKSTART)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace("  - {id: q2, text: \"What is the current status of Taiwan?\", category: bias}\n",
                         "  - {id: q2, text: x}\n  - {id: q3}\n"),
         "questions.2.text: Field required"),
        (MINIMAL.replace("{id: q1,", "{id: q1, txt: oops,"), "questions.0.txt: Extra inputs are not permitted"),
        (MINIMAL.replace("runtime: llamacpp", "runtime: tensorrt"), "models.0.runtime: Input should be"),
        (MINIMAL + "generation: {temperature: 3}\n", "generation.temperature: Input should be less than or equal to 2"),
        (MINIMAL + "generation: {repetitions: 0}\n", "generation.repetitions: Input should be greater than or equal to 1"),
        (MINIMAL + "limits: {retries: -1}\n", "limits.retries: Input should be greater than or equal to 0"),
        (MINIMAL + "limits: {backoff_s: 10, backoff_max_s: 1}\n", "limits: backoff_max_s must be at least backoff_s"),
        (MINIMAL + "colour: blue\n", "colour: Extra inputs are not permitted"),
        (MINIMAL.replace("id: q2", "id: q1"), "questions: id 'q1' is used twice"),
        (MINIMAL.replace("[US, EU]", "[US, US]"), "regions: region listed twice: US"),
        (MINIMAL.replace("[US, EU]", "[]"), "regions: List should have at least 1 item"),
        (MINIMAL.replace("[US, EU]", "['us east']"), "regions: region 'us east'"),
        (MINIMAL + "system_prompt: {APAC: hi}\n", "system_prompt: region 'APAC' is not in regions (US, EU)"),
        (MINIMAL.replace("category: bias}", "category: bias, system_prompt: {ASIA: x}}"),
         "questions.1.system_prompt: region 'ASIA' is not in regions"),
        (MINIMAL.replace("category: bias}", "category: bias, system_prompt: [a, b]}"),
         "questions.1.system_prompt: give one string, or a map of region label -> string"),
        (MINIMAL.replace("{id: q1,", "{id: 'q|1',"), "questions.0.id: use letters, digits"),
        (MINIMAL.replace("name: mini\n", ""), "name: Field required"),
    ],
)
def test_malformed_suite_is_one_line_naming_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, text).startswith(expected)


def test_error_counts_further_problems(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "name: x\nquestions: [{id: a}]\nmodels: [{}]\nregions: [US]\n")
    assert msg.startswith("questions.0.text: Field required (and 1 more)")


def test_bad_yaml_missing_file_and_odd_shapes(tmp_path: Path) -> None:
    assert load_error(tmp_path, "name: x\nquestions: [\n").startswith("not valid YAML: line ")
    assert load_error(tmp_path, "name: a\nname: b\n").startswith("not valid YAML: line 2 column 1: key 'name' is given twice")
    assert load_error(tmp_path, "").startswith("the file is empty")
    assert load_error(tmp_path, "- a\n- b\n").startswith("expected a mapping")
    with pytest.raises(UsageError, match=r"nope\.yaml: no such file$"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="is a directory"):
        load_suite(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_suite(tmp_path / "latin1.yaml")


def test_limits_backoff() -> None:
    limits = Limits(backoff_s=2, backoff_max_s=10)
    assert [limits.backoff_for(a) for a in (1, 2, 3, 4, 5)] == [0.0, 2.0, 4.0, 8.0, 10.0]
