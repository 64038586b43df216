"""Mode statistics: mode assignment, sampled mode frequencies, pixel flip rates.

Conventions: see the package docstring (section "Mode statistics").
"""

import numpy as np

from tf_prob_unet.metrics.distance import _as_labels
from tf_prob_unet.metrics.distance import _check_nonempty
from tf_prob_unet.metrics.distance import _check_pair
from tf_prob_unet.metrics.distance import _check_weights
from tf_prob_unet.metrics.distance import _checked_cross_distances
from tf_prob_unet.metrics.distance import _chunk_images
from tf_prob_unet.metrics.distance import _labels

__all__ = [
    "assign_modes", "assign_modes_from_distances", "mode_statistics", "mode_statistics_partial",
    "reduce_mode_statistics", "pixel_flip_rates", "pixel_flip_counts", "flip_rates_from_counts",
]


def assign_modes(samples, modes, mode_probs, *, num_classes=2, class_ids=None, ignore_index=None):
  """Index of the nearest mode for every sample: `argmin_m d(Y_m, S)`.

  Modes with probability 0 (padding) are never chosen; ties go to the lowest index; NaN
  distances count as `+inf` (a sample at NaN distance from every mode goes to the lowest
  non-zero-probability mode).

  Args:
    samples: `[B, S, H, W]` label maps.
    modes: `[B, M, H, W]` ground-truth modes (define the void mask).
    mode_probs: `[B, M]` (or `[M]`) mode probabilities, rows summing to 1.
    num_classes, class_ids, ignore_index: see `iou_distance_matrix`.

  Returns:
    `[B, S]` int64 mode indices.

  Raises:
    ValueError: on malformed inputs.
  """
  d, p = _checked_cross_distances(samples, modes, "modes", num_classes, class_ids, ignore_index,
                                  mode_probs)  # [B, S, M]
  return assign_modes_from_distances(d, p)


def assign_modes_from_distances(d, mode_probs):
  """`assign_modes` from the `[B, S, M]` sample-mode distances and `[B, M]` probabilities."""
  # d lies in [0, 1]: 2 stands for NaN (+inf), 3 for excluded modes.
  key = np.where(np.isnan(d), 2.0, d)
  key = np.where((mode_probs > 0)[:, None, :], key, 3.0)
  return np.argmin(key, axis=-1).astype(np.int64)


def _draw_modes(cdf, n, rng):
  """`[B, n]` mode indices drawn per image by inverse CDF from `cdf` `[B, M]` (ending at 1)."""
  u = rng.random((cdf.shape[0], n))
  return np.minimum((u[..., None] >= cdf[:, None, :]).sum(axis=-1), cdf.shape[1] - 1)


def _normalised_cdf(p):
  cdf = np.cumsum(p, axis=1)
  return cdf / cdf[:, -1:]  # exactly 1 at the end, so u in [0, 1) never selects trailing padding


def _per_image_tv(counts, n, p):
  """`[..., B]` total variation between per-image frequencies `counts / n` and `p` `[B, M]`."""
  return 0.5 * np.abs(counts / n - p).sum(axis=-1)


