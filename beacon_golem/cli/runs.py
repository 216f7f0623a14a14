"""`beacon runs list|show|export|plan`, `beacon verify`, `beacon import-jobspec`, `beacon diff`."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, get_args

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from beacon_golem.cli import app
from beacon_golem.cli.jobspec_options import ModelMap, Questions, RequireSignature, Trust, jobspec_options
from beacon_golem.core.errors import UsageError
from beacon_golem.core.files import write_text_atomic
from beacon_golem.requestor.store.rows import JobRow, ResultRow, RunRow
from beacon_golem.requestor.store.store import Store, default_db_path

runs_app = typer.Typer(help="Runs recorded in the store: list, show, export; plan a suite.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

out = Console()
DB_HELP = "Run database (default: beacon.db in the data directory; env BEACON_DB)"


def _db_option() -> Any:
    return typer.Option(None, "--db", envvar="BEACON_DB", help=DB_HELP)


def _open(db: Path | None) -> Store:
    """Open for reading only: these commands never change the database."""
    return Store(db or default_db_path(), readonly=True)


def _ts(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "—"


def _snippet(text: str | None, limit: int = 60) -> str:
    if text is None:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------
# beacon runs list | show | export | plan


@runs_app.command("list")
def runs_list(db: Path = _db_option()) -> None:
    """Every run in the database, newest first."""
    with _open(db) as store:
        runs = store.list_runs()
    if not runs:
        out.print(f"no runs in {db or default_db_path()}")
        return
    table = Table(title=f"Runs in {db or default_db_path()}", box=box.SIMPLE_HEAD)
    table.add_column("Run", no_wrap=True)
    table.add_column("Suite", min_width=10, overflow="fold")
    table.add_column("Status", no_wrap=True)
    table.add_column("Created (UTC)", no_wrap=True)
    table.add_column("Done", justify="right", no_wrap=True)
    table.add_column("Failed", justify="right", no_wrap=True)
    for run in runs:
        c = run.job_counts
        table.add_row(run.run_id, run.suite_name, run.status, f"{run.created_at:%m-%d %H:%M}",
                      f"{c['done']}/{run.total_jobs}", str(c["failed"]))  # fmt: skip
    out.print(table)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix of it, or 'latest'"),
    db: Path = _db_option(),
    events: bool = typer.Option(False, "--events", help="Also list the run's events"),
) -> None:
    """A run: its suite, nodes, jobs and answers."""
    with _open(db) as store:
        run = store.find_run(run_id)
        nodes = store.nodes(run.run_id)
        jobs = store.jobs(run.run_id)
        results = {r.job_id: r for r in store.results(run.run_id)}
        event_rows = store.events(run.run_id) if events else []
    c = run.job_counts
    out.print(f"[bold]run {run.run_id}[/bold]  {run.status}")
    if run.kind == "pilot":
        out.print(f"pilot     compatibility pilot: no suite, no jobs (matrix: beacon report {run.run_id} --html FILE)")
    else:
        out.print(f"suite     {run.suite_name}  {run.suite_hash}")
    out.print(f"created   {_ts(run.created_at)} UTC   finished {_ts(run.finished_at)}")
    out.print(f"jobs      {run.total_jobs}: {c['done']} done, {c['failed']} failed, {c['pending']} pending, "
              f"{c['running']} running")  # fmt: skip
    if run.fleet_desc:
        out.print(f"fleet     {json.dumps(run.fleet_desc, ensure_ascii=False)}")
    if nodes:
        probed = any(n.probe is not None or n.probe_error for n in nodes)
        table = Table(title="Nodes")
        columns = ("Node", "Region", "Fleet", "Provider", "Runtime", "GPU", "Status", "Answers")
        for col in columns + (("Probe",) if probed else ()):
            table.add_column(col)
        answered: dict[str, int] = {}
        for r in results.values():
            answered[r.node_id] = answered.get(r.node_id, 0) + 1
        for n in nodes:
            gpu = ", ".join(g.name for g in n.info.system.gpus) if n.info and n.info.system.gpus else "—"
            runtime = f"{n.info.runtime.name} {n.info.runtime.version or ''}".strip() if n.info else "—"
            status = n.status + (f" ({n.lost_reason})" if n.lost_reason else "")
            provider = n.provider_name or n.provider_id or "—"
            probe = []
            if probed:  # the probe's overall status (beacon pilot), or why there is none
                probe = [str(n.probe.get("status", "?")) if n.probe is not None else f"error: {n.probe_error}"]
            table.add_row(n.node_id, n.region or "—", n.fleet, provider, runtime, gpu, status,
                          str(answered.get(n.node_id, 0)), *probe)  # fmt: skip
        out.print(table)
    jobs_table = bool(jobs) or run.kind != "pilot"  # a pilot has no jobs: no empty table
    several_models = len({j.model for j in jobs}) > 1
    several_reps = any(j.repetition for j in jobs)
    table = Table(title="Jobs", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Question", overflow="fold")
    if several_models:
        table.add_column("Model", overflow="fold")
    table.add_column("Region", no_wrap=True)
    if several_reps:
        table.add_column("Rep", justify="right", no_wrap=True)
    for col in ("State", "Try", "Node", "Tok", "ms"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("Try", "Tok", "ms") else "left")
    table.add_column("Answer / error", overflow="fold", ratio=1)
    for j in jobs:
        r = results.get(j.job_id)
        cells = [str(j.seq), j.question_id] + ([j.model] if several_models else []) + [j.region]
        cells += [str(j.repetition)] if several_reps else []
        cells += [
            j.state, str(j.attempts), (r.node_id if r else j.node_id) or "—",
            str(r.result.completion_tokens) if r and r.result.completion_tokens is not None else "",
            f"{r.result.e2e_ms:.0f}" if r else "",
            _snippet(r.text) if r else _snippet(j.error),
        ]  # fmt: skip
        table.add_row(*cells)
    if jobs_table:
        out.print(table)
    if event_rows:
        table = Table(title="Events")
        for col in ("Time (UTC)", "Kind", "Node", "Job", "Detail"):
            table.add_column(col, overflow="fold")
        for e in event_rows:
            table.add_row(f"{e.ts:%H:%M:%S.%f}"[:-3], e.kind, e.node_id or "", e.job_id or "",
                          json.dumps(e.detail, ensure_ascii=False) if e.detail else "")  # fmt: skip
        out.print(table)


def export_record(run: RunRow, job: JobRow, result: ResultRow | None) -> dict[str, Any]:
    """One job (and its answer, when it has one) as an export line."""
    return {
        "run_id": run.run_id,
        "suite_name": run.suite_name,
        "suite_hash": run.suite_hash,
        "job_id": job.job_id,
        "job_key": job.job_key,
        "seq": job.seq,
        "question_id": job.question_id,
        "category": job.category,
        "model": job.model,
        "runtime": job.runtime,
        "region": job.region,
        "repetition": job.repetition,
        "state": job.state,
        "attempts": job.attempts,
        "node_id": result.node_id if result else job.node_id,
        "error": job.error,
        "request": job.spec.get("request"),
        "text": result.text if result else None,
        "result": result.result.model_dump(mode="json") if result else None,
        "started_at": result.started_at.isoformat() if result else None,
        "ended_at": result.ended_at.isoformat() if result else None,
        "receipt": result.receipt if result else None,
    }


CSV_COLUMNS = [
    "run_id", "job_id", "seq", "question_id", "category", "model", "runtime", "region", "repetition", "state",
    "attempts", "node_id", "error", "text", "finish_reason", "prompt_tokens", "completion_tokens",
    "token_count_source", "ttft_ms", "e2e_ms", "tok_per_s", "started_at", "ended_at", "outputs_hash",
]  # fmt: skip


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    result = record["result"] or {}
    receipt = record["receipt"] or {}
    if receipt.get("schema_version") == "v0.1.0":  # Beacon's receipt: our figures are in output.metadata
        receipt_run = (receipt.get("output") or {}).get("metadata") or {}
    else:  # the envelope of earlier versions
        receipt_run = (receipt.get("receipt") or {}).get("run") or {}
    row = {k: record.get(k) for k in CSV_COLUMNS if k in record}
    for key in ("finish_reason", "prompt_tokens", "completion_tokens", "token_count_source", "ttft_ms", "e2e_ms"):
        row[key] = result.get(key)
    row["tok_per_s"] = receipt_run.get("tok_per_s")
    row["outputs_hash"] = receipt_run.get("outputs_hash")
    return {k: ("" if row.get(k) is None else csv_cell(row.get(k))) for k in CSV_COLUMNS}


#: Largest receipt file or export read by `beacon verify --receipt` (suites and JobSpecs: 8 MiB).
RECEIPT_FILE_MAX_BYTES = 4 * 1024**3


#: What makes a spreadsheet read a cell as a formula (OWASP's list for CSV injection).
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (`=HYPERLINK(...)`, `+1+1`, `@SUM`) gets a
    leading `'`, so it is shown as the text it is; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_LEAD):
        return "'" + value
    return value


@runs_app.command("export")
def runs_export(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix of it, or 'latest'"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (every field, receipts included), csv, or beacon (Beacon's executions)"),
    out_path: Path = typer.Option(None, "--out", help="File to write (default: standard output)"),
    db: Path = _db_option(),
) -> None:
    """Every job of a run with its answer, timings and receipt."""
    if fmt not in ("jsonl", "csv", "beacon"):
        raise UsageError(f"--format: '{fmt}' is not one of jsonl, csv, beacon")
    with _open(db) as store:
        run = store.find_run(run_id)
        results = {r.job_id: r for r in store.results(run.run_id)}
        jobs = store.jobs(run.run_id)
        nodes = {n.node_id: n for n in store.nodes(run.run_id)}
        records = [export_record(run, j, results.get(j.job_id)) for j in jobs]
    if fmt == "beacon":
        from beacon_golem.requestor.work.beacon_export import beacon_execution

        executions = [beacon_execution(run, j, results[j.job_id], nodes.get(results[j.job_id].node_id))
                      for j in jobs if j.job_id in results]  # fmt: skip
        text = "".join(e.model_dump_json() + "\n" for e in executions)
        records = [r for r in records if r["text"] is not None]
    elif fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow(_csv_row(r))
        text = buf.getvalue()
    if out_path is None:
        sys.stdout.write(text)
        return
    write_text_atomic(out_path, text)
    typer.echo(f"wrote {len(records)} jobs of run {run.run_id} to {out_path}", err=True)


@runs_app.command("plan")
def runs_plan(
    suite_file: Path = typer.Argument(..., help="Suite file (YAML) or Project Beacon JobSpec (JSON)"),
    show_jobs: bool = typer.Option(False, "--jobs", help="List every planned job"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (jobs, questions, models, regions, signature)"),
    questions: Questions = None,
    model_map: ModelMap = None,
    trust: Trust = None,
) -> None:
    """Check a suite or JobSpec and show the jobs a run of it would plan (touches no database)."""
    from beacon_golem.core.beacon import SignatureVerdict
    from beacon_golem.core.suite import expand_jobs
    from beacon_golem.requestor.work.driver import load_run_input

    loaded = load_run_input(suite_file, jobspec_options(questions, model_map, trust, False), check_signature=False)
    suite = loaded.suite
    jobs = expand_jobs(suite)
    job = loaded.jobspec
    verdict = job.provenance.signature if job is not None else SignatureVerdict(status="unsigned")
    if as_json:
        doc = {
            "jobs": len(jobs),
            "questions": [{"id": q.id, "category": q.category, "text": q.text} for q in suite.questions],
            "models": [
                {"name": m.name, "runtime": m.runtime, "beacon_id": m.label if job is not None else None,
                 "regions": suite.model_regions(m)}
                for m in suite.models
            ],
            "regions": suite.regions,
            "repetitions": suite.generation.repetitions,
            "signature": {"status": verdict.status, "scheme": verdict.scheme, "public_key": verdict.public_key,
                          "reason": verdict.reason, "trust": verdict.trust},  # fmt: skip
            "suite_hash": suite.suite_hash(),
        }
        if job is not None:
            p = job.provenance
            doc |= {"jobspec_id": p.jobspec_id, "layout": p.layout, "expected_executions": p.expected_executions,
                    "warnings": p.warnings}  # fmt: skip
        typer.echo(json.dumps(doc, ensure_ascii=False, indent=2))
        return
    g = suite.generation
    out.print(f"[bold]{suite.name}[/bold]  {suite.suite_hash()}", markup=True, highlight=False)
    per_model = {len(suite.model_regions(m)) for m in suite.models}
    if len(per_model) <= 1:
        out.print(f"{len(suite.questions)} questions x {len(suite.models)} models x {len(suite.regions)} regions "
                  f"x {g.repetitions} repetitions = {len(jobs)} jobs", highlight=False)  # fmt: skip
    else:
        out.print(f"{len(suite.questions)} questions x {len(suite.models)} models in their regions "
                  f"x {g.repetitions} repetitions = {len(jobs)} jobs", highlight=False)  # fmt: skip
    models = ", ".join(
        f"{m.name} ({m.runtime})" + (f" for Beacon {m.beacon_id}" if m.beacon_id else "")
        + (f" in {', '.join(m.regions)}" if m.regions else "")
        for m in suite.models
    )
    out.print(f"regions: {', '.join(suite.regions)}; models: {models}", highlight=False)
    if job is not None:
        p = job.provenance
        out.print(f"jobspec: {p.jobspec_id} ({p.layout} layout)", highlight=False, markup=False)
        out.print(f"signature: {verdict.line()}", highlight=False, markup=False)
        for warning in p.warnings:
            out.print(f"note: {warning}", highlight=False, markup=False)
    if show_jobs:
        table = Table(title="Planned jobs")
        for col in ("#", "Key", "System prompt"):
            table.add_column(col, overflow="fold")
        for j in jobs:
            table.add_row(str(j.seq), j.key, _snippet(j.system_prompt, 50) or "—")
        out.print(table)


# ---------------------------------------------------------------------------------------
# beacon verify


def _load_receipt_file(path: Path) -> list[tuple[str, dict[str, Any], str | None, str | None, dict[str, Any] | None]]:
    """(label, envelope, text, result_json, export record) for a receipt file or a `runs export` JSONL file."""
    from beacon_golem.core.suite import read_text_file

    raw = read_text_file(path, max_bytes=RECEIPT_FILE_MAX_BYTES)  # an export of a large run is large
    try:
        docs = [json.loads(raw)]
    except json.JSONDecodeError:
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}: line {n}: not valid JSON: {exc.msg}") from None
    items: list[tuple[str, dict[str, Any], str | None, str | None, dict[str, Any] | None]] = []
    for n, doc in enumerate(docs, 1):
        label = str(path) if len(docs) == 1 else f"{path}:{n}"
        if isinstance(doc, dict) and "signature" in doc:
            items.append((label, doc, None, None, None))
        elif isinstance(doc, dict) and isinstance(doc.get("receipt"), dict) and "signature" in doc["receipt"]:
            result = doc.get("result")
            label = f"{label} ({doc.get('job_id', '?')})"
            result_json = json.dumps(result) if isinstance(result, dict) else None
            items.append((label, doc["receipt"], doc.get("text"), result_json, doc))
        elif isinstance(doc, dict) and doc.get("receipt") is None and "job_id" in doc:
            continue  # an exported job without an answer: nothing to verify
        else:
            raise UsageError(f"{label}: not a signed receipt (expected 'receipt', 'public_key' and 'signature')")
    if not items:
        raise UsageError(f"{path}: no receipts in the file")
    return items


#: Fields of an export line and the key of the job spec (signed by the receipt's job_spec_hash) each is.
_EXPORT_SPEC_KEYS = (
    ("job_key", "key"), ("question_id", "question_id"), ("category", "category"), ("model", "model"),
    ("runtime", "runtime"), ("region", "region"), ("repetition", "repetition"), ("request", "request"),
    ("suite_hash", "suite_hash"),
)  # fmt: skip


def _export_fields(record: dict[str, Any] | None, envelope: dict[str, Any]) -> dict[str, Any]:
    """What an export line shows beside its receipt, as `verify_receipt` checks it: the job's spec
    rebuilt from the line's fields (against the signed job_spec_hash), job id, node, times."""
    if record is None:
        return {}
    fields: dict[str, Any] = {}
    if all(k in record for k, _ in _EXPORT_SPEC_KEYS):
        spec = {key: record[k] for k, key in _EXPORT_SPEC_KEYS}
        meta = (envelope.get("output") or {}).get("metadata") if isinstance(envelope.get("output"), dict) else None
        beacon_model = meta.get("beacon_model") if isinstance(meta, dict) else None
        if beacon_model is not None:
            spec["beacon_model"] = beacon_model
        fields["spec_json"] = json.dumps(spec)
    for key in ("job_id", "node_id", "started_at", "ended_at"):
        if isinstance(record.get(key), str):
            fields[key] = record[key]
    return fields


