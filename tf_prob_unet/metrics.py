"""Evaluation metrics for ambiguous segmentation: GED, HM-IoU, diversity, S_NCC, mode statistics.

Pure NumPy / SciPy: this module imports neither TensorFlow nor any model code, so it can score
label maps written by any model. All inputs are integer label maps; shapes are
`[B, S, H, W]` (B images, S masks per image) unless stated otherwise. Every function is
vectorised over masks and pixels; work is done in chunks of images to bound memory.

Conventions (the README points here):

Distance.
  `d(A, B) = 1 - IoU(A, B)`, computed per image between two label maps.

  * Binary convention (`num_classes == 2` and `class_ids is None`, the LIDC setting): IoU of
    the foreground (label 1). Two empty masks give IoU 1, so `d = 0`; exactly one empty mask
    gives IoU 0, so `d = 1`. This is the rule of the PHiSeg, SSN, CAR, MoSE and CCDM
    evaluators.
  * Multi-class convention (`class_ids` given, or `num_classes > 2`, which evaluates
    `class_ids = range(num_classes)`; the Cityscapes setting uses the 10 switchable classes):
    `IoU_c = TP / (TP + FP + FN)` per evaluated class, NaN when class `c` is absent from both
    masks; `d = 1 - nanmean_c IoU_c`. `d` is NaN when every evaluated class is absent from
    both masks. Note that `class_ids=[1]` therefore differs from the binary convention on two
    empty masks (NaN instead of 0).

Void pixels (`ignore_index`).
  The void mask of an image is the set of pixels where *any* ground-truth mask of that image
  (the `references` / `modes` / `b` argument) equals `ignore_index`, as in the reference
  implementation, where the void mask comes from the unflipped ground truth and is shared by
  all 32 modes. Those pixels are excluded from every comparison of that image: sample vs
  reference, sample vs sample and reference vs reference. References with weight 0 (padding)
  do not contribute to the void mask in `ged`. Samples may contain `ignore_index`; such pixels
  belong to no class. `ignore_index` must lie outside `[0, num_classes)`.

GED (`ged`).
  `D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]` per image, with samples `S_i` (uniform
  weights `1/n`) and references `Y_j` with weights `w_j` (uniform `1/R` by default: the LIDC
  grader convention; Cityscapes uses the 32 modes weighted by their probabilities).

  * Default (`unbiased=False`, the reference's V-statistic): the expectations over pairs
    include the diagonal pairs `i = i'` and `j = j'`:
    `d_SY = sum_ij w_j d(S_i, Y_j) / n`, `d_SS = sum_ii' d(S_i, S_i') / n^2`,
    `d_YY = sum_jj' w_j w_j' d(Y_j, Y_j')`.
  * `unbiased=True`: diagonal pairs are excluded: `d_SS` averages over `i != i'` (needs
    `n >= 2`); `d_YY = sum_{j != j'} w_j w_j' d(Y_j, Y_j') / (1 - sum_j w_j^2)`; if the
    reference distribution is a point mass (one reference, or one non-zero weight), `d_YY = 0`.

NaN rules.
  * A NaN distance (multi-class, all evaluated classes absent from both masks) is dropped from
    its expectation: each expectation is `sum(weight * d) / sum(weight)` over the non-NaN
    pairs (a nanmean with renormalised weights). The reference's probability-weighted code
    instead averages / sums over pairs with NaN propagation, so one NaN pair makes its image
    NaN (its unweighted variant takes a nanmean for d_YY only); all agree when no pair is NaN.
  * An expectation with no non-NaN pair is NaN, and so is the image's GED. Functions return
    NaN for such images; callers must drop them (the reference notebook drops NaN images
    before averaging, MoSE takes a nanmean) and say how many were dropped.

Hungarian-matched IoU (`hungarian_matched_iou`).
  Samples and references are both tiled to `L = lcm(S, R)` masks (CCDM's convention; for the
  usual `S = 16`, `R = 4` this is the CAR / PixelSeg convention of repeating the references
  `S / R` times). The assignment minimises the cost `d` (NaN counted as 1) and the result is
  the mean IoU `1 - d` over the matched pairs, NaN pairs excluded.

Sample diversity (`sample_diversity`).
  `E[d(S, S')]` over pairs `i != i'` (SSN's definition; needs `S >= 2`).

S_NCC (`s_ncc`): see its docstring for the exact formula (PHiSeg's).

Implementation.
  Per evaluated class, every mask's indicator is bit-packed (64 pixels per uint64 word) and the
  intersections of all needed mask pairs are popcounts of word-wise ANDs, restricted per image
  to the span of words that some mask occupies. Counts are exact integers, so results do not
  depend on the chunking.

Mode statistics (`assign_modes`, `mode_statistics`, `pixel_flip_rates`).
  Each sample is assigned to `argmin_m d(Y_m, S)` over modes with non-zero probability; ties go
  to the lowest index and NaN distances count as `+inf` (the reference's `np.argmin` would pick
  a NaN entry). Sampled mode frequencies pool counts over all images and their first `n`
  samples; pixel flip rates count, over the ground-truth pixels of class `c`,
  `#pred c_2 / (#pred c + #pred c_2)`.
"""

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "iou_distance_matrix",
    "ged",
    "hungarian_matched_iou",
    "sample_diversity",
    "s_ncc",
    "assign_modes",
    "mode_statistics",
    "ideal_geds",
    "resampled_ged",
    "pixel_flip_rates",
]

