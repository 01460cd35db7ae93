"""Text from data (method names, prompts, paths, error messages) made safe to show: control characters and
bidirectional overrides become visible escapes, so no name can forge a log line, move the cursor of a
terminal or reorder what a reader sees. Every output format then applies its own escaping on top."""
from __future__ import annotations

import re

# C0 and C1 controls (newline and tab included: a name is one line), DEL, and the bidirectional controls
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``str(text)`` with every unsafe character written as an escape (``\\n``, ``\\x1b``, ``\\u202e``)."""
    def esc(m: re.Match) -> str:
        ch = m.group(0)
        named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
        return named.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")

    return _UNSAFE.sub(esc, str(text))
