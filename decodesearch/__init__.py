"""decodesearch: inference-time search over HuggingFace causal LMs on a fork/rewind engine."""

__version__ = "0.1.0"