# Elements (masks x pixels) of one image chunk: bounds the per-class indicator buffers.
_CHUNK_ELEMENTS = 1 << 22
_MAX_CHUNK_IMAGES = 64
# Bytes of one block of pair products (kept cache-sized).
_PAIR_BYTES = 1 << 18
_WEIGHT_ATOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Validation helpers.


def _as_labels(x, name, rank=4):
  """Returns `x` as an integer (or bool) array of the given rank, or raises ValueError."""
  x = np.asarray(x)
  if x.ndim != rank:
    layout = "[B, S, H, W]" if rank == 4 else "[B, H, W]"
    raise ValueError(f"`{name}` must have rank {rank} {layout}; got shape {x.shape}.")
  if x.dtype.kind in "biu":
    return x
  if x.dtype.kind == "f":
    if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
      raise ValueError(f"`{name}` must hold integer labels; got non-integral float values.")
    return x.astype(np.int64)
  raise ValueError(f"`{name}` must be an integer label array; got dtype {x.dtype}.")


def _check_values(x, name, num_classes, ignore_index):
  """Checks the label range of `x`.

  Returns:
    True if `x` holds only the labels 0 and 1.

  Raises:
    ValueError: if `x` holds labels outside `[0, num_classes)` other than `ignore_index`.
  """
  if x.size == 0:
    return True
  hi = x.max()
  lo = 0 if x.dtype.kind in "bu" else x.min()
  if lo >= 0 and hi < num_classes:
    return bool(hi <= 1)
  bad = (x < 0) | (x >= num_classes)
  if ignore_index is not None:
    bad &= x != ignore_index
  if np.any(bad):
    found = np.unique(x[bad])[:10].tolist()
    allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or {ignore_index}")
    raise ValueError(f"`{name}` must hold labels in {allowed}; found {found}.")
  return False


def _check_num_classes(num_classes):
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(f"`num_classes` must be an integer >= 2; got {num_classes!r}.")


def _resolve_classes(num_classes, class_ids, ignore_index):
  """Returns `(binary, classes)`: the convention and the evaluated class ids."""
  _check_num_classes(num_classes)
  if ignore_index is not None and 0 <= ignore_index < num_classes:
    raise ValueError(f"`ignore_index` must lie outside [0, {num_classes}); got {ignore_index}.")
  if class_ids is None:
    if num_classes == 2:
      return True, [1]
    return False, list(range(num_classes))
  ids = [int(c) for c in np.atleast_1d(np.asarray(class_ids)).tolist()]
  if not ids:
    raise ValueError("`class_ids` must list at least one class id; got an empty list.")
  outside = [c for c in ids if not 0 <= c < num_classes]
  if outside:
    raise ValueError(f"`class_ids` must lie in [0, {num_classes}); found {outside}.")
  if len(set(ids)) != len(ids):
    raise ValueError(f"`class_ids` must not repeat a class; got {ids}.")
  return False, ids