def _trusted_keys(public_key: str | None, trust: Path | None, any_key: bool) -> list[str] | None:
    """The keys a receipt or manifest must be signed by: `--public-key` and `--trust` when given, else
    the default trust file and this machine's key; None with `--any-key`. No key pinned is a failure
    (exit 1): a receipt re-signed by a fresh key would otherwise verify."""
    from beacon_golem.core.errors import BeaconError
    from beacon_golem.requestor.work.receipts import (
        default_trust_path,
        local_public_key,
        read_public_key,
        read_trust_file,
    )

    if any_key:
        return None
    keys: list[str] = []
    if public_key or trust is not None:
        keys += [read_public_key(public_key)] if public_key else []
        keys += read_trust_file(trust) if trust is not None else []
        return list(dict.fromkeys(keys))
    default = default_trust_path()
    if default.exists():
        keys += read_trust_file(default)
    local = local_public_key()
    keys += [local] if local else []
    if not keys:
        raise BeaconError(
            "did not verify: no trusted key pinned (this machine has no receipt key and "
            f"{default} does not exist), so a receipt re-signed by any key would pass; "
            "pass --public-key KEY, --trust FILE, or --any-key to accept any valid signature"
        )
    return list(dict.fromkeys(keys))


@app.command("verify")
def verify(
    run_id: str = typer.Argument(None, help="Run id (or unique prefix, or 'latest') whose results to check"),
    receipt: Path = typer.Option(None, "--receipt", help="Check one receipt file (or a `runs export` JSONL file)"),
    text_file: Path = typer.Option(None, "--text", help="With --receipt: the answer text to check outputs_hash"),
    public_key: str = typer.Option(
        None,
        "--public-key",
        help="Trusted signer: base64 key or key file (default: the data directory's trust file and this machine's key)",
    ),
    trust: Path = typer.Option(
        None, "--trust", help="Trusted signers: a file of base64 keys, one a line, or Beacon's trusted-keys JSON"
    ),
    any_key: bool = typer.Option(
        False, "--any-key", help="Accept a valid signature by any key (checks consistency only, and says so)"
    ),
    db: Path = _db_option(),
) -> None:
    """Check results against their signed receipts and the run's signed manifest; exit 1 with one line per altered item."""
    from beacon_golem.core.suite import read_text_file
    from beacon_golem.requestor.work.receipts import verify_receipt, verify_run

    if (run_id is None) == (receipt is None):
        raise UsageError("give a RUN_ID or --receipt FILE (one of them)")
    if text_file is not None and receipt is None:
        raise UsageError("--text goes with --receipt")
    if any_key and (public_key or trust is not None):
        raise UsageError("--any-key excludes --public-key and --trust")

    problems: list[str] = []
    warnings: list[str] = []
    keys: list[str] = []
    if receipt is not None:
        items = _load_receipt_file(receipt)
        given_text = read_text_file(text_file, max_bytes=RECEIPT_FILE_MAX_BYTES) if text_file is not None else None
        trusted = _trusted_keys(public_key, trust, any_key)  # after the input reads: a bad file is exit 2
        for label, envelope, text, result_json, record in items:
            text = given_text if given_text is not None else text
            key = envelope.get("public_key")
            if isinstance(key, str) and key not in keys:
                keys.append(key)
            found = verify_receipt(envelope, text, trusted_keys=trusted, result_json=result_json,
                                   **_export_fields(record, envelope))  # fmt: skip
            problems += [f"{label}: {problem}" for problem in found]
        checked, what = len(items), f"receipt{'s' if len(items) != 1 else ''} in {receipt}"
        if given_text is None and all(i[2] is None for i in items):
            what += " (signature only: pass --text to check the answer)"
    else:
        with _open(db) as store:
            run = store.find_run(run_id)
            trusted = _trusted_keys(public_key, trust, any_key)
            report = verify_run(store, run.run_id, trusted_keys=trusted)
        problems, checked, what = report.problems, report.checked, f"results of run {run.run_id}"
        warnings, keys = report.warnings, report.public_keys
        if report.manifest_count is not None:
            what += f" and its signed manifest ({report.manifest_count} listed)"
    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    if problems:
        for line in problems:
            typer.echo(line)
        raise SystemExit(1)
    if trusted is None:
        typer.echo("warning: --any-key: the signer was not checked; anyone can re-sign altered results with a key "
                   f"of their own (signed by {', '.join(keys) or 'no key'})", err=True)  # fmt: skip
    pin = "trusted key" if trusted else "any key (--any-key: the signer was not checked)"
    typer.echo(f"ok: {checked} {what} verified, signed by {pin}")


