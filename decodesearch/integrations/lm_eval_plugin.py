"""Teach lm-eval's own `lm_eval` command the model name `decodesearch`.

lm-eval 0.4.x scans no entry-point group for models, so an installed package cannot announce one.
decodesearch therefore installs `decodesearch-lm-eval.pth` into site-packages; `site` runs its one
line at interpreter start, which imports this module (stdlib only, nothing else is imported).

`install()` adds one finder to `sys.meta_path`. It answers no import except `lm_eval.models`, the
module lm-eval imports to fill its model registry; right after that module has run, the finder
registers `decodesearch` as a lazy placeholder (`PLACEHOLDER`), so torch and the adapter are
imported only when lm-eval resolves the name. If `lm_eval.models` is already imported, `install()`
registers at once. Idempotent; without lm-eval installed the finder never fires. A failure to
register (an lm-eval whose registry API differs) is a warning, never an error in lm-eval's import.
"""

from __future__ import annotations

import sys
import warnings

MODEL_NAME = "decodesearch"
PLACEHOLDER = "decodesearch.integrations.lm_eval:DecodeSearchLM"
WATCHED = "lm_eval.models"


def register_placeholder() -> None:
    """Register `decodesearch` -> `PLACEHOLDER` in lm-eval's model registry unless already there."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=PLACEHOLDER)


class _RegisterAfterImport:
    """Meta-path finder: delegates `lm_eval.models` to the other finders, then registers."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module

        def exec_module(module):
            run_module(module)
            try:
                register_placeholder()
            except Exception as e:  # lm-eval must keep working whatever happens here
                warnings.warn(f"decodesearch could not register the lm-eval model {MODEL_NAME!r} ({e!r}); "
                              "run `python -m decodesearch.integrations.lm_eval ...` instead",
                              RuntimeWarning, stacklevel=2)

        loader.exec_module = exec_module  # this module's own loader instance only
        return spec


def install() -> None:
    """Make `decodesearch` resolvable in lm-eval's model registry from now on (idempotent)."""
    if WATCHED in sys.modules:
        register_placeholder()
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
