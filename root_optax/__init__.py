"""ROOT, the Robust Orthogonalized Optimizer, as composable Optax transformations."""

from optax.contrib import MuonDimensionNumbers

from root_optax._clipping import robust_clip
from root_optax._coefficients import MUON_COEFFICIENTS, REFERENCE_TABLE
from root_optax._diagnostics import MatrixStats, UpdateStats, diagnostics
from root_optax._momentum import MomentumState, momentum
from root_optax._newton_schulz import adaptive_newton_schulz, orthogonalize
from root_optax._nonfinite import SkipNonfiniteState, skip_nonfinite
from root_optax._quantile import abs_quantile
from root_optax._root import root, scale_by_root
from root_optax._routing import (
    LeafRoute,
    RoutingTable,
    matrix_dimension_numbers,
    routing_table,
)
from root_optax._scaling import scale_by_lr

__version__ = "0.1.0"

__all__ = (
    "MUON_COEFFICIENTS",
    "REFERENCE_TABLE",
    "LeafRoute",
    "MatrixStats",
    "MomentumState",
    "MuonDimensionNumbers",
    "RoutingTable",
    "SkipNonfiniteState",
    "UpdateStats",
    "abs_quantile",
    "adaptive_newton_schulz",
    "diagnostics",
    "matrix_dimension_numbers",
    "momentum",
    "orthogonalize",
    "robust_clip",
    "root",
    "routing_table",
    "scale_by_lr",
    "scale_by_root",
    "skip_nonfinite",
)
