"""GPU hot spots of the engine (docs/design.md §5), each a Triton kernel beside a torch reference.

Public entry points pick the backend per call (see :mod:`.dispatch`): ``kv_copy`` (fork: copy
rows of every layer's K and V in one launch), ``kv_gather`` (compact: left-pack rows in place) and
``score`` (fused logsumexp / token log-probs / entropy).
"""

from .dispatch import BACKENDS, ENV_VAR, backend_for, kv_copy, kv_gather, score
from .kv_kernels import kv_copy_reference, kv_gather_reference
from .score_kernel import score_reference

__all__ = [
    "kv_copy",
    "kv_gather",
    "score",
    "backend_for",
    "ENV_VAR",
    "BACKENDS",
    "kv_copy_reference",
    "kv_gather_reference",
    "score_reference",
]
