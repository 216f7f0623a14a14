#!/usr/bin/env python
"""What the run manifest costs per stored result, and whether it grows with the run.

Records the results of a 10,000-job run into two fresh SQLite files (WAL, synchronous=FULL), each
result with its signed Beacon receipt, turn about: into one without the manifest (as before), into
the other extending and re-signing the run's manifest in the same transaction (as the dispatcher
now does). Prints the
per-result time of each (mean, p50, p99), the first and the last thousand results apart (a cost
that grew with the run would show there), and how long `verify_run` takes on the whole run.

    .venv/bin/python tools/perf/manifest_cost.py
    .venv/bin/python tools/perf/manifest_cost.py --questions 100 --repetitions 50

Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from beacon_golem.core.inference import GenerationResult
from beacon_golem.core.node import Node
from beacon_golem.core.suite import expand_jobs, parse_suite
from beacon_golem.requestor.store.store import Store
from beacon_golem.requestor.work.receipts import ReceiptSigner, build_beacon_receipt, verify_run

T0 = datetime(2025, 8, 22, 14, 34, tzinfo=UTC)


def suite_text(questions: int, repetitions: int) -> str:
    qs = "\n".join(f"  - {{id: q{i}, text: 'Question number {i}?', category: c{i % 5}}}" for i in range(questions))
    return (f"name: manifest-cost\nquestions:\n{qs}\nmodels: [{{name: beacon-tiny, runtime: llamacpp}}]\n"
            f"regions: [US, EU]\ngeneration: {{repetitions: {repetitions}}}\n")  # fmt: skip


def record(tmp: Path, text: str, signer: ReceiptSigner) -> tuple[list[float], list[float], Path, str]:
    """The same results into two stores, one after the other for each result (so disk noise falls on
    both alike): (seconds per result without the manifest, with it, the manifest store, its run)."""
    suite = parse_suite(text)
    plain: list[float] = []
    signed: list[float] = []
    node = Node(node_id="local-0", url="http://127.0.0.1:9000", region="US", fleet="local")
    with Store(tmp / "plain.db") as a, Store(tmp / "manifest.db") as b:
        runs = [s.create_run(suite, text, expand_jobs(suite), {"kind": "local"}) for s in (a, b)]
        jobs = [s.jobs(r.run_id) for s, r in zip((a, b), runs, strict=True)]
        for i in range(len(jobs[0])):
            result = GenerationResult(
                text=f"Answer {i}: " + "lorem ipsum " * 40, finish_reason="length", prompt_tokens=20,
                completion_tokens=100, token_count_source="server", ttft_ms=20.0, e2e_ms=900.0,
                itl_ms=[9.0] * 99, runtime="llamacpp", model="beacon-tiny",
            )  # fmt: skip
            started, ended = T0 + timedelta(seconds=i), T0 + timedelta(seconds=i, milliseconds=900)
            for store, job, manifest, times in ((a, jobs[0][i], False, plain), (b, jobs[1][i], True, signed)):
                t = time.perf_counter()
                receipt = signer.sign_beacon(
                    build_beacon_receipt(job, node, node.node_id, result, started, ended, in_manifest=manifest)
                )
                store.record_result(job.job_id, node.node_id, result, started, ended, receipt,
                                    signer if manifest else None)  # fmt: skip
                times.append(time.perf_counter() - t)
    return plain, signed, tmp / "manifest.db", runs[1].run_id


def summary(label: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{label:<32} mean {statistics.fmean(ms):6.3f} ms  p50 {statistics.median(ms):6.3f} ms  p99 {p99:6.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=50)
    args = parser.parse_args()
    text = suite_text(args.questions, args.repetitions)
    with tempfile.TemporaryDirectory() as tmp:
        signer = ReceiptSigner.load_or_create(Path(tmp) / "key.pem")
        plain, signed, db, run_id = record(Path(tmp), text, signer)
        n = len(signed)
        print(f"{n} results, each with a signed Beacon receipt, SQLite WAL synchronous=FULL")
        print(summary("without manifest", plain))
        print(summary("with manifest", signed))
        print(summary("with manifest: first 1000", signed[:1000]))
        print(summary("with manifest: last 1000", signed[-1000:]))
        extra = statistics.median(signed) - statistics.median(plain)
        print(f"manifest cost per result (p50): {extra * 1000:+.3f} ms ({extra / statistics.median(plain):+.1%})")
        with Store(db, readonly=True) as store:
            t = time.perf_counter()
            report = verify_run(store, run_id, trusted_keys=[signer.public_key])
            took = time.perf_counter() - t
        print(
            f"verify_run on {report.checked} results: {took:.2f} s, ok={report.ok}, manifest lists {report.manifest_count}"
        )


if __name__ == "__main__":
    main()
