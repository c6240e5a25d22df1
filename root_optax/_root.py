"""ROOT as a chain of the building blocks, and the full optimizer with AdamW routing."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from optax.contrib import MuonDimensionNumbers

from root_optax import (
    _adamw,
    _clipping,
    _coefficients,
    _diagnostics,
    _dimension_numbers,
    _momentum,
    _named_chain,
    _newton_schulz,
    _nonfinite,
    _placement,
    _routing,
    _scaling,
    _validation,
)


class DirectionConfig(NamedTuple):
    """The checked arguments of ROOT's direction (:func:`scale_by_root`)."""

    momentum: _momentum.MomentumConfig
    clip: _clipping.ClipConfig | None
    newton_schulz: _newton_schulz.NewtonSchulzConfig
    distributed: _placement.Distributed


def direction_config(
    fn: str,
    *,
    beta,
    nesterov,
    mu_dtype,
    clip_quantile,
    clip_threshold,
    ns_coeffs,
    ns_steps,
    ns_eps,
    ns_dtype,
    ns_precision,
    ns_normalization,
    ns_gram,
    distributed,
) -> DirectionConfig:
    """Validate :func:`scale_by_root`'s arguments, reported as ``fn(name=...)``."""
    clip = None
    if clip_quantile is not None or clip_threshold is not None:
        clip = _clipping.clip_config(
            fn, clip_quantile, clip_threshold, names=("clip_quantile", "clip_threshold")
        )
    return DirectionConfig(
        momentum=_momentum.momentum_config(fn, beta, nesterov, mu_dtype),
        clip=clip,
        newton_schulz=_newton_schulz.ns_config(
            fn,
            ns_coeffs,
            ns_steps,
            ns_eps,
            ns_dtype,
            ns_precision,
            ns_normalization,
            ns_gram,
            eps_name="ns_eps",
        ),
        distributed=_placement.check_distributed(fn, distributed),
    )


CPU_CLIP_PER_MATRIX_ENTRIES = 2**18
"""Matrices of at least this many entries are clipped one at a time on CPU,
inside the Newton–Schulz loop (:func:`~root_optax._newton_schulz.one_at_a_time_on_cpu`):
the threshold's temporaries of one matrix stay in cache instead of
batch-sized arrays the OS hands out fresh every step (stacked 12 x d=512
tree: 400 -> 144 MiB of temporaries, as without the clip). Smaller matrices
are clipped as one batch, which is faster for them (96 x 128 x 128: the
per-matrix form measured 7% slower)."""


def _direction_kernel(fn: str, config: DirectionConfig, stats: bool):
    """Clip (if configured), then Newton–Schulz, on one batch of matrices; with
    ``stats``, also the :class:`~root_optax._diagnostics.MatrixStats` fields."""
    coefficients = config.newton_schulz.coefficients

    def kernel(batch, shape, dynamic):
        clip, newton_schulz = dynamic
        coeffs = coefficients(fn, shape)

        def clip_only(batch):
            eps = None if clip is None else _clipping.thresholds(batch, clip)
            values = _diagnostics.clip_stats(batch, eps) if stats else {}
            return batch if eps is None else _clipping.clip_to(batch, eps), values

        def orthogonalize(batch, values):
            out = _newton_schulz.newton_schulz_batch(batch, coeffs, newton_schulz)
            if stats:
                values = {**values, "ns_residual": _diagnostics.ns_residual(out)}
            return out, values

        if math.prod(shape) < CPU_CLIP_PER_MATRIX_ENTRIES:
            return orthogonalize(*clip_only(batch))
        return _newton_schulz.one_at_a_time_on_cpu(
            lambda b: orthogonalize(*clip_only(b)), batch
        )

    return kernel


def direction(
    fn: str, config: DirectionConfig, weight_dimension_numbers, *, stats=False
) -> optax.GradientTransformation:
    """Momentum, then clip and Newton–Schulz fused over batches of matrices.

    A named chain of ``"momentum"`` (:class:`MomentumState`) and
    ``"orthogonalize"`` (stateless, or :class:`MatrixStats` with ``stats``):
    the clip and the iteration share one pass of
    :func:`root_optax._placement.map_matrix_batches`, in both placements.
    """
    orthogonalize = _newton_schulz.matrix_transform(
        fn,
        _direction_kernel(fn, config, stats),
        (config.clip, config.newton_schulz),
        weight_dimension_numbers,
        config.distributed,
        coefficients=config.newton_schulz,
        stats=_diagnostics.MatrixStats if stats else None,
    )
    return _named_chain.named_chain(
        ("momentum", _momentum.momentum_transform(config.momentum)),
        ("orthogonalize", orthogonalize),
    )


def scale_by_root(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    nesterov: bool = True,
    mu_dtype: jax.typing.DTypeLike | None = None,
    clip_quantile: jax.typing.ArrayLike | None = 0.9,
    clip_threshold: jax.typing.ArrayLike | None = None,
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    ns_steps: int | None = None,
    ns_eps: float = 1e-7,
    ns_dtype: jax.typing.DTypeLike | None = None,
    ns_precision: _newton_schulz.PrecisionLike = None,
    ns_normalization: _newton_schulz.Normalization = "frobenius",
    ns_gram: bool = False,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
    distributed: _placement.Distributed = False,
) -> optax.GradientTransformation:
    r"""ROOT's direction: momentum, then robust clipping, then AdaNewton.

    .. math::
      U_t = \mathrm{momentum}_\beta(G_t), \quad
      B_t = \mathrm{clip}(U_t, \pm\epsilon_t), \quad
      \Delta_t = \mathrm{NS}^{(m, n)}_K(B_t),

    the same as ``optax.chain(momentum(beta, ...), robust_clip(clip_quantile,
    clip_threshold), adaptive_newton_schulz(ns_coeffs, ns_steps))``, with the
    clip and the iteration fused: the matrices of one shape are clipped and
    orthogonalized as one batch in one pass. With ``clip_quantile=None`` and no
    ``clip_threshold`` the clip is left out (the paper's plain AdaNewton form);
    with ``ns_coeffs="muon"`` and no clip this is Muon's direction with the
    reference's undampened momentum.

    Args:
      beta: momentum coefficient, see :func:`momentum`.
      nesterov: see :func:`momentum`.
      mu_dtype: momentum buffer dtype, see :func:`momentum`.
      clip_quantile: see :func:`robust_clip` (``quantile``); ``None`` disables
        clipping unless ``clip_threshold`` is set.
      clip_threshold: see :func:`robust_clip` (``threshold``).
      ns_coeffs: see :func:`adaptive_newton_schulz`.
      ns_steps: see :func:`adaptive_newton_schulz`.
      ns_eps: Frobenius-norm epsilon of :func:`adaptive_newton_schulz`.
      ns_dtype: Newton–Schulz compute dtype, see :func:`orthogonalize`.
      ns_precision: precision of the Newton–Schulz products, see
        :func:`orthogonalize`.
      ns_normalization: ``"frobenius"`` or ``"schatten4"``, see
        :func:`orthogonalize`.
      ns_gram: the Gram form for rectangular matrices, see :func:`orthogonalize`.
      weight_dimension_numbers: see :func:`adaptive_newton_schulz`.
      distributed: ``False``, ``True`` or a :class:`jax.sharding.Mesh`: give
        every device whole matrices to clip and orthogonalize, see
        :func:`adaptive_newton_schulz` (the clip runs on the device that owns
        the matrix); results and state structure equal the default mode's.

    Returns:
      An :class:`optax.GradientTransformation`: an :func:`optax.named_chain` of
      ``"momentum"`` (state :class:`MomentumState`) and ``"orthogonalize"``.

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> tx = root_optax.scale_by_root()
      >>> u, _ = tx.update({"w": jnp.ones((4, 8))}, tx.init({"w": jnp.ones((4, 8))}))
      >>> u["w"].shape
      (4, 8)
    """
    fn = "scale_by_root"
    config = direction_config(
        fn,
        beta=beta,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        clip_quantile=clip_quantile,
        clip_threshold=clip_threshold,
        ns_coeffs=ns_coeffs,
        ns_steps=ns_steps,
        ns_eps=ns_eps,
        ns_dtype=ns_dtype,
        ns_precision=ns_precision,
        ns_normalization=ns_normalization,
        ns_gram=ns_gram,
        distributed=distributed,
    )
    return direction(fn, config, weight_dimension_numbers)


