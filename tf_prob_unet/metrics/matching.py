"""Hungarian-matched IoU (HM-IoU) as an optimal transport; conventions in the package docstring."""

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from tf_prob_unet.metrics.distance import _check_weights
from tf_prob_unet.metrics.distance import _checked_cross_distances

__all__ = ["hungarian_matched_iou", "matched_iou_from_distances", "transport_plan"]


def transport_plan(cost, source, target):
  """Optimal transport plan between two discrete distributions (exact, by linear programming).

  Minimises `sum_ij T_ij cost_ij` subject to `sum_j T_ij = source_i`, `sum_i T_ij = target_j`,
  `T >= 0`, with SciPy's HiGHS solver (`scipy.optimize.linprog`).

  Args:
    cost: `[S, R]` finite costs.
    source: `[S]` non-negative masses.
    target: `[R]` non-negative masses with the same total as `source`.

  Returns:
    `[S, R]` float64 plan `T`.

  Raises:
    RuntimeError: if the solver fails.
  """
  s, r = cost.shape
  rows = sparse.kron(sparse.eye(s), np.ones((1, r)), format="csr")  # sum_j T_ij
  cols = sparse.kron(np.ones((1, s)), sparse.eye(r), format="csr")[:-1]  # sum_i T_ij, one redundant
  target = np.asarray(target, np.float64) * (np.sum(source) / np.sum(target))
  result = linprog(np.ravel(cost), A_eq=sparse.vstack([rows, cols]).tocsr(),
                   b_eq=np.concatenate([source, target[:-1]]), bounds=(0, None), method="highs")
  if result.status != 0:
    raise RuntimeError(f"optimal transport failed: {result.message}")
  return np.maximum(result.x.reshape(s, r), 0.0)


def hungarian_matched_iou(samples, references, reference_weights=None, *, num_classes=2,
                          class_ids=None, ignore_index=None):
  """Hungarian-matched IoU (HM-IoU) per image, as an optimal transport.

  The samples (mass `1/S` each) are transported onto the references (mass `w_j`, their
  weights) at cost `d = 1 - IoU` (NaN distances counted as 1); the result is the mean IoU
  `1 - d` under the optimal plan `T`, NaN pairs excluded: `sum T_ij (1 - d_ij) / sum T_ij`
  over the non-NaN pairs (NaN if there is none). With uniform weights this is the Hungarian
  matching after tiling both sets to `L = lcm(S, R)` masks (CCDM; for `S = 16`, `R = 4`, the
  references repeated 4 times, as in CAR / PixelSeg): the transport polytope has integral
  vertices, so an optimal plan is an assignment of the tiled masks with the same cost. (When
  several optimal plans exist and some pairs are NaN, the NaN-excluded mean may differ between
  them.) With weights, a reference of probability 0.005 takes a matching share of 0.005.

  Args:
    samples: `[B, S, H, W]` label maps.
    references: `[B, R, H, W]` label maps (define the void mask).
    reference_weights: `[B, R]` (or `[R]`) non-negative weights with rows summing to 1; None
      gives uniform `1/R`. Zero-weight references are padding.
    num_classes, class_ids, ignore_index: see `iou_distance_matrix`.

  Returns:
    `[B]` float64 matched IoU.

  Raises:
    ValueError: on malformed inputs.
  """
  d, w = _checked_cross_distances(samples, references, "references", num_classes, class_ids,
                                  ignore_index, reference_weights, "reference_weights")
  return matched_iou_from_distances(d, w)


def matched_iou_from_distances(d, reference_weights=None):
  """`hungarian_matched_iou` from `[B, S, R]` sample-reference distances and `[B, R]`
  validated weights (None: uniform)."""
  batch, s, r = d.shape
  w = _check_weights(reference_weights, batch, r, "reference_weights")
  out = np.empty(batch)
  source = np.full(s, 1.0 / s)
  for i in range(batch):
    plan = transport_plan(np.where(np.isnan(d[i]), 1.0, d[i]), source, w[i])
    ok = ~np.isnan(d[i])
    mass = plan[ok].sum()
    out[i] = 1.0 - (plan[ok] * d[i][ok]).sum() / mass if mass > 0 else np.nan
  return out
