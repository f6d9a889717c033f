# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled guardrails prefilter (twin and reference: scan_py.py, which has the theory of operation).

Why compiled: it runs over every guarded request body, answer and stream window, byte by byte. Which
positions say something is a table of byte pairs (this byte and the next): whether a needle's anchor may
begin here, whether the next byte may begin a trigger after this one (a number after a space, not after
a letter), whether this one begins two capitals. Where an anchor may begin, a bloom filter of the
anchors' three bytes is asked; only then, and where a trigger may begin, is the position looked at
(``_at``), and the needles compared. A needle's anchor is its rarest three bytes (``_anchor_of``): "con"
or "to" would stop the scan at every other word. Between such positions the scan skips 16 positions at a
time with SSSE3 (``gw_scan_skip``: nibble tables, the Teddy method, checked at build against every pair
that says something) or eight (their pairs in one word).
"""

from gateway._core.scan_py import (
    CARD, DNI, ESCAPE, HAZARDS, ID9, IPV4, IPV6, NUMBER, NUMBER_ANY, PHONE, UPPER, escape_table,
)

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport Py_UNICODE_ISDECIMAL
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset


cdef extern from *:
    """
    /* The vector skip of Prefilter.scan: 16 positions at a time, each asked whether the pair (its byte,
       the next) may say something, by the Teddy method (nibble tables and pshufb): 8 or 16 buckets, each
       a set of first bytes and a set of second bytes (as their nibbles: a superset); the positions a
       bucket flags are then asked the exact pair table, and an anchor's bloom filter. Only on x86 with
       SSSE3 (asked once, at run time). */
    #include <stdint.h>
    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #define GW_SCAN_VECTOR 1
    static int gw_scan_vector_ok(void) {
        static int ok = -1;
        if (ok < 0) {
            __builtin_cpu_init();
            ok = __builtin_cpu_supports("ssse3") ? 1 : 0;
        }
        return ok;
    }
    __attribute__((target("ssse3")))
    static inline __m128i gw_flags(__m128i a, __m128i b, const unsigned char* t) {
        const __m128i low = _mm_set1_epi8(0x0f);
        __m128i alo = _mm_and_si128(a, low), ahi = _mm_and_si128(_mm_srli_epi16(a, 4), low);
        __m128i blo = _mm_and_si128(b, low), bhi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
        __m128i m = _mm_and_si128(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)t), alo),
                                  _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(t + 16)), ahi));
        m = _mm_and_si128(m, _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(t + 32)), blo));
        return _mm_and_si128(m, _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(t + 48)), bhi));
    }
    #define GW_LOW(c) ((c) >= 65 && (c) <= 90 ? (uint32_t)(c) + 32 : (uint32_t)(c))
    /* a position whose pair says only "an anchor may begin here" (1), whose anchor is not short and whose
       three bytes are not in the anchors' bloom filter: Prefilter.scan would only step over it */
    static inline int gw_nothing_at(const unsigned char* s, Py_ssize_t p, unsigned v,
                                    const unsigned char* shorts, const unsigned char* bloom) {
        uint32_t h;
        if (v != 1 || shorts[s[p]])
            return 0;
        h = GW_LOW(s[p]) | GW_LOW(s[p + 1]) << 8 | GW_LOW(s[p + 2]) << 16;
        h = (h * (uint32_t)2654435761u) >> 18;  /* as _bloom_bit */
        return !((bloom[h >> 3] >> (h & 7)) & 1);
    }
    __attribute__((target("ssse3"), always_inline))
    static inline Py_ssize_t gw_scan_run(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                                         const unsigned char* nib, const unsigned char* pairs,
                                         const unsigned char* shorts, const unsigned char* bloom,
                                         const int two) {
        const __m128i zero = _mm_setzero_si128();
        while (i + 17 < n) {
            __m128i a = _mm_loadu_si128((const __m128i*)(s + i));
            __m128i b = _mm_loadu_si128((const __m128i*)(s + i + 1));
            __m128i m = gw_flags(a, b, nib);
            if (two)
                m = _mm_or_si128(m, gw_flags(a, b, nib + 64));
            unsigned bits = 0xFFFFu ^ (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(m, zero));
            while (bits) {
                Py_ssize_t p = i + __builtin_ctz(bits);
                unsigned v = pairs[(unsigned)s[p] << 8 | s[p + 1]];
                if (v && !gw_nothing_at(s, p, v, shorts, bloom))
                    return p;
                bits &= bits - 1;
            }
            i += 16;
        }
        return i;
    }
    __attribute__((target("ssse3")))
    static Py_ssize_t gw_scan_skip(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                                   const unsigned char* nib, const unsigned char* pairs,
                                   const unsigned char* shorts, const unsigned char* bloom, int sets) {
        return sets > 1 ? gw_scan_run(s, i, n, nib, pairs, shorts, bloom, 1)
                        : gw_scan_run(s, i, n, nib, pairs, shorts, bloom, 0);
    }
    #else
    #define GW_SCAN_VECTOR 0
    static int gw_scan_vector_ok(void) { return 0; }
    static Py_ssize_t gw_scan_skip(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                                   const unsigned char* nib, const unsigned char* pairs,
                                   const unsigned char* shorts, const unsigned char* bloom, int sets) {
        return i;
    }
    #endif
    """
    int __builtin_ctzll(unsigned long long) nogil
    bint gw_scan_vector_ok() nogil
    Py_ssize_t gw_scan_skip(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, const unsigned char* nib,
                            const unsigned char* pairs, const unsigned char* shorts,
                            const unsigned char* bloom, int sets) nogil

__all__ = ["CARD", "DNI", "ESCAPE", "HAZARDS", "ID9", "IPV4", "IPV6", "NUMBER", "NUMBER_ANY", "PHONE",
           "UPPER", "Prefilter", "escape_table"]

DEF C_DIGIT = 1
DEF C_UPPER = 2
DEF C_WORD = 4
DEF C_PHONE_RUN = 16
DEF C_HEX = 32
DEF C_NEEDLE = 64

DEF M_NUMBER = 1
DEF M_ESCAPE = 2
DEF M_UPPER = 4
DEF M_IPV6 = 8

DEF N_CARD = 1
DEF N_PHONE = 2
DEF N_ID9 = 4
DEF N_DNI = 8
DEF N_IPV4 = 16
DEF N_ANY = 32

cdef unsigned char _BASE[128]
cdef unsigned char _LOW[256]
#: 1 for the letter of an escape that stands for whitespace (\\n, \\t, \\r, \\b, \\f)
cdef unsigned char _SPACE_ESCAPE[256]


cdef void _init_base() noexcept:
    cdef int c
    for c in range(256):
        _LOW[c] = c + 32 if 65 <= c <= 90 else c
        _SPACE_ESCAPE[c] = c == 110 or c == 116 or c == 114 or c == 98 or c == 102
    for c in range(128):
        _BASE[c] = 0
        if 48 <= c <= 57:
            _BASE[c] |= C_DIGIT | C_PHONE_RUN | C_WORD | C_HEX
        if 65 <= c <= 90:
            _BASE[c] |= C_UPPER | C_WORD
        if 97 <= c <= 122 or c == 95:
            _BASE[c] |= C_WORD
        if c == 32 or c == 46 or c == 45 or c == 40 or c == 41:
            _BASE[c] |= C_PHONE_RUN
        if 97 <= c <= 102 or 65 <= c <= 70 or c == 58:
            _BASE[c] |= C_HEX


_init_base()


cdef inline uint32_t _bloom_bit(const unsigned char* bloom, uint32_t a, uint32_t b, uint32_t c) noexcept:
    """The bit of the folded trigram (a, b, c) (``_table`` entries) in the needles' bloom filter."""
    cdef uint32_t h = (((a & 0xFF) | (b & 0xFF) << 8 | (c & 0xFF) << 16) * <uint32_t>2654435761u) >> 18
    return (bloom[h >> 3] >> (h & 7)) & 1


