# cython: language_level=3
"""Compiled fast path of the guardrails phase (twin and reference: guardgate_py.py, which has the theory
of operation).

Why compiled: it is the whole of the phase's work for a guarded request with nothing in it, on the way in
and on the way out; compiled, neither costs a Python frame, and the prefilter is called at C level.
"""

from gateway._core._scan cimport Prefilter

__all__ = ["Gate"]


cdef class Gate:

    def __init__(self, guard, Prefilter prompt, Prefilter answer, bint plain, bint answer_always, check,
                 respond):
        self._guard = guard
        self._prompt = prompt
        self._answer = answer
        self._plain = plain
        self._answer_always = answer_always
        self._check = check
        self._respond = respond

    def on_request(self, ctx):
        messages = getattr(ctx.fields, "messages", None)
        if messages is None:  # not a chat request: nothing to guard here
            return None
        cdef unsigned long long mask = 0
        if self._prompt is not None:
            mask = self._prompt.scan(ctx.body)
        if not mask and self._plain:
            if self._answer is not None:
                ctx.guard = self._guard
            return None
        return self._check(ctx, self._guard, messages, mask)

    def on_response(self, ctx, body):
        state = ctx.guard
        if state is None:
            return body
        if (state is self._guard and self._answer is not None and not self._answer_always
                and not self._answer.scan(body)):
            return body
        return self._respond(ctx, body)
