"""The normalized generation contract every runtime adapter speaks.

`GenerationRequest` is what a requestor asks of a node, whatever runtime sits behind it;
`GenerationResult` is what comes back. The field names are the contract between the
shim, the dispatcher, the store and the reports: change them only with all four.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class GenerationRequest(BaseModel):
    """One generation, in the same shape for every runtime.

    Exactly one of `messages` (chat) or `prompt` (plain text, sent as one user message)
    is given. `model` may be left out on a node that holds one model.
    """

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    model: str | None = None
    max_tokens: int = Field(default=256, ge=1, le=131_072)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = None
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


TokenCountSource = Literal["server", "estimate"]


class GenerationResult(BaseModel):
    """One answered generation, measured next to the runtime.

    Times are milliseconds from just before the request was sent: `ttft_ms` to the first
    chunk with non-empty content, `e2e_ms` to the last content chunk (or the end of the
    response when nothing was streamed), `itl_ms` the gaps between content chunks.
    `server_timings` holds the runtime's own figures converted to milliseconds.

    Every number is finite and none is negative: a result comes from a node, and a NaN or an
    infinity would break the receipt, the store and every report that reads it.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = Field(ge=0)
    completion_tokens: int | None = Field(ge=0)
    token_count_source: TokenCountSource
    ttft_ms: float | None = Field(ge=0)
    e2e_ms: float = Field(ge=0)
    itl_ms: list[Annotated[float, Field(ge=0)]] = Field(default_factory=list)
    server_timings: dict[str, float] | None = None
    runtime: str
    model: str
    warnings: list[str] = Field(default_factory=list)


def estimate_tokens(text: str) -> int:
    """A rough count for runtimes that report none: about four characters a token."""
    return max(1, round(len(text) / 4)) if text else 0
