"""Quintic Newton–Schulz orthogonalization with shape-dependent coefficients."""

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax import (
    _coefficients,
    _dimension_numbers,
    _placement,
    _platform,
    _validation,
)

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)
DEFAULT_STEPS = 5

Normalization = Literal["frobenius", "schatten4"]
"""How the matrix is scaled before the iteration (singular values into [0, 1])."""

PrecisionLike = Literal["default", "high", "highest"] | jax.lax.Precision | None
"""Precision of the Newton–Schulz products: ``None`` (the backend's default for
the compute dtype, as :func:`optax.contrib.muon` uses), or a
:class:`jax.lax.Precision` / its name."""

_PRECISIONS = {
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}


class NewtonSchulzConfig(NamedTuple):
    """The checked Newton–Schulz arguments.

    A pytree: ``eps`` may be a traced array (from
    :func:`optax.inject_hyperparams`); ``coeffs`` (canonical: a preset name, a
    NumPy ``(steps, 3)`` table, a mapping of such tables, or a callable),
    ``steps``, ``dtype``, ``precision``, ``normalization`` and ``gram`` are
    static.
    """

    coeffs: Any
    steps: int
    eps: jax.typing.ArrayLike
    dtype: np.dtype | None
    precision: jax.lax.Precision | None
    normalization: Normalization = "frobenius"
    gram: bool = False

    def coefficients(self, fn: str, shape: tuple[int, int]) -> np.ndarray:
        """The ``(steps, 3)`` coefficients for a matrix of ``shape``."""
        return _coefficients.coefficients_for_shape(
            fn, self.coeffs, shape, self.steps, self.normalization
        )


def _check_precision(fn: str, name: str, precision: Any) -> jax.lax.Precision | None:
    if precision is None or isinstance(precision, jax.lax.Precision):
        return precision
    if isinstance(precision, str) and precision in _PRECISIONS:
        return _PRECISIONS[precision]
    raise ValueError(
        f"{fn}({name}=...) must be None (the backend's default), 'default', "
        f"'high', 'highest' or a jax.lax.Precision, got {name}={precision!r}."
    )


def ns_config(
    fn: str,
    ns_coeffs,
    ns_steps,
    eps,
    ns_dtype,
    ns_precision=None,
    ns_normalization="frobenius",
    ns_gram=False,
    *,
    eps_name: str = "eps",
) -> NewtonSchulzConfig:
    """Validate the Newton–Schulz arguments for ``fn``; the canonical config."""
    steps = _validation.check_positive_int(fn, "ns_steps", ns_steps, DEFAULT_STEPS)
    if ns_normalization not in ("frobenius", "schatten4"):
        raise ValueError(
            f"{fn}(ns_normalization=...) must be 'frobenius' or 'schatten4', got "
            f"ns_normalization={ns_normalization!r}."
        )
    _validation.check_bool(fn, "ns_gram", ns_gram)
    coeffs = _canonical_coeffs(fn, ns_coeffs, steps)
    _validation.check_non_negative(fn, eps_name, eps)
    dtype = _validation.check_float_dtype(fn, "ns_dtype", ns_dtype)
    precision = _check_precision(fn, "ns_precision", ns_precision)
    return NewtonSchulzConfig(
        coeffs, steps, eps, dtype, precision, ns_normalization, ns_gram
    )


def _canonical_coeffs(fn: str, ns_coeffs, steps: int):
    """Checked ``ns_coeffs`` with tables as NumPy arrays (static, never traced)."""
    _coefficients.check_spec(fn, ns_coeffs, steps)
    if isinstance(ns_coeffs, str) or callable(ns_coeffs):
        return ns_coeffs
    if isinstance(ns_coeffs, Mapping):
        return {
            (int(key[0]), int(key[1])): np.asarray(value, np.float64)
            for key, value in ns_coeffs.items()
        }
    return np.asarray(ns_coeffs, np.float64)


