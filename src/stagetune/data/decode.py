"""Reading a text file as UTF-8 in bounded chunks, counting the bytes that are not UTF-8.

A ``.txt`` corpus is decoded the way ``bytes.decode("utf-8", errors="replace")`` would decode
it (each undecodable sequence becomes U+FFFD), but chunk by chunk, so memory does not grow with
the file or its longest line. A file that is mostly not UTF-8 (binary data, another encoding)
would train on replacement characters: above :data:`MAX_UNDECODABLE_SHARE` of its bytes it is
refused, below it a warning names the share.
"""

from __future__ import annotations

import codecs
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from stagetune.errors import ConfigError

__all__ = ["CHUNK_BYTES", "MAX_UNDECODABLE_SHARE", "read_utf8_chunks"]

_log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Bytes read per chunk."""
MAX_UNDECODABLE_SHARE = 0.01
"""Largest share of a file's bytes that may be undecodable: a stray byte of another encoding
in a text is tolerated (with a warning); 1 % is binary data or a text in another encoding."""

_ERRORS = "stagetune.count-and-replace"
# The handler runs inside a decode call of this thread: the count is read right after it.
_count = threading.local()


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _count.bad += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error(_ERRORS, _count_and_replace)


def _decode(decoder: codecs.IncrementalDecoder, data: bytes, final: bool) -> tuple[str, int]:
    """The text of ``data`` and how many of its bytes were undecodable."""
    _count.bad = 0
    text = decoder.decode(data, final)
    return text, _count.bad


def read_utf8_chunks(
    path: Path, *, field: str = "data.source", chunk_bytes: int = CHUNK_BYTES
) -> Iterator[str]:
    """Yield the text of ``path`` in chunks of at most ``chunk_bytes`` bytes' worth.

    Joined, the chunks equal ``path.read_bytes().decode("utf-8", errors="replace")``.

    Raises:
        ConfigError: (naming ``field``) once more than :data:`MAX_UNDECODABLE_SHARE` of the
            file's bytes are certain to be undecodable; nothing more is yielded then.
    """
    size = path.stat().st_size
    allowed = MAX_UNDECODABLE_SHARE * size
    decoder = codecs.getincrementaldecoder("utf-8")(errors=_ERRORS)
    bad = 0
    refused = False
    with open(path, "rb") as handle:
        while True:
            data = handle.read(chunk_bytes)
            text, found = _decode(decoder, data, final=not data)
            bad += found
            # Past the threshold the file is refused whatever follows: stop yielding, but
            # count to the end so the error states the file's real share.
            refused = refused or bad > allowed
            if text and not refused:
                yield text
            if not data:
                break
    if refused:
        raise ConfigError(
            field,
            str(path),
            f"{bad:,} of its {size:,} bytes ({bad / size:.1%}) are not UTF-8: binary data or "
            f"another encoding (more than {MAX_UNDECODABLE_SHARE:.0%} is refused); convert it "
            "to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from the corpus",
        )
    if bad:
        _log.warning(
            "%s: %d of its %d bytes (%.3f%%) are not UTF-8; they read as U+FFFD",
            path,
            bad,
            size,
            100 * bad / size,
        )
