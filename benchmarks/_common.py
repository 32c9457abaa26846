"""What every benchmark script shares: an offline environment and a note on the machine.

Imported as ``_common`` (the scripts run as ``python benchmarks/<name>.py``, so their own
directory is first on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
from typing import Any

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
"""Nothing may reach a hub; Ray must not re-run the project's env through uv."""


def set_offline_env() -> None:
    """Apply :data:`OFFLINE_ENV` where the caller has not set a variable itself."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Where and under what load a benchmark ran (absolute seconds mean little without it)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
