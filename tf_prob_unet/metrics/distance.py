"""Validation helpers and the distance `d = 1 - IoU` between label maps (see the package docstring).

Implementation.
  Per evaluated class, the sizes and pairwise intersections of all masks of an image are one
  Gram matrix `X X^T` of their 0/1 indicators `X` `[M, P]` (a BLAS matrix product), restricted
  to the pixels where some mask holds the class. Counts are exact integers, so results do not
  depend on the chunking.

  A large image is first reduced to its distinct pixel columns (the labels of all masks at one
  pixel), each weighted by how many pixels share it: runs of equal columns along the raster
  order, then equal runs merged (hashing, verified exactly). The Gram matrices become
  `X^T diag(w) X` over these rows. Segmentations are piecewise constant, so this usually leaves
  a few percent of the pixels; images where it would leave more than `_ROW_FRACTION` of them
  take the per-pixel products.
"""

import numpy as np

__all__ = ["iou_distance_matrix", "pairwise_distances"]

# Elements (masks x pixels) of one image chunk: bounds the per-class indicator buffers.
_CHUNK_ELEMENTS = 1 << 22
_MAX_CHUNK_IMAGES = 64
# Above this fraction of pixels where some mask holds the class, the Gram matrices of a chunk
# are one batched product over all pixels; below it, one product per image over its support.
_DENSE_SUPPORT = 0.5
# Labels per pixel tile: the tile's comparisons with every class run while it is in cache.
_TILE_ELEMENTS = 1 << 20
_WEIGHT_ATOL = 1e-5
# A single-image chunk is counted over its distinct pixel columns when the runs of equal
# columns number at most this fraction of its pixels. Measured at Cityscapes size (48 masks,
# 10 classes) with growing per-pixel noise, the column path was faster up to runs at about
# 0.63 of the pixels (0.032 s against 0.039 s per image) and slower from 0.84 (0.054 s against
# 0.040 s); pure noise costs it 0.16 s against 0.10 s.
_ROW_FRACTION = 0.5
# Odd multipliers of the column hash (fixed: results never depend on them, collisions are
# detected and undone).
_HASH_MULTIPLIERS = np.random.default_rng(20181203).integers(
    1, 2**63, 256, dtype=np.uint64) | np.uint64(1)


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
  if (x.dtype.kind == "u" and ignore_index is not None and hi == ignore_index
      and ignore_index == np.iinfo(x.dtype).max and num_classes <= ignore_index):
    # One pass: adding 1 wraps `ignore_index` to 0 and moves every class c to c + 1.
    if np.add(x, 1, dtype=x.dtype).max() <= num_classes:
      return False
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
  keep = np.ones(refs.shape[:2], bool) if weights is None else weights > 0
  void = np.zeros((refs.shape[0],) + refs.shape[2:], bool)
  for j in range(refs.shape[1]):  # one reference at a time: no [B, R, H, W] bool buffer
    hit = refs[:, j] == ignore_index
    if not keep[:, j].all():
      hit &= keep[:, j, None, None]
    void |= hit
  if not void.any():
    return None
  return ~void


# ----------------------------------------------------------------------------------------------
# Core: per-class Gram matrices of mask indicators.
#
# For one class, the indicators of all masks of an image (zeroed on void pixels) form a 0/1
# matrix X `[M, P]`; its Gram matrix X X^T holds every mask's size on the diagonal and every
# pair's intersection off it, computed by one matrix product (BLAS). Only the pixels where some
# mask holds the class enter the product, so the cost follows the area the class covers rather
# than the image size. Counts are integers below 2^24 (float32 is exact) or computed in float64.


