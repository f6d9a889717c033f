# Declarations of the compiled rate-limiting core (see _limit.pyx; twin and reference: limit_py.py).


cdef class Bucket:
    cdef readonly double rate
    cdef readonly double burst
    cdef double _ceiling
    cdef double _level
    cdef double _stamp
    cdef double _level_at(self, double now) noexcept
    cdef double _wait(self, double now, double level, double amount) noexcept
    cpdef double take(self, double now, double amount=*) except? -1.0
    cpdef double retry_after(self, double now, double amount=*) except? -1.0
    cpdef void force(self, double now, double amount) except *
    cpdef void refund(self, double now, double amount) except *
    cpdef double remaining(self, double now) except? -1.0
    cpdef double reset_after(self, double now) except? -1.0
    cpdef void reconfigure(self, double rate, double burst, double now) except *


cdef class Lease:
    cdef readonly double granted
    cdef readonly double expires_at
    cdef readonly double left
    cpdef bint take(self, double now, double amount=*) except -1
    cpdef bint expired(self, double now) noexcept
    cpdef double return_unused(self, double now) noexcept


cpdef double next_lease_size(double observed_rate, double limit_rate, Py_ssize_t workers,
                             double min_size, double max_size, double horizon) except? -1.0


cdef class Gate:
    cdef public Py_ssize_t limit
    cdef readonly Py_ssize_t inflight
    cpdef bint enter(self) noexcept
    cpdef void leave(self) except *


cdef class RateEstimator:
    cdef readonly double window
    cdef double _rate
    cdef double _stamp
    cdef double _decayed(self, double now) noexcept
    cpdef void observe(self, double now, double amount=*) except *
    cpdef double rate(self, double now) noexcept
