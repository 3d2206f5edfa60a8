"""Text that is safe to print to a terminal, whatever a file or class name holds.

File and class names come from the user's disk and can hold anything but `/` and NUL: ANSI escape sequences
(which recolour, retitle or clear a terminal), carriage returns (which overwrite what was printed), right-to-left
overrides (which make `gpj.exe` read as `exe.jpg`) and, on Linux, bytes that are not UTF-8 (Python reads them as
lone surrogates, which a UTF-8 terminal stream refuses to encode). `printable` shows each such character as a
visible escape instead of stripping it, so two different names never print the same.
"""

from __future__ import annotations

import unicodedata

# Invisible characters that reorder the text around them (Unicode bidirectional formatting characters).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters, surrogates (non-UTF-8 bytes of a file name), line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """`text` with control characters, ANSI escapes, bidi overrides and undecodable bytes shown as escapes.

    A byte that was not UTF-8 in a file name (read as the surrogate U+DC80..U+DCFF) is shown as `\\xNN`, the byte
    itself; other characters as `\\xNN` or `\\uNNNN`, like Python's `repr`.

    Example:
        >>> printable("\\x1b[31mred\\x1b[0m"), printable("caf\\udce9.jpg"), printable("ants")
        ('\\\\x1b[31mred\\\\x1b[0m', 'caf\\\\xe9.jpg', 'ants')
    """
    if text.isprintable():  # the common case, and fast
        return text
    return "".join(_escape(character) for character in text)


def _escape(character: str) -> str:
    if character in _BIDI_CONTROLS or unicodedata.category(character) in _ESCAPED_CATEGORIES:
        code = ord(character)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return character


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (exporters and huggingface_hub write many), or its type's
    name when it has no message.

    Example:
        >>> first_line(RuntimeError("no network\\nretry 1 of 5")), first_line(KeyError())
        ('no network', 'KeyError')
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
