"""What every perf script does with the servers it starts on loopback: wait for 200, read JSON,
and write the offline tokenizer that GuideLLM and `vllm bench serve` need (nothing downloaded)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from beacon_golem.node.loadgen.prompts import WORDS

#: A word-level HF tokenizer over the load generator's words, written by the peer tool's own Python.
TOKENIZER_SCRIPT = """
import json, string, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
words = json.loads(sys.argv[2])
vocab = {"[UNK]": 0, "[PAD]": 1}
for w in words + list(string.ascii_letters + string.digits + string.punctuation):
    vocab.setdefault(w, len(vocab))
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.decoder = decoders.WordPiece()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(sys.argv[1])
"""


def wait_ok(url: str, timeout_s: float = 120.0) -> None:
    """Poll `url` until it answers 200; exit with one line if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout_s:.0f} s")


def get_json(url: str, timeout_s: float = 60.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def write_tokenizer(python: Path, directory: Path) -> None:
    """The offline tokenizer in `directory`, written by `python` (the peer tool's venv has tokenizers)."""
    subprocess.run([str(python), "-c", TOKENIZER_SCRIPT, str(directory), json.dumps(list(WORDS))], check=True)
