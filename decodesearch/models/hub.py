"""Whether the HF hub can serve a repository now, asked through huggingface_hub itself.

One metadata request (`HfApi.repo_info`, a short timeout, no retries) answers at once where the
loader's own first request would retry for about half a minute offline. Offline mode is
huggingface_hub's own setting (``HF_HUB_OFFLINE``). An answer from the hub (the repository is
missing, gated, private) is not a connection problem: the loader then says what is wrong.
"""

from __future__ import annotations

import os


def hub_problem(repo_id: str, repo_type: str = "model", timeout_s: float = 3.0) -> str | None:
    """Why `repo_id` cannot be fetched from the HF hub now (offline mode, no connection), or None."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    set_now = any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
                  for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # set after huggingface_hub was imported
    if constants.HF_HUB_OFFLINE or set_now:
        return "offline mode is set (HF_HUB_OFFLINE)"
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=timeout_s)
    except OfflineModeIsEnabled:
        return "offline mode is set (HF_HUB_OFFLINE)"
    except (HfHubHTTPError, ValueError):  # the hub answered, or the id is malformed: the loader says
        return None
    except Exception as e:  # the transport failed: no route, no name resolution, timeout
        return f"the HF hub ({constants.ENDPOINT}) cannot be reached: {type(e).__name__}: {e}"
    return None
