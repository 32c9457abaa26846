"""Cutting long documents into pieces that tokenise exactly as the whole document does.

Encoding (and BPE training on) a multi-megabyte string at once needs memory proportional to it
(about 150 bytes per character in ``tokenizers``: a 30 MB single-line file took 4.6 GB to
encode). A document is therefore handled in pieces of about :data:`PIECE_CHARS` characters,
cut only where the byte-level pre-tokenisation (the GPT-2 regex, whose tokens never hold a
whitespace character after a non-whitespace one) starts a new token anyway: right before a
space or newline that follows a letter, digit or ASCII symbol. The pieces' tokens concatenated
equal the document's tokens. A document with no such place for :data:`MAX_PIECE_CHARS`
characters (no whitespace for megabytes: not prose or code) is cut there regardless; only the
token at that cut can differ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["MAX_PIECE_CHARS", "PIECE_CHARS", "document_pieces"]

PIECE_CHARS = 1 << 18
"""Target piece length (characters)."""
MAX_PIECE_CHARS = 4 * PIECE_CHARS
"""Hard cap of a piece's length (characters)."""
# Python's \w (letters, digits, _) and ASCII symbols are non-whitespace for every regex engine;
# ' ' and '\n' are whitespace for every engine.
_SAFE_SPLIT = re.compile(r"(?<=[\w!-~])(?=[ \n])")


def document_pieces(chunks: Iterable[str]) -> Iterator[str]:
    """The non-empty pieces of the document that ``chunks`` spell out, in order.

    Holds at most about :data:`MAX_PIECE_CHARS` plus one chunk of text at a time.
    """
    buf = ""
    for chunk in chunks:
        buf += chunk
        while len(buf) > PIECE_CHARS:
            match = _SAFE_SPLIT.search(buf, PIECE_CHARS, MAX_PIECE_CHARS)
            if match is not None:
                cut = match.start()
            elif len(buf) >= MAX_PIECE_CHARS:
                cut = MAX_PIECE_CHARS
            else:
                break  # wait for more text: a safe place may follow
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf
