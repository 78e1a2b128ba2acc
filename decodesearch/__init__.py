"""decodesearch: inference-time search over HuggingFace causal LMs on a fork/rewind engine.

The names below are imported on first use, so `import decodesearch` (and the CLI's `--help`)
does not pay for torch and transformers.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Branch": "decodesearch.engine",
    "Engine": "decodesearch.engine",
    "Sampler": "decodesearch.engine",
    "Stop": "decodesearch.engine",
    "generate": "decodesearch.integrations.hf",
    "custom_generate": "decodesearch.integrations.hf",
    "STRATEGIES": "decodesearch.strategies",
    "SearchResult": "decodesearch.strategies",
    "make_strategy": "decodesearch.strategies",
    "load_model": "decodesearch.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'decodesearch' has no attribute {name!r}")
