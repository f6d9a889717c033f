"""The compiled form of the guardrail policies that apply to one request: ``Guard``.

Several named policies may apply to one request (the gateway's, the model's, the tenant's, the key's).
They are merged once per distinct set (and the result kept), never per request:

    what                       | merged as
    ---------------------------+--------------------------------------------------------------
    a detector's action        | the strictest: block > mask > log > off
    custom detectors           | all of them (by name; the strictest action of a repeated name)
    deny words and patterns    | all of them, per direction; the strictest action
    allow words and patterns   | all of them
    injection                  | the lowest threshold, the strictest action, all extra phrasings
    max_prompt_tokens/messages | the smallest
    allowed_roles              | the intersection
    tool_arguments/json_schema | the strictest
    webhooks                   | all of them, called in turn

Every regex is compiled here, once per merged set (``Scanner``), so a request pays only for its scan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from gateway import errors
from gateway.guard.config import GuardPolicy, WebhookConfig, scoped
from gateway.guard.detectors import Detector, Finding, Scanner, builtin, custom_detector, deny_detector

__all__ = ["RANK", "Guard", "Side", "blocked"]

#: how strict each action is
RANK: Final = {"off": 0, "log": 1, "mask": 2, "block": 3}

#: known jailbreak and injection phrasings, with their weights
_INJECTION: Final = (
    (r"ignore (?:all |any |the )?(?:previous|prior|above|earlier|preceding) (?:instructions|prompts?|rules|"
     r"directions|messages)", 1.0),
    (r"disregard (?:all |any |the |your )?(?:previous|prior|above|earlier|system) (?:instructions|prompts?|"
     r"rules)", 1.0),
    (r"forget (?:all |everything |your )?(?:previous |prior )?(?:instructions|rules|you were told)", 0.8),
    (r"you are (?:now )?(?:DAN|in developer mode|jailbroken|unrestricted|no longer bound)", 1.0),
    (r"\bdo anything now\b", 1.0),
    (r"(?:reveal|print|show|repeat|output) (?:me )?(?:your|the) (?:system prompt|hidden instructions|"
     r"initial instructions)", 0.8),
    (r"pretend (?:that )?you (?:have no|are not bound by|don't have) (?:restrictions|rules|guidelines)", 0.8),
    (r"\bnew instructions?\s*:", 0.5),
    (r"\bsystem prompt\s*:", 0.5),
    (r"override (?:your |the )?(?:safety|content) (?:policy|filters?|guidelines)", 0.8),
    (r"</?(?:system|instructions?)>", 0.5),
    (r"\bjailbreak\b", 0.5),
)
_TOOL_ROLE = re.compile(r'"role"\s*:\s*"(?:tool|function)"')


def blocked(policy: str, detector: str, where: str) -> errors.BadRequest:
    """The 400 of a block; its code names the detector (``guardrail_card``), as the call record does."""
    return errors.BadRequest(
        f"The {where} was blocked by the gateway's guardrail policy {policy!r} (detector: {detector}).",
        code=f"guardrail_{detector}",
    )


#: the built-in detectors whose findings a stream's window holds by their shape (a number with its
#: separators, an IBAN or NINO, a PEM header: ``masking._TAIL_SPACED``), not as an unfinished word
SHAPED = frozenset({"phone", "card", "iban", "ipv4", "private_key", "us_ssn", "uk_nino", "ca_sin", "es_dni"})


class Side:
    """The checks of one direction (prompts or answers): a scanner and each detector's action."""

    __slots__ = ("actions", "errors", "phrase_hold", "phrases", "scanner", "word_hold")

    def __init__(self, detectors: list[Detector], actions: dict[str, str], owners: dict[str, str],
                 where: str, allow: tuple[frozenset[str], re.Pattern[str] | None],
                 phrase_hold: int = 0, phrases: tuple[str, ...] = ()) -> None:
        if allow[0] or allow[1] is not None:
            detectors = [_allowing(d, allow) for d in detectors]
        self.scanner = Scanner(detectors)
        self.actions = actions
        #: each detector's block answer, built once
        self.errors = {name: blocked(owners[name], name, where)
                       for name, a in actions.items() if a == "block"}
        #: the longest deny phrase with a space or a sign in it (what a stream's tail may hold of one)
        self.phrase_hold = phrase_hold
        #: those phrases, lower-cased: a stream holds the tail that one of them could begin with
        self.phrases = phrases
        #: whether a detector of this side can find something inside a word (an e-mail address, a key, a
        #: deny word, a custom regex, ...): then a stream holds an unfinished word at its end; the others
        #: find numbers, IBANs and PEM headers only, which the window holds by their own shapes
        self.word_hold = any(d.name not in SHAPED for d in detectors)

    def __bool__(self) -> bool:
        return bool(self.scanner.detectors)

    def strictest(self, findings: Sequence[Finding]) -> tuple[str, Finding | None]:
        best, which = "off", None
        for f in findings:
            a = self.actions[f.detector.name]
            if RANK[a] > RANK[best]:
                best, which = a, f
        return best, which


