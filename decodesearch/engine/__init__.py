"""The branching decode engine (docs/design.md §2)."""

from decodesearch.engine.engine import Branch, CapacityError, Decoded, Engine, EngineStats, derive_seed
from decodesearch.engine.reencode import ReencodeEngine
from decodesearch.engine.sampling import GREEDY, Sampler, Stop, StopReason

__all__ = ["Branch", "CapacityError", "Decoded", "Engine", "EngineStats", "GREEDY", "ReencodeEngine", "Sampler", "Stop",
           "StopReason", "derive_seed"]