def _compute_dtype(x_dtype, ns_dtype) -> np.dtype:
    """Newton–Schulz runs in ``ns_dtype``, by default never below float32.

    Complex inputs stay complex: ``ns_dtype`` then sets the precision of the
    real and imaginary parts, at least float32 (there is no complex bfloat16).
    """
    if jnp.issubdtype(x_dtype, jnp.complexfloating):
        real = jnp.finfo(x_dtype).dtype if ns_dtype is None else ns_dtype
        real = jnp.promote_types(real, jnp.float32)
        return np.dtype(jnp.promote_types(real, x_dtype))
    if ns_dtype is None:
        return np.dtype(jnp.promote_types(x_dtype, jnp.float32))
    return np.dtype(ns_dtype)


def _matmul(x: jax.Array, y: jax.Array, precision) -> jax.Array:
    """``x @ y``; low-precision inputs accumulate in float32."""
    if x.dtype in _LOW_PRECISION:
        out = jnp.matmul(x, y, precision=precision, preferred_element_type=jnp.float32)
        return out.astype(x.dtype)
    return jnp.matmul(x, y, precision=precision)


def _adjoint(x: jax.Array) -> jax.Array:
    """:math:`X^H` of every matrix of a batch (the transpose for reals)."""
    x = jnp.swapaxes(x, 1, 2)
    return x.conj() if jnp.iscomplexobj(x) else x


def _normalize(
    x: jax.Array, config: NewtonSchulzConfig, compute_dtype
) -> tuple[jax.Array, jax.Array | None]:
    r""":math:`X_0 = X / (\|X\|_\ast + \epsilon)` per matrix of a ``(B, m, n)``
    batch, and the Gram matrix :math:`X_0 X_0^H` when it came for free.

    The norm :math:`\|\cdot\|_\ast` is Frobenius, or with
    ``normalization="schatten4"`` the Schatten-4 norm
    :math:`(\sum_i s_i^4)^{1/4} = \|X X^H\|_F^{1/2}`: also at least the
    largest singular value, but much closer to it, so the normalized singular
    values start nearer 1; its Gram matrix is the first step's, so it costs no
    extra product. Norms are taken of :math:`Y = X / \max|X|` (entries in
    [0, 1]), so gradients whose squared entries would overflow float32 keep
    their direction. A zero matrix stays zero, even with ``eps=0``.
    """
    wide = jnp.promote_types(compute_dtype, jnp.float32)
    x = x.astype(wide)
    scale = jnp.max(jnp.abs(x), axis=(1, 2), keepdims=True)
    scale = jnp.where(scale > 0, scale, 1).astype(scale.dtype)
    y = x / scale
    gram = None
    if config.normalization == "schatten4":
        y = y.astype(compute_dtype)
        gram = _matmul(y, _adjoint(y), config.precision).astype(wide)
        norm = jnp.sqrt(
            jnp.sqrt(jnp.sum(jnp.abs(gram) ** 2, axis=(1, 2), keepdims=True))
        )
    else:
        norm = jnp.sqrt(jnp.sum(jnp.abs(y) ** 2, axis=(1, 2), keepdims=True))
    denom = norm + config.eps / scale
    denom = jnp.where(denom > 0, denom, 1)
    x0 = (y / denom).astype(compute_dtype)
    if gram is not None:
        gram = (gram / (denom * denom).astype(gram.dtype)).astype(compute_dtype)
    return x0, gram


def _standard_step(x, gram, a, b, c, precision) -> jax.Array:
    r"""One step :math:`X \leftarrow aX + (bA + cA^2)X` with :math:`A = XX^H`."""
    poly = b * gram + c * _matmul(gram, gram, precision)
    return a * x + _matmul(poly, x, precision)


