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
from tf_prob_unet.metrics.distance import pairwise_distances
from tf_prob_unet.metrics.modes import _draw_modes
from tf_prob_unet.metrics.modes import _normalised_cdf

__all__ = [
    "ged", "ged_from_distances", "sample_diversity", "diversity_from_distances", "ideal_geds",
    "ideal_geds_from_distances", "resampled_ged", "resampled_ged_from_distances",
]


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
  terms = ged_from_distances(d[:, :s, s:], d[:, :s, :s], d[:, s:, s:], w, unbiased=unbiased)
  return terms if return_terms else terms[0]


def ged_from_distances(d_sy, d_ss, d_yy, reference_weights, *, unbiased=False):
  """GED per image from its distance matrices (the weighting and NaN rules of `ged`).

  Args:
    d_sy: `[B, S, R]` sample-reference distances.
    d_ss: `[B, S, S]` sample-sample distances (diagonal: `d(S_i, S_i)`, 0 or NaN).
    d_yy: `[B, R, R]` reference-reference distances.
    reference_weights: `[B, R]` validated weights, rows summing to 1.
    unbiased: exclude the diagonal pairs.

  Returns:
    `(ged, e_sy, e_ss, e_yy)`, each `[B]` float64.
  """
  s, r = d_sy.shape[1:]
  w = reference_weights
  w_sy = w[:, None, :] / s
  w_ss = np.full((1, s, s), 1.0 / (s * s))
  w_yy = w[:, :, None] * w[:, None, :]
  if unbiased:
    w_ss = np.where(~np.eye(s, dtype=bool)[None], w_ss, 0.0)
    w_yy = np.where(~np.eye(r, dtype=bool)[None], w_yy, 0.0)
  e_sy = _weighted_nanmean(d_sy, w_sy)
  e_ss = _weighted_nanmean(d_ss, w_ss)
  # A point-mass reference distribution has no off-diagonal pair: E[d(Y, Y')] = 0.
  e_yy = _weighted_nanmean(d_yy, w_yy, empty_value=0.0)
  return 2.0 * e_sy - e_ss - e_yy, e_sy, e_ss, e_yy


def diversity_from_distances(d_ss):
  """`E[d(S, S')]` over pairs `i != i'` per image from `[B, S, S]` distances (NaN dropped)."""
  s = d_ss.shape[1]
  return _weighted_nanmean(d_ss, (~np.eye(s, dtype=bool))[None].astype(np.float64))


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
  return diversity_from_distances(_self_distances([samples], [plain_s], valid, binary, classes))


def _stratified_counts(p, n):
  """Largest-remainder allocation of `n` draws to modes: `[B, M]` int counts summing to `n`."""
  quota = p * n
  counts = np.floor(quota).astype(np.int64)
  order = np.argsort(-(quota - counts), axis=1, kind="stable")
  short = n - counts.sum(axis=1)
  for b in range(len(p)):
    counts[b, order[b, :short[b]]] += 1
  return counts


def _image_rng(seed, n, image):
  """The generator of image `image` (its index in the split) for sample count `n`."""
  return np.random.default_rng([int(seed), int(n), int(image)])


def _picked_ged(d, picks, refs, weights):
  """Per-image GED with the masks `picks` `[B, n]` (indices into `d` `[B, T, T]`) as the
  samples and the masks `refs` `[R]` (weights `[B, R]`) as the references."""
  b = np.arange(d.shape[0])[:, None, None]
  d_ss = d[b, picks[:, :, None], picks[:, None, :]]
  d_sy = d[b, picks[:, :, None], refs[None, None, :]]
  d_yy = d[:, refs][:, :, refs]
  return ged_from_distances(d_sy, d_ss, d_yy, weights)[0]


