"""Shared fixtures: one token cache and one local Ray instance per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagetune.config import preset_overrides

# Tests must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small, fast experiment settings shared by the integration tests (the builtin corpus capped
# so its tokenizer trains in a second or two).
FAST = preset_overrides("smoke")
"""The ``smoke`` preset as overrides: laid over whichever preset a test loads."""


@pytest.fixture(scope="session", autouse=True)
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache of tokenizers and token files for the whole session (shared by Ray workers)."""
    cache = Path(
        os.environ.get("STAGETUNE_TEST_CACHE") or tmp_path_factory.mktemp("stagetune-cache")
    )
    old = os.environ.get("STAGETUNE_CACHE")
    os.environ["STAGETUNE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("STAGETUNE_CACHE", None)
    else:
        os.environ["STAGETUNE_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The key that signs Tune state (created on first use): the session's own, never the
    user's ``~/.config/stagetune/key``. Subprocesses inherit it through the environment."""
    from stagetune.orchestration.integrity import KEY_ENV

    key = tmp_path_factory.mktemp("stagetune-key") / "key"
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(key)
    yield key
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old


@pytest.fixture(scope="session")
def ray_local(token_cache: Path) -> Iterator[None]:
    """A real local Ray instance on loopback only, started once per test session."""
    import ray

    from stagetune.orchestration.cluster import start_local

    if not ray.is_initialized():
        start_local(
            num_cpus=2,
            log_to_driver=False,
            runtime_env={"env_vars": {"STAGETUNE_CACHE": str(token_cache), "HF_HUB_OFFLINE": "1"}},
        )
    yield
    ray.shutdown()


@pytest.fixture
def fast_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: a small ExperimentConfig in tmp_path, with extra overrides."""
    from stagetune.config import load_config

    def make(*overrides: str, preset: str | None = None):  # type: ignore[no-untyped-def]
        return load_config(
            preset=preset, overrides=[*FAST, f"workdir={tmp_path / 'work'}", *overrides]
        )

    return make