def _chunk_images(per_image_elements):
  return int(max(1, min(_MAX_CHUNK_IMAGES, _CHUNK_ELEMENTS // max(per_image_elements, 1))))


def _indicator(x, c, valid, plain):
  """`[n, M, P]` bool indicator of label `c` in `x` `[n, M, P]`, zero where `valid` is False.

  `plain`: `x` holds only 0 and 1, `c == 1` and `valid` is None: `x` is the indicator.
  """
  if plain:
    return x.view(bool) if x.dtype.itemsize == 1 else x.astype(bool)
  m = x == c
  if valid is not None:
    m &= valid
  return m


def _gram(x):
  """`[..., M, M]` int64 Gram matrix of the `[..., M, P]` 0/1 float matrix `x`."""
  return np.rint(np.matmul(x, np.swapaxes(x, -1, -2))).astype(np.int64)


def _class_counts(m):
  """Mask sizes and pairwise intersections of one class's indicators.

  Args:
    m: `[n, M, P]` bool indicators.

  Returns:
    `[n, M, M]` int64: sizes on the diagonal, intersections off it.
  """
  n, masks, pixels = m.shape
  dtype = np.float32 if pixels < 2**24 else np.float64
  support = m.any(axis=1)  # [n, P]: pixels where some mask holds the class
  if support.mean() > _DENSE_SUPPORT:
    return _gram(m.astype(dtype))
  out = np.zeros((n, masks, masks), np.int64)
  for i in range(n):
    if support[i].any():
      out[i] = _gram(np.compress(support[i], m[i], axis=1).astype(dtype))
  return out


def _all_class_counts(x, classes, valid, plain):
  """`_class_counts` of every class in `classes`, tile by tile over the pixels.

  For a chunk of one (large) image, each tile of pixels (about `_TILE_ELEMENTS` labels) is
  compared with every class while it is in cache, instead of streaming the whole `[n, M, P]`
  array once per class; counts are exact integers, so the sums over tiles equal the one-pass
  result. Chunks of several (small) images are one tile.

  Args:
    x: `[n, M, P]` labels.
    classes: evaluated class ids.
    valid: `[n, 1, P]` bool or None.
    plain: see `_indicator`.

  Returns:
    `[len(classes), n, M, M]` int64: per class, sizes on the diagonal, intersections off it.
  """
  n, masks, pixels = x.shape
  out = np.zeros((len(classes), n, masks, masks), np.int64)
  tile = pixels if n > 1 else max(1024, _TILE_ELEMENTS // masks)
  for lo in range(0, pixels, tile):
    xt = x[:, :, lo:lo + tile]
    vt = None if valid is None else valid[:, :, lo:lo + tile]
    for k, c in enumerate(classes):
      out[k] += _class_counts(_indicator(xt, c, vt, plain))
  return out


def _column_runs(x, valid):
  """Runs of equal pixel columns of one image, in raster order.

  Args:
    x: `[M, P]` labels of the M masks.
    valid: `[P]` bool or None; void pixels end runs and are dropped.

  Returns:
    `(rows [R, M], weights [R] int64)`: each run's column and length.
  """
  pixels = x.shape[1]
  change = np.empty(pixels, bool)
  change[:1] = True
  np.any(x[:, 1:] != x[:, :-1], axis=0, out=change[1:])
  if valid is not None:
    change[1:] |= valid[1:] != valid[:-1]
  starts = np.flatnonzero(change)
  weights = np.diff(starts, append=pixels)
  if valid is not None:
    keep = valid[starts]
    starts, weights = starts[keep], weights[keep]
  return np.ascontiguousarray(x[:, starts].T), weights


def _merge_equal_rows(rows, weights):
  """Merges equal rows of `rows` `[R, M]`, adding their weights.

  Rows are grouped by a 64-bit hash of their bytes; the grouping is then checked row by row,
  and on a collision the rows are returned unmerged, so the result is always exact.

  Returns:
    `(rows [U, M], weights [U])`.
  """
  count = rows.shape[0]
  raw = rows.view(np.uint8).reshape(count, -1)
  if raw.shape[1] % 8:
    raw = np.pad(raw, ((0, 0), (0, 8 - raw.shape[1] % 8)))
  words = raw.view(np.uint64)
  if words.shape[1] > len(_HASH_MULTIPLIERS):
    return rows, weights
  h = words[:, 0] * _HASH_MULTIPLIERS[0]
  for k in range(1, words.shape[1]):
    h ^= h >> np.uint64(29)
    h += words[:, k] * _HASH_MULTIPLIERS[k]
  _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
  if len(first) == count:
    return rows, weights
  merged = rows[first]
  if not np.array_equal(merged[inverse], rows):  # a hash collision: keep the rows apart
    return rows, weights
  return merged, np.bincount(inverse, weights=weights, minlength=len(first)).astype(np.int64)


def _row_class_counts(rows, weights, classes, pixels):
  """Per-class sizes and intersections from weighted pixel columns.

  Args:
    rows: `[R, M]` labels: one pixel column (the label of every mask) per row.
    weights: `[R]` int64 number of pixels each row stands for.
    classes: evaluated class ids.
    pixels: total weight bound, to choose an exact float type.

  Returns:
    `[len(classes), 1, M, M]` int64, as `_all_class_counts` for one image.
  """
  masks = rows.shape[1]
  dtype = np.float32 if pixels < 2**24 else np.float64
  w = weights.astype(dtype)
  out = np.zeros((len(classes), 1, masks, masks), np.int64)
  for k, c in enumerate(classes):
    m = rows == c
    if masks % 8 == 0:  # "any mask holds c" as OR over 8-byte words of each row
      words = m.view(np.uint64)
      support = words[:, 0].copy()
      for j in range(1, words.shape[1]):
        support |= words[:, j]
      support = support != 0
    else:
      support = m.any(axis=1)
    a = m[support].astype(dtype)
    out[k, 0] = np.rint((a * w[support, None]).T @ a).astype(np.int64)
  return out


def _image_class_counts(x, classes, valid, plain):
  """`_all_class_counts` for a chunk of one image `x` `[1, M, P]` (`valid` `[1, 1, P]`)."""
  pixels = x.shape[2]
  v = None if valid is None else valid[0, 0]
  rows, weights = _column_runs(x[0], v)
  if len(rows) <= _ROW_FRACTION * pixels:
    rows, weights = _merge_equal_rows(rows, weights)
    return _row_class_counts(rows, weights, classes, pixels)
  if v is not None:  # drop the void pixels once instead of masking every class
    x, valid = np.compress(v, x, axis=2), None
  return _all_class_counts(x, classes, valid, plain)


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
    x = np.concatenate([g[lo:hi].reshape(n, k, pixels) for g, k in zip(groups, counts)], axis=1)
    plain = binary and all(plains) and v is None
    if n == 1:
      grams = _image_class_counts(x, classes, v, plain)
    else:
      grams = _all_class_counts(x, classes, v, plain)
    for gram in grams:
      sizes = np.diagonal(gram, axis1=1, axis2=2)
      inter = gram[:, pi, pj]
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
                             ignore_index, weights=None, weights_name="mode_probs"):
  """Validates `samples` against `references` and returns `(d [B, S, R], weights or None)`.

  `weights` (`[B, R]` or `[R]`, named `weights_name` in errors) is checked and used to leave
  zero-weight references out of the void mask.
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  samples, plain_s = _labels(samples, "samples", num_classes, ignore_index)
  references, plain_r = _labels(references, references_name, num_classes, ignore_index)
  _check_pair(samples, "samples", references, references_name)
  p = None
  if weights is not None:
    p = _check_weights(weights, references.shape[0], references.shape[1], weights_name)
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


def pairwise_distances(groups, *, num_classes=2, class_ids=None, ignore_index=None,
                       void_from=None, void_weights=None):
  """Distances `d = 1 - IoU` among all masks of `groups`, stacked along the mask axis.

  One pass over the pixels serves every measure built on the distances of these masks (GED
  terms, matching, diversity, mode assignment, resampled and ideal GEDs).

  Args:
    groups: list of `[B, Mk, H, W]` label maps; mask `m` of the result indexes their
      concatenation.
    num_classes, class_ids, ignore_index: see `iou_distance_matrix`.
    void_from: optional `[B, R, H, W]` references whose void pixels (with non-zero weight in
      `void_weights` `[B, R]`, if given) are excluded from every comparison.
    void_weights: optional validated `[B, R]` weights of `void_from`.

  Returns:
    `[B, M, M]` float64, symmetric; the diagonal is 0 (NaN for a mask holding no evaluated
    class in the multi-class convention).

  Raises:
    ValueError: on malformed inputs.
  """
  binary, classes = _resolve_classes(num_classes, class_ids, ignore_index)
  checked = [_labels(g, f"groups[{k}]", num_classes, ignore_index) for k, g in enumerate(groups)]
  for k, (g, _) in enumerate(checked[1:], 1):
    _check_pair(checked[0][0], "groups[0]", g, f"groups[{k}]")
  valid = None
  if void_from is not None:
    refs, _ = _labels(void_from, "void_from", num_classes, ignore_index)
    _check_pair(checked[0][0], "groups[0]", refs, "void_from")
    valid = _void_valid(refs, ignore_index, void_weights)
  return _self_distances([g for g, _ in checked], [plain for _, plain in checked], valid,
                         binary, classes)
