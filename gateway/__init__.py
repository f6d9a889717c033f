"""llm-gateway: a high-throughput, OpenAI-compatible AI gateway."""

__all__ = ["__version__"]
__version__ = "0.1.0"