def _standard_iteration(x, gram, coeffs, precision) -> jax.Array:
    r""":math:`X \leftarrow aX + (bA + cA^2)X`, :math:`A = XX^H`, per step.

    The steps run as one :func:`jax.lax.scan` over the rows of ``coeffs`` (as
    :func:`optax.contrib.muon` loops), so the products are compiled once, not
    once per step (and XLA's ``cost_analysis()`` counts the loop body once); a
    ``gram`` from the normalization serves the first step, which then runs
    before the loop, as does a single remaining step.
    """
    rows = np.asarray(coeffs)
    if gram is not None and len(rows):
        x = _standard_step(x, gram, *rows[0].tolist(), precision)
        rows = rows[1:]

    def step(x, a, b, c):
        return _standard_step(x, _matmul(x, _adjoint(x), precision), a, b, c, precision)

    if len(rows) == 1:  # nothing to loop over
        return step(x, *rows[0].tolist())
    if len(rows):
        table = jnp.asarray(rows, jnp.finfo(x.dtype).dtype)
        x, _ = jax.lax.scan(lambda x, abc: (step(x, *jnp.unstack(abc)), None), x, table)
    return x


GRAM_RESTART = 2
"""Gram-form steps between restarts (recomputing the Gram matrix from X)."""


def _gram_iteration(x, gram, coeffs, precision) -> jax.Array:
    r"""The same iteration on the small :math:`m \times m` side (m <= n).

    With :math:`A_k = X_k X_k^H` and :math:`p_k = aI + bA_k + cA_k^2`,
    :math:`X_{k+1} = p_k X_k`, so :math:`X_k = Q_k X_0` with
    :math:`Q_{k+1} = p_k Q_k` and :math:`A_{k+1} = p_k A_k p_k` (all polynomials
    in :math:`A_0`, so they commute): every product but :math:`A_0` and the
    final :math:`Q X_0` is :math:`m \times m`. Exact arithmetic gives the
    standard iteration's result; in floating point, products rounded to bf16
    (the TPU/GPU default precision) lose the small eigenvalues of :math:`A_0`,
    so :math:`X` and :math:`A` are recomputed every :data:`GRAM_RESTART` steps.
    """
    if gram is None:
        gram = _matmul(x, _adjoint(x), precision)
    eye = jnp.eye(x.shape[1], dtype=x.dtype)[None]
    q = None
    steps = coeffs.tolist()
    for k, (a, b, c) in enumerate(steps):
        poly = a * eye + b * gram + c * _matmul(gram, gram, precision)
        q = poly if q is None else _matmul(poly, q, precision)
        if k == len(steps) - 1:
            break
        if (k + 1) % GRAM_RESTART == 0:
            x, q = _matmul(q, x, precision), None
            gram = _matmul(x, _adjoint(x), precision)
        else:
            gram = _matmul(_matmul(poly, gram, precision), poly, precision)
    return x if q is None else _matmul(q, x, precision)


def uses_gram(config: NewtonSchulzConfig, shape: tuple[int, int]) -> bool:
    """Whether the Gram form runs for a wide ``(m, n)`` shape: when asked and
    cheaper, i.e. ``n >= 2 m``."""
    m, n = shape
    return config.gram and n >= 2 * m


def newton_schulz_batch(
    batch: jax.Array, coeffs: np.ndarray, config: NewtonSchulzConfig
) -> jax.Array:
    """The quintic iteration on a ``(B, m, n)`` batch of wide matrices (m <= n).

    For complex matrices the Gram matrix is :math:`X X^H` (conjugate
    transpose); the iteration then maps singular values exactly as for reals.
    Returns the batch's dtype. On CPU the matrices run one at a time
    (:data:`CPU_ONE_AT_A_TIME`).
    """
    form = (
        _gram_iteration if uses_gram(config, batch.shape[1:]) else _standard_iteration
    )

    def run(batch):
        compute_dtype = _compute_dtype(batch.dtype, config.dtype)
        x, gram = _normalize(batch, config, compute_dtype)
        return form(x, gram, coeffs, config.precision).astype(batch.dtype)

    return one_at_a_time_on_cpu(lambda b: (run(b), {}), batch)[0]


def one_at_a_time_on_cpu(fn, batch: jax.Array):
    """``fn(batch)``, on CPU as a loop over the batch's matrices.

    ``fn`` maps a ``(k, m, n)`` batch to ``(out, stats)``: ``out`` of the
    batch's shape and dtype, ``stats`` a dict of ``(k,)`` arrays. On CPU (with
    :data:`CPU_ONE_AT_A_TIME`, for more than one matrix) each matrix runs on
    its own and its result is written back into the batch's buffer (a
    ``lax.map`` would first fill a fresh output with zeros): the working set
    of one matrix stays in cache. Elsewhere ``fn`` sees the whole batch.
    """
    if batch.shape[0] <= 1 or not CPU_ONE_AT_A_TIME:
        return fn(batch)

    def one_at_a_time(batch):
        def body(batch, i):
            out, values = fn(jax.lax.dynamic_slice_in_dim(batch, i, 1))
            return jax.lax.dynamic_update_slice_in_dim(batch, out, i, 0), values

        batch, stats = jax.lax.scan(body, batch, jnp.arange(batch.shape[0]))
        return batch, {k: v.reshape(batch.shape[:1]) for k, v in stats.items()}

    return _platform.platform_dependent(batch, cpu=one_at_a_time, default=fn)


CPU_ONE_AT_A_TIME = True
"""Whether CPU programs orthogonalize a batch one matrix at a time.

XLA:CPU runs batched matrix products well below the speed of the same
products one by one (1.3-1.6x slower for batches of 128 x 128 to 512 x 2048
float32 matrices on 2 cores; ``benchmarks/bench_step_time.py``), so on CPU a
batch is a :func:`jax.lax.fori_loop` over its matrices (one compiled body);
accelerators keep the batched products, which fill them better. Read at trace
time. ``cost_analysis()`` counts a loop body once, so FLOP counts of CPU
programs see one matrix per batch: tests comparing FLOPs switch this off.
"""


def newton_schulz_kernel(fn: str, config: NewtonSchulzConfig) -> _placement.Kernel:
    """The placement kernel ``(batch, shape, config) -> (batch, {})``."""

    def kernel(batch, shape, dynamic_config):
        out = newton_schulz_batch(batch, config.coefficients(fn, shape), dynamic_config)
        return out, {}

    return kernel


def orthogonalize(
    x: jax.Array,
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    *,
    ns_dtype: jax.typing.DTypeLike | None = None,
    ns_precision: PrecisionLike = None,
    ns_normalization: Normalization = "frobenius",
    ns_gram: bool = False,
) -> jax.Array:
    r"""Approximate the polar factor :math:`UV^\top` of a matrix (or a batch of them).

    With :math:`X_0 = B / (\|B\|_F + \epsilon)` in the wide orientation
    (:math:`B^\top` if :math:`m > n`), each of the ``ns_steps`` iterations is

    .. math::
      A = X_{k-1} X_{k-1}^\top, \qquad
      X_k = a X_{k-1} + (b A + c A^2) X_{k-1},

    which maps every singular value :math:`s` of :math:`X_{k-1}` to
    :math:`a s + b s^3 + c s^5` and leaves the singular vectors alone.

    Args:
      x: array of shape ``(..., m, n)``; leading axes are a batch.
      ns_coeffs: ``"root"`` (default), ``"reference"``, ``"muon"``, one
        ``(a, b, c)`` triple, ``ns_steps`` triples (one per iteration), a mapping
        from ``(min(m, n), max(m, n))`` to either, or a callable
        ``(shape, ns_steps) -> coefficients``.
      ns_steps: number of iterations, a positive int; ``None`` means 5.
      eps: added to the Frobenius norm before dividing.
      ns_dtype: dtype of the iteration. ``None`` uses ``x``'s dtype promoted to at
        least float32 (float32 inputs are never downcast); ``jnp.bfloat16`` runs
        bf16 matmuls with float32 accumulation.
      ns_precision: precision of the products. ``None`` (default) is the
        backend's default, as in :func:`optax.contrib.muon`: exact float32 on
        CPU, one bf16 pass per float32 product on TPU (TF32 on recent GPUs).
        ``"highest"`` runs full float32 products everywhere (several passes on
        TPU), for exact reproduction.
      ns_normalization: ``"frobenius"`` (default, the reference:
        :math:`X_0 = B / (\|B\|_F + \epsilon)`) or ``"schatten4"``
        (:math:`X_0 = B / (\|BB^H\|_F^{1/2} + \epsilon)`: singular values start
        nearer 1, so fewer steps reach the same error, at no extra product;
        the ``"root"`` preset then uses coefficients fitted for it).
      ns_gram: run the iteration in its Gram form on matrices with
        ``max >= 2 min`` (``_gram_iteration``): the same result, about half
        the FLOPs for aspect ratios of 4, with restarts every 2 steps so that
        bf16 products stay accurate.

    Returns:
      The orthogonalized array, same shape and dtype as ``x``.

    Raises:
      ValueError: ``x`` has rank < 2, or bad ``ns_steps``/``ns_coeffs``.

    Examples:
      >>> import jax, jax.numpy as jnp, root_optax
      >>> q = root_optax.orthogonalize(jax.random.normal(jax.random.key(0), (4, 8)))
      >>> bool(jnp.all(jnp.linalg.svd(q, compute_uv=False) > 0.6))
      True
    """
    fn = "orthogonalize"
    config = ns_config(
        fn, ns_coeffs, ns_steps, eps, ns_dtype, ns_precision, ns_normalization, ns_gram
    )
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{fn}(x=...) must have rank >= 2 (..., m, n), got shape {x.shape}."
        )
    m, n = x.shape[-2:]
    coeffs = config.coefficients(fn, (m, n))
    if x.size == 0:
        return x
    batch = x.reshape((-1, m, n))
    if m > n:
        batch = jnp.swapaxes(batch, 1, 2)
    out = newton_schulz_batch(batch, coeffs, config)
    if m > n:
        out = jnp.swapaxes(out, 1, 2)
    return out.reshape(x.shape)


