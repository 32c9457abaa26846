"""Pre-tokenised token shards: uint16 ``.bin`` (raw nanoGPT or llm.c/FineWeb) and ``.npy``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from stagetune.data.base import TokenSource
from stagetune.data.cache import stable_hash
from stagetune.data.paths import TOKEN_SUFFIXES, resolve_files
from stagetune.data.tokens import TokenSegment, read_token_file
from stagetune.errors import ConfigError

__all__ = ["TokenShards"]


class TokenShards(TokenSource):
    """Token ids from one or many shard files, concatenated in sorted file order.

    The shards are used in place (memory-mapped, never copied). Point ``data.source`` at the
    training shards only (e.g. ``fineweb_train_*.bin``): stagetune holds out its own eval split
    from the end of the stream.

    Args:
        paths: a file, directory or glob (``data.source``), or an explicit list of files.
    """

    name: ClassVar[str] = "token_shards"

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        if isinstance(paths, (str, Path)):
            self.spec = str(paths)
            files = resolve_files(self.spec)
        else:
            files = [Path(p) for p in paths]
            self.spec = ", ".join(str(p) for p in files) or "(no files)"
        if not files:
            raise ConfigError("data.source", self.spec, "no shard files given; name at least one")
        bad = [p for p in files if p.suffix not in TOKEN_SUFFIXES]
        if bad:
            raise ConfigError(
                "data.source",
                str(bad[0]),
                f"not a token shard; token sources take {', '.join(TOKEN_SUFFIXES)} "
                "(token shards and text cannot be mixed)",
            )
        self.files = files
        # Reading headers is cheap (a few bytes per file) and validates every shard up front.
        self._segments = [read_token_file(p) for p in files]

    def segments(self) -> list[TokenSegment]:
        """One segment per shard, in file order."""
        return list(self._segments)

    @property
    def num_tokens(self) -> int:
        """Total tokens over all shards."""
        return sum(s.num_tokens for s in self._segments)

    def fingerprint(self) -> str:
        """Digest of each shard's absolute path, size, modification time and layout."""
        entries = []
        for seg in self._segments:
            stat = seg.path.stat()
            entries.append(
                (str(seg.path.resolve()), stat.st_size, stat.st_mtime_ns, seg.offset, seg.dtype)
            )
        return stable_hash("token_shards", entries)

    def describe(self) -> str:
        return (
            f"token shards: {len(self.files)} file(s), {self.num_tokens:,} tokens from {self.spec}"
        )
