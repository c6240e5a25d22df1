"""Quintic Newton–Schulz orthogonalization with shape-dependent coefficients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax import _coefficients, _dimension_numbers, _distributed, _validation

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)
DEFAULT_STEPS = 5


def _compute_dtype(x_dtype, ns_dtype) -> np.dtype:
    """Newton–Schulz runs in ``ns_dtype``, by default never below float32.

    Complex inputs stay complex: ``ns_dtype`` then sets the precision of the
    real and imaginary parts, at least float32 (there is no complex bfloat16).
    """
    if jnp.issubdtype(x_dtype, jnp.complexfloating):
        real = jnp.finfo(x_dtype).dtype if ns_dtype is None else ns_dtype
        return np.dtype(
            jnp.promote_types(jnp.promote_types(real, jnp.float32), x_dtype)
        )
    if ns_dtype is None:
        return np.dtype(jnp.promote_types(x_dtype, jnp.float32))
    return np.dtype(ns_dtype)


def check_args(fn: str, ns_coeffs, ns_steps, eps, ns_dtype, *, eps_name="eps"):
    """Validate the Newton–Schulz arguments for ``fn``; returns the canonical
    ``(ns_steps, ns_dtype)``."""
    ns_steps = _validation.check_positive_int(fn, "ns_steps", ns_steps, DEFAULT_STEPS)
    _coefficients.check_spec(fn, ns_coeffs, ns_steps)
    _validation.check_non_negative(fn, eps_name, eps)
    ns_dtype = _validation.check_float_dtype(fn, "ns_dtype", ns_dtype)
    return ns_steps, ns_dtype


def _matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    """Full-precision product; low-precision inputs accumulate in float32."""
    if x.dtype in _LOW_PRECISION:
        return jnp.matmul(x, y, preferred_element_type=jnp.float32).astype(x.dtype)
    return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def _normalize(x: jax.Array, eps, compute_dtype) -> jax.Array:
    r""":math:`X / (\|X\|_F + \epsilon)` in ``compute_dtype``, without overflow.

    The norm is taken of :math:`X / \max|X|` (entries in [0, 1]), so gradients
    whose squared entries would overflow float32 (about 1e19) keep their
    direction: :math:`X / (\|X\|_F + \epsilon) = Y / (\|Y\|_F + \epsilon / s)`
    with :math:`Y = X / s`, :math:`s = \max|X|`. A zero matrix stays zero,
    even with ``eps=0``.
    """
    wide = jnp.promote_types(compute_dtype, jnp.float32)
    x = x.astype(wide)
    scale = jnp.max(jnp.abs(x))
    safe_scale = jnp.where(scale > 0, scale, 1).astype(scale.dtype)
    y = x / safe_scale
    denom = jnp.sqrt(jnp.sum(jnp.abs(y) ** 2)) + eps / safe_scale
    return (y / jnp.where(denom > 0, denom, 1)).astype(compute_dtype)


def _newton_schulz_2d(
    x: jax.Array, coeffs: np.ndarray, eps: float, compute_dtype
) -> jax.Array:
    """Quintic Newton–Schulz on one matrix, in its wide orientation.

    For complex matrices the Gram matrix is :math:`X X^H` (conjugate
    transpose); the iteration then maps singular values exactly as for reals.
    """
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    if x.size == 0:
        return (x.T if transposed else x).astype(compute_dtype)
    x = _normalize(x, eps, compute_dtype)
    adjoint = (lambda m: m.conj().T) if jnp.iscomplexobj(x) else (lambda m: m.T)
    # A short static loop: each step has its own coefficients, baked in as
    # constants, and unrolling lets XLA schedule across steps (as Muon does).
    for a, b, c in coeffs.tolist():
        gram = _matmul(x, adjoint(x))
        poly = b * gram + c * _matmul(gram, gram)
        x = a * x + _matmul(poly, x)
    return x.T if transposed else x


def _orthogonalize_batch(
    batch: jax.Array, coeffs: np.ndarray, eps: float, compute_dtype
) -> jax.Array:
    """:func:`_newton_schulz_2d` over a ``(batch, m, n)`` stack."""
    return jax.vmap(lambda m: _newton_schulz_2d(m, coeffs, eps, compute_dtype))(batch)


def orthogonalize(
    x: jax.Array,
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    *,
    ns_dtype: jax.typing.DTypeLike | None = None,
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
    ns_steps, ns_dtype = check_args(fn, ns_coeffs, ns_steps, eps, ns_dtype)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{fn}(x=...) must have rank >= 2 (..., m, n), got shape {x.shape}."
        )
    compute_dtype = _compute_dtype(x.dtype, ns_dtype)
    coeffs = _coefficients.coefficients_for_shape(fn, ns_coeffs, x.shape[-2:], ns_steps)
    if x.size == 0:
        return x
    flat = x.reshape((-1,) + x.shape[-2:])
    out = _orthogonalize_batch(flat, coeffs, eps, compute_dtype)
    return out.reshape(x.shape).astype(x.dtype)


def adaptive_newton_schulz(
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    ns_steps: int | None = None,
    eps: float = 1e-7,
    *,
    ns_dtype: jax.typing.DTypeLike | None = None,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
    distributed: _distributed.Distributed = False,
) -> optax.GradientTransformation:
    r"""Orthogonalize every matrix with coefficients chosen for its shape (AdaNewton).

    Each matrix (each slice of a stacked or N-D leaf, as given by
    ``weight_dimension_numbers``) of shape :math:`m \times n` goes through
    :func:`orthogonalize` with the coefficients for
    :math:`(\min(m, n), \max(m, n))`; see there for the iteration. Coefficients
    are resolved once per shape at trace time and are compile-time constants.

    Sharded matrices (:class:`jax.sharding.NamedSharding`, Auto or Explicit mesh
    axes) work as they are and keep their shardings. By default each matrix is
    orthogonalized where it lies: the compiler partitions the products of a
    sharded matrix over the mesh and gathers its shards at every iteration.

    ``distributed`` gives every device whole matrices instead. The matrices
    (every slice of stacked leaves too) of one shape are stacked into a
    ``(batch, m, n)`` array, padded with zero matrices to a multiple of the
    device count, and resharded so that the batch is split over all mesh axes;
    each device then runs the iteration on its own matrices, locally, and the
    results go back to the params' layout. The result equals the default
    mode's (to float32 rounding); the Newton–Schulz FLOPs per device are
    ``1 / devices`` of orthogonalizing every matrix on every device, and the
    communication is one move of each matrix to its owner and back per step
    instead of gathers at every iteration. Under explicit axes the moves are
    all-to-alls over one mesh axis at a time (never a gather) and the updates
    come back in exactly the params' shardings; under Auto axes the compiler
    chooses both (it may gather a stack sharded over several axes, and it
    places the updates as its propagation decides).

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
      ValueError: bad ``ns_steps``/``ns_coeffs``; a rank < 2 leaf or dimension
        numbers that do not fit a leaf (raised at ``init``); ``distributed=True``
        with no mesh to find (raised at ``update``).
      TypeError: ``distributed`` is not a bool or a mesh.

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> tx = root_optax.adaptive_newton_schulz(ns_coeffs="muon")
      >>> u, _ = tx.update({"w": jnp.eye(3) * 2.0}, tx.init(None))
      >>> u["w"].shape
      (3, 3)
    """
    fn = "adaptive_newton_schulz"
    ns_steps, ns_dtype = check_args(fn, ns_coeffs, ns_steps, eps, ns_dtype)
    distributed = _distributed.check_distributed(fn, distributed)
    return newton_schulz_transform(
        fn,
        ns_coeffs,
        ns_steps,
        eps,
        ns_dtype,
        weight_dimension_numbers,
        distributed=distributed,
    )


def newton_schulz_transform(
    fn: str,
    ns_coeffs,
    ns_steps: int,
    eps,
    ns_dtype,
    weight_dimension_numbers,
    *,
    distributed: _distributed.Distributed = False,
    clip: tuple | None = None,
) -> optax.GradientTransformation:
    """:func:`adaptive_newton_schulz` without argument checks; errors name ``fn``.

    With ``distributed`` (checked), ``clip=(quantile, threshold, offset)`` clips
    each matrix first, on the device that owns it (see
    :func:`root_optax._distributed.clip_matrices`); it must be ``None`` otherwise.
    """
    if clip is not None and distributed is False:
        raise ValueError("clip is fused into the distributed mode only.")

    def coefficients(view):
        return _coefficients.coefficients_for_shape(
            fn, ns_coeffs, view.matrix_shape, ns_steps
        )

    # eps and the clip's quantile/threshold may be traced (inject_hyperparams):
    # the kernels take them as arguments (see _distributed.map_leaf).
    def orthogonalize_leaf(u, view):
        def kernel(x, eps):
            compute_dtype = _compute_dtype(x.dtype, ns_dtype)
            out = _orthogonalize_batch(
                view.to_batch(x), coefficients(view), eps, compute_dtype
            )
            return view.from_batch(out).astype(x.dtype)

        return _distributed.map_leaf(kernel, u, eps)

    def orthogonalize_owned(stack, shape, consts):
        eps, clip = consts
        if clip is not None:
            stack = _distributed.clip_matrices(stack, *clip)
        coeffs = _coefficients.coefficients_for_shape(fn, ns_coeffs, shape, ns_steps)
        compute_dtype = _compute_dtype(stack.dtype, ns_dtype)
        return _orthogonalize_batch(stack, coeffs, eps, compute_dtype).astype(
            stack.dtype
        )

    def init_fn(params):
        if params is not None and not isinstance(ns_coeffs, str):
            # One walk checks the dimension numbers and, for user tables and
            # callables, the coefficients of every shape.
            _dimension_numbers.map_matrices(
                lambda x, view: coefficients(view), params, weight_dimension_numbers, fn
            )
        else:
            _dimension_numbers.check_fits(params, weight_dimension_numbers, fn)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        if distributed is False:
            updates = _dimension_numbers.map_matrices(
                orthogonalize_leaf, updates, weight_dimension_numbers, fn
            )
        else:
            updates = _distributed.map_owned(
                fn,
                orthogonalize_owned,
                updates,
                weight_dimension_numbers,
                distributed,
                consts=(eps, clip),
            )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)
