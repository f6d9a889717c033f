# Declarations that compile phase.py (its own pure-Python twin): the lookup of every request to a
# cached model, a miss included, with typed locals.
# PERF: the request's fields read at C level (the context's struct), the key computed by a C call
# (gateway._core._canon), the flags as C ints.

cimport cython

from gateway._core._canon cimport KeyHash as CKeyHash
from gateway.context cimport Context as CContext


@cython.locals(ctx=CContext, keyhash=CKeyHash, deterministic=bint, more=bint, no_cache=bint, no_store=bint,
               now=double, body=bytes, extra=bytes, heads=dict, slot=tuple, aliases=tuple)
cpdef object _lookup(object phase, object ctx)