def _check_pair(a, a_name, b, b_name):
  """Checks that two `[B, *, H, W]` arrays agree on B, H and W."""
  if a.shape[0] != b.shape[0]:
    raise ValueError(f"`{a_name}` and `{b_name}` must have the same number of images B; "
                     f"got {a.shape[0]} and {b.shape[0]}.")
  if a.shape[-2:] != b.shape[-2:]:
    raise ValueError(f"`{a_name}` and `{b_name}` must have the same H, W; "
                     f"got {a.shape[-2:]} and {b.shape[-2:]}.")


def _check_nonempty(x, name, minimum=1, why=""):
  if x.shape[1] < minimum:
    raise ValueError(f"`{name}` must contain at least {minimum} mask(s) per image "
                     f"(axis 1){why}; got {x.shape[1]}.")


def _labels(x, name, num_classes, ignore_index, minimum=1, why=""):
  """Validated `[B, S, H, W]` labels and whether they hold only 0 and 1."""
  x = _as_labels(x, name)
  _check_nonempty(x, name, minimum, why)
  return x, _check_values(x, name, num_classes, ignore_index)


def _check_weights(weights, batch, count, name):
  """Returns `[B, R]` float64 weights (rows summing to 1), uniform if `weights` is None."""
  if weights is None:
    return np.full((batch, count), 1.0 / count)
  w = np.asarray(weights, dtype=np.float64)
  if w.ndim == 1:
    w = np.broadcast_to(w, (batch,) + w.shape)
  if w.shape != (batch, count):
    raise ValueError(f"`{name}` must have shape [B, R] = [{batch}, {count}] (or [R]); "
                     f"got {np.shape(weights)}.")
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError(f"`{name}` must be finite and non-negative.")
  sums = w.sum(axis=1)
  if not np.allclose(sums, 1.0, rtol=0.0, atol=_WEIGHT_ATOL):
    worst = sums[np.argmax(np.abs(sums - 1.0))]
    raise ValueError(f"`{name}` rows must sum to 1 (atol {_WEIGHT_ATOL}); found a row summing "
                     f"to {worst:.8g}.")
  return w


def _void_valid(refs, ignore_index, weights=None):
  """Per-image valid-pixel mask `[B, H, W]` bool, or None when nothing is void.

  A pixel is void when any reference of the image (with non-zero weight, if `weights` is
  given) equals `ignore_index`.
  """
  if ignore_index is None:
    return None
  void = refs == ignore_index
  if weights is not None:
    void &= (weights > 0)[:, :, None, None]
  void = void.any(axis=1)
  if not void.any():
    return None
  return ~void


# ----------------------------------------------------------------------------------------------
# Core: bit-packed class indicators and pairwise intersection counts.
#
# Every mask's indicator of one class (zeroed on void pixels) is packed to bits, 64 pixels
# (in row-major order) per uint64 word. The intersection of two masks is the popcount of the
# AND of their words. Per image, only the span of words that is non-zero in some mask enters
# the pair products, so the cost follows the area the masks cover rather than the image size.


