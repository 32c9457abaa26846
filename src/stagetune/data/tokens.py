"""Token files on disk: the segments a token stream is made of, read through ``np.memmap``.

Supported layouts (nanoGPT / llm.c / FineWeb conventions):

* raw ``.bin``: little-endian uint16 token ids, nothing else (nanoGPT ``train.bin``);
* llm.c ``.bin``: a 256 × int32 header (``magic=20240520, version=1, num_tokens``) followed by
  uint16 ids; the llama-3 variant (``magic=20240801, version=7``) holds uint32 ids;
* ``.npy``: a one-dimensional integer array (read with ``np.load(mmap_mode="r")``).

Nothing here loads a whole file into memory: every array is a memmap and readers slice it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagetune.errors import ConfigError

__all__ = [
    "LLMC_HEADER_BYTES",
    "LLMC_MAGIC",
    "TokenArray",
    "TokenSegment",
    "read_token_file",
    "scan_token_range",
]

LLMC_MAGIC = 20240520
"""llm.c GPT-2 token shard magic (version 1, uint16 tokens)."""
LLMC_MAGIC_U32 = 20240801
"""llm.c llama-3 token shard magic (version 7, uint32 tokens)."""
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4

# Validation scans memmaps in chunks of this many tokens (32 MiB of uint16): bounded memory.
_SCAN_CHUNK = 1 << 24


@dataclass(frozen=True)
class TokenSegment:
    """A contiguous run of token ids inside one file.

    Attributes:
        path: the file.
        offset: byte offset of the first token (header size).
        num_tokens: number of tokens in the run.
        dtype: numpy dtype name of the stored ids (``uint16`` for everything stagetune writes).
    """

    path: Path
    offset: int
    num_tokens: int
    dtype: str = "uint16"

    def open(self) -> np.memmap:
        """Memory-map the run (read-only); nothing is read until it is sliced."""
        return np.memmap(
            self.path,
            dtype=np.dtype(self.dtype),
            mode="r",
            offset=self.offset,
            shape=(self.num_tokens,),
        )


def read_token_file(path: Path, field: str = "data.source") -> TokenSegment:
    """Describe a token file (``.bin`` raw/llm.c or ``.npy``) as a :class:`TokenSegment`.

    Raises :class:`ConfigError` (naming ``field``) for files that are not valid token files.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, str(path), "the token file does not exist; check the path")
    if path.suffix == ".npy":
        return _read_npy(path, field)
    size = path.stat().st_size
    header = _llmc_header(path, size)
    if header is not None:
        magic, num_tokens = header
        dtype = "uint16" if magic == LLMC_MAGIC else "uint32"
        return TokenSegment(path, LLMC_HEADER_BYTES, num_tokens, dtype)
    if size % 2:
        raise ConfigError(
            field,
            str(path),
            f"{size} bytes is not a whole number of uint16 tokens; expected a raw uint16 .bin "
            "or an llm.c shard (256-int32 header, magic 20240520)",
        )
    return TokenSegment(path, 0, size // 2, "uint16")


def _llmc_header(path: Path, size: int) -> tuple[int, int] | None:
    """Return (magic, num_tokens) when the file carries a consistent llm.c header.

    A raw uint16 file could start with the magic bytes by chance, so the version and the
    token count must also agree with the file size before the header is trusted.
    """
    if size < LLMC_HEADER_BYTES:
        return None
    header = np.fromfile(path, dtype="<i4", count=LLMC_HEADER_INTS)
    magic, version, num_tokens = int(header[0]), int(header[1]), int(header[2])
    expected = {LLMC_MAGIC: (1, 2), LLMC_MAGIC_U32: (7, 4)}.get(magic)
    if expected is None or version != expected[0]:
        return None
    if size != LLMC_HEADER_BYTES + num_tokens * expected[1]:
        return None
    return magic, num_tokens


def _read_npy(path: Path, field: str) -> TokenSegment:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError(field, str(path), f"not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.memmap) or arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ConfigError(
            field,
            str(path),
            f"expected a 1-D integer array, got shape {getattr(arr, 'shape', '?')} "
            f"dtype {getattr(arr, 'dtype', '?')}; save token ids with np.save(path, ids.ravel())",
        )
    # dtype.str keeps the byte order ('<u2', '>i4'), so foreign-endian arrays read correctly.
    return TokenSegment(path, int(arr.offset), int(arr.shape[0]), arr.dtype.str)


def scan_token_range(segment: TokenSegment) -> tuple[int, int]:
    """Return (min id, max id) of a segment, scanning its memmap chunk by chunk."""
    if segment.num_tokens == 0:
        return 0, -1
    arr = segment.open()
    lo, hi = None, None
    for start in range(0, segment.num_tokens, _SCAN_CHUNK):
        chunk = arr[start : start + _SCAN_CHUNK]
        cmin, cmax = int(chunk.min()), int(chunk.max())
        lo = cmin if lo is None else min(lo, cmin)
        hi = cmax if hi is None else max(hi, cmax)
    assert lo is not None and hi is not None
    return lo, hi


class TokenArray:
    """The concatenation of several :class:`TokenSegment` s, read lazily through memmaps.

    Reads that cross a segment boundary are stitched together; a single-segment array uses
    one fancy-indexing read per batch (only the touched pages are loaded).
    """

    def __init__(self, segments: Sequence[TokenSegment]) -> None:
        self.segments = tuple(s for s in segments if s.num_tokens > 0)
        self._maps = [s.open() for s in self.segments]
        lengths = np.array([s.num_tokens for s in self.segments], dtype=np.int64)
        # _starts[i] is the global index of the first token of segment i.
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __reduce__(self) -> tuple[type[TokenArray], tuple[tuple[TokenSegment, ...]]]:
        # A pickled np.memmap carries its whole contents; ship the file references instead.
        return (TokenArray, (self.segments,))

    @property
    def memmaps(self) -> list[np.memmap]:
        """The underlying memmaps (for inspection and tests)."""
        return list(self._maps)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as an int64 array."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"read [{start}, {start + length}) outside [0, {len(self)})")
        out = np.empty(length, dtype=np.int64)
        seg = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos, filled = start, 0
        while filled < length:
            local = pos - int(self._starts[seg])
            take = min(length - filled, self.segments[seg].num_tokens - local)
            out[filled : filled + take] = self._maps[seg][local : local + take]
            filled += take
            pos += take
            seg += 1
        return out

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows ``[s, s + length)`` for each ``s`` in ``starts``, as int64 ``[n, length]``."""
        starts = np.asarray(starts, dtype=np.int64)
        if len(self._maps) == 1:
            index = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
            return np.asarray(self._maps[0][index], dtype=np.int64)
        out = np.empty((len(starts), length), dtype=np.int64)
        for row, s in enumerate(starts):
            out[row] = self.read(int(s), length)
        return out
