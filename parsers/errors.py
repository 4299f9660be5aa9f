"""The one input error of Parse Bindings: ``PromptError`` (a ``ValueError``), and the text checks that raise it."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


class PromptError(ValueError):
    """Invalid input to Parse Bindings: the message names the input and says how to fix it.

    Raised for a prompt / override that is not text or is not valid Unicode (an unpaired UTF-16 surrogate),
    an unknown mode, and a malformed override. Any other string parses (possibly to no entities, with a warning).
    """


def check_text(value: Any, name: str = "prompt") -> str:
    """Return ``value`` if it is a valid Unicode string, else raise :class:`PromptError` naming ``name``."""
    if not isinstance(value, str):
        raise PromptError(f"{name}: expected text (a string), got {type(value).__name__}; "
                          f"connect a STRING or type the {name}.")
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise PromptError(f"{name}: character {bad.start()} is an unpaired surrogate (U+{ord(bad.group()):04X}), "
                          f"which is not valid Unicode text (CLIP and spaCy cannot encode it); delete it or "
                          f"re-type / re-save the {name} as UTF-8.")
    return value
