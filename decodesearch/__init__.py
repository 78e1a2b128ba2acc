"""decodesearch: inference-time search over HuggingFace causal LMs on a fork/rewind engine."""

__version__ = "0.1.0"

from decodesearch.engine import Branch, Engine, Sampler, Stop  # noqa: E402
from decodesearch.integrations.hf import generate, hf  # noqa: E402
from decodesearch.strategies import STRATEGIES, SearchResult, make_strategy  # noqa: E402

__all__ = ["Branch", "Engine", "STRATEGIES", "Sampler", "SearchResult", "Stop", "generate", "hf", "make_strategy"]
