"""Whether the HF hub can be reached now (a cheap TCP check, so offline runs fail fast)."""

from __future__ import annotations

import os


def hub_connection_problem(timeout_s: float = 3.0) -> str | None:
    """Why a TCP connection to the HF hub (``$HF_ENDPOINT``) cannot be opened now, or None."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"{host}:{port} is unreachable ({e})"
    return None
