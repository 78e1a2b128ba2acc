"""The branching decode engine (docs/design.md §2)."""

from decodesearch.engine.backend import Backend, DenseRows
from decodesearch.engine.engine import Branch, CapacityError, Decoded, Engine, EngineStats, derive_seed
from decodesearch.engine.reencode import Reencode
from decodesearch.engine.sampling import GREEDY, Sampler, Stop, StopReason

__all__ = ["Backend", "Branch", "CapacityError", "Decoded", "DenseRows", "Engine", "EngineStats", "GREEDY", "Reencode",
           "Sampler", "Stop", "StopReason", "derive_seed"]
