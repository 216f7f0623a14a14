"""What a GGUF file holds, read from its header with the standard library: quantization and context length.

Follows the GGUF specification (github.com/ggml-org/ggml, docs/gguf.md): the magic `GGUF`, a
uint32 version, uint64 tensor and key-value counts (uint32 in version 1), the key-value pairs
(a string key, a uint32 value type, the value), then one info per tensor (name, dimensions,
ggml type, offset). The quantization is `general.file_type` (llama.cpp's `llama_ftype`) when
the file says it; otherwise the ggml type most of its matrices use (a "guessed" type, as
llama.cpp itself reports for such files). Only the header is read, never the weights.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

#: llama.cpp's llama_ftype (include/llama.h; gguf-py's LlamaFileType), without the MOSTLY_ prefix.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip
#: ggml's tensor types (ggml.h; gguf-py's GGMLQuantizationType).
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: Keys read; everything else is skipped without being decoded.
_WANTED = ("general.file_type", "general.architecture", "general.name")
#: A header that claims more than this is not read (a damaged or hostile file).
_MAX_ITEMS = 1_000_000
_MAX_STRING = 1 << 20


class GGUFError(ValueError):
    pass


class _Reader:
    def __init__(self, f: BinaryIO, version: int) -> None:
        self.f = f
        self.version = version

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError("the file ends inside its header")
        return data

    def scalar(self, vtype: int) -> Any:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self) -> int:
        value = self.scalar(4 if self.version == 1 else 10)
        if value > _MAX_ITEMS:
            raise GGUFError(f"implausible count {value} in the header")
        return int(value)

    def string(self, keep: bool = True) -> str:
        length = self.count() if self.version == 1 else int(self.scalar(10))
        if length > _MAX_STRING:
            raise GGUFError("implausible string length in the header")
        if not keep:
            self.f.seek(length, 1)
            return ""
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            item_type = int(self.scalar(4))
            n = self.count()
            if item_type in _SCALARS:  # fixed size: skip in one seek
                size = struct.calcsize(_SCALARS[item_type])
                if not keep:
                    self.f.seek(size * n, 1)
                    return None
                return [self.scalar(item_type) for _ in range(n)]
            items = [self.value(item_type, keep) for _ in range(n)]
            return items if keep else None
        if vtype not in _SCALARS:
            raise GGUFError(f"unknown value type {vtype} in the header")
        return self.scalar(vtype)


def read_gguf_header(path: str | Path) -> dict[str, Any]:
    """`{"quantization", "quantization_source", "architecture", "name", "context_length", "tensor_count"}`."""
    with Path(path).open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file")
        version = struct.unpack("<I", f.read(4))[0]
        if version not in (1, 2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not known")
        r = _Reader(f, version)
        n_tensors = r.count()
        n_kv = r.count()
        found: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = int(r.scalar(4))
            keep = key in _WANTED or key.endswith(".context_length")
            value = r.value(vtype, keep)
            if keep:
                found[key] = value
        types: Counter[int] = Counter()
        for _ in range(n_tensors):
            r.string(keep=False)
            dims = int(r.scalar(4))
            if dims > 8:
                raise GGUFError("implausible tensor rank in the header")
            shape = [int(r.scalar(10)) for _ in range(dims)]
            ttype = int(r.scalar(4))
            r.scalar(10)  # offset
            if len(shape) >= 2:
                types[ttype] += 1
    arch = found.get("general.architecture")
    out: dict[str, Any] = {"architecture": arch, "name": found.get("general.name"), "tensor_count": n_tensors}
    ctx = found.get(f"{arch}.context_length") if arch else None
    out["context_length"] = int(ctx) if isinstance(ctx, int) else None
    ftype = found.get("general.file_type")
    if isinstance(ftype, int) and ftype in FILE_TYPES:
        out["quantization"], out["quantization_source"] = FILE_TYPES[ftype], "general.file_type"
    elif types:
        common = types.most_common(1)[0][0]
        out["quantization"] = TENSOR_TYPES.get(common, f"type {common}")
        out["quantization_source"] = "most matrices' tensor type (no general.file_type)"
    else:
        out["quantization"], out["quantization_source"] = None, None
    return out