def mode_statistics(samples, modes, mode_probs, *, num_samples=(1, 4, 8, 16), num_classes=2,
                    class_ids=None, ignore_index=None, floor_repeats=20, seed=0):
  """Sampled mode frequencies and total-variation distances to the true mode distribution.

  Mode index `m` must denote the same kind of variant in every image (true for the synthetic
  and Cityscapes flip datasets). Each sample is assigned with `assign_modes`.

  Args:
    samples: `[B, S, H, W]` label maps; the first `n` samples are used for each `n`.
    modes: `[B, M, H, W]` ground-truth modes.
    mode_probs: `[B, M]` (or `[M]`) probabilities, rows summing to 1 (0 = padding).
    num_samples: sample counts `n` to evaluate, each in `[1, S]`.
    num_classes, class_ids, ignore_index: see `iou_distance_matrix`.
    floor_repeats: repetitions of the perfect-sampler simulation.
    seed: seed of the simulation (one `numpy.random.Generator` per `n` and image `b`, seeded
      with `[seed, n, b, 1]`).

  Returns:
    A dict (lists and floats, JSON-ready; per-`n` entries keyed by `str(n)`):
      `mode_freq_true`: `[M]`, mean over images of `p_i`.
      `mode_freq_sampled[n]`: `[M]`, pooled counts over images and first `n` samples,
        divided by `B * n`.
      `mode_tv[n]`: `0.5 * sum_m |mode_freq_sampled[n] - mode_freq_true|`.
      `mode_tv_per_image[n]`: mean over images of `0.5 * sum_m |counts_i,m / n - p_i,m|`.
      `mode_tv_per_image_floor[n]`: the same statistic for a perfect sampler drawing `n`
        modes per image from `p_i`, averaged over `floor_repeats` simulations.
      `per_image_tv[n]`: `[B]`, the per-image values behind `mode_tv_per_image[n]`.

  Raises:
    ValueError: on malformed inputs.
  """
  samples, _ = _labels(samples, "samples", num_classes, ignore_index)
  s = samples.shape[1]
  ns = [int(n) for n in np.atleast_1d(np.asarray(num_samples)).tolist()]
  bad = [n for n in ns if not 1 <= n <= s]
  if not ns or bad:
    raise ValueError(f"`num_samples` must be non-empty with every n in [1, S = {s}]; "
                     f"got {list(num_samples)}.")
  if not isinstance(floor_repeats, (int, np.integer)) or floor_repeats < 1:
    raise ValueError(f"`floor_repeats` must be an integer >= 1; got {floor_repeats!r}.")
  top = max(ns)
  assigned = assign_modes(samples[:, :top], modes, mode_probs, num_classes=num_classes,
                          class_ids=class_ids, ignore_index=ignore_index)
  p = _check_weights(mode_probs, assigned.shape[0], np.shape(modes)[1], "mode_probs")
  return reduce_mode_statistics([mode_statistics_partial(
      assigned, p, ns, floor_repeats=floor_repeats, seed=seed)])


def mode_statistics_partial(assigned, mode_probs, num_samples, *, floor_repeats=20, seed=0,
                            first_image=0):
  """The summable part of `mode_statistics` for one batch of images.

  Args:
    assigned: `[B, S]` mode indices (`assign_modes`).
    mode_probs: `[B, M]` validated probabilities.
    num_samples: sample counts `n`, each in `[1, S]`.
    floor_repeats: repetitions of the perfect-sampler simulation.
    seed: image `b` simulates with a generator seeded with `[seed, n, first_image + b, 1]`,
      so the result does not depend on how a split is cut into batches.
    first_image: index of the batch's first image in the split.

  Returns:
    A dict of NumPy arrays: `images`, `prob_sum` `[M]`, and per `str(n)`: `counts` `[M]`
    (pooled over the batch), `per_image_tv` `[B]`, `per_image_floor` `[B]`.
  """
  batch, num_modes = mode_probs.shape
  cdf = _normalised_cdf(mode_probs)
  offsets = (np.arange(batch) * num_modes)[:, None]
  out = {"images": batch, "prob_sum": mode_probs.sum(axis=0), "counts": {},
         "per_image_tv": {}, "per_image_floor": {}}
  for n in (int(n) for n in num_samples):
    key = str(n)
    counts = np.bincount((assigned[:, :n] + offsets).ravel(),
                         minlength=batch * num_modes).reshape(batch, num_modes)
    floor = np.zeros(batch)
    for b in range(batch):  # perfect sampler: inverse-CDF draws of n modes, floor_repeats times
      rng = np.random.default_rng([int(seed), n, int(first_image) + b, 1])
      drawn = _draw_modes(np.repeat(cdf[b:b + 1], floor_repeats, axis=0), n, rng)
      sim = (drawn[:, :, None] == np.arange(num_modes)).sum(axis=1)  # [repeats, M]
      floor[b] = _per_image_tv(sim, n, mode_probs[b:b + 1]).mean()
    out["counts"][key] = counts.sum(axis=0)
    out["per_image_tv"][key] = _per_image_tv(counts, n, mode_probs)
    out["per_image_floor"][key] = floor
  return out


