"""G1 load: the engine builds every format on every backend under test (GPU without CUDA: skipped, never passed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apr.errors import AprError
from apr.formats.model import CanonicalModel
from apr.qa.axes import Backend, Format
from apr.qa.gates.catalog import GateId
from apr.qa.recording import Check, corroborated, falsified, skipped

if TYPE_CHECKING:
    from apr.engine import Engine

G1 = GateId.G1_LOAD


def load_engine_check(
    model: CanonicalModel, fmt: Format, backend: Backend, cuda_available: bool, *, pack_cache: bool = True
) -> tuple[Check, Engine | None]:
    """Build the engine in-process; a failure to build is a falsified load, with the error as the reason."""
    if backend is Backend.GPU and not cuda_available:
        return skipped(
            G1, f"engine:{fmt}", "no CUDA device on this host: GPU load not attempted", format=fmt, backend=backend
        ), None
    from apr.engine import load_engine

    try:
        engine = load_engine(model, device=backend.device, compile=False, pack_cache=pack_cache)
    except (AprError, ValueError, RuntimeError, KeyError, NotImplementedError) as err:
        return falsified(
            G1,
            f"engine:{fmt}",
            f"engine failed to load the {fmt} artifact on {backend}: {type(err).__name__}: {err}",
            format=fmt,
            backend=backend,
        ), None
    info = engine.describe()
    return corroborated(
        G1,
        f"engine:{fmt}",
        f"loaded on {info['device']} in {info['load_s']:.2f}s ({info['dtype']}, {len(model.tensors)} tensors)",
        len(model.tensors),
        format=fmt,
        backend=backend,
        device=str(info["device"]),
        metrics={"load_s": info["load_s"], "dtype": info["dtype"]},
    ), engine