cdef inline void _set(unsigned char* bits, int i) noexcept:
    bits[i >> 3] |= 1 << (i & 7)


cdef inline int _hexval(unsigned char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline int _char(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, uint32_t* out) noexcept:
    """The length of the UTF-8 character at ``i`` (its code point in ``out``); invalid: 1, ``out`` -1."""
    cdef unsigned char c = s[i]
    cdef int need, k
    cdef uint32_t cp
    if c < 0x80:
        out[0] = c
        return 1
    if 0xC2 <= c <= 0xDF:
        need = 1
        cp = c & 0x1F
    elif 0xE0 <= c <= 0xEF:
        need = 2
        cp = c & 0x0F
    elif 0xF0 <= c <= 0xF4:
        need = 3
        cp = c & 0x07
    else:
        out[0] = <uint32_t>0xFFFFFFFF
        return 1
    if i + need >= n:
        out[0] = <uint32_t>0xFFFFFFFF
        return 1
    for k in range(1, need + 1):
        if s[i + k] & 0xC0 != 0x80:
            out[0] = <uint32_t>0xFFFFFFFF
            return 1
        cp = (cp << 6) | (s[i + k] & 0x3F)
    out[0] = cp
    return need + 1


cdef inline bint _decimal(uint32_t cp) noexcept:
    return cp <= 0x10FFFF and Py_UNICODE_ISDECIMAL(<Py_UCS4>cp)


cdef inline int _is_digit(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef uint32_t cp
    cdef int length
    if s[i] < 0x80:
        return 1 if 48 <= s[i] <= 57 else 0
    length = _char(s, i, n, &cp)
    return length if _decimal(cp) else 0


cdef inline bint _hazard(uint32_t cp) noexcept:
    return (cp == 0xDF or cp == 0x130 or cp == 0x131 or cp == 0x149 or cp == 0x17F or cp == 0x1F0
            or 0x1E96 <= cp <= 0x1E9A or cp == 0x1E9E or cp == 0x212A or 0xFB00 <= cp <= 0xFB06)


#: how common each lower-case letter is in English text, per mille (other bytes: ``_OTHER``)
_LETTERS = dict(zip(b"etaoinshrdlcumwfgypbvkjxqz",
                    (127, 91, 82, 75, 70, 67, 63, 61, 60, 43, 40, 28, 28, 24, 24, 22, 20, 20, 19, 15, 10, 8,
                     2, 2, 1, 1)))
_OTHER = {32: 150, 34: 50, 44: 10, 46: 10, 58: 10, 45: 5, 95: 5}
#: the most common pairs and triples of letters in English text
_COMMON = frozenset(
    b"th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co me de "
    b"hi ri ro ic ne ea ra ce li ch ll be ma si om ur the and ing ion tio ent ati for her ter hat tha ere "
    b"ate his con res ver all ons nce men ith ted ers pro thi wit are ess not ive was ect rea com eve per "
    b"int est sta cti ica ist ear ain one our iti rat ike ore ake ome ine ade cre key ken ord oke".split())


def _anchor_of(bytes needle, bint folded):
    """Where a needle is looked for: the offset of its rarest three bytes (their first two make the pair
    that stops the fast loop, the three the bloom filter's entry), so that common words ("in", "con",
    "to") do not stop it at every turn. The start for a needle shorter than three bytes, or with a byte a
    jump of ``_at`` could skip (a backslash, a non-ASCII byte): there it is looked at exactly where the
    twin looks."""
    cdef Py_ssize_t k, best_k = 0
    cdef double score, best = -1.0
    if len(needle) < 3 or any(b >= 0x80 or b == 92 for b in needle):
        return 0
    low = needle.lower()
    for k in range(len(needle) - 2):
        score = 1.0
        for j in range(k, k + 3):
            b = needle[j]
            f = _LETTERS.get(low[j], _OTHER.get(b, 3))
            score *= f / 10.0 if (65 <= b <= 90 and not folded) else f  # a capital that must be one
        if low[k:k + 2] in _COMMON:
            score *= 16.0
        if low[k + 1:k + 3] in _COMMON:
            score *= 4.0
        if low[k:k + 3] in _COMMON:
            score *= 16.0
        if best < 0 or score < best:
            best, best_k = score, k
    return best_k


def _nibbles(bytes_):
    """The low and high nibbles of some bytes, as two 16-bit masks."""
    lo = hi = 0
    for c in bytes_:
        lo |= 1 << (c & 15)
        hi |= 1 << (c >> 4)
    return lo, hi


def _byte_weight(int c):
    low = c + 32 if 65 <= c <= 90 else c
    return _LETTERS.get(low, _OTHER.get(c, 3))


_WEIGHTS = [_byte_weight(c) for c in range(256)]


def _weight(rect):
    """How common the pairs a bucket flags are (the product of its two sides' weights)."""
    (lo1, hi1), (lo2, hi2) = rect
    return _side_weight(lo1, hi1) * _side_weight(lo2, hi2)


def _side_weight(int lo, int hi):
    cdef int h, l
    total = 0
    for h in range(16):
        if hi >> h & 1:
            for l in range(16):
                if lo >> l & 1:
                    total += _WEIGHTS[h << 4 | l]
    return total


cdef void _bucket(unsigned char* nib, int b, first, second) noexcept:
    """Put the nibble masks ``first`` and ``second`` in bucket ``b`` of the tables."""
    cdef int t = 64 * (b >> 3), bit = 1 << (b & 7), k
    for k in range(16):
        if first[0] >> k & 1:
            nib[t + k] |= bit
        if first[1] >> k & 1:
            nib[t + 16 + k] |= bit
        if second[0] >> k & 1:
            nib[t + 32 + k] |= bit
        if second[1] >> k & 1:
            nib[t + 48 + k] |= bit


#: the vector skip's buckets at most (two sets of 8): more would flag fewer common pairs, but cost more
#: on every 16 bytes than they save
_BUCKETS = 16


cdef class Prefilter:

    def __cinit__(self):
        self._off = NULL
        self._len = NULL
        self._bit = NULL
        self._fold = NULL
        self._order = NULL
        self._after = NULL
        self._anchor = NULL

    def __init__(self, needles=(), int numeric=0, int phone_min=1, bint upper=False, bint ipv6=False,
                 bytes escapes=b"", bint escape_non_ascii=False, bint vector=True):
        cdef list items = []
        cdef bytes n
        cdef Py_ssize_t i, count, pos
        cdef int c, first, second, a, b
        for needle in needles:
            n = bytes(needle[0])
            if n:
                items.append((n.lower() if needle[2] else n, int(needle[1]), bool(needle[2]),
                              bytes(needle[3]) if len(needle) > 3 else b""))
        self.needles = tuple(items)
        count = len(items)
        self._count = count
        self._blob = b"".join([t[0] for t in items])
        self._off = <Py_ssize_t*>PyMem_Malloc((count + 1) * sizeof(Py_ssize_t))
        self._len = <Py_ssize_t*>PyMem_Malloc((count + 1) * sizeof(Py_ssize_t))
        self._bit = <uint64_t*>PyMem_Malloc((count + 1) * sizeof(uint64_t))
        self._fold = <unsigned char*>PyMem_Malloc(count + 1)
        self._after = <unsigned char*>PyMem_Malloc((count + 1) * 32)
        self._order = <Py_ssize_t*>PyMem_Malloc((2 * count + 1) * sizeof(Py_ssize_t))  # a folded needle: twice
        self._anchor = <Py_ssize_t*>PyMem_Malloc((count + 1) * sizeof(Py_ssize_t))
        if not (self._off and self._len and self._bit and self._fold and self._order and self._after
                and self._anchor):
            raise MemoryError()
        memset(self._bloom, 0, sizeof(self._bloom))
        memset(self._hot, 0, sizeof(self._hot))
        self._folded_bits = 0
        pos = 0
        for i in range(count):
            n, bit, folded, after = items[i]
            memset(self._after + 32 * i, 0 if after else 0xFF, 32)
            for c in after:
                self._after[32 * i + (c >> 3)] |= 1 << (c & 7)
            self._off[i] = pos
            self._len[i] = len(n)
            self._bit[i] = <uint64_t>bit
            self._fold[i] = (1 if folded else 0) | (2 if after else 0)
            self._anchor[i] = _anchor_of(n, folded)
            pos += len(n)
            if folded:
                self._folded_bits |= <uint64_t>bit
        # the needles by the first byte of their anchor (both cases of a folded one): _start[c] ..
        # _start[c + 1] in _order
        cdef list by_first = [[] for _ in range(256)]
        for i in range(count):
            n, bit, folded, _ = items[i]
            first = n[self._anchor[i]]
            by_first[first].append(i)
            if folded and 97 <= first <= 122:
                by_first[first - 32].append(i)
        pos = 0
        for c in range(256):
            self._start[c] = pos
            for i in by_first[c]:
                self._order[pos] = i
                pos += 1
                n = items[i][0][self._anchor[i]:]
                if len(n) < 3:
                    self._hot[c] = 1
                else:  # the anchor's three bytes, folded, in the bloom filter
                    h = ((_LOW[n[0]] | <uint32_t>_LOW[n[1]] << 8 | <uint32_t>_LOW[n[2]] << 16)
                         * <uint32_t>2654435761u) >> 18
                    self._bloom[h >> 3] |= 1 << (h & 7)
        self._start[256] = pos
        for c in range(128):
            self._class[c] = _BASE[c]
            if self._start[c + 1] > self._start[c]:
                self._class[c] |= C_NEEDLE
        for c in range(128, 256):
            self._high_needle[c - 128] = self._start[c + 1] > self._start[c]
        self._numeric = numeric
        self._phone_min = phone_min if phone_min > 1 else 1
        self._upper = upper
        self._ipv6 = ipv6
        escapes = bytes(escapes[:128]).ljust(128, b"\0")
        for c in range(128):
            self._escapes[c] = escapes[c]
        self._non_ascii = escape_non_ascii
        # the bytes that always go to ``_at``
        for c in range(256):
            self._table[c] = _LOW[c]
            if c == 92:
                self._hot[c] = 1
            elif c < 128:
                if numeric and (_BASE[c] & C_DIGIT or c == 43 or c == 40):
                    self._hot[c] = 1
                if upper and _BASE[c] & C_UPPER:
                    self._hot[c] = 1
                if ipv6 and c == 58:
                    self._hot[c] = 1
            elif numeric or self._folded_bits or self._high_needle[c - 128]:
                self._hot[c] = 1
        for c in range(256):
            if self._hot[c]:
                self._table[c] |= 0x100
        # the pairs: (the byte before, this byte) where ``_at`` has something to try, and (this byte, the
        # next) where a needle may begin (both cases of a folded needle's first two bytes)
        memset(self._pa, 0, sizeof(self._pa))
        memset(self._pb, 0, sizeof(self._pb))
        memset(self._short, 0, sizeof(self._short))
        cdef int p
        for c in range(256):
            if c == 92 or (c == 58 and ipv6) or (c >= 128 and self._hot[c]):
                for p in range(256):
                    _set(self._pa, p << 8 | c)
            elif c < 128 and numeric and (_BASE[c] & C_DIGIT or c == 43 or c == 40):
                for p in range(256):  # only where one of the enabled numeric detectors may begin
                    if _number_after(numeric, p, c):
                        _set(self._pa, p << 8 | c)
        for i in range(count):
            n = items[i][0][self._anchor[i]:]
            firsts = [n[0]]
            if items[i][2] and 97 <= n[0] <= 122:
                firsts.append(n[0] - 32)
            if len(n) == 1:
                for c in firsts:
                    self._short[c] = 1
                    for p in range(256):
                        _set(self._pb, c << 8 | p)
                continue
            seconds = [n[1]]
            if items[i][2] and 97 <= n[1] <= 122:
                seconds.append(n[1] - 32)
            for c in firsts:
                if len(n) == 2:
                    self._short[c] = 1
                for p in seconds:
                    _set(self._pb, c << 8 | p)
        # one byte per pair (x, y): 1 a needle may begin with x y, 2 y may begin a trigger after x, 4 x may
        # begin a trigger (two capitals: ``_upper_at`` asks the byte before)
        for c in range(65536):
            self._pairs[c] = ((self._pb[c >> 3] >> (c & 7)) & 1) | (((self._pa[c >> 3] >> (c & 7)) & 1) << 1)
            if upper and 65 <= c >> 8 <= 90 and 65 <= c & 0xFF <= 90:
                self._pairs[c] |= 4
        self._vector = self._buckets(items, upper) and vector  # False: the word-at-a-time skip (tests)

    cdef bint _buckets(self, list items, bint upper) except -1:
        """The nibble tables of the vector skip (``_nib``: one or two sets of 8 buckets, each the first
        bytes' low and high nibbles, then the second bytes'), from the pairs: buckets of the bytes that
        begin a trigger after some byte (digits, by the high nibble of the byte before; ``+ (``; ``\\ :``;
        non-ASCII), one of two capitals, one of the one-byte needles, and the rest for the needles'
        anchors, merged while too many by what merging costs (the common pairs it would flag). Checked
        against every pair that says something; False (the skip unused) when a bucket would miss one,
        or the CPU has no SSSE3."""
        cdef list rects = []  # (first bytes, second bytes) per bucket
        cdef int c, p, x, y, b
        cdef list cols = [[] for _ in range(256)]
        for c in range(256):
            cols[c] = [p for p in range(256) if self._pa[(p << 8 | c) >> 3] >> ((p << 8 | c) & 7) & 1]
        digits = [c for c in range(48, 58) if cols[c]]
        if digits:
            prevs = {p for c in digits for p in cols[c]}
            for part in ([p for p in prevs if p < 0x20 or p >= 0x80], [p for p in prevs if 0x20 <= p < 0x30],
                         [p for p in prevs if 0x30 <= p < 0x40],
                         [p for p in prevs if 0x40 <= p < 0x80]):
                if part:  # by high nibble, so that few other bytes share their nibbles
                    rects.append((part, digits))
        for group in ((40, 43), (58, 92), range(128, 256)):
            group = [c for c in group if cols[c]]
            if group:
                rects.append((range(256), group))
        if upper:
            rects.append((range(65, 91), range(65, 91)))
        shorts: set = set()
        anchors: dict = {}  # (folded first byte, the second's high nibble) -> (first bytes, second bytes)
        for i in range(self._count):
            n = items[i][0][self._anchor[i]:]
            firsts = {n[0], n[0] - 32} if items[i][2] and 97 <= n[0] <= 122 else {n[0]}
            if len(n) == 1:
                shorts.update(firsts)
                continue
            seconds = {n[1], n[1] - 32} if items[i][2] and 97 <= n[1] <= 122 else {n[1]}
            f, sec = anchors.setdefault((_LOW[n[0]], _LOW[n[1]] >> 4), (set(), set()))
            f.update(firsts)
            sec.update(seconds)
        if shorts:
            rects.append((shorts, range(256)))
        groups = [(_nibbles(f), _nibbles(sec)) for f, sec in anchors.values()]
        room = _BUCKETS - len(rects)
        if groups and room <= 0:
            return False
        while len(groups) > room:  # merge the two whose merging flags the fewest common pairs
            best = None
            for x in range(len(groups)):
                for y in range(x + 1, len(groups)):
                    a, b2 = groups[x], groups[y]
                    merged = ((a[0][0] | b2[0][0], a[0][1] | b2[0][1]),
                              (a[1][0] | b2[1][0], a[1][1] | b2[1][1]))
                    cost = _weight(merged) - _weight(a) - _weight(b2)
                    if best is None or cost < best[0]:
                        best = (cost, x, y, merged)
            _, x, y, merged = best
            groups[x] = merged
            del groups[y]
        memset(self._nib, 0, sizeof(self._nib))
        for b, (firsts, seconds) in enumerate(rects):
            _bucket(self._nib, b, _nibbles(firsts), _nibbles(seconds))
        for b, (first, second) in enumerate(groups, len(rects)):
            _bucket(self._nib, b, first, second)
        self._sets = (len(rects) + len(groups) + 7) // 8  # PERF: as many sets of 8 as are used
        for c in range(65536):  # no pair that says something may go unflagged
            if not self._pairs[c]:
                continue
            x = c >> 8
            y = c & 0xFF
            for b in range(self._sets):
                if _flagged(self._nib + 64 * b, x, y):
                    break
            else:
                return False
        return gw_scan_vector_ok()

    def __dealloc__(self):
        PyMem_Free(self._off)
        PyMem_Free(self._len)
        PyMem_Free(self._bit)
        PyMem_Free(self._fold)
        PyMem_Free(self._order)
        PyMem_Free(self._after)
        PyMem_Free(self._anchor)

    cpdef uint64_t scan(self, bytes data):
        """The trigger mask of ``data`` (0: no detector can find anything in it)."""
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i = 0, j
        cdef uint64_t mask = 0, v
        cdef uint32_t cur, nxt, f, force = 4
        cdef bint near_end
        cdef const unsigned char* pairs = self._pairs
        # PERF: a position is looked at only when the pair (its byte, the next) in ``_pairs`` says so:
        # a needle's anchor may begin here (then the trigram's bit in the needles' bloom filter is
        # asked), the next byte may begin a number, an escape, ... after this one (then it is looked at,
        # ``force``), or this one may begin two capitals; only those are looked at (``_at``). The first
        # byte, and a byte ``_at`` jumped to, are always looked at.
        while i + 2 < n:
            if not force:
                # PERF: 16 positions at a time (vector skip: to the first that says something, or to
                # the last 17 bytes) or eight (their pairs in one word) while no pair says anything (most
                # of a text), and a jump to the first that says something
                if self._vector:
                    i = gw_scan_skip(s, i, n, self._nib, pairs, self._short, self._bloom, self._sets)
                    near_end = i + 17 >= n
                else:
                    near_end = True
                while near_end and i + 9 < n:
                    v = (<uint64_t>pairs[s[i] << 8 | s[i + 1]]
                         | <uint64_t>pairs[s[i + 1] << 8 | s[i + 2]] << 8
                         | <uint64_t>pairs[s[i + 2] << 8 | s[i + 3]] << 16
                         | <uint64_t>pairs[s[i + 3] << 8 | s[i + 4]] << 24
                         | <uint64_t>pairs[s[i + 4] << 8 | s[i + 5]] << 32
                         | <uint64_t>pairs[s[i + 5] << 8 | s[i + 6]] << 40
                         | <uint64_t>pairs[s[i + 6] << 8 | s[i + 7]] << 48
                         | <uint64_t>pairs[s[i + 7] << 8 | s[i + 8]] << 56)
                    if v:
                        i += __builtin_ctzll(v) >> 3
                        break
                    i += 8
                if i + 2 >= n:
                    break
            cur = s[i]
            nxt = s[i + 1]
            f = pairs[cur << 8 | nxt] | force
            if not f:
                i += 1
                continue
            if f & 4 or (f & 1 and (self._short[cur] or _bloom_bit(
                    self._bloom, self._table[cur], self._table[nxt], self._table[s[i + 2]]))):
                j = self._at(s, i, n, &mask)
            else:
                j = i + 1
            force = 4 if (f & 2 or j != i + 1) else 0
            i = j
        while i < n:
            i = self._at(s, i, n, &mask)
        return mask

    cdef Py_ssize_t _at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n, uint64_t* out) noexcept:
        """The triggers at ``i``; returns where to go on."""
        cdef unsigned char c = s[i], k, d
        cdef uint64_t mask = out[0]
        cdef uint32_t cp
        cdef int length
        cdef int numeric = self._numeric
        if c < 0x80:
            k = self._class[c]
            if k & C_NEEDLE:
                mask |= self._needles_at(s, i, n, mask)
            if numeric and (k & C_DIGIT or c == 43 or c == 40) and not mask & M_NUMBER:
                if self._number_at(s, i, n):
                    mask |= M_NUMBER
            if k & C_UPPER and self._upper and not mask & M_UPPER and _upper_at(s, i, n):
                mask |= M_UPPER
            if c == 58 and self._ipv6 and not mask & M_IPV6 and _colons_at(s, i, n):
                mask |= M_IPV6
            if c == 92:
                if not mask & M_ESCAPE and self._escape_at(s, i, n):
                    mask |= M_ESCAPE
                if i + 2 < n and _SPACE_ESCAPE[s[i + 1]]:
                    # a value right after \n (\t, \r, \b, \f): its byte before is a letter, the text's a
                    # line break; looked at as if after a space
                    d = s[i + 2]
                    if (numeric and not mask & M_NUMBER and d < 0x80 and (_BASE[d] & C_DIGIT or d == 43 or d == 40)
                            and self._number_from(s, i + 2, n, 32)):
                        mask |= M_NUMBER
                    if self._upper and not mask & M_UPPER and 65 <= d <= 90 and _upper_from(s, i + 2, n):
                        mask |= M_UPPER
                out[0] = mask
                # an escaped backslash is not the start of an escape; anything else is looked at
                return i + 2 if i + 1 < n and s[i + 1] == 92 else i + 1
            out[0] = mask
            return i + 1
        if self._high_needle[c - 128]:
            mask |= self._needles_at(s, i, n, mask)
        length = _char(s, i, n, &cp)
        if cp != <uint32_t>0xFFFFFFFF:
            if numeric and not mask & M_NUMBER and _decimal(cp) and self._number_at(s, i, n):
                mask |= M_NUMBER
            if self._folded_bits and _hazard(cp):
                mask |= self._folded_bits
        out[0] = mask
        return i + length

    cdef uint64_t _needles_at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                              uint64_t mask) noexcept:
        cdef unsigned char c = s[i], d
        cdef Py_ssize_t j, x, m, k, at = i
        cdef uint64_t found = 0
        cdef const unsigned char* blob
        blob = <const unsigned char*>PyBytes_AS_STRING(self._blob)
        for j in range(self._start[c], self._start[c + 1]):
            x = self._order[j]
            if mask & self._bit[x]:
                continue
            i = at - self._anchor[x]  # where the needle would begin
            if i < 0:
                continue
            m = self._len[x]
            if i + m > n:
                continue
            if i + m < n:  # the byte after the needle must be one it allows
                d = s[i + m]
                if not self._after[32 * x + (d >> 3)] & (1 << (d & 7)):
                    continue
            elif self._fold[x] & 2:  # the needle must be followed by something
                continue
            if not self._fold[x] & 1:
                if memcmp(s + i, blob + self._off[x], m) == 0:
                    found |= self._bit[x]
                continue
            for k in range(m):
                d = s[i + k]
                if 65 <= d <= 90:
                    d += 32
                if d != blob[self._off[x] + k]:
                    break
            else:
                found |= self._bit[x]
        return found

    cdef bint _escape_at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
        cdef unsigned char e
        cdef int k, v
        cdef uint32_t cp = 0
        if i + 1 >= n:
            return False
        e = s[i + 1]
        if e == 47:
            return self._escapes[47] != 0
        if e != 117 or i + 5 >= n:
            return False
        for k in range(2, 6):
            v = _hexval(s[i + k])
            if v < 0:
                return False
            cp = cp * 16 + v
        if cp < 0x80:
            return self._escapes[cp] != 0
        if self._non_ascii:
            return True
        if self._numeric and _decimal(cp):
            return True
        return self._folded_bits != 0 and _hazard(cp)

    cdef bint _number_at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
        return self._number_from(s, i, n, s[i - 1] if i > 0 else 32)

    cdef bint _number_from(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                           unsigned char prev) noexcept:
        """``_number_at`` with ``prev`` as the byte before ``i`` (a space after a ``\\n`` escape)."""
        cdef int numeric = self._numeric
        cdef unsigned char pk = 0, first, c
        cdef int first_digit, length
        cdef Py_ssize_t digits = 0, row = 0, j, last_end
        cdef bint in_row = True, gap = False, sep_seen = False, bare
        if numeric & N_ANY:
            return True
        if prev < 0x80:
            pk = _BASE[prev]
            if pk & C_WORD:  # every numeric detector's lookbehind refuses a word character before it
                return False
        if _json_number(s, i):
            return False
        first = s[i]
        first_digit = _is_digit(s, i, n)
        last_end = i
        j = i
        while j < n:
            length = _is_digit(s, j, n)
            if length:
                digits += 1
                if in_row:
                    row += 1
                if sep_seen:
                    gap = True
                j += length
                last_end = j
                continue
            c = s[j]
            if j == i and (c == 43 or c == 40):
                j += 1
                continue
            if c >= 0x80 or not _BASE[c] & C_PHONE_RUN:
                break
            in_row = False
            if digits:
                sep_seen = True
            j += 1
        if numeric & N_PHONE and not (prev < 0x80 and (pk & C_WORD or prev == 43 or prev == 47 or prev == 46
                                                       or prev == 44 or prev == 58 or prev == 35 or prev == 45)):
            if digits >= self._phone_min and last_end - i >= 7:
                bare = first_digit != 0 and not gap and first != 48
                if not bare and not _iso_date(s, i, n):
                    return True
        if not first_digit:
            return False
        if (numeric & N_IPV4) != 0 and prev != 46 and _quad_at(s, i, n):
            return True  # its lookbehind refuses a letter, a digit or a dot before it; a "-" may be
        if prev == 45:
            return False
        if numeric & N_CARD and not (prev == 46 or prev == 44 or prev == 58 or prev == 35) and digits >= 13:
            return True
        if numeric & N_ID9 and digits >= 9:
            return True
        return numeric & N_DNI and row >= 8