# ---------------------------------------------------------------------------------------
# beacon import-jobspec


@app.command("import-jobspec")
def import_jobspec_cmd(
    jobspec: Path = typer.Argument(..., help="Project Beacon JobSpec (JSON)"),
    questions: Questions = None,
    out_path: Path = typer.Option(None, "--out", help="Write the suite here (default: standard output)"),
    model: str = typer.Option(None, "--model", help="Ask this model for every Beacon model (default: --model-map, else the Beacon id)"),
    model_map: ModelMap = None,
    runtime: str = typer.Option(None, "--runtime", help="llamacpp, ollama, dmr, vllm or any"),
    regional_context: bool = typer.Option(False, "--regional-context", help="Add a regional system prompt (Beacon's context mode)"),
    trust: Trust = None,
    require_signature: RequireSignature = False,
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists"),
) -> None:
    """Turn a Project Beacon JobSpec into a suite file for `beacon run` (its signature must verify)."""
    from beacon_golem.core.suite import RuntimeName, dump_suite_yaml
    from beacon_golem.requestor.work.beacon_import import enforce_signature, read_jobspec

    allowed = get_args(RuntimeName)
    if runtime is not None and runtime not in allowed:
        raise UsageError(f"--runtime: '{runtime}' is not one of {', '.join(allowed)}")
    if out_path is not None and out_path.exists() and not force:
        raise UsageError(f"{out_path}: already exists (pass --force to overwrite)")
    options = jobspec_options(questions, model_map, trust, require_signature)
    job = read_jobspec(jobspec, options.questions, model=model, model_map=options.model_map, runtime=runtime,  # type: ignore[arg-type]
                       regional_context=regional_context, trusted=options.trusted)  # fmt: skip
    warning = enforce_signature(job, require_signature=require_signature)
    for line in ([warning] if warning else []) + [f"note: {w}" for w in job.provenance.warnings]:
        typer.echo(line, err=True)
    suite = job.suite
    p = job.provenance
    text = (f"# Imported from {jobspec.name} by `beacon import-jobspec`; suite hash {suite.suite_hash()}\n"
            f"# JobSpec {p.jobspec_id} ({p.layout} layout), signature {p.signature.status}"
            + (f" ({p.signature.scheme}, key {p.signature.public_key})" if p.signature.scheme else "") + "\n")  # fmt: skip
    text += dump_suite_yaml(suite)
    if out_path is None:
        sys.stdout.write(text)
        return
    write_text_atomic(out_path, text)
    typer.echo(
        f"wrote {out_path}: {len(suite.questions)} questions x {len(suite.models)} models x "
        f"{len(suite.regions)} regions ({', '.join(suite.regions)}) = {suite.job_count()} jobs",
        err=True,
    )


