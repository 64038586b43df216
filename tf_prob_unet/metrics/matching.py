"""Hungarian-matched IoU (HM-IoU); conventions in the package docstring."""

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from tf_prob_unet.metrics.distance import _checked_cross_distances

__all__ = ["hungarian_matched_iou"]


def hungarian_matched_iou(samples, references, *, num_classes=2, class_ids=None,
                          ignore_index=None):
  """Hungarian-matched IoU (HM-IoU) per image.

  Both sets are tiled to `L = lcm(S, R)` masks (sample `k` is `samples[k % S]`, reference `l`
  is `references[l % R]`); for `S = 16`, `R = 4` this repeats the references 4 times. The
  assignment minimises `sum d` with NaN distances counted as 1; the result is the mean IoU
  `1 - d` over the `L` matched pairs, NaN pairs excluded (NaN if all are NaN).

  Args:
    samples: `[B, S, H, W]` label maps.
    references: `[B, R, H, W]` label maps (define the void mask).
    num_classes, class_ids, ignore_index: see `iou_distance_matrix`.

  Returns:
    `[B]` float64 matched IoU.

  Raises:
    ValueError: on malformed inputs.
  """
  d, _ = _checked_cross_distances(samples, references, "references", num_classes, class_ids,
                                  ignore_index)
  s, r = d.shape[1:]
  size = s * r // math.gcd(s, r)
  rows = (np.arange(size) % s)[:, None]
  cols = (np.arange(size) % r)[None, :]
  out = np.empty(d.shape[0])
  for i in range(d.shape[0]):
    tiled = d[i][rows, cols]  # [L, L]
    ri, ci = linear_sum_assignment(np.where(np.isnan(tiled), 1.0, tiled))
    matched = tiled[ri, ci]
    ok = ~np.isnan(matched)
    out[i] = 1.0 - matched[ok].mean() if ok.any() else np.nan
  return out
