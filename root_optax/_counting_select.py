"""Exact order statistics on accelerators: adaptive multi-pivot counting.

TPUs and GPUs have no cheap histogram (scatters contend or serialize), but
compare-and-sum reductions against a few pivots read the data once per pass,
fused into one kernel. Each pass counts ``C(p) = #{bits <= p}`` for
:data:`PASS_PIVOTS` pivots ``p`` and keeps a bracket of bit patterns

.. math::
  (lo, hi], \\quad C(lo) \\le k, \\quad C(hi) \\ge k + 2,

that holds both order statistics :math:`v_k` and :math:`v_{k+1}`. The pivots
go where the target is likely: the first pass sweeps the magnitudes that
gradients have (every 4 binades from :math:`2^{-32}` to :math:`2^{8}`), the
second spreads them evenly over the bracket that leaves (a few binades), later
ones interpolate the counts at the bracket's ends; three more sit at the
bracket's quarter points, so that it shrinks at least 4x per pass whatever the
data. The search settles when a pivot has ``C(p) = k + 1``
(then :math:`v_k = \\max\\{\\le p\\}`, :math:`v_{k+1} = \\min\\{> p\\}`), when
the bracket holds exactly those two entries, or when it is one pattern wide (a
tie); one more pass reads those extremes. Each pass also snaps the bracket's
ends to the nearest entries, which settles ties quickly.

Every pass is the same fused kernel (15 counts, 2 extremes) in one
:func:`jax.lax.while_loop`, so it compiles once. Float32 matrices of normal or
heavy-tailed entries take 5-7 passes, the final one included, and a stack as
many as its slowest matrix (7 for 48 x 512 x 512; the fixed 4-bit digit passes
this replaced took 9); the pass count depends on the data, the answer never
does.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PASS_PIVOTS = 15
"""Pivots per pass: compared and summed in one fused kernel."""
SPREAD_PIVOTS = 4
"""Of them, three at the bracket's quarter points (so it shrinks at least 4x
per pass, whatever the data) and one at ``hi - 1`` (a tie at ``hi``)."""
FOCUS_RANKS = 2.0
"""From the third pass on the other pivots cover ranks
``k + 1.5 +- (2 sqrt(S) + 1)`` (``S`` entries in the bracket), interpolated
in it."""
SWEEP_BINADES = (-32, 8)
"""The first pass's focused pivots: powers of two over this range (float32
and float64; the whole pattern range for 16-bit floats)."""


INT_OF_FLOAT = {
    np.dtype(np.float16): (np.dtype(np.int16), 15),
    np.dtype(jnp.bfloat16): (np.dtype(np.int16), 15),
    np.dtype(np.float32): (np.dtype(np.int32), 31),
    np.dtype(np.float64): (np.dtype(np.int64), 63),
}
"""The signed integer type of each float's bit pattern, and its bits below
the sign: non-negative floats order like their patterns (NaNs above inf)."""


def patterns_of(values: jax.Array) -> jax.Array:
    """Bit patterns of ``|values|`` (``values`` itself when it holds patterns)."""
    if jnp.issubdtype(values.dtype, jnp.integer):
        return values
    magnitude = jnp.abs(values)
    return jax.lax.bitcast_convert_type(magnitude, INT_OF_FLOAT[magnitude.dtype][0])


class Search(NamedTuple):
    """Per-matrix state: the bracket, a pivot with ``C = k + 1`` (or -1), and
    whether the search settled and the extremes were read (``v``: the two
    patterns)."""

    lo: jax.Array
    count_lo: jax.Array
    hi: jax.Array
    count_hi: jax.Array
    found: jax.Array
    settled: jax.Array
    done: jax.Array
    v: jax.Array


def per_entry(v: jax.Array, ndim: int) -> jax.Array:
    """Per-matrix values ``(*batch,)`` broadcastable against ``ndim``-d data."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _holds_just_the_two(s: Search, k) -> jax.Array:
    """Whether the bracket holds exactly the entries of ranks ``k``, ``k + 1``."""
    return (s.count_lo == k) & (s.count_hi == k + 2)


def _is_settled(s: Search, k) -> jax.Array:
    one_wide = s.hi - 1 - s.lo <= 0  # a tie at hi
    return (s.found >= 0) | one_wide | _holds_just_the_two(s, k)