def _chunk_images(per_image_elements):
  return int(max(1, min(_MAX_CHUNK_IMAGES, _CHUNK_ELEMENTS // max(per_image_elements, 1))))


def _pack(x, c, valid, plain):
  """Bit-packs the indicator of label `c`.

  Args:
    x: `[n, M, P]` labels (pixels flattened).
    c: class id.
    valid: `[n, 1, P]` bool or None.
    plain: `x` holds only 0 and 1, `c == 1` and `valid` is None: pack `x` as it is.

  Returns:
    `[n, M, W]` uint64 words, `W = ceil(P / 64)`; zero bits pad the last word.
  """
  if plain:
    m = x
  else:
    m = x == c
    if valid is not None:
      m &= valid
  packed = np.packbits(m, axis=-1)
  rem = packed.shape[-1] % 8
  if rem:
    pad = np.zeros(packed.shape[:-1] + (8 - rem,), np.uint8)
    packed = np.concatenate([packed, pad], axis=-1)
  return packed.view(np.uint64)


def _pair_counts(q, pi, pj):
  """Mask sizes and pairwise intersections of bit-packed masks.

  Args:
    q: `[n, M, W]` uint64 packed masks.
    pi, pj: `[K]` mask indices of the pairs.

  Returns:
    `(sizes [n, M], inter [n, K])`, int64 pixel counts.
  """
  n, _, words = q.shape
  sizes = np.bitwise_count(q).sum(axis=-1, dtype=np.int64)
  inter = np.zeros((n, len(pi)), np.int64)
  if len(pi) == 0:
    return sizes, inter
  # Per image, the span [first, stop) of words that are non-zero in some mask.
  nonzero = np.bitwise_or.reduce(q, axis=1) != 0  # [n, W]
  occupied = nonzero.any(axis=1)
  first = np.where(occupied, nonzero.argmax(axis=1), words)
  stop = np.where(occupied, words - nonzero[:, ::-1].argmax(axis=1), 0)
  span = int(np.max(stop - first, initial=0))
  if span <= 0:
    return sizes, inter
  # Blocks of a few images keep the pair products cache-sized.
  step = max(1, _PAIR_BYTES // (len(pi) * span * 8))
  starts = np.arange(0, n, step)
  lows = np.minimum.reduceat(first, starts).tolist()
  highs = np.maximum.reduceat(stop, starts).tolist()
  acc = np.uint32 if words * 64 < 2**32 else np.int64
  for lo, start, end in zip(starts.tolist(), lows, highs):
    if end <= start:
      continue
    block = q[lo:lo + step, :, start:end]
    both = block[:, pi]
    both &= block[:, pj]
    inter[lo:lo + step] = np.bitwise_count(both).sum(axis=-1, dtype=acc)
  return sizes, inter


def _pair_distances(groups, plains, valid, binary, classes, pi, pj):
  """Distances `1 - IoU` between selected pairs of masks, per image.

  Args:
    groups: list of `[B, Mk, H, W]` label arrays, stacked along the mask axis (not copied).
    plains: per group, whether it holds only 0/1 labels (binary fast path).
    valid: `[B, H, W]` bool or None.
    binary: True for the binary foreground convention.
    classes: evaluated class ids (`[1]` in the binary case).
    pi, pj: `[K]` indices into the stacked masks.

  Returns:
    `(d [B, K], self_d [B, M])`: pair distances, and `d(m, m)` of every mask (0, or NaN in
    the multi-class convention when the mask holds no evaluated class).
  """
  batch, _, height, width = groups[0].shape
  pixels = height * width
  counts = [g.shape[1] for g in groups]
  total = sum(counts)
  d = np.empty((batch, len(pi)))
  self_d = np.empty((batch, total))
  step = _chunk_images(total * pixels)
  for lo in range(0, batch, step):
    hi = min(batch, lo + step)
    n = hi - lo
    v = None if valid is None else valid[lo:hi].reshape(n, 1, pixels)
    iou_sum = np.zeros((n, len(pi)))
    present = np.zeros((n, len(pi)), np.int64)
    self_present = np.zeros((n, total), bool)
    for c in classes:
      q = np.concatenate(
          [_pack(g[lo:hi].reshape(n, m, pixels), c, v, binary and plain and v is None)
           for g, m, plain in zip(groups, counts, plains)], axis=1)
      sizes, inter = _pair_counts(q, pi, pj)
      union = sizes[:, pi] + sizes[:, pj] - inter
      has = union > 0
      iou = np.divide(inter, union, out=np.zeros(union.shape), where=has)
      if binary:
        # Two empty masks: IoU 1 (d = 0); one empty mask: inter = 0, so d = 1.
        iou[~has] = 1.0
      iou_sum += iou
      present += has
      self_present |= sizes > 0
    if binary:
      d[lo:hi] = 1.0 - iou_sum
      self_d[lo:hi] = 0.0
    else:
      d[lo:hi] = 1.0 - np.divide(iou_sum, present, out=np.full(iou_sum.shape, np.nan),
                                 where=present > 0)
      self_d[lo:hi] = np.where(self_present, 0.0, np.nan)
  return d, self_d


def _cross_distances(a, plain_a, b, plain_b, valid, binary, classes):
  """`[B, Sa, Sb]` distances between every mask of `a` `[B, Sa, H, W]` and of `b`."""
  sa, sb = a.shape[1], b.shape[1]
  pi = np.repeat(np.arange(sa), sb)
  pj = sa + np.tile(np.arange(sb), sa)
  d, _ = _pair_distances([a, b], [plain_a, plain_b], valid, binary, classes, pi, pj)
  return d.reshape(-1, sa, sb)


def _checked_cross_distances(samples, references, references_name, num_classes, class_ids,
                             ignore_index, weights=None):
  """Validates `samples` against `references` and returns `(d [B, S, R], weights or None)`.

  `weights` (`[B, R]` or `[R]`, named `mode_probs`) is checked and used to leave zero-weight
  references out of the void mask.
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  samples, plain_s = _labels(samples, "samples", num_classes, ignore_index)
  references, plain_r = _labels(references, references_name, num_classes, ignore_index)
  _check_pair(samples, "samples", references, references_name)
  p = None
  if weights is not None:
    p = _check_weights(weights, references.shape[0], references.shape[1], "mode_probs")
  valid = _void_valid(references, ignore_index, p)
  d = _cross_distances(samples, plain_s, references, plain_r, valid, binary, classes)
  return d, p


def _self_distances(groups, plains, valid, binary, classes):
  """`[B, M, M]` symmetric distances among all masks of the stacked `groups`."""
  total = sum(g.shape[1] for g in groups)
  pi, pj = np.triu_indices(total, k=1)
  d, self_d = _pair_distances(groups, plains, valid, binary, classes, pi, pj)
  out = np.empty((d.shape[0], total, total))
  out[:, pi, pj] = d
  out[:, pj, pi] = d
  idx = np.arange(total)
  out[:, idx, idx] = self_d
  return out


def _weighted_nanmean(d, w, empty_value=np.nan):
  """Per-image `sum(w * d) / sum(w)` over the non-NaN entries of `d` `[B, M, N]`.

  Images whose non-NaN entries carry zero total weight get NaN, except that images whose
  *total* weight (NaN entries included) is zero get `empty_value`.
  """
  w = np.broadcast_to(w, d.shape)
  ok = ~np.isnan(d)
  num = np.where(ok, w * np.where(ok, d, 0.0), 0.0).sum(axis=(1, 2))
  den = np.where(ok, w, 0.0).sum(axis=(1, 2))
  out = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)
  total = w.sum(axis=(1, 2))
  return np.where(total > 0, out, empty_value)


# ----------------------------------------------------------------------------------------------
# Public API.


def iou_distance_matrix(a, b, *, num_classes=2, class_ids=None, ignore_index=None):
  """Distances `d = 1 - IoU` between every mask of `a` and every mask of `b`, per image.

  Args:
    a: `[B, Sa, H, W]` integer label maps.
    b: `[B, Sb, H, W]` integer label maps (the ground-truth side: its void pixels define the
      image's void mask).
    num_classes: number of labels; values must lie in `[0, num_classes)` or be `ignore_index`.
    class_ids: evaluated classes for the multi-class convention; None with `num_classes == 2`
      selects the binary foreground convention, None otherwise evaluates every class.
    ignore_index: void label. Pixels where any mask of `b` for that image equals
      `ignore_index` are excluded from every comparison of that image (the ground-truth void
      mask, as in the reference implementation).

  Returns:
    `[B, Sa, Sb]` float64; NaN only in the multi-class convention, where all evaluated
    classes are absent from both masks.

  Raises:
    ValueError: on malformed inputs (rank, shapes, label values, class ids).
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  a, plain_a = _labels(a, "a", num_classes, ignore_index)
  b, plain_b = _labels(b, "b", num_classes, ignore_index)
  _check_pair(a, "a", b, "b")
  valid = _void_valid(b, ignore_index)
  return _cross_distances(a, plain_a, b, plain_b, valid, binary, classes)


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


def s_ncc(samples, references, *, num_classes=2, eps=1e-7, ignore_index=None):
  """S_NCC of PHiSeg (Baumgartner et al. 2019), also reported by SSN, per image.

  Samples are turned into one-hot probability maps `s` (`[C, H, W]` each) with mean
  `sbar = mean_s s`; `y_j` is the one-hot map of reference `j`. Following PHiSeg's code
  (`CE(p, q) = -sum_c p_c log(q_c + eps)`, the log taken of the sample):

    A(x)   = E_s[CE(sbar, s)](x)  = E_s[-sum_c sbar_c(x) log(s_c(x) + eps)]
    B_j(x) = E_s[CE(y_j, s)](x)   = E_s[-sum_c y_j,c(x) log(s_c(x) + eps)]
    S_NCC  = (1 / R) sum_j NCC(A, B_j),

  where NCC is the Pearson correlation over (valid) pixels. For one-hot samples
  `E_s[log(s_c + eps)] = sbar_c log(1 + eps) + (1 - sbar_c) log(eps)`, which is how the maps
  are computed (exactly, from per-pixel class counts, without per-sample maps). `A` is thus an
  affine function of the pixel-wise Gini impurity `1 - sum_c sbar_c^2` and `B_j` of the
  fraction of samples disagreeing with `y_j`. (With the arguments of the cross-entropy swapped,
  `B_j` would be the same for one-hot maps, but `A` would become the entropy of `sbar`; this
  function follows PHiSeg's order.) If `A` or `B_j` has zero variance over the pixels, that NCC
  is NaN; the mean over references skips NaN entries and is NaN only if all are NaN (e.g. all
  samples identical). Higher is better.

  Args:
    samples: `[B, S, H, W]` label maps.
    references: `[B, R, H, W]` label maps.
    num_classes: number of labels C.
    eps: the constant inside the logarithm.
    ignore_index: optional void label; pixels where any reference equals it are excluded
      from the correlation (and void sample pixels count as no class).

  Returns:
    `[B]` float64.

  Raises:
    ValueError: on malformed inputs.
  """
  _resolve_classes(num_classes, None, ignore_index)
  samples, _ = _labels(samples, "samples", num_classes, ignore_index)
  references, _ = _labels(references, "references", num_classes, ignore_index)
  _check_pair(samples, "samples", references, "references")
  if not eps > 0:
    raise ValueError(f"`eps` must be > 0; got {eps}.")
  batch, s = samples.shape[:2]
  r = references.shape[1]
  pixels = samples.shape[2] * samples.shape[3]
  bins = num_classes + 1  # the last bin collects void sample pixels
  valid_all = _void_valid(references, ignore_index)
  log0 = np.log(eps)
  delta = np.log1p(eps) - log0  # E_s[log(s_c + eps)] = log0 + sbar_c * delta
  out = np.empty(batch)
  step = _chunk_images((2 * s + bins + 3 * r) * pixels)
  for lo in range(0, batch, step):
    hi = min(batch, lo + step)
    n = hi - lo
    xs = samples[lo:hi].reshape(n, s, pixels)
    ys = references[lo:hi].reshape(n, r, pixels)
    # Per-pixel class counts over the samples, [n, P, C + 1].
    labels = xs if ignore_index is None else np.where(xs == ignore_index, num_classes, xs)
    cell = (np.arange(n)[:, None, None] * pixels + np.arange(pixels)[None, None, :]) * bins
    counts = np.bincount((cell + labels).ravel(), minlength=n * pixels * bins)
    counts = counts.reshape(n, pixels, bins)
    # A = -sum_c sbar_c (log0 + sbar_c delta), with sbar_c = counts_c / S.
    in_class = (s - counts[..., num_classes]) / s
    square = np.einsum("npc,npc->np", counts[..., :num_classes], counts[..., :num_classes])
    a_map = -(log0 * in_class + delta * square / (s * s))
    # Pixel-major layout from here on: [n, P, R].
    yi = np.ascontiguousarray(ys.transpose(0, 2, 1)).astype(np.intp)
    if valid_all is None:
      valid = np.ones((n, pixels, 1), bool)
    else:
      valid = valid_all[lo:hi].reshape(n, pixels, 1)
      yi = np.where(valid, yi, 0)
    # B_j = -(log0 + sbar_{y_j} delta).
    agree = np.take_along_axis(counts, yi, axis=2) / s
    b_maps = -(log0 + delta * agree)
    out[lo:hi] = _mean_pearson(a_map[:, :, None], b_maps, valid)
  return out


def _mean_pearson(a, b, valid):
  """Mean over references of the Pearson correlation of `a` `[n, P, 1]` and `b` `[n, P, R]`.

  Pixels where `valid` `[n, P, 1]` is False are ignored. A map whose variance is zero (up to
  rounding: below 1e-24 of its mean square) gives NaN; NaN correlations are skipped in the
  mean, which is NaN only if all are NaN.
  """
  w = valid.astype(np.float64)
  count = np.maximum(w.sum(axis=1), 1.0)  # [n, 1]
  ma = np.einsum("npk,npk->nk", a, w) / count
  mb = np.einsum("npr,npk->nr", b, w) / count
  da = (a - ma[:, None, :]) * w
  db = b - mb[:, None, :]
  va = np.einsum("npk,npk->nk", da, da)
  vb = np.einsum("npr,npr,npk->nr", db, db, w)
  cov = np.einsum("npr,npk->nr", db, da)
  sq_a = np.einsum("npk,npk,npk->nk", a, a, w)
  sq_b = np.einsum("npr,npr,npk->nr", b, b, w)
  ok = (va > 1e-24 * sq_a) & (vb > 1e-24 * sq_b)
  ncc = np.divide(cov, np.sqrt(va * vb), out=np.full(cov.shape, np.nan), where=ok)
  finite = ~np.isnan(ncc)
  num = np.where(finite, ncc, 0.0).sum(axis=-1)
  den = finite.sum(axis=-1)
  return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


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
  # d lies in [0, 1]: 2 stands for NaN (+inf), 3 for excluded modes.
  key = np.where(np.isnan(d), 2.0, d)
  key = np.where((p > 0)[:, None, :], key, 3.0)
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
    seed: seed of the `numpy.random.Generator` of the simulation (one generator per `n`,
      seeded with `[seed, n]`).

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
  batch = assigned.shape[0]
  num_modes = np.shape(modes)[1]
  p = _check_weights(mode_probs, batch, num_modes, "mode_probs")
  true = p.mean(axis=0)
  cdf = _normalised_cdf(p)
  offsets = (np.arange(batch) * num_modes)[:, None]

  result = {"mode_freq_true": true.tolist(), "mode_freq_sampled": {}, "mode_tv": {},
            "mode_tv_per_image": {}, "mode_tv_per_image_floor": {}, "per_image_tv": {}}
  for n in ns:
    key = str(n)
    flat = (assigned[:, :n] + offsets).ravel()
    counts = np.bincount(flat, minlength=batch * num_modes).reshape(batch, num_modes)
    pooled = counts.sum(axis=0) / (batch * n)
    per_image = _per_image_tv(counts, n, p)
    # Perfect sampler: inverse-CDF draws of n modes per image, floor_repeats times.
    rng = np.random.default_rng([seed, n])
    floor = 0.0
    for _ in range(floor_repeats):
      drawn = _draw_modes(cdf, n, rng)
      sim = np.bincount((drawn + offsets).ravel(), minlength=batch * num_modes)
      floor += _per_image_tv(sim.reshape(batch, num_modes), n, p).mean() / floor_repeats
    result["mode_freq_sampled"][key] = pooled.tolist()
    result["mode_tv"][key] = float(0.5 * np.abs(pooled - true).sum())
    result["mode_tv_per_image"][key] = float(per_image.mean())
    result["mode_tv_per_image_floor"][key] = float(floor)
    result["per_image_tv"][key] = per_image.tolist()
  return result


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
  out = {}
  for k, (c, c2, prob) in enumerate(flips):
    name = str(c) if class_names is None else str(class_names.get(c, c))
    den = totals[k, 1] + totals[k, 2]
    out[name] = {"sampled": float(totals[k, 2] / den) if den else float("nan"),
                 "true": float(prob), "n_pixels": int(totals[k, 0]),
                 "n_original": int(totals[k, 1]), "n_flipped": int(totals[k, 2])}
  return out