def ideal_geds_from_distances(d_yy, mode_probs, num_samples, *, draws=4, seed=0, first_image=0):
  """Per-image values of `ideal_geds` from the `[B, M, M]` distances among the modes.

  The iid draws of image `b` come from a generator seeded with `[seed, n, first_image + b]`,
  so the values do not depend on how a split is cut into batches.

  Returns:
    `{"iid": {str(n): [B]}, "set": {str(n): [B]}}` float64 arrays.
  """
  p = mode_probs
  batch, m = p.shape
  cdf = _normalised_cdf(p)
  refs = np.arange(m)
  out = {"iid": {}, "set": {}}
  for n in (int(n) for n in num_samples):
    runs = np.empty((draws, batch))
    for b in range(batch):
      rng = _image_rng(seed, n, first_image + b)
      runs[:, b] = [_picked_ged(d_yy[b:b + 1], _draw_modes(cdf[b:b + 1], n, rng), refs,
                                p[b:b + 1])[0] for _ in range(draws)]
    out["iid"][str(n)] = runs.mean(axis=0)
    out["set"][str(n)] = _picked_ged(d_yy, np.stack(
        [np.repeat(refs, c) for c in _stratified_counts(p, n)]), refs, p)
  return out


def ideal_geds(modes, mode_probs, num_samples, *, draws=4, seed=0, **ged_kwargs):
  """GED_n of two ideal "models" that know the true modes: reference values for a dataset.

  * `iid`: n independent draws from the true mode distribution (a perfect sampler, like the
    Probabilistic U-Net at its best), averaged per image over `draws` seeded repetitions;
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
    seed: seed of the simulation (image `b` uses `[seed, n, b]`).
    ged_kwargs: `ged` keyword arguments (`num_classes`, `class_ids`, `ignore_index`).

  Returns:
    `{"iid": {str(n): GED}, "set": {str(n): GED}}`, GED averaged over the images (NaN images
    dropped).
  """
  modes = np.asarray(modes)
  p = _check_weights(mode_probs, modes.shape[0], modes.shape[1], "mode_probs")
  d = pairwise_distances([modes], void_from=modes, void_weights=p, **ged_kwargs)
  per_image = ideal_geds_from_distances(d, p, num_samples, draws=draws, seed=seed)
  return {kind: {n: _nanmean(v) for n, v in values.items()}
          for kind, values in per_image.items()}


def resampled_ged_from_distances(d, num_pool, reference_weights, num_samples, *, seed=0,
                                 first_image=0):
  """Per-image values of `resampled_ged` from the `[B, K + R, K + R]` distances among the `K`
  pooled samples followed by the `R` references: `{str(n): [B]}`.

  The draws of image `b` come from a generator seeded with `[seed, n, first_image + b]`.
  """
  batch = d.shape[0]
  refs = num_pool + np.arange(d.shape[1] - num_pool)
  out = {}
  for n in (int(n) for n in num_samples):
    picks = np.stack([_image_rng(seed, n, first_image + b).integers(0, num_pool, n)
                      for b in range(batch)])
    out[str(n)] = _picked_ged(d, picks, refs, reference_weights)
  return out


def resampled_ged(samples, references, reference_weights, num_samples, *, seed=0,
                  **ged_kwargs):
  """GED_n of n draws with replacement from each image's samples: `{str(n): mean GED}`.

  For a model whose samples are a fixed ordered set (M-Heads' heads, an ensemble's members) this
  scores it used as a sampler (uniform over its members), the way the Probabilistic U-Net's
  samples are drawn, instead of as a set. Image `b` draws with a generator seeded with
  `[seed, n, b]`; NaN images are dropped from the mean. Arguments as in `ged`.
  """
  samples = np.asarray(samples)
  references = np.asarray(references)
  w = _check_weights(reference_weights, references.shape[0], references.shape[1],
                     "reference_weights")
  d = pairwise_distances([samples, references], void_from=references, void_weights=w,
                         **ged_kwargs)
  per_image = resampled_ged_from_distances(d, samples.shape[1], w, num_samples, seed=seed)
  return {n: _nanmean(v) for n, v in per_image.items()}


def _nanmean(x):
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")