def _sweep(num_bits: int, count: int) -> np.ndarray:
    """The first pass's ``count`` focused pivots: ``count - 1`` powers of two
    evenly over :data:`SWEEP_BINADES` (float32, float64; for 16-bit floats
    patterns evenly over their whole small range) and pattern 0."""
    steps = np.arange(count - 1) / (count - 1)
    if num_bits == 15:
        patterns = steps * (1 << 15)
    else:
        bias, mantissa_bits = {31: (127, 23), 63: (1023, 52)}[num_bits]
        low, high = SWEEP_BINADES
        exponents = np.round(low + steps * (high - low)).astype(np.int64)
        patterns = (exponents + bias) << mantissa_bits
    return np.append(patterns, 0).astype(np.int64)


def _pivots(s: Search, k, passes, num_bits: int) -> jax.Array:
    """``(*batch, PASS_PIVOTS)`` patterns strictly inside ``(lo, hi)`` for
    pass number ``passes``: the sweep first, then evenly over the bracket,
    then interpolated."""
    gap = s.hi - 1 - s.lo  # patterns strictly inside, >= 1 while searching
    lead = (1,) * s.lo.ndim
    grid = np.linspace(-1, 1, PASS_PIVOTS - SPREAD_PIVOTS, dtype=np.float32)
    grid = grid.reshape(lead + grid.shape)
    span = (s.count_hi - s.count_lo).astype(jnp.float32)[..., None]
    ranks = (k + 1.5 - s.count_lo).astype(jnp.float32)[..., None]
    ranks = ranks + (FOCUS_RANKS * jnp.sqrt(span) + 1) * grid
    fraction = jnp.where(passes == 1, (grid + 1) / 2, ranks / span)
    # Offsets in [1, gap]: fraction * gap in float32 stays below gap (and 2**31).
    fraction = jnp.minimum(jnp.maximum(fraction, 0), np.float32(1 - 2**-23))
    gap_f = gap.astype(jnp.float32)[..., None]
    focused = s.lo[..., None] + (fraction * gap_f).astype(s.lo.dtype) + 1
    sweep = _sweep(num_bits, focused.shape[-1]).astype(s.lo.dtype)
    sweep = jnp.minimum(
        jnp.maximum(sweep.reshape(lead + (-1,)), s.lo[..., None] + 1),
        s.hi[..., None] - 1,
    )
    focused = jnp.where(passes == 0, sweep, focused)
    step = gap // SPREAD_PIVOTS + 1  # quarter points: the bracket shrinks >= 4x
    j = np.arange(1, SPREAD_PIVOTS, dtype=s.lo.dtype).reshape(lead + (-1,))
    spread = jnp.minimum(s.lo[..., None] + step[..., None] * j, s.hi[..., None] - 1)
    return jnp.concatenate([focused, spread, s.hi[..., None] - 1], axis=-1)


def _reductions(bits, pivots, at_most, above, axes, count_dtype):
    """The pass's one read of the data: the counts at the pivots,
    ``max{bits <= at_most}`` and ``min{bits > above}``."""
    count = lambda p: jnp.sum(bits <= per_entry(p, bits.ndim), axes, count_dtype)
    counts = jnp.stack([count(p) for p in jnp.unstack(pivots, axis=-1)], -1)
    largest = jnp.iinfo(bits.dtype).max
    low = jnp.where(bits <= per_entry(at_most, bits.ndim), bits, -1)
    high = jnp.where(bits > per_entry(above, bits.ndim), bits, largest)
    return counts, (jnp.max(low, axes), jnp.min(high, axes))


def _narrow(s: Search, pivots, counts, snapped, k) -> Search:
    """The bracket after a pass: ends snapped to the nearest entries (same
    counts), then moved to the innermost pivots on each side."""
    hi_entry, lo_entry = snapped  # max{bits <= hi}, min{bits > lo}
    below, above = counts <= k, counts >= k + 2
    smallest = jnp.iinfo(s.lo.dtype).min
    lo = jnp.maximum(s.lo, lo_entry - 1)
    lo = jnp.maximum(lo, jnp.max(jnp.where(below, pivots, smallest), axis=-1))
    count_lo = jnp.maximum(s.count_lo, jnp.max(jnp.where(below, counts, -1), -1))
    hi = jnp.minimum(hi_entry, jnp.min(jnp.where(above, pivots, s.hi[..., None]), -1))
    count_hi = jnp.min(jnp.where(above, counts, s.count_hi[..., None]), axis=-1)
    found = jnp.max(jnp.where(counts == k + 1, pivots, -1), axis=-1)
    return s._replace(lo=lo, count_lo=count_lo, hi=hi, count_hi=count_hi, found=found)