cdef bint _number_after(int numeric, int p, int c) noexcept:
    """Whether ``_number_at`` may fire at a byte ``c`` (an ASCII digit, ``+`` or ``(``) after the byte
    ``p``: the lookbehind of each enabled numeric detector, as ``_number_at`` tests it (a superset)."""
    if numeric & N_ANY:
        return p >= 128 or not (_BASE[p] & C_WORD and p != 95)
    if p >= 128:
        return True
    if _BASE[p] & C_WORD:  # every numeric detector's lookbehind refuses a word character before it
        return False
    if numeric & N_PHONE and not (p == 43 or p == 47 or p == 46 or p == 44 or p == 58 or p == 35 or p == 45):
        return True
    if not _BASE[c] & C_DIGIT:  # a "+" or "(" begins only a phone number
        return False
    if numeric & N_IPV4 and p != 46:
        return True
    if numeric & N_CARD and not (p == 46 or p == 44 or p == 58 or p == 35 or p == 45):
        return True
    return (numeric & (N_ID9 | N_DNI)) != 0 and p != 45


cdef inline bint _flagged(const unsigned char* t, int x, int y) noexcept:
    return (t[x & 15] & t[16 + (x >> 4)] & t[32 + (y & 15)] & t[48 + (y >> 4)]) != 0