def root(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: jax.typing.ArrayLike = 0.95,
    nesterov: bool = True,
    ns_steps: int | None = None,
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    clip_quantile: jax.typing.ArrayLike | None = 0.9,
    clip_threshold: jax.typing.ArrayLike | None = None,
    weight_decay: jax.typing.ArrayLike = 0.1,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_weight_decay: jax.typing.ArrayLike | None = None,
    adam_nesterov: bool = False,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
    shape_scale: _scaling.ShapeScale = "rms",
    rms: jax.typing.ArrayLike = 0.2,
    ns_eps: float = 1e-7,
    ns_dtype: jax.typing.DTypeLike | None = None,
    ns_precision: _newton_schulz.PrecisionLike = None,
    ns_normalization: _newton_schulz.Normalization = "frobenius",
    ns_gram: bool = False,
    skip_nonfinite: bool = True,
    distributed: _placement.Distributed = False,
    diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""ROOT, the Robust Orthogonalized Optimizer, with AdamW for non-matrices.

  Every matrix parameter :math:`W` (shape :math:`m \times n`) takes the step

  .. math::
    M_t &= \beta M_{t-1} + G_t, \qquad U_t = G_t + \beta M_t, \\
    \epsilon_t &= \mathrm{quantile}(|U_t|, q) + 10^{-9}, \qquad
    B_t = \mathrm{clip}(U_t, -\epsilon_t, \epsilon_t), \\
    W &\leftarrow W (1 - \eta\lambda)
      - \eta \cdot 0.2\sqrt{\max(m, n)} \cdot \mathrm{NS}^{(m, n)}_K(B_t),

  with :math:`\beta` = ``beta``, :math:`q` = ``clip_quantile``,
  :math:`\eta` = ``learning_rate``, :math:`\lambda` = ``weight_decay``,
  :math:`K` = ``ns_steps`` and shape-dependent quintic Newton–Schulz
  coefficients ``ns_coeffs``. Everything else (biases, norms, and any leaf
  whose dimension numbers are ``None``) is trained by AdamW with its own
  ``adam_*`` hyperparameters, in the reference's form (epsilon added before
  the bias correction; :func:`optax.adamw` differs only when gradients are
  as small as ``adam_eps``). It is
  ``optax.partition`` of ``chain(scale_by_root, scale_by_lr)`` and AdamW,
  wrapped in :func:`skip_nonfinite` by default.

  The defaults reproduce the authors' public code except ``ns_coeffs="root"``,
  which avoids the reference's unstable square-shape entry; pass
  ``ns_coeffs="reference"`` for exact reproduction, ``clip_quantile=None,
  nesterov=False, shape_scale=None`` for the paper's plain form, and
  ``clip_quantile=None, ns_coeffs="muon"`` for Muon.

  Args:
    learning_rate: :math:`\eta`, a float or an :class:`optax.Schedule`.
    beta: momentum :math:`\beta`.
    nesterov: Nesterov momentum for the matrix branch.
    ns_steps: Newton–Schulz iterations :math:`K`; ``None`` means 5 (``None``
      so that :func:`optax.inject_hyperparams` leaves it static).
    ns_coeffs: ``"root"``, ``"reference"``, ``"muon"`` or a table, see
      :func:`adaptive_newton_schulz`.
    clip_quantile: :math:`q` in ``(0, 1]``, or ``None`` for no clipping.
    clip_threshold: a fixed clip threshold instead of the quantile.
    weight_decay: decoupled weight decay :math:`\lambda` (both branches unless
      ``adam_weight_decay`` is given).
    weight_decay_mask: as in :func:`optax.adamw`, for both branches.
    mu_dtype: dtype of momentum buffers (both branches).
    adam_b1: AdamW :math:`\beta_1`.
    adam_b2: AdamW :math:`\beta_2`.
    adam_eps: AdamW epsilon (not shared with Newton–Schulz).
    adam_learning_rate: AdamW learning rate; ``None`` uses ``learning_rate``.
    adam_weight_decay: AdamW weight decay; ``None`` uses ``weight_decay``.
    adam_nesterov: Nesterov for AdamW (off, as in the reference).
    weight_dimension_numbers: ``None`` (2-D leaves are matrices, everything
      else AdamW), or a tree prefix / callable of
      :class:`optax.contrib.MuonDimensionNumbers` with ``None`` for AdamW
      leaves; see :func:`matrix_dimension_numbers` for routing by name.
    shape_scale: ``"rms"``, ``"muon"`` or ``None``, see :func:`scale_by_lr`.
    rms: the RMS factor of ``shape_scale="rms"``.
    ns_eps: Frobenius-norm epsilon of Newton–Schulz.
    ns_dtype: Newton–Schulz compute dtype, see :func:`orthogonalize`.
    ns_precision: precision of the Newton–Schulz products: ``None`` (the
      backend's default, as in :func:`optax.contrib.muon`) or ``"highest"``
      for full float32 products on TPU/GPU, see :func:`orthogonalize`.
    ns_normalization: ``"frobenius"`` (the reference) or ``"schatten4"``, see
      :func:`orthogonalize`. With ``ns_steps=4`` and ``ns_gram=True`` this is
      the fast configuration (README, "Speed").
    ns_gram: the Gram form of Newton–Schulz for rectangular matrices, see
      :func:`orthogonalize`.
    skip_nonfinite: skip steps with NaN/Inf gradients, see
      :func:`skip_nonfinite`.
    distributed: ``False`` (default), ``True`` (the mesh set with
      :func:`jax.set_mesh`) or a :class:`jax.sharding.Mesh`: clip and
      orthogonalize every matrix on one device that owns it, each device its
      share, instead of every matrix where it lies; same results, about
      ``1 / devices`` of the Newton–Schulz FLOPs per device. For FSDP /
      tensor-parallel meshes with many matrices; see
      :func:`adaptive_newton_schulz`.
    diagnostics: record per-matrix clip thresholds, clipped fractions,
      Newton–Schulz residual estimates and update RMS in the state (read them
      with :func:`diagnostics`); off by default (it costs a few reductions
      and two matrix-vector products per matrix).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is
    :class:`SkipNonfiniteState` (unless ``skip_nonfinite=False``) around an
    :class:`optax.PartitionState` with branches ``"root"`` (a dict
    ``{"direction": {"momentum": MomentumState, "orthogonalize": ...},
    "scale": ..., "stats": ...}``) and ``"adamw"`` (``{"adam":
    ScaleByAdamState, "decay": ..., "lr": ...}``); ``optax.tree.get(state,
    "momentum")`` finds the ROOT momentum.

  Raises:
    ValueError: an argument outside its domain (each message names it).
    TypeError: an argument of the wrong type.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, root_optax
    >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
    >>> opt = root_optax.root(1e-2)
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025
  """
    fn = "root"
    _validation.check_bool(fn, "skip_nonfinite", skip_nonfinite)
    _validation.check_bool(fn, "diagnostics", diagnostics)
    config = direction_config(
        fn,
        beta=beta,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        clip_quantile=clip_quantile,
        clip_threshold=clip_threshold,
        ns_coeffs=ns_coeffs,
        ns_steps=ns_steps,
        ns_eps=ns_eps,
        ns_dtype=ns_dtype,
        ns_precision=ns_precision,
        ns_normalization=ns_normalization,
        ns_gram=ns_gram,
        distributed=distributed,
    )
    scale = _scaling.scale_config(
        fn, learning_rate, shape_scale, rms, weight_decay, weight_decay_mask
    )
    adamw = _adamw.adamw_config(
        fn,
        b1=adam_b1,
        b2=adam_b2,
        eps=adam_eps,
        nesterov=adam_nesterov,
        mu_dtype=config.momentum.mu_dtype,
        learning_rate=learning_rate
        if adam_learning_rate is None
        else adam_learning_rate,
        weight_decay=weight_decay if adam_weight_decay is None else adam_weight_decay,
        weight_decay_mask=weight_decay_mask,
    )
    _check_not_empty(fn, weight_dimension_numbers)
    # Default routing sends exactly the 2-D leaves to the matrix branch.
    matrix_dims = weight_dimension_numbers
    if matrix_dims is None:
        matrix_dims = MuonDimensionNumbers()
    parts = [
        ("direction", direction(fn, config, matrix_dims, stats=diagnostics)),
        ("scale", _scaling.lr_transform(fn, scale, matrix_dims)),
    ]
    if diagnostics:
        parts.append(("stats", _diagnostics.record_update_rms(fn, matrix_dims)))
    matrix_branch = _named_chain.named_chain(*parts)
    tx = optax.partition(
        {"root": matrix_branch, "adamw": _adamw.adamw_branch(fn, adamw)},
        lambda params: _routing.labels(weight_dimension_numbers, params),
    )
    if skip_nonfinite:
        tx = _nonfinite.skip_nonfinite(tx)
    else:
        tx = optax.with_extra_args_support(tx)
    if weight_dimension_numbers is None:
        tx = _warning_at_init(tx, fn)
    return tx


def _check_not_empty(fn: str, weight_dimension_numbers) -> None:
    """An empty dimension-numbers tree would silently route nothing to ROOT."""
    if (
        weight_dimension_numbers is not None
        and not callable(weight_dimension_numbers)
        and not isinstance(weight_dimension_numbers, MuonDimensionNumbers)
        and not jax.tree.leaves(
            weight_dimension_numbers, is_leaf=_dimension_numbers.is_spec_leaf
        )
    ):
        raise ValueError(
            f"{fn}(weight_dimension_numbers=...) is an empty tree, got "
            f"weight_dimension_numbers={weight_dimension_numbers!r}; pass None for "
            "the default routing."
        )


def _warning_at_init(
    tx: optax.GradientTransformationExtraArgs, fn: str
) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose ``init`` warns when the default routing meets rank 3+ leaves."""

    def init_fn(params):
        _routing.warn_if_default_routing_looks_stacked(fn, params)
        return tx.init(params)

    return tx._replace(init=init_fn)
