"""Prompt templates published as REST APIs: versions, splits, sandboxed rendering, schemas
(docs/prompts.md)."""

from gateway.prompts.config import PromptConfig, PromptVersionConfig
from gateway.prompts.table import Prompt, PromptTable

__all__ = ["Prompt", "PromptConfig", "PromptTable", "PromptVersionConfig"]