cdef inline bint _colons_at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Another colon after the one at ``i``, in the same run of hex digits and colons."""
    cdef Py_ssize_t j = i + 1
    while j < n and s[j] < 0x80 and _BASE[s[j]] & C_HEX:
        if s[j] == 58:
            return True
        j += 1
    return False


cdef inline bint _json_number(const unsigned char* s, Py_ssize_t i) noexcept:
    cdef Py_ssize_t j = i - 1
    while j >= 0 and s[j] == 32:
        j -= 1
    if j < 0:
        return False
    if s[j] == 58:
        return j > 0 and s[j - 1] == 34
    return s[j] == 91 or s[j] == 44


cdef inline bint _upper_at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef unsigned char p
    if i > 0:
        p = s[i - 1]
        if p < 0x80 and _BASE[p] & C_WORD and p != 95:
            return False
    return _upper_from(s, i, n)


cdef inline bint _upper_from(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """``_upper_at`` whatever the byte before ``i``."""
    cdef Py_ssize_t j
    if i + 2 >= n or not 65 <= s[i + 1] <= 90:
        return False
    j = i + 2
    if s[j] == 32:
        j += 1
        if j >= n:
            return False
    return _is_digit(s, j, n) > 0


cdef inline bint _iso_date(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef Py_ssize_t k, j
    if i + 7 > n or not 49 <= s[i] <= 57:
        return False
    for k in range(1, 4):
        if not 48 <= s[i + k] <= 57:
            return False
    if (s[i + 4] != 45 and s[i + 4] != 46) or not 48 <= s[i + 5] <= 57:
        return False
    j = i + 6
    if j < n and 48 <= s[j] <= 57:
        j += 1
    if j + 1 >= n or (s[j] != 45 and s[j] != 46):
        return False
    return 48 <= s[j + 1] <= 57


cdef inline bint _quad_at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef Py_ssize_t j = i
    cdef int group, k
    for group in range(4):
        k = 0
        while j < n and k < 3 and 48 <= s[j] <= 57:
            j += 1
            k += 1
        if k == 0:
            return False
        if group < 3:
            if j >= n or s[j] != 46:
                return False
            j += 1
    return True
