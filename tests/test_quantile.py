"""abs_quantile: exact order statistics by radix selection, against NumPy's sort."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from root_optax import _counting_select, _quantile, abs_quantile
from root_optax._quantile import abs_quantile_batched

INT_OF = {"float16": np.int16, "bfloat16": np.int16, "float32": np.int32}
NUM_BITS = {"float16": 15, "bfloat16": 15, "float32": 31, "float64": 63}


def exact_q(k, size):
    """q with q * (size - 1) exactly k: size - 1 must be a power of two."""
    assert size == 1 or (size - 1) & (size - 2) == 0, size
    return k / max(size - 1, 1)


def sorted_magnitudes(x):
    return np.sort(np.abs(np.asarray(x, np.float64)).ravel())


def mixed_values(rng, size, dtype):
    """Normal values with ties, signed zeros, subnormals, inf and huge entries."""
    x = rng.standard_normal(size)
    specials = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 1e-40, 1e-44, 3e38]
    if dtype == "float64":
        specials += [5e-324, 1e-310, 1e300]
    picks = rng.random(size) < 0.3
    x[picks] = rng.choice(specials, picks.sum())
    with np.errstate(over="ignore"):
        return np.asarray(jnp.asarray(x, dtype))


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("size", [1, 2, 7, 1000, 4097])
def test_matches_numpy_linear_quantile(rng, q, size):
    x = rng.standard_normal(size).astype(np.float32)
    got = jax.jit(lambda x: abs_quantile(x, q))(x)
    want = np.quantile(np.abs(x).astype(np.float64), q)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("shape", [(3,), (5, 205), (2**18 + 1,), (1, 2**20 + 1)])
def test_order_statistics_bit_exact_for_every_digit_plan(rng, shape):
    """Sizes from 4 histogram passes (8-bit digits) down to 2 (16-bit digits)."""
    x = rng.standard_normal(shape).astype(np.float32)
    size = x.size
    want = sorted_magnitudes(x)
    fn = jax.jit(abs_quantile, static_argnums=1)
    for k in sorted({0, 1, size // 2, (9 * size) // 10, size - 2, size - 1}):
        assert float(fn(x, exact_q(k, size))) == want[k]
    # between two neighbours: both exact, interpolated in float32
    if size > 1:
        q = 0.9
        k = int(np.floor(q * (size - 1)))
        frac = np.float32(q * (size - 1) - k)
        lo, hi = np.float32(want[k]), np.float32(want[min(k + 1, size - 1)])
        assert float(fn(x, q)) == lo + frac * (hi - lo)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("kind", ["normal", "mixed", "all_equal"])
def test_order_statistics_in_own_dtype(rng, dtype, kind):
    if kind == "normal":
        x = np.asarray(jnp.asarray(rng.standard_normal((41, 25)), dtype))
    elif kind == "mixed":
        x = mixed_values(rng, 1025, dtype)
    else:
        x = np.asarray(jnp.full((9, 57), -2.5, dtype))
    want = sorted_magnitudes(x)
    size = x.size
    for k in (0, size // 3, size - 2, size - 1):
        got = abs_quantile(jnp.asarray(x), exact_q(k, size))
        assert got.dtype == x.dtype
        assert float(got) == want[k] or (np.isnan(want[k]) and np.isnan(got))


def test_ties_and_zeros(rng):
    x = np.round(rng.standard_normal((31, 33)) * 2).astype(np.float32)
    for q in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert float(abs_quantile(x, q)) == pytest.approx(np.quantile(np.abs(x), q))
    assert float(abs_quantile(np.zeros((4, 4), np.float32), 0.9)) == 0.0
    assert float(abs_quantile(np.array([-0.0, 0.0], np.float32), 0.5)) == 0.0


def test_traced_quantile_equals_static(rng):
    x = rng.standard_normal((64, 48)).astype(np.float32)
    fn = jax.jit(abs_quantile)
    np.testing.assert_allclose(fn(x, jnp.float32(0.9)), abs_quantile(x, 0.9), rtol=1e-6)
    for q in (0.0, 1.0):
        assert fn(x, jnp.float32(q)) == abs_quantile(x, q)
    many = jax.vmap(fn, in_axes=(None, 0))(x, jnp.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(many, np.quantile(np.abs(x), [0.0, 0.5, 1.0]), rtol=1e-6)


def test_float64_and_bfloat16(rng, x64):
    x = rng.standard_normal((50, 40))
    np.testing.assert_allclose(
        abs_quantile(jnp.asarray(x), 0.9), np.quantile(np.abs(x), 0.9), rtol=1e-15
    )
    xb = jnp.asarray(x, jnp.bfloat16)
    want = np.quantile(np.abs(np.asarray(xb, np.float64)), 0.9)
    assert abs_quantile(xb, 0.9).dtype == jnp.bfloat16
    np.testing.assert_allclose(float(abs_quantile(xb, 0.9)), want, rtol=1e-2)


def test_float64_order_statistics_bit_exact(rng, x64):
    x = mixed_values(rng, 4097, "float64")
    want = sorted_magnitudes(x)
    for k in (0, 1, 2048, 4095, 4096):
        got = jax.jit(abs_quantile, static_argnums=1)(jnp.asarray(x), exact_q(k, 4097))
        assert got.dtype == jnp.float64
        assert float(got) == want[k] or (np.isnan(want[k]) and np.isnan(got))
    traced = jax.jit(abs_quantile)(jnp.asarray(x), jnp.float64(0.5))
    assert float(traced) == pytest.approx(np.quantile(np.abs(x), 0.5), rel=1e-15)


def test_subnormals_are_ordered_exactly():
    """Integer compares on the bit pattern: subnormals are not flushed to zero."""
    tiny = np.array([1e-45, 3e-45, 1e-42, 1e-40, 1.1754942e-38, 1.1754944e-38])
    x = np.repeat(tiny.astype(np.float32), [3, 1, 2, 1, 1, 1])
    want = sorted_magnitudes(x)
    for k in range(x.size):
        assert float(abs_quantile(x, exact_q(k, x.size))) == want[k]


def test_infinities_and_large_values():
    x = np.array([1e30, -np.inf, 3.0, -2.0, 0.5], np.float32)
    assert float(abs_quantile(x, 1.0)) == np.inf
    assert float(abs_quantile(x, 0.5)) == 3.0
    # next to inf: exact order statistic stays finite, interpolation gives inf
    y = np.array([1.0, 2.0, np.inf], np.float32)
    assert float(abs_quantile(y, 0.5)) == 2.0 == float(jnp.quantile(y, 0.5))
    assert float(abs_quantile(y, 0.75)) == np.inf == float(jnp.quantile(y, 0.75))


def test_nan_counts_as_larger_than_inf():
    x = np.array([np.nan, 1.0, -np.inf, 2.0, -np.nan], np.float32)
    got = [float(abs_quantile(x, exact_q(k, 5))) for k in range(5)]
    assert got[:3] == [1.0, 2.0, np.inf]
    assert np.isnan(got[3]) and np.isnan(got[4])
    assert np.isnan(abs_quantile(x, 0.7))  # between inf and NaN


@pytest.mark.parametrize(
    "dtype, real", [("complex64", "float32"), ("complex128", "float64")]
)
def test_complex_input_uses_magnitudes(rng, x64, dtype, real):
    z = (rng.standard_normal(1025) + 1j * rng.standard_normal(1025)).astype(dtype)
    z[:2] = [3 + 4j, -5j]
    for q in (0.0, 0.5, 0.9, 1.0):
        got = jax.jit(abs_quantile, static_argnums=1)(jnp.asarray(z), q)
        assert got.dtype == real
        want = np.quantile(np.abs(z).astype(np.float64), q)
        np.testing.assert_allclose(got, want, rtol=2e-7 if real == "float32" else 1e-15)
    assert float(abs_quantile(z, exact_q(1023, 1025))) == 5.0  # |3+4j| = |-5j| = 5


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0,)])
def test_zero_size_input_gives_zero(shape):
    for dtype, real in (
        ("float32", "float32"),
        ("bfloat16", "bfloat16"),
        ("complex64", "float32"),
    ):
        x = jnp.zeros(shape, dtype)
        for fn in (abs_quantile, jax.jit(abs_quantile)):
            got = fn(x, 0.9)
            assert got.shape == () and got.dtype == real and float(got) == 0.0
    with pytest.raises(ValueError, match="abs_quantile"):
        abs_quantile(jnp.zeros(shape), 1.5)


def test_rejects_integer_input():
    with pytest.raises(TypeError, match=r"abs_quantile\(x\).*x.dtype=int32"):
        abs_quantile(jnp.arange(4), 0.5)
    with pytest.raises(TypeError, match="abs_quantile"):
        abs_quantile(jnp.array([True, False]), 0.5)


@pytest.mark.parametrize("q", [-0.5, 1.5])
def test_rejects_static_q_outside_unit_interval(q):
    with pytest.raises(ValueError, match=rf"abs_quantile\(q=...\).*q={q}"):
        abs_quantile(jnp.ones(4), q)


def test_batched_equals_per_matrix(rng):
    x = rng.standard_normal((5, 24, 40)).astype(np.float32)
    x[1] = np.round(x[1])  # ties
    x[2, 0, 0] = np.inf
    x[3] = 1.5  # all equal
    for q in (0.0, 0.37, 0.9, 1.0, jnp.float32(0.9)):
        got = jax.jit(lambda x, q=q: abs_quantile_batched(x, q))(x)
        assert got.shape == (5,)
        per_matrix = jax.jit(jax.vmap(lambda m, q=q: abs_quantile(m, q)))
        np.testing.assert_array_equal(got, per_matrix(x))
        one = jax.jit(lambda m, q=q: abs_quantile(m, q))
        np.testing.assert_array_equal(got, [one(m) for m in x])
    want = [np.quantile(np.abs(m).astype(np.float64), 0.37) for m in x]
    np.testing.assert_allclose(abs_quantile_batched(x, 0.37), want, rtol=2e-7)


def test_batched_matrices_of_any_rank_and_empty(rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    want = [np.quantile(np.abs(m).astype(np.float64), 0.5) for m in x]
    np.testing.assert_allclose(abs_quantile_batched(x, 0.5), want, rtol=2e-7)
    np.testing.assert_array_equal(
        abs_quantile_batched(x[:, 0, 0, 0], 0.5), np.abs(x[:, 0, 0, 0])
    )
    assert abs_quantile_batched(jnp.zeros((3, 0, 2)), 0.5).tolist() == [0.0] * 3
    assert abs_quantile_batched(jnp.zeros((0, 4, 4)), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="abs_quantile_batched"):
        abs_quantile_batched(jnp.float32(1.0), 0.5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("batched", [False, True])
def test_counting_and_histogram_selections_agree_with_sort(rng, dtype, batched):
    """Both selection paths (accelerators: counting, CPU: histograms), run on CPU."""
    shape = (3, 200) if batched else (700,)  # not exact_q: ranks given directly
    x = mixed_values(rng, int(np.prod(shape)), dtype).reshape(shape)
    bits = np.abs(x).view(INT_OF[dtype])
    want_sorted = np.sort(
        bits.reshape(-1, shape[-1]) if batched else bits[None], axis=-1
    )
    size = shape[-1]
    for k in (0, 1, size // 2, size - 2, size - 1):
        ranks = jnp.array([k, min(k + 1, size - 1)], jnp.int32)
        want = want_sorted[:, [k, min(k + 1, size - 1)]]
        for select in (_counting_select.counting_select, _quantile._histogram_select):
            fn = jax.jit(select, static_argnums=(2, 3))
            got = fn(jnp.asarray(bits), ranks, NUM_BITS[dtype], int(batched))
            np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)


@pytest.mark.parametrize("dtype", ["float32", "complex64", "bfloat16"])
def test_counting_select_reads_values_or_their_patterns_alike(rng, dtype):
    """The accelerator search takes the values themselves (it recomputes their
    patterns in each pass) and gives the same patterns as from the patterns."""
    x = rng.standard_normal((3, 40, 50))
    if dtype == "complex64":
        x = x + 1j * rng.standard_normal(x.shape)
    x = jnp.asarray(x, dtype)
    bits = _counting_select.patterns_of(x)
    ranks = jnp.array([1799, 1800], jnp.int32)
    select = jax.jit(_counting_select.counting_select, static_argnums=(2, 3))
    num_bits = NUM_BITS["float32" if dtype == "complex64" else dtype]
    from_values = select(x, ranks, num_bits, 1)
    np.testing.assert_array_equal(from_values, select(bits, ranks, num_bits, 1))
    want = np.sort(np.asarray(bits).reshape(3, -1), axis=-1)[:, [1799, 1800]]
    np.testing.assert_array_equal(from_values, want)


@pytest.mark.parametrize("int_dtype, num_bits", [(np.int16, 15), (np.int32, 31)])
def test_counting_selection_of_the_largest_patterns(rng, int_dtype, num_bits):
    """Patterns up to the largest one (NaNs with every mantissa bit set): the
    bracket starts there and its width never overflows."""
    top = np.iinfo(int_dtype).max
    bits = np.concatenate([top - np.arange(12), rng.integers(0, top, 20)]).astype(
        int_dtype
    )
    want = np.sort(bits)
    select = jax.jit(_counting_select.counting_select, static_argnums=(2, 3))
    for k in (0, 15, 25, 30, 31):
        ranks = jnp.array([k, min(k + 1, 31)], jnp.int32)
        got = select(jnp.asarray(bits), ranks, num_bits, 0)
        np.testing.assert_array_equal(got, want[[k, min(k + 1, 31)]])


def test_counting_selection_float64(rng, x64):
    x = mixed_values(rng, 500, "float64")
    bits = np.abs(x).view(np.int64)
    want = np.sort(bits)
    ranks = jnp.array([250, 251], jnp.int32)
    for select in (_counting_select.counting_select, _quantile._histogram_select):
        got = jax.jit(select, static_argnums=(2, 3))(jnp.asarray(bits), ranks, 63, 0)
        np.testing.assert_array_equal(got, want[250:252])


def adversarial_patterns(rng, n):
    """float32 bit patterns that defeat interpolation: uniform over every
    pattern (NaNs included), the largest pattern repeated, a geometric
    sequence, a few distinct values, two far clusters, half inf, all NaN."""
    x = rng.standard_normal(n)
    as_bits = lambda v: np.abs(np.asarray(v, np.float32)).view(np.int32)
    with np.errstate(over="ignore", under="ignore"):
        return {
            "uniform": rng.integers(0, 2**31 - 1, n).astype(np.int32),
            "largest": np.concatenate(
                [np.full(n - 5, 2**31 - 1), rng.integers(0, 99, 5)]
            ).astype(np.int32),
            "geometric": as_bits(2.0 ** -(np.arange(n) % 150)),
            "few values": as_bits(np.repeat(x[:8], n // 8 + 1)[:n]),
            "far clusters": as_bits(np.where(np.arange(n) % 2, x * 1e-30, x * 1e30)),
            "half inf": as_bits(np.where(np.arange(n) % 2, np.inf, x)),
            "nan": as_bits(np.full(n, np.nan)),
        }


def test_counting_search_is_exact_and_bounded_on_adversarial_patterns(rng):
    """Every answer is the sorted one; the quarter-point pivots shrink the
    bracket at least 4x per pass, so 31 bits take at most 16 passes and the
    final extremes one more."""
    search = jax.jit(_counting_select.counting_search, static_argnums=(2, 3))
    for name, bits in adversarial_patterns(rng, 4096).items():
        want = np.sort(bits)
        for k in (0, 409, 2047, 3686, 4094, 4095):
            ranks = jnp.array([k, min(k + 1, 4095)], jnp.int32)
            got, passes = search(jnp.asarray(bits), ranks, 31, 0)
            np.testing.assert_array_equal(got, want[[k, min(k + 1, 4095)]], name)
            assert int(passes) <= 17, (name, k, int(passes))


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, s: rng.standard_normal(s),
        lambda rng, s: rng.standard_t(3, s),
        lambda rng, s: rng.lognormal(0, 3, s),
        lambda rng, s: rng.standard_normal(s) * (rng.random(s) < 0.5),
        lambda rng, s: rng.standard_normal(s) * rng.lognormal(0, 2, (s[0], s[1], 1)),
    ],
    ids=["normal", "student-t3", "lognormal", "half zeros", "row-scaled"],
)
def test_counting_search_needs_few_passes_on_gradient_like_matrices(rng, draw):
    """The placed pivots find the 0.9-quantile's neighbours of 4 x 256 x 1024
    float32 matrices in at most 7 passes over the batch, the final extremes
    included (the 4-bit digit passes this replaced always took 9)."""
    x = np.asarray(draw(rng, (4, 256, 1024)), np.float32)
    bits = np.abs(x).view(np.int32)
    n = 256 * 1024
    k = int(0.9 * (n - 1))
    search = jax.jit(_counting_select.counting_search, static_argnums=(2, 3))
    got, passes = search(jnp.asarray(bits), jnp.array([k, k + 1], jnp.int32), 31, 1)
    want = np.sort(bits.reshape(4, -1), axis=-1)[:, [k, k + 1]]
    np.testing.assert_array_equal(got, want)
    assert int(passes) <= 7


def test_counting_pivots_lie_inside_the_bracket_at_its_quarter_points():
    """Every pivot is strictly inside (lo, hi) (no overflow at the largest
    pattern), three sit at the quarter points and one at hi - 1; the first
    pass sweeps powers of two and pattern 0."""
    for lo, hi in ((-1, 2**31 - 1), (1000, 1009), (5, 7), (-1, 1)):
        s = _counting_select.initial_search((1,), 4, jnp.int32, jnp.int32(1))
        s = s._replace(lo=jnp.array([lo], jnp.int32), hi=jnp.array([hi], jnp.int32))
        for passes in (0, 1, 2):
            pivots = np.asarray(_counting_select._pivots(s, 1, passes, 31))[0]
            assert pivots.shape == (_counting_select.PASS_PIVOTS,)
            assert np.all((pivots > lo) & (pivots < hi)), (lo, hi, pivots)
            assert pivots[-1] == hi - 1
            gap = hi - 1 - lo
            quarters = lo + (gap // 4 + 1) * np.arange(1, 4)
            np.testing.assert_array_equal(pivots[-4:-1], np.minimum(quarters, hi - 1))
    s = _counting_select.initial_search((1,), 4, jnp.int32, jnp.int32(1))
    swept = np.asarray(_counting_select._pivots(s, 1, 0, 31))[0, :11]
    values = swept.astype(np.int32).view(np.float32)
    np.testing.assert_array_equal(values, [*(2.0 ** np.arange(-32, 8, 4)), 0.0])
    assert _quantile._bucket_bits(2048 * 8192) == 16
    assert _quantile._bucket_bits(512 * 512) == 16  # 2 passes from 2**18 entries
    assert _quantile._bucket_bits(128 * 128) == 12  # 3 passes of 11 bits
    assert _quantile._bucket_bits(1) == 8


def test_histogram_passes_are_one_width_and_all_needed():
    for num_bits in (15, 31, 63):
        for max_width in range(8, 17):
            passes, width = _quantile._histogram_plan(num_bits, max_width)
            assert width <= max_width
            assert passes * width >= num_bits > (passes - 1) * width
            assert passes == -(-num_bits // max_width)  # no more than the fewest
    assert _quantile._histogram_plan(31, 16) == (2, 16)
    assert _quantile._histogram_plan(31, 14) == (3, 11)


@pytest.mark.parametrize("width", [3, 11])
def test_histogram_pass_counts_only_each_targets_bucket(rng, width):
    """A later pass's histograms equal NumPy's of the digits of the entries
    under each target's prefix; the other entries (most of them, with every
    low digit value) land in no target's counts. Covers two targets with
    different prefixes, equal ones, and a prefix no entry has."""
    shift, num_bits = width, min(3 * width, 31)  # int32 patterns
    bits = rng.integers(0, 1 << num_bits, (3, 40, 50))
    top = bits >> (shift + width)
    # Per matrix: a common prefix, two different ones, an absent one.
    other = top[1][top[1] != top[1, 0, 0]][0]
    prefix = np.stack(
        [
            [top[0, 0, 0], top[0, 0, 0]],
            [top[1, 0, 0], other],
            [top[2, 0, 0], top[2].max() + 1],
        ]
    )
    got = jax.jit(_quantile._digit_histograms, static_argnums=(3, 4, 5, 6))(
        jnp.asarray(bits, jnp.int32),
        jnp.asarray(prefix, jnp.int32),
        jnp.asarray(shift, jnp.int32),
        width,
        num_bits,
        1,
        jnp.int32,
    )
    digits = (bits >> shift) & ((1 << width) - 1)
    for b in range(3):
        for t in range(2):
            under = top[b] == prefix[b, t]
            want = np.bincount(digits[b][under], minlength=1 << width)
            np.testing.assert_array_equal(got[b, t], want)
    assert int(got[2, 1].sum()) == 0
    assert int(got.sum()) < bits.size  # most entries counted for no target


@pytest.mark.parametrize("width", [2, 4, 8, 11, 16])
def test_histogram_cumsum_is_exact_up_to_float32_counts(rng, width):
    """The CPU locate's cumsum (float32 products with triangular ones) equals
    jnp.cumsum exactly whenever the totals stay within 2**24, with the largest
    counts there are; above that it is jnp.cumsum itself."""
    limit = _quantile._EXACT_FLOAT32_COUNTS
    buckets = 1 << width
    hist = rng.multinomial(limit, np.full(buckets, 1 / buckets), size=(3, 2))
    hist[0, 0] = 0
    hist[0, 0, -1] = limit  # everything in the last bucket
    hist[1, 1] = 0
    hist[1, 1, 0] = limit - 1  # and nearly everything in the first
    hist = jnp.asarray(hist, jnp.int32)
    got = jax.jit(lambda h: _quantile._inclusive_cumsum(h, limit))(hist)
    np.testing.assert_array_equal(np.asarray(got), np.cumsum(np.asarray(hist), -1))
    assert int(got.max()) == limit
    big = jax.jit(lambda h: _quantile._inclusive_cumsum(h, limit + 1))
    text = big.lower(hist).as_text()
    assert "dot_general" not in text


def _numpy_locate(hist, ranks):
    """Bucket of each rank and the count below it, by NumPy's cumsum."""
    cumulative = np.cumsum(hist, -1)
    digit = (cumulative <= ranks[..., None]).sum(-1)
    below = np.take_along_axis(cumulative, np.maximum(digit - 1, 0)[..., None], -1)
    return digit, np.where(digit > 0, below[..., 0], 0)


