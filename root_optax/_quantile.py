"""Exact order statistics of ``|x|`` by selection on float bits, without sorting."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from root_optax import _platform, _validation
from root_optax._counting_select import (
    INT_OF_FLOAT,
    counting_select,
    patterns_of,
    per_entry,
)

# Non-negative IEEE floats order like their bit patterns read as signed integers
# (NaN patterns above inf), so the k-th smallest |x| is found on integers:
# integer compares are exact where float arithmetic is not (XLA:CPU flushes
# subnormals to zero).
# CPU histograms: at most 2**16 buckets, and at most size / 2**2 (zeroing and
# searching the histogram must stay cheap next to the pass over the data; the
# two-level search of _locate reads it once).
_MAX_BUCKET_BITS, _MIN_BUCKET_BITS, _ENTRIES_PER_BUCKET_BITS = 16, 8, 2


def _bucket_bits(per_matrix: int) -> int:
    """Histogram digit width for matrices of ``per_matrix`` entries."""
    width = max(per_matrix, 1).bit_length() - 1 - _ENTRIES_PER_BUCKET_BITS
    return min(max(width, _MIN_BUCKET_BITS), _MAX_BUCKET_BITS)


_EXACT_FLOAT32_COUNTS = 2**24
"""Integer counts up to this are exact in float32, and so are their sums."""

_FLAT_LOCATE_BUCKETS = 2**8
"""Histograms up to this many buckets are searched with one cumsum, longer
ones in two levels (:func:`_locate`)."""


def _inclusive_cumsum(hist: jax.Array, max_total: int) -> jax.Array:
    """``cumsum(hist, axis=-1)`` of non-negative counts summing to <= ``max_total``.

    Below :data:`_EXACT_FLOAT32_COUNTS` as two small float32 products with
    triangular ones (the bucket axis split ``a x b``: a cumsum within each row,
    then each row's offset), exact since every partial sum is an integer below
    2**24, and returned in float32; XLA:CPU compiles and runs that faster than
    its cumulative-sum reduce-window. Larger totals use :func:`jnp.cumsum`, in
    ``hist``'s dtype.
    """
    width = hist.shape[-1]
    if max_total > _EXACT_FLOAT32_COUNTS or width < 4:
        return jnp.cumsum(hist, axis=-1)
    rows = 1 << ((width.bit_length() - 1) // 2)
    grid = hist.astype(jnp.float32).reshape(hist.shape[:-1] + (rows, width // rows))
    # NumPy constants: literals in the program, not ops XLA:CPU compiles.
    upper = lambda n, k: np.triu(np.ones((n, n), np.float32), k)
    within = jnp.matmul(grid, upper(grid.shape[-1], 0), precision="highest")
    offsets = jnp.matmul(within[..., -1], upper(rows, 1), precision="highest")
    return (within + offsets[..., None]).reshape(hist.shape)


def _sum_pair(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x.sum(-1), y.sum(-1))`` as one variadic reduction: one kernel where
    XLA:CPU splits each plain sum into a reduce-window and a reduce. Compile
    time of a whole ``root()`` step (``bench_step_time``'s trees, A/B in one
    process): big 0.84-0.88x, stacked 0.93-0.99x, small 1.00x; the same step
    time and bits."""
    zero = np.zeros((), x.dtype)
    add = lambda a, b: (a[0] + b[0], a[1] + b[1])
    return jax.lax.reduce((x, y), (zero, zero), add, (x.ndim - 1,))


def _locate_flat(
    hist: jax.Array, ranks: jax.Array, max_total: int
) -> tuple[jax.Array, jax.Array]:
    """:func:`_locate` by one cumsum over all buckets (for short histograms)."""
    cumulative = _inclusive_cumsum(hist, max_total)
    rank = ranks[..., None].astype(cumulative.dtype)
    if jnp.issubdtype(cumulative.dtype, jnp.floating):
        # Integer-valued floats: rank + 1 - cumulative >= 1 exactly where
        # cumulative <= rank, <= 0 elsewhere, so the clip is that mask in
        # arithmetic XLA:CPU fuses into the reduction (a compare and select it
        # would materialize). Every sum is an integer below 2**24: exact.
        at_or_below = jnp.clip(rank + 1 - cumulative, 0, 1)
    else:
        at_or_below = (cumulative <= rank).astype(cumulative.dtype)
    # The buckets at or below the rank are the first `digit` ones.
    digit, below = _sum_pair(at_or_below, hist.astype(cumulative.dtype) * at_or_below)
    return digit.astype(jnp.int32), below.astype(ranks.dtype)


def _locate(
    hist: jax.Array, ranks: jax.Array, max_total: int
) -> tuple[jax.Array, jax.Array]:
    """Bucket holding each 0-based rank, and how many entries lie below it
    (``max_total`` bounds each histogram's sum).

    A long histogram of ``R x C`` buckets is searched in two levels: the row
    of ``C`` buckets holding the rank (from the ``R`` row sums), then the
    bucket within that row. That reads the histogram once, where one cumsum
    over all buckets costs about ``C`` operations per bucket (measured: 1 ms
    per pass at 2**16 buckets on 2 cores, a third of a pass over 2**20
    entries; 0.15 ms in two levels, so that matrices of 2**18 entries take 2
    passes of 16 bits instead of 3 of 11).
    """
    width = hist.shape[-1]
    if width <= _FLAT_LOCATE_BUCKETS:
        return _locate_flat(hist, ranks, max_total)
    if max_total <= _EXACT_FLOAT32_COUNTS:  # float sums: XLA:CPU's fast reductions
        hist = hist.astype(jnp.float32)
    cols = 1 << (width.bit_length() // 2)
    grid = hist.reshape(hist.shape[:-1] + (width // cols, cols))
    row, below_rows = _locate_flat(jnp.sum(grid, axis=-1), ranks, max_total)
    row = jnp.minimum(row, grid.shape[-2] - 1)  # every rank lies in some row
    within = jnp.take_along_axis(grid, row[..., None, None], axis=-2)[..., 0, :]
    col, below_cols = _locate_flat(within, ranks - below_rows, max_total)
    return row * cols + col, below_rows + below_cols


_UNCOUNTED_SLOTS = 8
"""Slots that absorb each matrix's entries outside both targets' buckets,
chosen by the digit's low bits (so a power of two). With one such slot, a
pass after the first (where 5-10% of the entries of a matrix below 2**18
entries fall in a target's bucket and the rest in that slot) ran at half the
speed of the first on XLA:CPU (96 x 128 x 128: 3.3 vs 1.6 ms): a scatter-add
alternating between one hot slot and scattered buckets. Spread over 8, it
runs about as fast as the first (threshold A/Bs: 0.73-0.93x for 96 x 128 x
128 over five runs, 0.75x for 24 x 128 x 512; 0.96-0.98x from 2**18 entries,
where under 1% of the entries match and the slot stays hot)."""


def _digit_histograms(
    bits, prefix, shift, width: int, num_bits: int, batch_ndim: int, dtype
):
    """Per matrix and target, counts of each ``width``-bit digit at ``shift``.

    Only patterns whose higher bits equal the target's ``prefix`` (settled by the
    previous passes; all zero before the first) are counted; ``(*batch, 2)``
    prefixes give ``(*batch, 2, 2**width)`` counts (of ``dtype``) from one
    scatter-add over all entries; the other entries go to
    :data:`_UNCOUNTED_SLOTS` slots after the targets' buckets. ``shift`` may be
    traced (one loop body serves every pass).
    """
    batch = bits.shape[:batch_ndim]
    buckets = 1 << width
    index = ((bits >> shift) & (buckets - 1)).astype(jnp.int32)
    # Patterns are non-negative below 2**num_bits: shifting by num_bits gives 0.
    high = bits >> jnp.minimum(shift + width, num_bits).astype(bits.dtype)
    lead, follow = (per_entry(p, bits.ndim) for p in jnp.unstack(prefix, axis=-1))
    # The first target's buckets, the second's, then the uncounted slots.
    uncounted = 2 * buckets + (index & (_UNCOUNTED_SLOTS - 1))
    other = jnp.where(high == follow, index + buckets, uncounted)
    index = jnp.where(high == lead, index, other)
    slots = 2 * buckets + _UNCOUNTED_SLOTS
    if batch_ndim:  # one flat histogram for the batch: no batched scatter
        index = index + jax.lax.broadcasted_iota(jnp.int32, bits.shape, 0) * slots
    hist = jnp.zeros(math.prod(batch) * slots, dtype).at[index].add(1)
    hist = hist.reshape(batch + (slots,))
    lower, upper = hist[..., :buckets], hist[..., buckets : 2 * buckets]
    same = (prefix[..., 0] == prefix[..., 1])[..., None]
    return jnp.stack([lower, jnp.where(same, lower, upper)], axis=-2)


def _histogram_plan(num_bits: int, max_width: int) -> tuple[int, int]:
    """``(passes, width)``: the fewest passes of at most ``max_width`` bits, all
    of one width (so one loop body serves them), covering ``num_bits``."""
    passes = -(-num_bits // max_width)
    return passes, -(-num_bits // passes)


def _histogram_select(bits, ranks, num_bits: int, batch_ndim: int) -> jax.Array:
    """Patterns of the two order statistics ``ranks`` by scatter-add histograms.

    Each pass histograms the next digit of the patterns in each target's current
    bucket and moves the target into the bucket holding its rank, so both
    neighbours come out of the same passes (2 for float32 matrices of 2**18
    entries or more). The passes are one :func:`jax.lax.fori_loop`: compiled
    once, whatever their number. CPU choice: a scatter-add pass costs a few
    compare-and-sum passes but settles up to 16 bits; on accelerators scatters
    contend or serialize, so :func:`counting_select` serves them.
    """
    batch = bits.shape[:batch_ndim]
    per_matrix = bits.size // max(math.prod(batch), 1)
    passes, width = _histogram_plan(num_bits, _bucket_bits(per_matrix))

    def one_pass(i, carry):
        prefix, ranks = carry
        shift = ((passes - 1 - i) * width).astype(bits.dtype)
        hist = _digit_histograms(
            bits, prefix, shift, width, num_bits, batch_ndim, ranks.dtype
        )
        digit, below = _locate(hist, ranks, per_matrix)
        return (prefix << width) | digit.astype(bits.dtype), ranks - below

    prefix = jnp.zeros(batch + (2,), bits.dtype)
    ranks = jnp.broadcast_to(ranks, batch + (2,))
    prefix, _ = jax.lax.fori_loop(0, passes, one_pass, (prefix, ranks))
    return prefix


def _select(values, ranks, num_bits: int, batch_ndim: int) -> jax.Array:
    """Patterns of the order statistics ``ranks`` of ``|values|`` (floats,
    complex or their patterns): histograms on CPU, counts elsewhere
    (:mod:`root_optax._counting_select`, which reads ``values`` in each pass)."""
    return _platform.platform_dependent(
        values,
        ranks,
        cpu=lambda v, r: _histogram_select(patterns_of(v), r, num_bits, batch_ndim),
        default=lambda v, r: counting_select(v, r, num_bits, batch_ndim),
    )


def _checked(x: jax.Array, fn: str) -> jax.Array:
    """``x`` as an array of a floating or complex dtype, or a TypeError."""
    x = jnp.asarray(x)
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{fn}(x) needs a floating or complex dtype, got x.dtype={dtype}. "
            "Cast it first, e.g. x.astype(jnp.float32)."
        )
    return x


def _ranks(q: jax.typing.ArrayLike, num: int, dtype, fn: str):
    """0-based ranks ``[k, min(k + 1, num - 1)]`` and weight of the upper one.

    A static ``q`` gives exact ranks; a traced one is resolved in float32, as
    ``jnp.quantile`` does.
    """
    _validation.check_in_range(fn, "q", q, 0.0, 1.0)
    rank_dtype = jnp.int64 if num >= 2**31 else jnp.int32
    if _validation.is_static_number(q):
        position = float(q) * (num - 1)
        k = int(np.floor(position))
        ranks = jnp.asarray([k, min(k + 1, num - 1)], rank_dtype)
        return ranks, jnp.asarray(position - k, dtype)
    position = jnp.asarray(q, jnp.float32) * (num - 1)
    floor = jnp.clip(jnp.floor(position), 0, num - 1)
    k = floor.astype(rank_dtype)
    ranks = jnp.stack([k, jnp.minimum(k + 1, num - 1)])
    return ranks, (position - floor).astype(dtype)


def _quantile(x: jax.Array, q, batch_ndim: int, fn: str) -> jax.Array:
    """Shared body of :func:`abs_quantile` and :func:`abs_quantile_batched`."""
    x = _checked(x, fn)
    dtype = np.dtype(jnp.finfo(x.dtype).dtype)  # |x|'s: complex -> real
    batch = x.shape[:batch_ndim]
    num = x.size // max(math.prod(batch), 1)
    ranks, frac = _ranks(q, max(num, 1), dtype, fn)
    if num == 0:
        return jnp.zeros(batch, dtype)
    patterns = _select(x, ranks, INT_OF_FLOAT[dtype][1], batch_ndim)
    lo, hi = jnp.unstack(jax.lax.bitcast_convert_type(patterns, dtype), axis=-1)
    # An exact order statistic (frac == 0) or a tie returns lo as is: lo + 0 * d
    # would be NaN for d = inf - lo or inf - inf.
    return jnp.where((hi == lo) | (frac == 0), lo, lo + frac * (hi - lo))


def abs_quantile(x: jax.Array, q: jax.typing.ArrayLike) -> jax.Array:
    r"""Quantile of ``|x|`` over all entries, with linear interpolation.

    Equal to ``jnp.quantile(jnp.abs(x), q)`` (``method='linear'``) but computed by
    selection instead of a full sort: with :math:`N` entries and
    :math:`p = q (N - 1)`,

    .. math::
      \mathrm{quantile} = v_{\lfloor p \rfloor}
        + (p - \lfloor p \rfloor)(v_{\lfloor p \rfloor + 1} - v_{\lfloor p \rfloor}),

    where :math:`v_k` is the k-th smallest :math:`|x_i|`. Both neighbours are
    found together on the float's bit pattern: on CPU digit by digit with
    scatter-add histograms (2 passes over float32 data from :math:`2^{18}`
    entries, at most 4 below), elsewhere by counting against 15 pivots per
    pass placed where the neighbours are likely (5-8 passes for float32
    matrices, the one reading the final extremes included; the count depends
    on the data, the result does not). Only reductions and histograms touch
    ``x`` (it is never reshaped), so a sharded ``x`` is never gathered, even
    when it is sharded over several mesh axes: each pass all-reduces counters.
    NaN entries count as larger than ``inf``.

    Args:
      x: array of any shape, floating or complex dtype; the quantile is over the
        magnitudes of all entries.
      q: quantile in ``[0, 1]``; a Python float is resolved to exact integer
        order statistics, a traced value in float32 (off by at most one order
        statistic above :math:`2^{24}` entries, like the reference).

    Returns:
      A scalar of ``|x|``'s dtype (the real dtype for complex ``x``); ``0`` when
      ``x`` has no entries.

    Raises:
      TypeError: ``x`` is not floating or complex.
      ValueError: a static ``q`` outside ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> x = jnp.array([[-4.0, 1.0], [3.0, -2.0]])
      >>> root_optax.abs_quantile(x, 0.5).item()  # halfway between 2 and 3
      2.5
      >>> root_optax.abs_quantile(jnp.array([3 + 4j, 1j]), 1.0).item()
      5.0
    """
    return _quantile(x, q, 0, "abs_quantile")


def abs_quantile_batched(x: jax.Array, q: jax.typing.ArrayLike) -> jax.Array:
    """:func:`abs_quantile` of each ``x[i]``: ``(batch, ...)`` -> ``(batch,)``.

    Same values as ``jax.vmap(lambda m: abs_quantile(m, q))(x)``, faster on CPU:
    one flat histogram for the whole batch instead of a batched scatter (which
    XLA:CPU runs several times slower).

    Args:
      x: array of shape ``(batch, ...)``, floating or complex dtype.
      q: quantile in ``[0, 1]``, shared by all matrices; may be traced.

    Returns:
      Shape ``(batch,)``, ``|x|``'s dtype.
    """
    if jnp.ndim(x) < 1:
        raise ValueError(
            "abs_quantile_batched(x) needs a leading batch axis, got x.shape=()."
        )
    return _quantile(x, q, 1, "abs_quantile_batched")