# ---------------------------------------------------------------------------------------
# beacon diff


@app.command("diff")
def diff(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix of it, or 'latest'"),
    md: Path = typer.Option(None, "--md", help="Write the Markdown report here"),
    json_path: Path = typer.Option(None, "--json", help="Write the JSON report here"),
    threshold: float = typer.Option(0.8, min=0.0, max=1.0, help="Regions disagree below this similarity (one answer per region)"),
    bootstrap: int = typer.Option(1000, min=100, max=100_000, help="Bootstrap resamples behind each interval (repetitions)"),
    db: Path = _db_option(),
) -> None:
    """Answers side by side by region and model, Beacon's measures, and where regions disagree."""
    from beacon_golem.reports.differences import build_report, render_markdown

    with _open(db) as store:
        run = store.find_run(run_id)
        report = build_report(store, run.run_id, threshold=threshold, bootstrap=bootstrap)
    markdown = render_markdown(report)
    if md is None and json_path is None:
        sys.stdout.write(markdown)
        return
    if md is not None:
        write_text_atomic(md, markdown)
    if json_path is not None:
        write_text_atomic(json_path, report.model_dump_json(indent=2) + "\n")
    s = report.summary
    typer.echo(
        f"{s.questions} questions, {s.comparisons} comparisons, {len(s.disagreements)} where regions disagree"
        + "".join(f"; wrote {p}" for p in (md, json_path) if p is not None),
        err=True,
    )
