"""The QUBIQ score for binary multi-rater tasks (the measure the QUBIQ challenge ranks by).

QUBIQ (Quantification of Uncertainties in Biomedical Image Quantification, MICCAI 2020/2021)
compares two "soft" masks, the model's foreground probability per pixel and the fraction of
raters marking the pixel, by thresholding both at 0.1, 0.2, ..., 0.9 and averaging the Dice of
the nine pairs of binary masks.
"""

import numpy as np

__all__ = ["qubiq_dice", "QUBIQ_THRESHOLDS"]

QUBIQ_THRESHOLDS = tuple(k / 10 for k in range(1, 10))


def _soft_mask(x, name):
  """`[B, N, H, W]` binary labels or probabilities in [0, 1] -> their mean over N, `[B, H, W]`."""
  x = np.asarray(x)
  if x.ndim != 4 or x.shape[1] == 0:
    raise ValueError(f"`{name}` must have shape [B, N, H, W] with N >= 1; got {x.shape}.")
  if x.dtype.kind not in "biuf":
    raise ValueError(f"`{name}` must be numeric; got dtype {x.dtype}.")
  if x.size and (not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1):
    raise ValueError(f"`{name}` must hold binary labels or probabilities in [0, 1] (QUBIQ is "
                     f"for binary tasks); found values in [{x.min()}, {x.max()}].")
  return x.astype(np.float64).mean(axis=1)


def qubiq_dice(samples, references, *, thresholds=QUBIQ_THRESHOLDS):
  """The QUBIQ score per image: the mean Dice over thresholds of the two thresholded soft masks.

  `P = mean_s samples[s]` (the model's foreground probability: with binary sample masks, the
  fraction of samples marking the pixel) and `Q = mean_r references[r]` (the fraction of raters
  marking it). For each threshold `t`: `Dice(P > t, Q > t) = 2 |A & B| / (|A| + |B|)`, with
  `Dice = 1` when both masks are empty (the empty-empty case: nothing to find, nothing found)
  and `0` when exactly one is. The score is the mean over `thresholds`. Higher is better.

  Args:
    samples: `[B, S, H, W]` binary sample masks (0/1) or foreground probabilities in [0, 1].
    references: `[B, R, H, W]` binary rater masks (any R >= 1).
    thresholds: the thresholds (QUBIQ: 0.1, 0.2, ..., 0.9).

  Returns:
    `[B]` float64.

  Raises:
    ValueError: malformed shapes, or values outside [0, 1] (a multi-class task).
  """
  p = _soft_mask(samples, "samples")
  q = _soft_mask(references, "references")
  if p.shape[0] != q.shape[0] or p.shape[1:] != q.shape[1:]:
    raise ValueError(f"`samples` and `references` must share B, H, W; got "
                     f"{np.shape(samples)} and {np.shape(references)}.")
  t = np.asarray(thresholds, np.float64)[:, None, None, None]  # [T, 1, 1, 1]
  a, b = p[None] > t, q[None] > t  # [T, B, H, W]
  inter = np.sum(a & b, axis=(2, 3))
  total = np.sum(a, axis=(2, 3)) + np.sum(b, axis=(2, 3))
  dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
  return dice.mean(axis=0)