@pytest.mark.parametrize("width", [2, 8, 9, 11, 16])
def test_bucket_search_float_and_integer_forms_agree_with_numpy(rng, width):
    """_locate's float32 form (totals up to 2**24) and its integer form (above)
    give NumPy's bucket of each rank and the count below it, at every rank
    including the first and last entry and empty buckets."""
    buckets = 1 << width
    hist = rng.integers(0, 4, (3, 2, buckets))
    hist[0, 0, : buckets // 2] = 0  # a run of empty buckets
    total = hist.sum(-1)
    ranks = np.stack([np.zeros(3, int), total[:, 1] - 1], -1)  # first, last
    ranks[1] = rng.integers(0, total[1].min(), 2)
    want_digit, want_below = _numpy_locate(hist, ranks)
    limit = _quantile._EXACT_FLOAT32_COUNTS
    for max_total in (limit, limit + 1):  # the float form, the integer form
        digit, below = jax.jit(_quantile._locate, static_argnums=2)(
            jnp.asarray(hist, jnp.int32), jnp.asarray(ranks, jnp.int32), max_total
        )
        np.testing.assert_array_equal(digit, want_digit)
        np.testing.assert_array_equal(below, want_below)


def test_two_level_bucket_search_at_every_rank_and_row_edge():
    """A long histogram is searched row first, then within the row: every rank
    of a sparse 2**16-bucket histogram whose entries sit at row edges (first
    and last bucket of a row, the first and last row) gives NumPy's bucket."""
    buckets = 1 << 16
    cols = 256  # the search's row length for 2**16 buckets
    hist = np.zeros((1, 2, buckets), np.int64)
    for bucket, count in ((0, 2), (cols - 1, 1), (cols, 3), (5 * cols + 7, 1)):
        hist[..., bucket] = count
    hist[..., buckets - cols] = 2
    hist[..., buckets - 1] = 1
    total = int(hist[0, 0].sum())
    locate = jax.jit(_quantile._locate, static_argnums=2)
    for rank in range(total):
        ranks = np.full((1, 2), rank)
        want = _numpy_locate(hist, ranks)
        for max_total in (total, _quantile._EXACT_FLOAT32_COUNTS + 1):
            got = locate(
                jnp.asarray(hist, jnp.int32), jnp.asarray(ranks, jnp.int32), max_total
            )
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_selection_compiles_without_sort_while_jnp_quantile_sorts():
    x = jnp.ones((256, 512))
    ours = jax.jit(lambda x: abs_quantile(x, 0.9)).lower(x).as_text(dialect="hlo")
    theirs = jax.jit(lambda x: jnp.quantile(x, 0.9)).lower(x).as_text(dialect="hlo")
    sort_op = re.compile(r"= \S+ sort\(")
    assert sort_op.search(theirs)
    assert not sort_op.search(ours)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_count_instead_of_scatter(platform):
    """On accelerators the selection is compares and reductions only."""
    x = jnp.ones((256, 512))
    traced = jax.jit(lambda x: abs_quantile(x, 0.9)).trace(x)
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    for op in ("scatter", "gather", "sort", "dynamic_slice"):
        assert f"stablehlo.{op}" not in text
    # The passes are one loop; each reads the data with 15 pivot counts and two
    # extremes (the bracket's snapped ends, or the final answer's), and no
    # reduction over the data lies outside it.
    assert text.count("stablehlo.while") == 1
    assert text.count("stablehlo.reduce") >= 15 + 2 + 2
    assert text.count("(tensor<256x512xi32>, tensor<i32>)") == 15 + 2


def test_sharded_input_is_reduced_not_gathered(rng):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several (host) devices; conftest asks XLA for 8")
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d", None))
    x = rng.standard_normal((8 * len(devices), 96)).astype(np.float32)
    xs = jax.device_put(x, sharding)
    fn = jax.jit(lambda x: abs_quantile(x, 0.9))
    hlo = fn.lower(xs).compile().as_text()
    assert "all-gather" not in hlo
    assert "all-reduce" in hlo
    np.testing.assert_allclose(fn(xs), np.quantile(np.abs(x), 0.9), rtol=1e-6)


def mesh_2x4():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (host) devices; conftest asks XLA for 8")
    return jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))


