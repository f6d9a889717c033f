"""The OpenAI Responses API (``/v1/responses``): its conversation store and its front on the engine."""
