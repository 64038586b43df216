"""Calibration of the sampled per-pixel frequencies against the references' frequencies.

Per pixel and evaluated class `c` (the foreground in the binary convention; each evaluated class
one-vs-rest otherwise, all pooled), the *predicted* frequency is the fraction of samples holding
`c` and the *observed* frequency is the weighted fraction of references holding `c`
(`sum_j w_j [y_j = c]`, uniform `w_j = 1/R` for graders, the mode probabilities for modes). Pixels
are binned by their predicted frequency into `bins` equal bins of [0, 1] (the last bin closed);
the reliability diagram plots each bin's mean observed against its mean predicted frequency, and
the expected calibration error is `ECE = sum_b (n_b / N) |mean predicted_b - mean observed_b|`.
Void pixels (any non-zero-weight reference equal to `ignore_index`) are left out. The counts are
sums over pixels, so batches of images combine by addition.
"""

import numpy as np

from tf_prob_unet.metrics.distance import _check_pair
from tf_prob_unet.metrics.distance import _check_weights
from tf_prob_unet.metrics.distance import _labels
from tf_prob_unet.metrics.distance import _resolve_classes
from tf_prob_unet.metrics.distance import _void_valid

__all__ = ["reliability_counts", "reliability_diagram", "expected_calibration_error"]


def reliability_counts(samples, references, reference_weights=None, *, num_classes=2,
                       class_ids=None, ignore_index=None, bins=10):
  """Per-bin pixel counts and frequency sums of a batch (see the module docstring).

  Args:
    samples: `[B, S, H, W]` label maps.
    references: `[B, R, H, W]` label maps.
    reference_weights: `[B, R]` (or `[R]`) weights with rows summing to 1; None: uniform.
    num_classes, class_ids, ignore_index: see `iou_distance_matrix`.
    bins: number of equal-width bins of the predicted frequency.

  Returns:
    `[bins, 3]` float64: per bin, the number of (pixel, class) entries, the sum of their
    predicted frequencies and the sum of their observed frequencies.

  Raises:
    ValueError: on malformed inputs.
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  samples, _ = _labels(samples, "samples", num_classes, ignore_index)
  references, _ = _labels(references, "references", num_classes, ignore_index)
  _check_pair(samples, "samples", references, "references")
  if not isinstance(bins, (int, np.integer)) or bins < 1:
    raise ValueError(f"`bins` must be an integer >= 1; got {bins!r}.")
  batch, s = samples.shape[:2]
  r = references.shape[1]
  w = _check_weights(reference_weights, batch, r, "reference_weights")
  valid_all = _void_valid(references, ignore_index, w)
  out = np.zeros((bins, 3))
  for b in range(batch):
    x = samples[b].reshape(s, -1)
    y = references[b].reshape(r, -1)
    if valid_all is not None:
      keep = valid_all[b].ravel()
      x, y = np.compress(keep, x, axis=1), np.compress(keep, y, axis=1)
    for c in classes:
      predicted = np.count_nonzero(x == c, axis=0) / s
      observed = w[b] @ (y == c)
      index = np.minimum((predicted * bins).astype(np.int64), bins - 1)
      out[:, 0] += np.bincount(index, minlength=bins)
      out[:, 1] += np.bincount(index, predicted, minlength=bins)
      out[:, 2] += np.bincount(index, observed, minlength=bins)
  return out


def expected_calibration_error(counts):
  """ECE from `[bins, 3]` reliability counts: `sum_b |sum predicted_b - sum observed_b| / N`
  (NaN when there is no entry)."""
  counts = np.asarray(counts, np.float64)
  total = counts[:, 0].sum()
  return float(np.abs(counts[:, 1] - counts[:, 2]).sum() / total) if total else float("nan")


def reliability_diagram(counts):
  """JSON-ready reliability diagram from `[bins, 3]` counts.

  Returns:
    `{"bin_edges": [bins + 1], "count": [bins], "predicted": [bins], "observed": [bins],
    "ece": float}`, with `predicted` / `observed` the bins' mean frequencies (None for an empty
    bin).
  """
  counts = np.asarray(counts, np.float64)
  bins = len(counts)

  def mean(k):
    return [float(v / n) if n else None for v, n in zip(counts[:, k], counts[:, 0])]

  return {"bin_edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
          "count": [int(n) for n in counts[:, 0]], "predicted": mean(1), "observed": mean(2),
          "ece": expected_calibration_error(counts)}
