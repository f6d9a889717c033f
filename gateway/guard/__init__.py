"""Guardrails: built-in detectors of personal data and secrets, deny lists, injection heuristics and
shape checks on prompts and answers, streams included (docs/guardrails.md). The phase is
``gateway.guard.phase.GuardPhase``; the configuration ``gateway.guard.config``."""

from gateway.guard.config import GuardPolicy, GuardrailsConfig

__all__ = ["GuardPolicy", "GuardrailsConfig"]
