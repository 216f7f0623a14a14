"""Prompts for a benchmark: seeded random prompts of a set length in tokens, or a prompt file.

Random prompts are drawn word by word from common English words (one token each in the
usual BPE vocabularies), so without a tokenizer `input_len` words are a fair estimate of
`input_len` tokens. When the server can tokenize (llama-server and vLLM `/tokenize`,
`/detokenize`), each prompt is cut and re-checked until its own token count is exactly
`input_len` (the chat template the server adds on top is not part of it, as in
`vllm bench serve`). Every prompt differs from its first words, so no two share a cached
prefix beyond the chat template.

A prompt file is JSON lines (`{"prompt": ...}`, `{"text": ...}` or `{"messages": [...]}`
per line) or plain text (one prompt per line); it is cycled when shorter than needed.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp

from beacon_golem.core.bench import PromptSpec
from beacon_golem.core.errors import UsageError
from beacon_golem.core.inference import ChatMessage, GenerationRequest, estimate_tokens

WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or which have "
    "not had but one all were we when there can been has more if will no out so said what up "
    "its about into than them only other new some could time these two may then do first any "
    "my now such like our over man me even most made after also did many before must through "
    "back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since "
    "against go came right used take three small large next early young important few public "
    "place point city water light house open school group country number part river sea name"
).split()

CountMethod = Literal["server-tokenizer", "estimate"]




@dataclass(slots=True)
class Prompt:
    text: str | None
    tokens: int
    messages: list[ChatMessage] | None = None

    def request(self, spec: PromptSpec, model: str | None = None) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.text if self.messages is None else None,
            messages=self.messages,
            model=model,
            max_tokens=spec.output_len,
            ignore_eos=spec.fixed_output,
            temperature=spec.temperature,
        )


@dataclass(slots=True)
class PromptSet:
    prompts: list[Prompt]
    method: CountMethod
    warnings: list[str]


class Tokenizer(Protocol):
    name: str

    async def tokenize(self, text: str) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...


class LlamaServerTokenizer:
    """llama-server's POST /tokenize {"content"} and /detokenize {"tokens"} (tools/server/README.md)."""

    name = "llama-server /tokenize"

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.session.post(self.base_url + path, json=body, timeout=timeout) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def tokenize(self, text: str) -> list[int]:
        data = await self._post("/tokenize", {"content": text, "add_special": False})
        return [t if isinstance(t, int) else t["id"] for t in data["tokens"]]

    async def detokenize(self, tokens: list[int]) -> str:
        return str((await self._post("/detokenize", {"tokens": tokens}))["content"])


class VLLMTokenizer(LlamaServerTokenizer):
    """vLLM's POST /tokenize {"model", "prompt"} -> {"tokens"} and /detokenize -> {"prompt"}."""

    name = "vllm /tokenize"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str) -> None:
        super().__init__(session, base_url)
        self.model = model

    async def tokenize(self, text: str) -> list[int]:
        data = await self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return list(data["tokens"])

    async def detokenize(self, tokens: list[int]) -> str:
        return str((await self._post("/detokenize", {"model": self.model, "tokens": tokens}))["prompt"])


def random_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


async def fit_prompt(tokenizer: Tokenizer, text: str, target: int, rng: random.Random) -> tuple[str, int]:
    """Cut or extend `text` until the tokenizer counts exactly `target` tokens (at most 8 tries).

    Returns the text and its count; the count differs from `target` only when the
    tokenizer's round trip would not settle (then the closest text seen is kept).
    """
    tokens = await tokenizer.tokenize(text)
    best = (text, len(tokens))
    for _ in range(8):
        n = len(tokens)
        if n == target:
            return text, n
        if abs(n - target) < abs(best[1] - target):
            best = (text, n)
        if n > target:
            # Only the leading space goes: a trailing one is a token of its own.
            text = (await tokenizer.detokenize(tokens[:target])).lstrip()
        else:
            text = f"{text} {random_words(rng, target - n)}"
        tokens = await tokenizer.tokenize(text)
    n = len(tokens)
    return (text, n) if abs(n - target) <= abs(best[1] - target) else best


async def random_prompts(
    count: int, spec: PromptSpec, seed: int, tokenizer: Tokenizer | None = None, parallel: int = 16
) -> PromptSet:
    """`count` distinct prompts of `spec.input_len` tokens, the same for the same seed and server."""
    rng = random.Random(seed)
    seeds = [rng.getrandbits(32) for _ in range(count)]
    texts = [random_words(random.Random(s), spec.input_len) for s in seeds]
    if tokenizer is None:
        return PromptSet([Prompt(t, spec.input_len) for t in texts], "estimate", [])
    gate = asyncio.Semaphore(parallel)

    async def one(text: str, s: int) -> tuple[str, int]:
        async with gate:
            return await fit_prompt(tokenizer, text, spec.input_len, random.Random(s ^ 0x5EED))

    fitted = await asyncio.gather(*(one(t, s) for t, s in zip(texts, seeds, strict=True)))
    prompts = [Prompt(t, n) for t, n in fitted]
    warnings = []
    off = sum(1 for p in prompts if p.tokens != spec.input_len)
    if off:
        warnings.append(f"{off} of {count} prompts could not be cut to exactly {spec.input_len} tokens")
    return PromptSet(prompts, "server-tokenizer", warnings)


def read_prompt_file(path: Path) -> list[Prompt]:
    """Prompts from a .jsonl file (prompt/text/messages per line) or a text file (one per line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc}") from exc
    prompts: list[Prompt] = []
    jsonl = path.suffix in (".jsonl", ".json", ".ndjson")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(Prompt(line, estimate_tokens(line)))
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: not JSON") from exc
        if isinstance(obj, str):
            prompts.append(Prompt(obj, estimate_tokens(obj)))
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            messages = [ChatMessage.model_validate(m) for m in obj["messages"]]
            text = " ".join(m.content for m in messages)
            prompts.append(Prompt(None, estimate_tokens(text), messages))
        elif isinstance(obj, dict) and isinstance(obj.get("prompt") or obj.get("text"), str):
            text = obj.get("prompt") or obj["text"]
            prompts.append(Prompt(text, estimate_tokens(text)))
        else:
            raise UsageError(f"{path}:{number}: expected a string or an object with prompt, text or messages")
    if not prompts:
        raise UsageError(f"prompt file {path} holds no prompts")
    return prompts


async def file_prompts(count: int, spec: PromptSpec, offset: int, tokenizer: Tokenizer | None) -> PromptSet:
    """`count` prompts from the file, starting at `offset` (cycled), counted by the server when it can."""
    assert spec.prompt_file is not None
    pool = read_prompt_file(spec.prompt_file)
    chosen = [pool[(offset + i) % len(pool)] for i in range(count)]
    chosen = [Prompt(p.text, p.tokens, p.messages) for p in chosen]
    if tokenizer is None or any(p.messages is not None for p in chosen):
        return PromptSet(chosen, "estimate", ["prompt token counts estimated (about 4 characters a token)"])
    counts = await asyncio.gather(*(tokenizer.tokenize(p.text or "") for p in chosen))
    for p, toks in zip(chosen, counts, strict=True):
        p.tokens = len(toks)
    return PromptSet(chosen, "server-tokenizer", [])


async def build_prompts(
    count: int, spec: PromptSpec, seed: int, tokenizer: Tokenizer | None = None, offset: int = 0
) -> PromptSet:
    if spec.prompt_file is not None:
        return await file_prompts(count, spec, offset, tokenizer)
    return await random_prompts(count, spec, seed, tokenizer)