def _allowing(d: Detector, allow: tuple[frozenset[str], re.Pattern[str] | None]) -> Detector:
    """``d`` with the allow list applied to its findings (before its own validator)."""
    words, rx = allow
    inner = d.validate

    def check(text: str, start: int, end: int) -> int:
        if inner is not None:
            end = inner(text, start, end)
            if end < 0:
                return end
        value = text[start:end]
        if value.lower() in words or (rx is not None and rx.fullmatch(value)):
            return -1
        return end

    out = Detector.__new__(Detector)
    for slot in Detector.__slots__:
        setattr(out, slot, getattr(d, slot))
    out.validate = check
    return out


class Guard:
    """The merged, compiled policies of one set of names."""

    __slots__ = (
        "_weights",
        "allowed_roles",
        "checks_answer",
        "in_scan",
        "in_scanner",
        "injection",
        "injection_action",
        "injection_error",
        "injection_threshold",
        "injection_tool_weight",
        "input",
        "json_schema",
        "max_messages",
        "max_prompt_tokens",
        "name",
        "out_always",
        "out_scan",
        "out_scanner",
        "output",
        "plain",
        "shaped",
        "tool_arguments",
        "webhooks",
    )

    def __init__(self, policies: Sequence[tuple[str, GuardPolicy]]) -> None:
        self.name = "+".join(n for n, _ in policies)
        words: set[str] = set()
        allow_rx: list[str] = []
        for _, p in policies:
            if p.allow is not None:
                words.update(w.lower() for w in p.allow.words)
                allow_rx.extend(p.allow.patterns)
        allow = (frozenset(words),
                 re.compile("|".join(f"(?:{scoped(r)})" for r in allow_rx)) if allow_rx else None)
        self.input = self._side(policies, "input", "prompt", allow)
        self.output = self._side(policies, "output", "answer", allow)
        self.max_prompt_tokens = _smallest(p.max_prompt_tokens for _, p in policies)
        self.max_messages = _smallest(p.max_messages for _, p in policies)
        roles: set[str] | None = None
        for _, p in policies:
            if p.allowed_roles is not None:
                roles = set(p.allowed_roles) if roles is None else roles & set(p.allowed_roles)
        self.allowed_roles = frozenset(roles) if roles is not None else None
        self.tool_arguments = _strictest(p.tool_arguments for _, p in policies)
        self.json_schema = _strictest(p.json_schema for _, p in policies)
        self.webhooks: tuple[tuple[str, WebhookConfig], ...] = tuple(
            (n, p.webhook) for n, p in policies if p.webhook is not None)
        inj = [(n, p.injection) for n, p in policies if p.injection is not None]
        self.injection: re.Pattern[str] | None = None
        self.injection_action = "off"
        self.injection_threshold = 0.0
        self.injection_tool_weight = 1.0
        self.injection_error: errors.BadRequest | None = None
        self._weights: list[float] = []
        if inj:
            phrases = [rx for rx, _ in _INJECTION] + [rx for _, c in inj for rx in c.patterns]
            self.injection = re.compile(
                "|".join(f"(?P<i{i}>{scoped(rx)})" for i, rx in enumerate(phrases)), re.I)
            self._weights = [w for _, w in _INJECTION] + [1.0 for _, c in inj for _ in c.patterns]
            owner, first = max(inj, key=lambda t: RANK[t[1].action])
            self.injection_action = first.action
            self.injection_threshold = min(c.threshold for _, c in inj)
            self.injection_tool_weight = max(c.tool_weight for _, c in inj)
            self.injection_error = blocked(owner, "injection", "prompt")
        # PERF: what the phase asks of every request, answered once
        #: each side's scanner (None: the side checks nothing)
        self.in_scanner = self.input.scanner if self.input else None
        self.out_scanner = self.output.scanner if self.output else None
        #: their prefilters' ``scan`` (bytes -> the trigger mask)
        self.in_scan = self.in_scanner.prefilter.scan if self.in_scanner is not None else None
        self.out_scan = self.out_scanner.prefilter.scan if self.out_scanner is not None else None
        self.out_always = self.out_scanner is not None and self.out_scanner.always
        #: answers are checked against the request's tools or schema (the request is decoded for them)
        self.checks_answer = self.tool_arguments != "off" or self.json_schema != "off"
        #: the messages' count or roles are limited
        self.shaped = self.max_messages is not None or self.allowed_roles is not None
        #: a prompt in which the prefilter finds no trigger needs nothing else on its way in: no shape,
        #: no injection score, no detector that always runs, no counting, no webhook, no answer check
        self.plain = not (self.shaped or self.injection is not None or self.checks_answer or self.webhooks
                          or self.max_prompt_tokens is not None
                          or (self.in_scanner is not None and self.in_scanner.always))

    @staticmethod
    def _side(policies: Sequence[tuple[str, GuardPolicy]], side: str, where: str,
              allow: tuple[frozenset[str], re.Pattern[str] | None]) -> Side:
        actions: dict[str, str] = {}
        owners: dict[str, str] = {}
        regions: list[str] = []

        def take(name: str, action: str, owner: str) -> None:
            if RANK[action] > RANK.get(actions.get(name, "off"), 0):
                actions[name] = action
                owners[name] = owner
            elif name not in actions:
                actions[name] = action
                owners[name] = owner

        custom: dict[str, tuple[str, int]] = {}
        deny_words: list[str] = []
        deny_rx: list[str] = []
        for owner, p in policies:
            regions.extend(r for r in p.phone_regions if r not in regions)
            for det, action in getattr(p, side).items():
                take(det, action, owner)
            for c in p.custom:
                if c.direction in (side, "both"):
                    take(c.name, c.action, owner)
                    custom[c.name] = (c.pattern, c.max_length)
            deny = p.deny
            if deny is not None and deny.direction in (side, "both") and (deny.words or deny.patterns):
                take("deny", deny.action, owner)
                deny_words.extend(deny.words)
                deny_rx.extend(deny.patterns)
        detectors: list[Detector] = []
        for name, action in actions.items():
            if action == "off":
                continue
            if name in custom:
                rx, max_len = custom[name]
                detectors.append(custom_detector(name, rx, max_len))
            elif name == "deny":
                detectors.append(deny_detector(deny_words, deny_rx))
            else:
                detectors.extend(builtin(name, phone_regions=regions))
        phrases = tuple(dict.fromkeys(w.lower() for w in deny_words if not w.isalnum()))
        phrase_hold = max((len(w) for w in phrases), default=0)
        return Side(detectors, actions, owners, where, allow, phrase_hold, phrases)

    def injection_score(self, messages: Sequence[Any]) -> float:
        """The score of the prompt's messages: the weights of the distinct phrasings found, those inside
        tool results counted ``tool_weight`` times."""
        rx = self.injection
        if rx is None:
            return 0.0
        score = 0.0
        weights = self._weights
        for raw in messages:
            text = bytes(raw).decode("utf-8", "replace")
            seen = {m.lastgroup for m in rx.finditer(text)}
            if not seen:
                continue
            factor = self.injection_tool_weight if _TOOL_ROLE.search(text) else 1.0
            score += factor * sum(weights[int(g[1:])] for g in seen if g)
        return score


def _smallest(values: Iterable[int | None]) -> int | None:
    found = [v for v in values if v is not None]
    return min(found) if found else None


def _strictest(actions: Iterable[str]) -> str:
    return max(actions, key=RANK.__getitem__, default="off")