def _final_points(s: Search, k) -> tuple[jax.Array, jax.Array]:
    """Where the settled search reads its extremes: at the found pivot, else
    at the bracket's ends."""
    found = s.found >= 0
    return jnp.where(found, s.found, s.hi), jnp.where(found, s.found, s.lo)


def _answer(s: Search, extremes, k, k_next) -> jax.Array:
    """``(*batch, 2)`` patterns of ``v_k, v_k_next`` from the final extremes."""
    at_most, above = extremes
    found, two = s.found >= 0, _holds_just_the_two(s, k)
    v_k = jnp.where(found, at_most, jnp.where(two, above, s.hi))
    v_next = jnp.where(found, above, jnp.where(two, at_most, s.hi))
    return jnp.stack([v_k, jnp.where(k_next == k, v_k, v_next)], axis=-1)


def initial_search(batch: tuple[int, ...], n: int, dtype, k) -> Search:
    """``(-1, largest pattern]`` for every matrix of ``n`` patterns of
    ``dtype``: ``C(-1) = 0``, ``C(largest) = n``."""
    full = lambda value, dtype: jnp.full(batch, value, dtype)
    largest = jnp.iinfo(dtype).max
    s = Search(
        lo=full(-1, dtype),
        count_lo=full(0, k.dtype),
        hi=full(largest, dtype),
        count_hi=full(n, k.dtype),
        found=jnp.where(n == k + 1, full(largest, dtype), -1),
        settled=full(False, bool),
        done=full(False, bool),
        v=jnp.zeros(batch + (2,), dtype),
    )
    return s._replace(settled=_is_settled(s, k))


def counting_pass(bits, s: Search, ranks, passes, num_bits: int, axes) -> Search:
    """One read of the data: a search step for searching matrices, the final
    extremes for settled ones."""
    k, k_next = ranks[0], ranks[1]
    pivots = _pivots(s, k, passes, num_bits)
    final_at_most, final_above = _final_points(s, k)
    at_most = jnp.where(s.settled, final_at_most, s.hi)
    above = jnp.where(s.settled, final_above, s.lo)
    counts, extremes = _reductions(bits, pivots, at_most, above, axes, k.dtype)
    narrowed = _narrow(s, pivots, counts, extremes, k)
    bracket = ("lo", "count_lo", "hi", "count_hi", "found")  # settled: kept
    step = s._replace(
        **{
            f: jnp.where(s.settled, getattr(s, f), getattr(narrowed, f))
            for f in bracket
        }
    )
    answering = s.settled & ~s.done
    v = jnp.where(answering[..., None], _answer(s, extremes, k, k_next), s.v)
    settled = s.settled | _is_settled(step, k)
    return step._replace(settled=settled, done=s.done | s.settled, v=v)


def counting_search(values, ranks, num_bits: int, batch_ndim: int):
    """Patterns of the order statistics ``ranks`` (``[k, min(k + 1, n - 1)]``)
    of ``|values|`` over each matrix, ``(*batch, 2)``, and the number of passes
    over the data. ``values``: floats, complex, or their patterns already.

    Each pass recomputes the patterns from ``values``: a select on the pass
    counter keeps XLA from hoisting them out of the loop into a copy of the
    data, which would cost a write and a read of it more.
    """
    axes = tuple(range(batch_ndim, values.ndim))
    batch = values.shape[:batch_ndim]
    n = math.prod(values.shape[batch_ndim:])
    dtype = values.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        dtype = INT_OF_FLOAT[np.dtype(jnp.finfo(dtype).dtype)][0]
    zero = jnp.zeros((), values.dtype)

    def body(carry):
        s, passes = carry
        bits = patterns_of(jnp.where(passes < 0, zero, values))
        return counting_pass(bits, s, ranks, passes, num_bits, axes), passes + 1

    s = initial_search(batch, n, dtype, ranks[0])
    carry = (s, jnp.zeros((), jnp.int32))
    s, passes = jax.lax.while_loop(lambda c: jnp.any(~c[0].done), body, carry)
    return s.v, passes


def counting_select(bits, ranks, num_bits: int, batch_ndim: int) -> jax.Array:
    """:func:`counting_search`'s patterns alone."""
    return counting_search(bits, ranks, num_bits, batch_ndim)[0]