def reduce_mode_statistics(partials):
  """Combines `mode_statistics_partial` results (in image order) into `mode_statistics`'s dict."""
  images = sum(q["images"] for q in partials)
  true = sum(q["prob_sum"] for q in partials) / images
  result = {"mode_freq_true": true.tolist(), "mode_freq_sampled": {}, "mode_tv": {},
            "mode_tv_per_image": {}, "mode_tv_per_image_floor": {}, "per_image_tv": {}}
  for key in partials[0]["counts"]:
    pooled = sum(q["counts"][key] for q in partials) / (images * int(key))
    per_image = np.concatenate([q["per_image_tv"][key] for q in partials])
    floor = np.concatenate([q["per_image_floor"][key] for q in partials])
    result["mode_freq_sampled"][key] = pooled.tolist()
    result["mode_tv"][key] = float(0.5 * np.abs(pooled - true).sum())
    result["mode_tv_per_image"][key] = float(per_image.mean())
    result["mode_tv_per_image_floor"][key] = float(floor.mean())
    result["per_image_tv"][key] = per_image.tolist()
  return result


def pixel_flip_rates(samples, labels, flips, *, class_names=None):
  """Pixel-wise flip rates of switchable classes (the reference's pixel-level mode counts).

  For each flip `(c, c_2, p)`, over all ground-truth pixels of class `c` in the unflipped
  `labels` and all samples: `sampled = #pred c_2 / (#pred c + #pred c_2)` (NaN if the
  denominator is 0), to compare with `p`.

  Args:
    samples: `[B, S, H, W]` sampled label maps.
    labels: `[B, H, W]` unflipped ground-truth label maps (void labels are simply never `c`).
    flips: sequence of `(class_id, flipped_id, probability)`.
    class_names: optional mapping `class_id -> name` for the result keys.

  Returns:
    `{name or str(c): {"sampled": float, "true": p, "n_pixels": int, "n_original": int,
    "n_flipped": int}}`, where `n_pixels` counts GT pixels of `c` times S.

  Raises:
    ValueError: on malformed inputs.
  """
  samples = _as_labels(samples, "samples")
  _check_nonempty(samples, "samples")
  labels = _as_labels(labels, "labels", rank=3)
  _check_pair(samples, "samples", labels, "labels")
  flips = list(flips)
  for f in flips:
    if not hasattr(f, "__len__") or len(f) != 3:
      raise ValueError(f"`flips` entries must be (class_id, flipped_id, probability); got {f!r}.")
  return flip_rates_from_counts(pixel_flip_counts(samples, labels, flips), flips, class_names)


def pixel_flip_counts(samples, labels, flips):
  """The summable counts behind `pixel_flip_rates`: `[F, 3]` int64 per flip, (GT pixels of `c`
  times S, samples predicting `c` there, samples predicting `c_2` there). Inputs are validated
  by `pixel_flip_rates`."""
  batch, s = samples.shape[:2]
  pixels = samples.shape[2] * samples.shape[3]
  totals = np.zeros((len(flips), 3), np.int64)
  step = _chunk_images(s * pixels)
  for lo in range(0, batch, step):
    hi = min(batch, lo + step)
    xs = samples[lo:hi].reshape(hi - lo, s, pixels)
    gt = labels[lo:hi].reshape(hi - lo, 1, pixels)
    for k, (c, c2, _) in enumerate(flips):
      where = gt == c
      totals[k, 0] += int(where.sum()) * s
      totals[k, 1] += int(np.count_nonzero((xs == c) & where))
      totals[k, 2] += int(np.count_nonzero((xs == c2) & where))
  return totals


def flip_rates_from_counts(totals, flips, class_names=None):
  """`pixel_flip_rates`'s dict from `[F, 3]` counts (summed over batches)."""
  out = {}
  for k, (c, c2, prob) in enumerate(flips):
    name = str(c) if class_names is None else str(class_names.get(c, c))
    den = totals[k, 1] + totals[k, 2]
    out[name] = {"sampled": float(totals[k, 2] / den) if den else float("nan"),
                 "true": float(prob), "n_pixels": int(totals[k, 0]),
                 "n_original": int(totals[k, 1]), "n_flipped": int(totals[k, 2])}
  return out
