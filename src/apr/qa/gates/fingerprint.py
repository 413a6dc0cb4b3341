"""Fingerprints of a published checkpoint: per-tensor shape and robust statistics, and the tokenizer's digest.

A fingerprint is small (about 200 bytes a tensor) and survives a legitimate re-encoding of the same weights:
Q4_K_M re-quantized to Q8_0, widened to F16/F32, converted to APR or SafeTensors. It does not survive the
bugs a converter makes: weights scaled, zeroed, swapped between tensors or layers, rows permuted, NaN.

Per tensor it holds the shape, the RMS and the mean |w| over a fixed sample of its rows (all rows of a small
tensor), and ``PROBES`` of those values at fixed positions spread evenly (stored as float16, base64). RMS and mean |w| see a scale; the probes
see *which* values sit where (a swap, a permutation, a transposition, a noisy quantization scale).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apr.formats.model import CanonicalModel
from apr.formats.tensor_source import StoredTensor

PROBES = 32  # values sampled per tensor
# Values read per tensor (whole rows, spread evenly): a scale, a swap or a permutation shows in any sample, and
# 339 tensors of the 1.5B model take ~2 s instead of ~50 s for every value.
SAMPLE_VALUES = 1 << 18
# Fixed texts whose token ids the reference records: plain English, code, digits, non-ASCII, whitespace.
TOKENIZER_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "2 + 2 = 4; 1234567890",
    "Grüße aus Köln — 東京 🙂",
    "  leading spaces\tand\ttabs\n\n",
)
FINGERPRINT_DIR = Path(__file__).with_name("fingerprints")


@dataclass(frozen=True)
class TensorFingerprint:
    shape: tuple[int, ...]
    rms: float
    mean_abs: float
    probes: tuple[float, ...]
    finite: bool = True

    def to_json(self) -> dict:
        packed = np.asarray(self.probes, dtype=np.float16).tobytes()
        return {
            "shape": list(self.shape),
            "rms": float(f"{self.rms:.6g}"),
            "mean_abs": float(f"{self.mean_abs:.6g}"),
            "probes": base64.b64encode(packed).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict) -> TensorFingerprint:
        probes = np.frombuffer(base64.b64decode(data["probes"]), dtype=np.float16).astype(np.float32)
        return cls(tuple(data["shape"]), float(data["rms"]), float(data["mean_abs"]), tuple(probes.tolist()))


@dataclass(frozen=True)
class TokenizerFingerprint:
    tokens: int
    tokens_sha256: str  # of the token texts joined by "\n", in id order (SentencePiece spaces spelled "▁")
    texts: dict[str, list[int]]  # each of TOKENIZER_TEXTS: its ids (no special tokens added)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "tokens_sha256": self.tokens_sha256, "texts": self.texts}

    @classmethod
    def from_json(cls, data: dict) -> TokenizerFingerprint:
        return cls(int(data["tokens"]), str(data["tokens_sha256"]), {k: list(v) for k, v in data["texts"].items()})


@dataclass(frozen=True)
class ModelFingerprint:
    repo: str  # the reference model it was taken from
    source: str  # file name of the published checkpoint
    sha256: str  # its digest (verified by the hub when pulled)
    tensors: dict[str, TensorFingerprint]
    tokenizer: TokenizerFingerprint | None

    def to_json(self) -> dict:
        return {
            "repo": self.repo,
            "source": self.source,
            "sha256": self.sha256,
            "probes": PROBES,
            "tokenizer": self.tokenizer.to_json() if self.tokenizer else None,
            "tensors": {name: t.to_json() for name, t in self.tensors.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> ModelFingerprint:
        tok = data.get("tokenizer")
        return cls(
            repo=data["repo"],
            source=data["source"],
            sha256=data["sha256"],
            tensors={name: TensorFingerprint.from_json(t) for name, t in data["tensors"].items()},
            tokenizer=TokenizerFingerprint.from_json(tok) if tok else None,
        )


def sampled_rows(rows: int, cols: int) -> np.ndarray:
    """The rows the statistics read: all of a small tensor, else SAMPLE_VALUES' worth spread evenly."""
    wanted = max(1, SAMPLE_VALUES // max(cols, 1))
    if rows <= wanted:
        return np.arange(rows, dtype=np.int64)
    return ((np.arange(wanted, dtype=np.float64) + 0.5) * rows / wanted).astype(np.int64)


def probe_positions(count: int) -> np.ndarray:
    """Flat indices (into the sampled values) of the probes: the middle of each of PROBES equal slices."""
    if count <= PROBES:
        return np.arange(count, dtype=np.int64)
    return ((np.arange(PROBES, dtype=np.float64) + 0.5) * count / PROBES).astype(np.int64)


def tensor_fingerprint(source: StoredTensor) -> TensorFingerprint:
    """Statistics of one tensor over its sampled rows (the same rows in every encoding of the same shape)."""
    from apr.formats.ggml import dequantize_raw

    shape = tuple(source.info.shape)
    cols = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    picked = sampled_rows(rows, cols)
    raw = source.raw()
    chosen = raw if len(picked) == rows else raw[picked]
    values = dequantize_raw(np.ascontiguousarray(chosen), source.info.ggml_type, (len(picked), cols))
    values = values.reshape(-1).astype(np.float64) - source.info.value_offset
    finite = bool(np.isfinite(values).all())
    n = max(values.size, 1)
    return TensorFingerprint(
        shape=shape,
        rms=float(np.sqrt(np.dot(values, values) / n)) if finite else float("nan"),
        mean_abs=float(np.abs(values).sum() / n) if finite else float("nan"),
        probes=tuple(values[probe_positions(values.size)].tolist()),
        finite=finite,
    )


def tokenizer_fingerprint(model: CanonicalModel) -> TokenizerFingerprint | None:
    tok = model.tokenizer
    if tok is None:
        return None
    # SentencePiece vocabularies spell a space "▁"; GGUF and tokenizer.json disagree on it for pure-whitespace
    # tokens of gemma ("  " vs "▁▁"), which encode the same. Digest one spelling (the fixed texts check ids).
    tokens = [t.replace(" ", "▁") for t in tok.spec.tokens] if tok.spec.model == "llama" else list(tok.spec.tokens)
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8", "surrogatepass")).hexdigest()
    return TokenizerFingerprint(
        tokens=len(tok.spec.tokens), tokens_sha256=digest, texts={text: tok.encode(text) for text in TOKENIZER_TEXTS}
    )


def model_fingerprint(model: CanonicalModel, repo: str, sha256: str) -> ModelFingerprint:
    return ModelFingerprint(
        repo=repo,
        source=Path(model.source_path).name,
        sha256=sha256,
        tensors={name: tensor_fingerprint(source) for name, source in sorted(model.tensors.items())},
        tokenizer=tokenizer_fingerprint(model),
    )


def load_fingerprint(file_name: str) -> ModelFingerprint:
    """A committed fingerprint (``fingerprints/<file_name>``)."""
    return ModelFingerprint.from_json(json.loads((FINGERPRINT_DIR / file_name).read_text(encoding="utf-8")))
