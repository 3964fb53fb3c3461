"""Trace text made safe for a terminal: the one escaping function of human output.

Names, paths and comms in a trace are whatever the traced processes chose:
a file can be called ``\\x1b]0;owned\\x07`` (an OSC sequence that retitles
the terminal), hold ESC sequences that move the cursor or recolour the
screen, a newline that adds a fake row to a table, or a right-to-left
override that shows ``txt.exe`` as ``exe.txt``. Every command that prints
trace text for a person passes it through :func:`term` first; JSON output
stays exact (a JSON encoder escapes C0 controls itself, and files written
as UTF-8 go through :func:`json_text` for the rest) and HTML is escaped by
html.escape.

What is escaped, to a visible form that says exactly which code point it
was: C0 controls, DEL and C1 controls (``\\x1b``, ``\\n``, ``\\t``, ``\\x9b``),
the Unicode bidi controls and line/paragraph separators (``\\u202e``),
lone surrogates (``\\udc80`` from bytes that were not UTF-8, shown as the
byte they stand for, ``\\x80``).

The backslash itself is left as it is, so escaping is idempotent: text
escaped where it is built (the answer sentence) and again with the table it
heads comes out the same. The price is that a name which spells ``\\x1b``
looks like one holding ESC; ``--json`` output is exact when that matters.
"""

from __future__ import annotations

import json
import re

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def term(value) -> str:
    """``value`` as text with every control, bidi and invalid character shown as an escape."""
    s = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, s)


def term_tree(obj):
    """A copy of a JSON-like structure with every string (keys too) passed through :func:`term`.

    Renderers take the summary dicts whole, so escaping them once before
    rendering covers every field, including ones added later.
    """
    if isinstance(obj, str):
        return term(obj)
    if isinstance(obj, dict):
        return {term_tree(k): term_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(term_tree(x) for x in obj)
    return obj


def _json_escape(m: re.Match) -> str:
    return f"\\u{ord(m.group()):04x}"


def json_text(obj, **kw) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kw)`` with every character :func:`term` escapes written ``\\uXXXX``.

    Why: a JSON file vfstrace writes (a converted trace, a Perfetto export)
    keeps names as UTF-8 text, but a raw C1 control (U+009B, the one-byte
    CSI) or a bidi override (U+202E) in it is valid JSON that drives the
    terminal of whoever runs ``cat`` on the file. JSON's own escape is exact:
    every reader decodes it to the same string. The encoder escapes C0
    controls already, and outside strings JSON text is ASCII, so only the
    inside of strings changes.
    """
    return _UNSAFE.sub(_json_escape, json.dumps(obj, ensure_ascii=False, **kw))
