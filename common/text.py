"""Values read back from Redis (bytes or str, depending on the client's ``decode_responses``) as ``str``
(implemented in ``schemas.redis_values``, which ``schemas`` itself uses and which must not import ``common``)."""

from __future__ import annotations

from schemas.redis_values import text

__all__ = ["text"]
