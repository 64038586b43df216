"""Generalised energy distance (GED), sample diversity, ideal and resampled GED.

Conventions: see the package docstring (sections "GED", "NaN rules" and "Sample diversity").
"""

import numpy as np

from tf_prob_unet.metrics.distance import _check_pair
from tf_prob_unet.metrics.distance import _check_weights
from tf_prob_unet.metrics.distance import _labels
from tf_prob_unet.metrics.distance import _resolve_classes
from tf_prob_unet.metrics.distance import _self_distances
from tf_prob_unet.metrics.distance import _void_valid
from tf_prob_unet.metrics.distance import _weighted_nanmean
from tf_prob_unet.metrics.modes import _draw_modes
from tf_prob_unet.metrics.modes import _normalised_cdf

__all__ = ["ged", "sample_diversity", "ideal_geds", "resampled_ged"]


def ged(samples, references, reference_weights=None, *, num_classes=2, class_ids=None,
        ignore_index=None, unbiased=False, return_terms=False):
  """Squared generalised energy distance per image, with `d = 1 - IoU`.

  `D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`. By default the pair expectations include
  the diagonal pairs (the reference's V-statistic); see the module docstring for the
  `unbiased` variant, the weighting and the NaN rules (NaN pairs are dropped from their
  expectation with the weights renormalised; an image with an empty expectation is NaN).

  Args:
    samples: `[B, S, H, W]` sampled label maps (uniform weights `1/S`). For GED_n pass the
      first n samples.
    references: `[B, R, H, W]` ground-truth label maps (graders, or modes).
    reference_weights: `[B, R]` (or `[R]`) non-negative weights with rows summing to 1, e.g.
      the mode probabilities; None gives uniform `1/R` (the LIDC grader convention).
      Zero-weight references are padding: they affect neither the result nor the void mask.
    num_classes: number of labels.
    class_ids: evaluated classes (multi-class convention); see `iou_distance_matrix`.
    ignore_index: void label; the void mask is taken from the (non-zero-weight) references.
    unbiased: exclude the diagonal pairs `i = i'` and `j = j'` (needs `S >= 2`).
    return_terms: also return the three expectations.

  Returns:
    `[B]` float64 GED, or `(ged, d_sy, d_ss, d_yy)`, each `[B]`, if `return_terms`.

  Raises:
    ValueError: on malformed inputs.
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  samples, plain_s = _labels(samples, "samples", num_classes, ignore_index,
                             minimum=2 if unbiased else 1,
                             why=" with unbiased=True" if unbiased else "")
  references, plain_r = _labels(references, "references", num_classes, ignore_index)
  _check_pair(samples, "samples", references, "references")
  batch, s = samples.shape[:2]
  r = references.shape[1]
  w = _check_weights(reference_weights, batch, r, "reference_weights")
  valid = _void_valid(references, ignore_index, w)
  d = _self_distances([samples, references], [plain_s, plain_r], valid, binary, classes)
  d_sy, d_ss, d_yy = d[:, :s, s:], d[:, :s, :s], d[:, s:, s:]

  w_sy = w[:, None, :] / s
  w_ss = np.full((1, s, s), 1.0 / (s * s))
  w_yy = w[:, :, None] * w[:, None, :]
  if unbiased:
    off_s = ~np.eye(s, dtype=bool)[None]
    off_r = ~np.eye(r, dtype=bool)[None]
    w_ss = np.where(off_s, w_ss, 0.0)
    w_yy = np.where(off_r, w_yy, 0.0)
  e_sy = _weighted_nanmean(d_sy, w_sy)
  e_ss = _weighted_nanmean(d_ss, w_ss)
  # A point-mass reference distribution has no off-diagonal pair: E[d(Y, Y')] = 0.
  e_yy = _weighted_nanmean(d_yy, w_yy, empty_value=0.0)
  result = 2.0 * e_sy - e_ss - e_yy
  if return_terms:
    return result, e_sy, e_ss, e_yy
  return result


def sample_diversity(samples, *, num_classes=2, class_ids=None, ignore_index=None,
                     ignore_mask_from=None):
  """Sample diversity `E[d(S, S')]` over pairs `i != i'` (SSN's definition), per image.

  NaN pairs (multi-class) are dropped; an image with only NaN pairs is NaN.

  Args:
    samples: `[B, S, H, W]` label maps, `S >= 2`.
    num_classes, class_ids: see `iou_distance_matrix`.
    ignore_index: void label.
    ignore_mask_from: optional `[B, R, H, W]` references; pixels where any of them equals
      `ignore_index` are excluded. Without it no pixel is excluded (sample pixels equal to
      `ignore_index` belong to no class).

  Returns:
    `[B]` float64.

  Raises:
    ValueError: on malformed inputs.
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  samples, plain_s = _labels(samples, "samples", num_classes, ignore_index, minimum=2,
                             why=" for pairs i != i'")
  valid = None
  if ignore_mask_from is not None:
    refs, _ = _labels(ignore_mask_from, "ignore_mask_from", num_classes, ignore_index)
    _check_pair(samples, "samples", refs, "ignore_mask_from")
    valid = _void_valid(refs, ignore_index)
  d = _self_distances([samples], [plain_s], valid, binary, classes)
  s = d.shape[1]
  w = (~np.eye(s, dtype=bool))[None].astype(np.float64)
  return _weighted_nanmean(d, w)


def _stratified_counts(p, n):
  """Largest-remainder allocation of `n` draws to modes: `[B, M]` int counts summing to `n`."""
  quota = p * n
  counts = np.floor(quota).astype(np.int64)
  order = np.argsort(-(quota - counts), axis=1, kind="stable")
  short = n - counts.sum(axis=1)
  for b in range(len(p)):
    counts[b, order[b, :short[b]]] += 1
  return counts


def _mean_ged_of_picks(pool, picks, references, reference_weights, **ged_kwargs):
  """Mean GED over images of the masks `pool[b, picks[b]]` (`pool` `[B, K, H, W]`, `picks`
  `[B, n]` indices) as each image's samples."""
  chosen = np.take_along_axis(np.asarray(pool), picks[:, :, None, None], axis=1)
  return float(np.nanmean(ged(chosen, references, reference_weights, **ged_kwargs)))


def ideal_geds(modes, mode_probs, num_samples, *, draws=4, seed=0, **ged_kwargs):
  """GED_n of two ideal "models" that know the true modes: reference values for a dataset.

  * `iid`: n independent draws from the true mode distribution (a perfect sampler, like the
    Probabilistic U-Net at its best), averaged over `draws` seeded repetitions;
  * `set`: the modes repeated in proportion to their probabilities (largest remainder), a fixed
    set of n masks such as M-Heads or an ensemble at their best.

  With the V-statistic both tend to 0 as n grows, but at small n the fixed set scores lower:
  `E[d(S, S')]` over pairs including `i = i'` is larger for a set that covers the modes in exact
  proportions than for iid draws, which repeat modes by chance.

  Args:
    modes: `[B, M, H, W]` ground-truth modes.
    mode_probs: `[B, M]` (or `[M]`) probabilities, rows summing to 1.
    num_samples: sample counts n.
    draws: repetitions of the iid simulation.
    seed: seed of the `numpy.random.Generator` of the simulation.
    ged_kwargs: `ged` keyword arguments (`num_classes`, `class_ids`, `ignore_index`).

  Returns:
    `{"iid": {str(n): GED}, "set": {str(n): GED}}`, GED averaged over the images.
  """
  modes = np.asarray(modes)
  p = _check_weights(mode_probs, modes.shape[0], modes.shape[1], "mode_probs")
  cdf = _normalised_cdf(p)
  rng = np.random.default_rng(seed)

  def score(picks):  # [B, n] mode indices -> mean GED of those masks as the samples
    return _mean_ged_of_picks(modes, picks, modes, p, **ged_kwargs)

  out = {"iid": {}, "set": {}}
  for n in (int(n) for n in num_samples):
    out["iid"][str(n)] = float(np.mean([score(_draw_modes(cdf, n, rng)) for _ in range(draws)]))
    out["set"][str(n)] = score(np.stack(
        [np.repeat(np.arange(p.shape[1]), c) for c in _stratified_counts(p, n)]))
  return out


def resampled_ged(samples, references, reference_weights, num_samples, *, seed=0,
                  **ged_kwargs):
  """GED_n of n draws with replacement from each image's samples: `{str(n): mean GED}`.

  For a model whose samples are a fixed ordered set (M-Heads' heads, an ensemble's members) this
  scores it used as a sampler (uniform over its members), the way the Probabilistic U-Net's
  samples are drawn, instead of as a set. Arguments as in `ged`.
  """
  samples = np.asarray(samples)
  rng = np.random.default_rng(seed)
  out = {}
  for n in (int(n) for n in num_samples):
    picks = rng.integers(0, samples.shape[1], (samples.shape[0], n))
    out[str(n)] = _mean_ged_of_picks(samples, picks, references, reference_weights,
                                     **ged_kwargs)
  return out