@pytest.mark.parametrize(
    "spec", [("a", "b"), ("b", "a"), (("a", "b"), None), (None, ("a", "b"))]
)
def test_matrix_sharded_over_two_mesh_axes_is_never_gathered(rng, spec):
    P = jax.sharding.PartitionSpec
    sharding = jax.sharding.NamedSharding(mesh_2x4(), P(*spec))
    x = rng.standard_normal((64, 128)).astype(np.float32)
    xs = jax.device_put(x, sharding)
    bits = jax.lax.bitcast_convert_type(jnp.abs(xs), jnp.int32)
    ranks = jnp.array([7000, 7001], jnp.int32)
    programs = {
        "abs_quantile": (jax.jit(lambda x: abs_quantile(x, 0.9)), (xs,)),
        "counting": (
            jax.jit(_counting_select.counting_select, static_argnums=(2, 3)),
            (bits, ranks, 31, 0),
        ),
    }
    for fn, args in programs.values():
        hlo = fn.lower(*args).compile().as_text()
        assert "all-gather" not in hlo
        assert "all-to-all" not in hlo
        assert "all-reduce" in hlo
    np.testing.assert_allclose(
        programs["abs_quantile"][0](xs), np.quantile(np.abs(x), 0.9), rtol=1e-6
    )
    want = np.sort(np.abs(x).view(np.int32).ravel())[7000:7002]
    np.testing.assert_array_equal(programs["counting"][0](bits, ranks, 31, 0), want)


