"""Client dialects: the API shapes clients speak, each converted to and from the IR (``gateway.ir``).

``gateway.dialects.base`` has the seam (``ClientDialect``) and its theory of operation. OpenAI chat
(``openai_chat``) is the default and costs the pass-through path nothing (``ctx.dialect is None``);
every other dialect is listed here by the request paths that speak it, and the engine sets
``ctx.dialect`` from this table.
"""

from __future__ import annotations

from typing import Final

from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.dialects.base import ClientDialect
from gateway.dialects.openai_responses import OPENAI_RESPONSES

__all__ = ["DIALECT_PATHS"]

#: request path → (the engine's endpoint name, the dialect). An endpoint named like its dialect's
#: ``endpoint`` is a generation request (parsed, admitted, routed, sent upstream); the others are
#: answered by the engine's dialect handlers (``count_tokens``).
DIALECT_PATHS: Final[dict[str, tuple[str, ClientDialect]]] = {
    "/v1/messages": ("messages", ANTHROPIC_MESSAGES),
    "/v1/messages/count_tokens": ("count_tokens", ANTHROPIC_MESSAGES),
    # POST is taken by the engine's Responses front (gateway.responses.service), which makes a dialect
    # object per request; GET/DELETE /v1/responses/{id} are its own too
    "/v1/responses": ("responses", OPENAI_RESPONSES),
}
