"""The apr inference engine: pure-torch transformer, packed quantized weights, generation and batching.

The engine knows token ids only; tokenizers, files and the network belong to the callers.
Importing this package pulls in torch, so CLI modules import it inside their commands.
"""

from apr.engine.api import Engine, load_engine
from apr.engine.batch import BatchDecoder, PrefixCache
from apr.engine.types import FinishReason, GenerationResult, SamplingParams, Timings, TokenEvent

__all__ = [
    "Engine",
    "load_engine",
    "BatchDecoder",
    "PrefixCache",
    "SamplingParams",
    "TokenEvent",
    "GenerationResult",
    "Timings",
    "FinishReason",
]