def adaptive_newton_schulz(
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    *,
    ns_dtype: jax.typing.DTypeLike | None = None,
    ns_precision: PrecisionLike = None,
    ns_normalization: Normalization = "frobenius",
    ns_gram: bool = False,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
    distributed: _placement.Distributed = False,
) -> optax.GradientTransformation:
    r"""Orthogonalize every matrix with coefficients chosen for its shape (AdaNewton).

    Each matrix (each slice of a stacked or N-D leaf, as given by
    ``weight_dimension_numbers``) of shape :math:`m \times n` goes through
    :func:`orthogonalize`'s iteration with the coefficients for
    :math:`(\min(m, n), \max(m, n))`. Coefficients are resolved once per shape
    at trace time and are compile-time constants. The matrices of one wide shape
    (tall ones transposed) are orthogonalized as one batch: batched products on
    accelerators, one matrix after the other in one loop on CPU (where XLA's
    batched products are slower).

    Sharded matrices (:class:`jax.sharding.NamedSharding`, Auto or Explicit mesh
    axes) work as they are and keep their shardings. By default each batch is
    orthogonalized where it lies: the compiler partitions the products of a
    sharded matrix over the mesh and gathers its shards at every iteration.

    ``distributed`` gives every device whole matrices instead: each batch is
    padded with zero matrices to a multiple of the device count and resharded
    so that the batch axis is split over all mesh axes; each device runs the
    iteration on its own matrices, locally, and the results go back to the
    params' layout. The result equals the default mode's (to float32
    rounding); the Newton–Schulz FLOPs per device are ``1 / devices`` of
    orthogonalizing every matrix on every device, and the communication is one
    move of each matrix to its owner and back per step instead of gathers at
    every iteration. Under explicit axes the moves are all-to-alls over one
    mesh axis at a time (never a gather) and the updates come back in exactly
    the params' shardings; under Auto axes the compiler chooses both. A mesh
    axis of more than 64 devices moves as factors (a 256-chip axis as two
    all-to-alls over 16): libtpu compiles one all-to-all over 256 chips in
    about 11 s, each over 16 in well under 1 s.

    Use it for FSDP or tensor-parallel meshes with many matrices: at least as
    many of each shape as devices, ideally a multiple (the padding matrices are
    wasted work). It brings nothing on one device or with fewer matrices than
    devices.

    Args:
      ns_coeffs: coefficient preset or table, see :func:`orthogonalize`.
        ``"root"`` is our table (safe by construction), ``"reference"`` the
        authors' exact table with Muon's fallback (it warns on the fallback, and
        its square entry can amplify singular values up to 3.3x), ``"muon"``
        Muon's fixed quintic.
      ns_steps: number of iterations, a positive int; ``None`` means 5.
      eps: added to the Frobenius norm before dividing.
      ns_dtype: dtype of the iteration, see :func:`orthogonalize`.
      ns_precision: precision of the products, see :func:`orthogonalize`.
      ns_normalization: ``"frobenius"`` or ``"schatten4"``, see
        :func:`orthogonalize`.
      ns_gram: the Gram form for rectangular matrices, see :func:`orthogonalize`.
      weight_dimension_numbers: ``None`` (each leaf is a matrix over its last two
        axes), one :class:`optax.contrib.MuonDimensionNumbers`, a tree (prefix)
        of them with ``None`` for leaves to pass through, or a callable returning
        such a tree from the updates.
      distributed: ``False`` (default: each matrix orthogonalized where it
        lies), ``True`` (distribute over the mesh set with :func:`jax.set_mesh`,
        or else the mesh of the params' explicit shardings) or a
        :class:`jax.sharding.Mesh` to distribute over (the params' mesh).

    Returns:
      A stateless :class:`optax.GradientTransformation`.

    Raises:
      ValueError: bad ``ns_steps``/``ns_coeffs``/``ns_precision``; a rank < 2
        leaf or dimension numbers that do not fit a leaf (raised at ``init``);
        ``distributed=True`` with no mesh to find (raised at ``update``).
      TypeError: ``distributed`` is not a bool or a mesh.

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> tx = root_optax.adaptive_newton_schulz(ns_coeffs="muon")
      >>> u, _ = tx.update({"w": jnp.eye(3) * 2.0}, tx.init(None))
      >>> u["w"].shape
      (3, 3)
    """
    fn = "adaptive_newton_schulz"
    config = ns_config(
        fn, ns_coeffs, ns_steps, eps, ns_dtype, ns_precision, ns_normalization, ns_gram
    )
    distributed = _placement.check_distributed(fn, distributed)
    return matrix_transform(
        fn,
        newton_schulz_kernel(fn, config),
        config,
        weight_dimension_numbers,
        distributed,
        coefficients=config,
    )


