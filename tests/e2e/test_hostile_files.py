"""Files and stores made to break the CLI (issue 12, findings 4 and 8): one line and exit 2 for a
suite or JobSpec holding NaN or infinity, nested 100,000 deep, a FIFO, a symlink to /dev/zero,
a file too large or a YAML alias bomb; a stored suite that no longer reads breaks nothing else."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from beacon_golem.core.untrusted import MAX_INPUT_FILE_BYTES
from beacon_golem.requestor.store.store import Store
from tests.e2e.test_runs import cli, data_dir, one_error_line, recorded  # noqa: F401 (fixtures)
from tests.support import DATA

BASE = "name: x\nquestions: [{id: a, text: hi}]\nmodels: [{name: m}]\nregions: [US]\n"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("limits: {job_timeout_s: .inf}", "limits.job_timeout_s"),
        ("limits: {backoff_max_s: .inf}", "limits.backoff_max_s"),
        ("limits: {backoff_s: .nan}", "limits.backoff_s"),
        ("limits: {job_timeout_s: '-inf'}", "limits.job_timeout_s"),
        ("generation: {temperature: .nan}", "generation.temperature"),
        ("perf: {profile: {kind: rate, rate: .inf}}", "perf: profile.rate"),
        ("perf: {profile: {kind: sweep, overload: {max_ttft_growth: .inf}}}", "perf.profile.overload.max_ttft_growth"),
    ],
)
def test_a_suite_with_nan_or_infinity_is_one_line(tmp_path: Path, capsys, extra: str, field: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.yaml"
    path.write_text(BASE + extra + "\n")
    code, _, err = cli(["runs", "plan", str(path)], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"{path}: {field}") and "finite" in line


def _jobspec(tmp_path: Path, timeout: str) -> Path:
    text = (DATA / "jobspec-who-are-you.json").read_text().replace('"timeout": 600000000000', f'"timeout": {timeout}')
    path = tmp_path / "spec.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("timeout", ["1e400", "NaN", "Infinity", "-Infinity", "1e30", '"9' + "9" * 400 + 'h"'])
def test_a_jobspec_timeout_that_is_not_a_finite_duration_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, timeout: str  # type: ignore[no-untyped-def]
) -> None:
    spec = _jobspec(tmp_path, timeout)
    out = tmp_path / "suite.yaml"
    code, _, err = cli(["import-jobspec", str(spec), "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"{spec}: ") and "timeout" in line, line
    assert not out.exists()  # never an invalid suite (job_timeout_s: null)


def test_an_imported_suite_always_reads_back_as_itself(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "suite.yaml"
    code, _, _ = cli(["import-jobspec", str(_jobspec(tmp_path, "300000000000")), "--out", str(out)], capsys)
    assert code == 0
    from beacon_golem.core.suite import load_suite
    from beacon_golem.requestor.work.beacon_import import import_jobspec

    assert load_suite(out).suite_hash() == import_jobspec(tmp_path / "spec.json").suite_hash()


def _deep_json(tmp_path: Path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda d: _deep_json(d),
        lambda d: (d / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000) and d / "deep.yaml",
        lambda d: (d / "deep2.yaml").write_text("name: " + "[" * 200 + "]" * 200) and d / "deep2.yaml",
        lambda d: (d / "spec-deep.json").write_text('{"benchmark": ' + "[" * 5000 + "]" * 5000 + "}") and d / "spec-deep.json",
    ],
    ids=["json_100000_deep", "yaml_100000_deep", "yaml_200_deep", "jobspec_5000_deep"],
)
def test_deeply_nested_suites_and_jobspecs_are_one_line(tmp_path: Path, capsys, make) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    for args in (["runs", "plan", str(path)], ["import-jobspec", str(path)], ["run", str(path), "--db", str(tmp_path / "b.db")]):
        code, _, err = cli(args, capsys)
        line = one_error_line(err)
        assert code == 2 and ("nested" in line or "deeper" in line or "not valid" in line), (args, line)
    assert not (tmp_path / "b.db").exists()  # the store is not touched


def test_a_yaml_alias_bomb_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10^9 values
    path = tmp_path / "bomb.yaml"
    path.write_text(BASE + "\n".join(lines) + "\n")
    started = time.monotonic()
    code, _, err = cli(["runs", "plan", str(path)], capsys)
    assert code == 2 and "aliases expanded" in one_error_line(err)
    assert time.monotonic() - started < 10


def test_a_suite_that_is_a_fifo_or_dev_zero_or_too_large_is_refused_without_reading(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(MAX_INPUT_FILE_BYTES + 1)  # sparse: no disk used
    for path, needle in ((fifo, "FIFO"), (zero, "device"), (big, "bytes, more than")):
        done: list[tuple[int, str, str]] = []
        worker = threading.Thread(
            target=lambda p=path, out=done: out.append(cli(["runs", "plan", str(p)], capsys)), daemon=True
        )
        worker.start()
        worker.join(10)
        assert done, f"{path} hung"
        code, _, err = done[0]
        assert code == 2 and needle in one_error_line(err)


def test_a_stored_suite_that_does_not_read_breaks_no_other_run(recorded, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """What an older version stored for `job_timeout_s: .inf` (null): every command still works."""
    path, good = recorded
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (good,)).fetchone()
    columns = [d[0] for d in conn.execute("SELECT * FROM runs LIMIT 0").description]
    broken = dict(zip(columns, row, strict=True))
    suite = json.loads(broken["suite_json"])
    suite["limits"]["job_timeout_s"] = None
    broken.update(run_id="20990101-000000-badbad", suite_json=json.dumps(suite), created_at="2099-01-01T00:00:00+00:00")
    conn.execute(f"INSERT INTO runs ({', '.join(broken)}) VALUES ({', '.join('?' * len(broken))})", list(broken.values()))
    conn.commit()
    conn.close()

    code, out, err = cli(["runs", "list", "--db", str(path)], capsys)
    assert code == 0 and good in out and "badbad" in out, err
    code, out, _ = cli(["verify", good, "--db", str(path)], capsys)
    assert code == 0 and out.startswith("ok:")
    code, out, err = cli(["runs", "show", "latest", "--db", str(path)], capsys)
    assert code == 0 and "badbad" in out, err
    code, out, err = cli(["verify", "latest", "--db", str(path)], capsys)  # the broken run itself: no traceback
    assert "Traceback" not in out + err and code == 0
    with Store(path, readonly=True) as store:
        assert "job_timeout_s" in (store.get_run("20990101-000000-badbad").suite_error or "")


def test_a_suite_with_infinity_is_never_stored(tmp_path: Path) -> None:
    from beacon_golem.core.suite import Limits, Suite, expand_jobs, parse_suite

    suite = parse_suite(BASE)
    broken = suite.model_copy(update={"limits": Limits.model_construct(job_timeout_s=float("inf"), retries=2,
                                                                       backoff_s=2.0, backoff_max_s=60.0,
                                                                       per_node_concurrency=4)})  # fmt: skip
    assert isinstance(broken, Suite)
    with Store(tmp_path / "b.db") as store:
        with pytest.raises(Exception) as err:
            store.create_run(broken, None, expand_jobs(suite), None)
        assert "cannot be stored" in str(err.value) and "job_timeout_s" in str(err.value)
        assert store.list_runs() == []