@pytest.mark.parametrize("spec", [(None, "a", "b"), ("a", "b", None)])
def test_sharded_stack_is_never_gathered(rng, spec):
    P = jax.sharding.PartitionSpec
    xs = jax.device_put(
        rng.standard_normal((4, 64, 128)).astype(np.float32),
        jax.sharding.NamedSharding(mesh_2x4(), P(*spec)),
    )
    want = [np.quantile(np.abs(np.asarray(m)), 0.9) for m in xs]
    for fn in (
        jax.jit(lambda x: abs_quantile_batched(x, 0.9)),
        jax.jit(jax.vmap(lambda m: abs_quantile(m, 0.9))),
    ):
        assert "all-gather" not in fn.lower(xs).compile().as_text()
        np.testing.assert_allclose(fn(xs), want, rtol=1e-6)


def test_bench_quantile_reports_the_library_pass_counts(rng):
    """benchmarks/bench_quantile.py reads the pass plans from the library's
    private helpers: they must exist and give the passes the docs state."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_quantile

    x = rng.standard_normal((256, 256)).astype(np.float32)
    passes = bench_quantile._passes(x, 0.9)
    assert passes["cpu_histogram"] == 3
    x = rng.standard_normal((512, 512)).astype(np.float32)
    passes = bench_quantile._passes(x, 0.9)
    assert passes["cpu_histogram"] == 2
    assert 3 <= passes["accelerator_counting"] <= 7  # the final pass included
    big = np.zeros((1, 1024, 2048), np.float32)
    assert bench_quantile._passes(big, 0.9) == {
        "cpu_histogram": 2,
        "accelerator_counting": 2,  # all zeros: settled by the first pass
    }
