"""Write a small, deterministic GGUF model offline: the embedded default needs no download.

The model is a real llama-architecture network (two layers of width 64) with seeded random
weights and a byte-level SentencePiece-style vocabulary plus a few hundred English word
pieces. It talks nonsense, fast: enough to exercise every runtime path, timing and token
count end to end. The output layer gives the end-of-sequence and byte tokens zero logits
while word pieces get large random ones, so answers run to `max_tokens` in readable words; its
attention is strong enough that a different system prompt gives a different answer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from beacon_golem.core.errors import BeaconError

WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or which "
    "region answer model question east west north south europe asia america world people "
    "state country history culture government law power city river sea mountain island "
    "year time day night light dark water fire earth air stone tree bird song story book "
    "open close true false good new old first last long great small high low big young "
    "think know see say make take give find tell ask work call try feel leave put mean "
    "keep let begin seem help show hear play run move live believe bring happen write "
    "sit stand lose pay meet include continue set learn change lead understand watch "
    "follow stop create speak read allow add spend grow offer remember love consider "
    "appear buy wait serve die send expect build stay fall cut reach kill remain suggest "
    "raise pass sell require report decide pull benchmark golem beacon token node gpu"
).split()

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

N_EMBD = 64
#: Attention weights large enough that the answer depends on the whole prompt (system prompt
#: included), not only on its last token: regions with different system prompts answer differently.
ATTN_SCALE = 0.5
N_LAYER = 2
N_HEAD = 4
N_FF = 128
CONTEXT = 4096
DEFAULT_SEED = 1234
MODEL_NAME = "beacon-tiny"


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    seen: set[str] = set()
    pieces = []
    for w in WORDS:
        piece = "\u2581" + w
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    pieces += ["\u2581", "<|im_start|>", "<|im_end|>"]
    tokens += pieces
    types += [TokenType.NORMAL] * (len(pieces) - 2) + [TokenType.CONTROL, TokenType.CONTROL]
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the model to `path` (same seed, same bytes) and return the path."""
    try:
        import numpy as np
        from gguf import GGUFWriter
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BeaconError(
            "writing the tiny model needs the 'gguf' and 'numpy' packages: pip install 'beacon-golem[local]'"
        ) from exc

    rng = np.random.RandomState(seed)
    tokens, scores, types = build_vocab()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    writer = GGUFWriter(str(tmp), "llama")
    writer.add_name(MODEL_NAME)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(0)  # all F32
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    def weight(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD, scale=1.0))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(N_EMBD, N_EMBD, scale=ATTN_SCALE))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = weight(n_vocab, N_EMBD, scale=1.0)
    output[: 3 + 256] = 0.0  # control and byte tokens: logit 0, against word pieces' ~N(0, 8)
    output[-2:] = 0.0  # chat markers
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def ensure_tiny_model(data_dir: Path, seed: int = DEFAULT_SEED) -> Path:
    """The tiny model under `data_dir/models`, written on first use."""
    name = MODEL_NAME if seed == DEFAULT_SEED else f"{MODEL_NAME}-{seed}"
    path = data_dir / "models" / f"{name}.gguf"
    if not path.is_file():
        write_tiny_model(path, seed)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
