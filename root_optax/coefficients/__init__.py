r"""Newton–Schulz coefficients for every matrix shape: solver, safety, table.

**Why spectra are enough.** Newton–Schulz on :math:`X_0 = B / \|B\|_F` (wide
orientation, :math:`m \le n`) keeps the singular vectors and maps each
normalized singular value :math:`s \in [0, 1]` through
:math:`f(s) = a s + b s^3 + c s^5` once per step, so after :math:`K` steps
:math:`X_K = U\,F(\Sigma)\,V^\top` with :math:`F = f_K \circ \dots \circ f_1`.
The relative polar error is then exactly

.. math::
  \frac{\|X_K - UV^\top\|_F}{\|UV^\top\|_F}
  = \sqrt{\tfrac{1}{m} \textstyle\sum_i (F(s_i) - 1)^2},

a function of the spectrum only. We therefore fit on spectra (up to 128
weighted quantiles each), never on matrices, which makes a fit cost a fraction
of a second for any shape up to 16384 x 16384.

**The spectra** (:func:`family`) of an :math:`m \times n` matrix, all
deterministic: ``gaussian`` (i.i.d. entries: Marchenko–Pastur quantiles with
aspect :math:`m/n`; this is what makes coefficients shape-dependent, since the
normalized values sit in :math:`[(1-\sqrt{m/n}), (1+\sqrt{m/n})]/\sqrt{m}`),
``low_rank`` (rank :math:`m/32` signal with 80% of the energy plus noise),
``power_law`` (:math:`\sigma_i \propto i^{-1/2}`), ``spike`` (one direction
with 30% of the energy plus noise) and ``recorded`` (clipped Nesterov momenta
recorded while training a small transformer on text with ROOT, see
``root_optax.demo.record_spectra``; seed 0 is fitted, seed 1 held out for
the benchmark).

**The objective** of :func:`fit` for one shape and step count :math:`K`:

.. math::
  \min_{a,b,c}\; \frac{\sum_f w_f\, r_f^2}{\sum_f w_f}
    + 10^3 \sum_f \max(0,\, r_f - 1.05)^2
  \quad\text{s.t. the coefficients are safe,}

where :math:`r_f = e_f(a,b,c) / e_f(\mathrm{Muon})` is family :math:`f`'s
relative polar error over Muon's (3.4445, -4.7750, 2.0315) on the same spectra,
:math:`w_{\mathrm{gaussian}} = 2` and 1 otherwise. Normalizing by Muon makes
the families comparable (their errors differ by 10x) and the penalty keeps
every family within 5% of Muon. It is minimized by Nelder–Mead from a few
starts (Muon's triple among them, so the fit is never worse than Muon on the
objective); infeasible points score infinity. ``per_iteration=True`` then
refines one triple per step.

**Safety** (:func:`is_safe`, enforced on every fit and every table entry, and
exact: interval images through the critical points of :math:`f`, no
sampling): (1) no step ever maps a value it can receive from :math:`[0, 1]`
below 0 or above 1.25; for a single repeated triple this is an invariant
interval :math:`f([0, M]) \subseteq [0, M]` with :math:`M = \max f([0, 1])
\le 1.25`, so it holds at every step count; (2) after the :math:`K` steps every
:math:`s \in [\delta_K, 1]` lands in the band :data:`BAND` = [0.65, 1.25], with
:math:`\delta_K = 0.05 / 3^{K-3}` (:func:`safe_delta`). So a rank-1 input
(:math:`s = 1`) comes out between 0.65 and 1.25 (Muon: 0.70), and nothing can
blow up. A fit on Gaussian spectra alone could send :math:`F(1)` to ~18. The authors' square
entry (2048, 2048) -> (3.4916, -4.8224, 2.1095) fails (1): its one-step maximum
1.2246 lies above its repelling fixed point 1.2236, so values near 0.54-0.57
grow to 3.3 after 5 steps (values near 0.16-0.17 reach that band one step
later: a cascade) and to ~679 after 6.

**Relation to the paper.** ROOT (arXiv 2511.20626) tunes one :math:`(a, b, c)`
per matrix size ("fine-grained coefficients tailored to specific matrix
sizes") and ships four shapes of a 2048-wide model; how they were derived is
not stated in any source we could read. Their values behave like a fit of the
polar error on Gaussian matrices of each shape (on Marchenko–Pastur spectra
their (2048, 8192) entry has error 0.039 vs Muon's 0.184), with no safety
constraint (hence the square entry). We fit the same kind of single triple per
shape, on a wider set of spectra, with the safety constraint, for every shape.

**The table** (:func:`lookup`, used by ``ns_coeffs="root"``): every
``(min, max)`` pair of a ladder of dimensions 8..16384 about :math:`\sqrt2`
apart plus common transformer shapes, for 3..6 steps, in
``root_optax/coefficient_table.json`` (regenerate with ``python -m
root_optax.coefficients table``). Other shapes interpolate the four
surrounding entries in log scale (checked safe, else the nearest entry);
:func:`lookup` fits other step counts on demand, the ``"root"`` preset rejects
them (pass ``ns_coeffs=on_demand``). Nothing falls back to Muon's coefficients
silently.

**Layout.** This package is the fitter and sits above the core: the presets
(``root_optax._coefficients``), the shipped table and its interpolation
(``root_optax._coefficient_table``) and the exact safety check
(``root_optax._coefficient_safety``) import nothing from here, and this
package re-exports their public names. Here: the spectra (``_spectra``), the
fit (``_fit``), lookup with on-demand fits (``_lookup``), the table generator
(``_generate``) and the command line (``python -m root_optax.coefficients
fit|table``). The recorded spectra are re-recorded by training the demo,
above both: ``python -m root_optax.demo.record_spectra``.

Examples:
  >>> from root_optax import coefficients
  >>> coefficients.lookup((4096, 11008), ns_steps=5).shape
  (5, 3)
  >>> bool(coefficients.is_safe(coefficients.lookup((512, 512))))
  True
"""

from root_optax._coefficient_safety import (
    BAND,
    invariant_bound,
    is_safe,
    output_range,
    safe_delta,
)
from root_optax._coefficient_table import (
    EXTRA_SHAPES,
    LADDER,
    SUPPORTED_STEPS,
    grid_shapes,
)
from root_optax.coefficients._fit import FIT_FAMILIES, MUON, Fit, fit
from root_optax.coefficients._lookup import lookup, on_demand
from root_optax.coefficients._spectra import (
    FAMILIES,
    Spectrum,
    family,
    relative_polar_error,
)

__all__ = (
    "BAND",
    "EXTRA_SHAPES",
    "FAMILIES",
    "FIT_FAMILIES",
    "LADDER",
    "MUON",
    "SUPPORTED_STEPS",
    "Fit",
    "Spectrum",
    "family",
    "fit",
    "grid_shapes",
    "invariant_bound",
    "is_safe",
    "lookup",
    "on_demand",
    "output_range",
    "relative_polar_error",
    "safe_delta",
)
