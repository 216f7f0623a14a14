"""Runtime settings reach each runtime's own command line or environment, and the GGUF header reader.

Each adapter's `launch()` is the real command the node runs; the flags and variables checked
here are the runtimes' documented ones (llama.cpp tools/server/README.md; DMR llamacpp_config.go;
Ollama envconfig/config.go; vLLM's engine arguments). The GGUF reader is checked against the
`gguf` package's own writer and enums.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from beacon_golem.core.errors import UsageError
from beacon_golem.core.runtime_settings import RuntimeSettings
from beacon_golem.node.runtimes import adapter_class
from beacon_golem.node.runtimes.gguf_header import FILE_TYPES, TENSOR_TYPES, GGUFError, read_gguf_header
from beacon_golem.node.tiny_model import write_tiny_model
from tests.support import llama_server_binary


def argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_llamacpp_takes_parallel_context_and_extra_arguments() -> None:
    llama_server_binary()
    spec = adapter_class("llamacpp").launch("m.gguf", port=9, parallel=4,
                                            settings=RuntimeSettings(parallel=2, ctx_size=8192, extra_args=["--flash-attn", "on"]))  # fmt: skip
    assert argv_value(spec.argv, "--parallel") == "2" and argv_value(spec.argv, "--ctx-size") == "8192"
    assert spec.argv[-2:] == ["--flash-attn", "on"]
    default = adapter_class("llamacpp").launch("m.gguf", port=9, parallel=3)
    assert argv_value(default.argv, "--parallel") == "3" and argv_value(default.argv, "--ctx-size") == str(3 * 2048)


def test_dmr_gets_them_inside_llama_args_with_its_defaults_repeated() -> None:
    spec = adapter_class("dmr").launch("ai/smollm2", port=9, settings=RuntimeSettings(parallel=8, ctx_size=4096,
                                                                                     extra_args=["--no-mmap"]))  # fmt: skip
    assert spec.env["LLAMA_ARGS"] == "-ngl 999 --metrics --parallel 8 --ctx-size 4096 --no-mmap"
    assert spec.env["MODEL_RUNNER_PORT"] == "9"


def test_ollama_gets_environment_variables_and_refuses_arguments() -> None:
    spec = adapter_class("ollama").launch("llama3.2", port=9, settings=RuntimeSettings(
        parallel=1, max_queue=64, keep_alive="5m", ctx_size=8192, env={"OLLAMA_FLASH_ATTENTION": "1"}))  # fmt: skip
    assert spec.argv == ["ollama", "serve"]
    assert {k: spec.env[k] for k in ("OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_QUEUE", "OLLAMA_KEEP_ALIVE", "OLLAMA_CONTEXT_LENGTH",
                                     "OLLAMA_FLASH_ATTENTION")} == {  # fmt: skip
        "OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "64", "OLLAMA_KEEP_ALIVE": "5m", "OLLAMA_CONTEXT_LENGTH": "8192",
        "OLLAMA_FLASH_ATTENTION": "1",
    }  # fmt: skip
    assert adapter_class("ollama").launch("m", port=9).env["OLLAMA_KEEP_ALIVE"] == "-1"  # this node's default
    with pytest.raises(UsageError, match="ollama has no setting extra_args"):
        adapter_class("ollama").launch("m", settings=RuntimeSettings(extra_args=["--verbose"]))


def test_vllm_gets_quantization_memory_and_model_length() -> None:
    spec = adapter_class("vllm").launch("Qwen/Qwen2.5-0.5B-Instruct", port=9, settings=RuntimeSettings(
        quantization="fp8", parallel=256, gpu_memory_utilization=0.85, ctx_size=4096, extra_args=["--enforce-eager"]))  # fmt: skip
    argv = spec.argv
    assert argv_value(argv, "--quantization") == "fp8" and argv_value(argv, "--max-num-seqs") == "256"
    assert argv_value(argv, "--gpu-memory-utilization") == "0.85" and argv_value(argv, "--max-model-len") == "4096"
    assert argv[-1] == "--enforce-eager"
    with pytest.raises(UsageError, match="vllm has no setting max_queue"):
        adapter_class("vllm").launch("m", settings=RuntimeSettings(max_queue=3))


def test_settings_refuse_variables_that_are_not_the_runtimes_and_merge_in_order() -> None:
    with pytest.raises(ValueError, match="LD_PRELOAD: a runtime's environment takes only"):
        RuntimeSettings(env={"LD_PRELOAD": "/tmp/x.so"})
    merged = RuntimeSettings(parallel=4, extra_args=["-a"]).merged(RuntimeSettings(parallel=1, extra_args=["-b"]))
    assert merged.given() == {"parallel": 1, "extra_args": ["-a", "-b"]}
    assert RuntimeSettings.parse_pairs(["ctx=512", "env=VLLM_USE_V1=1"]).given() == {"ctx_size": 512, "env": {"VLLM_USE_V1": "1"}}
    with pytest.raises(UsageError, match="'parallel' is not key=value"):
        RuntimeSettings.parse_pairs(["parallel"])


def test_the_gguf_reader_knows_what_gguf_writes(tmp_path: Path) -> None:
    # Our tables agree with gguf-py's enums for every type they name.
    for value, name in FILE_TYPES.items():
        assert gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_") == name
    for value, name in TENSOR_TYPES.items():
        assert gguf.GGMLQuantizationType(value).name == name
    tiny = read_gguf_header(write_tiny_model(tmp_path / "tiny.gguf"))
    assert tiny["architecture"] == "llama" and tiny["quantization"] == "F32" and tiny["context_length"] == 4096
    # A file with F16 matrices and no general.file_type: the type most matrices use.
    path = tmp_path / "f16.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(1024)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("w1", np.zeros((4, 4), dtype=np.float16))
    writer.add_tensor("w2", np.zeros((4, 4), dtype=np.float16))
    writer.add_tensor("norm", np.zeros((4,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_gguf_header(path)
    assert header["quantization"] == "F16" and header["context_length"] == 1024 and header["tensor_count"] == 3
    assert header["quantization_source"].startswith("most matrices' tensor type")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(GGUFError, match="implausible count"):
        read_gguf_header(tmp_path / "bad.gguf")
    (tmp_path / "no.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf_header(tmp_path / "no.gguf")
