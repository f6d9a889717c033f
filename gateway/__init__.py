"""llm-gateway: a high-throughput, OpenAI-compatible AI gateway."""

from gateway._core import install_source_finder

__all__ = ["__version__"]
__version__ = "0.1.0"

# GATEWAY_NO_EXTENSIONS / GATEWAY_REQUIRE_EXTENSIONS for the request-path modules compiled from source
install_source_finder()