def matrix_transform(
    fn: str,
    kernel: _placement.Kernel,
    dynamic: Any,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers,
    distributed: _placement.Distributed,
    *,
    coefficients: NewtonSchulzConfig | None = None,
    stats: type[NamedTuple] | None = None,
) -> optax.GradientTransformation:
    """A transform running ``kernel`` on every matrix batch.

    ``init`` checks the dimension numbers (naming ``fn``) and, when
    ``coefficients`` holds a user table or callable, the coefficients of every
    matrix shape of the params, so that errors surface before the first step.
    Stateless, unless ``stats`` (a NamedTuple class whose fields the kernel
    returns) is given: the state is then the last step's per-matrix statistics.
    """
    stat_names = () if stats is None else stats._fields

    def init_fn(params):
        user_coeffs = coefficients is not None and not isinstance(
            coefficients.coeffs, str
        )
        if params is not None and user_coeffs:
            _dimension_numbers.map_matrices(
                lambda x, view: coefficients.coefficients(fn, view.matrix_shape),
                params,
                weight_dimension_numbers,
                fn,
            )
        else:
            _dimension_numbers.check_fits(params, weight_dimension_numbers, fn)
        if stats is None:
            return optax.EmptyState()
        return stats(
            **_placement.zero_statistics(
                fn, params, weight_dimension_numbers, stat_names
            )
        )

    def update_fn(updates, state, params=None):
        del params
        updates, values = _placement.map_matrix_batches(
            fn,
            kernel,
            updates,
            weight_dimension_numbers,
            distributed,
            dynamic,
            stat_names=stat_names,
        )
        return updates, (state if stats is None else stats(**values))

    return optax.GradientTransformation(init_fn, update_fn)
