"""Values read back from Redis (bytes or str, depending on the client's ``decode_responses``) as ``str``.

The one implementation: ``schemas`` uses it for its own reads, and the services import it as ``common.text``.
"""

from __future__ import annotations


def text(value: object, *, errors: str = "strict") -> str:
    """``value`` as str: bytes-like values decoded as UTF-8 (``errors`` as in ``bytes.decode``), others ``str()``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors)
    return value if isinstance(value, str) else str(value)
