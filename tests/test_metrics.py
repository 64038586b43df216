"""Tests of tf_prob_unet.metrics: golden cases, hand-worked values, brute-force equivalence."""

import ast
import itertools
import math
import pathlib

import numpy as np
import pytest
import scipy.optimize

from tf_prob_unet import metrics

# ----------------------------------------------------------------------------------------------
# Straightforward per-pair implementations (the definitions, written out with Python loops).


def _direct_distance(x, y, valid, classes, binary):
  """1 - IoU of two `[H, W]` label maps, one pair at a time."""
  if valid is None:
    valid = np.ones(x.shape, bool)
  if binary:
    fx, fy = (x == 1) & valid, (y == 1) & valid
    union = np.sum(fx | fy)
    return 0.0 if union == 0 else 1.0 - np.sum(fx & fy) / union
  ious = []
  for c in classes:
    fx, fy = (x == c) & valid, (y == c) & valid
    union = np.sum(fx | fy)
    ious.append(np.nan if union == 0 else np.sum(fx & fy) / union)
  if all(np.isnan(v) for v in ious):
    return np.nan
  return 1.0 - np.nanmean(ious)


def _direct_ged(samples, refs, weights, classes, binary, ignore_index, unbiased):
  """GED per image from explicit loops over all pairs (NaN pairs dropped, weights renormalised)."""
  batch, s = samples.shape[:2]
  r = refs.shape[1]
  out = []
  for b in range(batch):
    w = weights[b]
    valid = None
    if ignore_index is not None:
      valid = ~np.any([(refs[b, j] == ignore_index) & (w[j] > 0) for j in range(r)], axis=0)

    def expectation(xs, ys, pair_weight, skip_diagonal, empty_value=np.nan):
      num = den = total = 0.0
      for i, x in enumerate(xs):
        for j, y in enumerate(ys):
          if skip_diagonal and i == j:
            continue
          wt = pair_weight(i, j)
          total += wt
          dist = _direct_distance(x, y, valid, classes, binary)
          if not np.isnan(dist):
            num += wt * dist
            den += wt
      if total == 0:
        return empty_value
      return num / den if den > 0 else np.nan

    e_sy = expectation(samples[b], refs[b], lambda i, j: w[j] / s, False)
    e_ss = expectation(samples[b], samples[b], lambda i, j: 1.0, unbiased)
    e_yy = expectation(refs[b], refs[b], lambda i, j: w[i] * w[j], unbiased, empty_value=0.0)
    out.append(2 * e_sy - e_ss - e_yy)
  return np.array(out)


def _random_masks(rng, shape, num_classes, blob=True):
  """Random label maps: a few rectangles of random classes on background 0, plus noise."""
  out = np.zeros(shape, np.int64)
  h, w = shape[-2:]
  for idx in np.ndindex(*shape[:-2]):
    for _ in range(rng.integers(0, 4) if blob else 0):
      y0, x0 = rng.integers(0, h), rng.integers(0, w)
      y1, x1 = y0 + rng.integers(1, h + 1), x0 + rng.integers(1, w + 1)
      out[idx][y0:y1, x0:x1] = rng.integers(1, num_classes)
    noise = rng.random((h, w)) < 0.05
    out[idx][noise] = rng.integers(0, num_classes, noise.sum())
  return out


def _assert_nan_equal(actual, expected):
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
  np.testing.assert_allclose(np.nan_to_num(actual, nan=-1.0), np.nan_to_num(expected, nan=-1.0),
                             rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Golden behaviours of the reference implementation (tests/evaluation/eval_tests.py).

ZEROS = np.zeros((10, 10), np.int64)
ONES = np.ones((10, 10), np.int64)
HALF = np.concatenate([np.ones((10, 5), np.int64), np.zeros((10, 5), np.int64)], axis=1)


def _per_class_iou(x, y, c):
  """IoU of class c between two single maps, through the public distance function."""
  d = metrics.iou_distance_matrix(x[None, None], y[None, None], class_ids=[c])
  return 1.0 - d[0, 0, 0]


def test_golden_all_zero_masks():
  # Two all-zero masks with classes {0, 1}: background IoU 1, foreground IoU NaN.
  assert _per_class_iou(ZEROS, ZEROS, 0) == 1.0
  assert np.isnan(_per_class_iou(ZEROS, ZEROS, 1))
  d01 = metrics.iou_distance_matrix(ZEROS[None, None], ZEROS[None, None], class_ids=[0, 1])
  assert d01[0, 0, 0] == 0.0
  d1 = metrics.iou_distance_matrix(ZEROS[None, None], ZEROS[None, None], class_ids=[1])
  assert np.isnan(d1[0, 0, 0])


@pytest.mark.parametrize("x, y, iou0, iou1", [
    (ONES, ONES, np.nan, 1.0),
    (ONES, ZEROS, 0.0, 0.0),
    (HALF, ZEROS, 0.5, 0.0),
])
def test_golden_per_class_iou(x, y, iou0, iou1):
  _assert_nan_equal(np.array([_per_class_iou(x, y, 0), _per_class_iou(x, y, 1)]),
                    np.array([iou0, iou1]))


def _components(modes, samples, class_ids):
  """The reference's YS [M, S, C], SS [S, S, C] and YY [M, M, C] per-class distance tensors."""
  modes, samples = np.stack(modes)[None], np.stack(samples)[None]
  per_class = lambda a, b: np.stack(
      [metrics.iou_distance_matrix(a, b, class_ids=[c])[0] for c in class_ids], axis=-1)
  return per_class(modes, samples), per_class(samples, samples), per_class(modes, modes)


NAN = np.nan


@pytest.mark.parametrize("modes, samples, class_ids, ys, ss, yy", [
    ([ZEROS], [ZEROS], [0], [[[0.]]], [[[0.]]], [[[0.]]]),
    ([ZEROS], [ZEROS], [1], [[[NAN]]], [[[NAN]]], [[[NAN]]]),
    ([ONES], [ZEROS], [0], [[[1.]]], [[[0.]]], [[[NAN]]]),
    ([ONES, ZEROS], [ZEROS, ONES], [0],
     [[[1.], [NAN]], [[0.], [1.]]],
     [[[0.], [1.]], [[1.], [NAN]]],
     [[[NAN], [1.]], [[1.], [0.]]]),
    ([ONES, ZEROS], [ZEROS, ONES], [0, 1],
     [[[1., 1.], [NAN, 0.]], [[0., NAN], [1., 1.]]],
     [[[0., NAN], [1., 1.]], [[1., 1.], [NAN, 0.]]],
     [[[NAN, 0.], [1., 1.]], [[1., 1.], [0., NAN]]]),
])
def test_golden_energy_distance_nan_patterns(modes, samples, class_ids, ys, ss, yy):
  got_ys, got_ss, got_yy = _components(modes, samples, class_ids)
  _assert_nan_equal(got_ys, np.array(ys))
  _assert_nan_equal(got_ss, np.array(ss))
  _assert_nan_equal(got_yy, np.array(yy))


def test_golden_nanmean_over_classes():
  # d = 1 - nanmean over classes: ones vs ones with classes {0, 1} gives IoU_1 = 1 only.
  d = metrics.iou_distance_matrix(ONES[None, None], ONES[None, None], class_ids=[0, 1])
  assert d[0, 0, 0] == 0.0
  d = metrics.iou_distance_matrix(HALF[None, None], ZEROS[None, None], class_ids=[0, 1])
  assert d[0, 0, 0] == pytest.approx(1.0 - (0.5 + 0.0) / 2)


def test_golden_mode_counts():
  # Five samples equal to mode 0; mode 1 differs slightly: all five go to mode 0.
  mode0 = HALF
  mode1 = HALF.copy()
  mode1[0, 5] = 1
  samples = np.stack([mode0] * 5)[None]
  modes = np.stack([mode0, mode1])[None]
  assigned = metrics.assign_modes(samples, modes, [[0.5, 0.5]])
  np.testing.assert_array_equal(np.bincount(assigned.ravel(), minlength=2), [5, 0])


@pytest.mark.parametrize("labels, samples, flips, expected", [
    (ZEROS, [HALF], [(0, 1)], [[100, 50, 50]]),
    (HALF, [ONES, ZEROS], [(0, 2), (1, 3)], [[100, 50, 0], [100, 50, 0]]),
    (HALF, [3 * ONES, 2 * ONES, ONES, ZEROS], [(0, 2), (1, 3)], [[200, 50, 50], [200, 50, 50]]),
])
def test_golden_pixelwise_mode_counts(labels, samples, flips, expected):
  result = metrics.pixel_flip_rates(np.stack(samples)[None], labels[None],
                                    [(c, c2, 0.5) for c, c2 in flips])
  for (c, _), (pixels, original, flipped) in zip(flips, expected):
    entry = result[str(c)]
    assert (entry["n_pixels"], entry["n_original"], entry["n_flipped"]) == (
        pixels, original, flipped)
    assert entry["sampled"] == pytest.approx(flipped / (original + flipped))
    assert entry["true"] == 0.5


# ----------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_binary_iou_known_masks():
  a = np.zeros((4, 4), np.int64)
  b = np.zeros((4, 4), np.int64)
  a[0, 0:3] = 1  # 3 pixels
  b[0, 2:4] = 1  # 2 pixels, overlap 1 -> union 4, IoU 1/4
  d = metrics.iou_distance_matrix(a[None, None], b[None, None])
  assert d[0, 0, 0] == pytest.approx(0.75)


def test_binary_empty_mask_rules():
  empty = np.zeros((1, 1, 6, 6), np.uint8)
  full = np.ones((1, 1, 6, 6), np.uint8)
  assert metrics.iou_distance_matrix(empty, empty)[0, 0, 0] == 0.0
  assert metrics.iou_distance_matrix(empty, full)[0, 0, 0] == 1.0
  assert metrics.iou_distance_matrix(full, empty)[0, 0, 0] == 1.0


def test_ged_identical_deterministic_is_zero():
  rng = np.random.default_rng(0)
  mask = _random_masks(rng, (3, 1, 12, 12), 2)
  np.testing.assert_allclose(metrics.ged(mask, mask), 0.0, atol=1e-12)
  np.testing.assert_allclose(metrics.ged(np.repeat(mask, 4, axis=1), mask), 0.0, atol=1e-12)


def _two_mode_example():
  y0 = np.array([[1, 1, 0, 0]])
  y1 = np.array([[0, 0, 1, 1]])
  s0 = y0
  s1 = np.array([[1, 1, 1, 1]])
  return np.stack([s0, s1])[None], np.stack([y0, y1])[None]


def test_ged_two_mode_hand_worked():
  # 1x4 masks. Modes Y0 = 1100, Y1 = 0011 (disjoint: d = 1), weights 0.75 / 0.25.
  # Samples S0 = 1100 (= Y0), S1 = 1111.
  # d(S0, Y0) = 0, d(S0, Y1) = 1, d(S1, Y0) = d(S1, Y1) = 1 - 2/4 = 0.5, d(S0, S1) = 0.5.
  # d_SY = 0.75 * (0 + 0.5) / 2 + 0.25 * (1 + 0.5) / 2 = 0.1875 + 0.1875 = 0.375
  # d_SS = (0 + 0.5 + 0.5 + 0) / 4 = 0.25                     (V-statistic, i = i' included)
  # d_YY = 2 * 0.75 * 0.25 * 1 = 0.375                           (j = j' pairs contribute 0)
  # GED = 2 * 0.375 - 0.25 - 0.375 = 0.125
  samples, modes = _two_mode_example()
  w = np.array([[0.75, 0.25]])
  value, d_sy, d_ss, d_yy = metrics.ged(samples, modes, w, return_terms=True)
  np.testing.assert_allclose([value[0], d_sy[0], d_ss[0], d_yy[0]], [0.125, 0.375, 0.25, 0.375])
  # Unbiased: d_SS = 0.5 (i != i'), d_YY = 0.375 / (1 - 0.75^2 - 0.25^2) = 1.0,
  # GED = 0.75 - 0.5 - 1.0 = -0.75.
  np.testing.assert_allclose(metrics.ged(samples, modes, w, unbiased=True), [-0.75])
  # Uniform weights: d_SY = 0.5 * 0.25 + 0.5 * 0.75 = 0.5, d_YY = 0.5, GED = 1 - 0.25 - 0.5.
  np.testing.assert_allclose(metrics.ged(samples, modes), [0.25])
  # Weights given as [R] broadcast over images.
  np.testing.assert_allclose(metrics.ged(samples, modes, [0.75, 0.25]), [0.125])


def test_ged_zero_weight_reference_is_padding():
  samples, modes = _two_mode_example()
  padded = np.concatenate([modes, np.full_like(modes[:, :1], 255)], axis=1)
  w = np.array([[0.75, 0.25, 0.0]])
  got = metrics.ged(samples, padded, w, ignore_index=255)
  np.testing.assert_allclose(got, [0.125])


def test_ged_single_reference_unbiased_point_mass():
  samples, modes = _two_mode_example()
  got, _, d_ss, d_yy = metrics.ged(samples, modes[:, :1], unbiased=True, return_terms=True)
  assert d_yy[0] == 0.0
  assert d_ss[0] == pytest.approx(0.5)
  assert np.isfinite(got[0])


# ----------------------------------------------------------------------------------------------
# Vectorised GED == direct pairwise implementation.


@pytest.mark.parametrize("setting", ["binary", "multiclass_ignore", "multiclass"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("unbiased", [False, True])
def test_ged_matches_direct(setting, weighted, unbiased):
  seed = ["binary", "multiclass_ignore", "multiclass"].index(setting) * 4 + 2 * weighted + unbiased
  rng = np.random.default_rng(seed)
  batch, s, r, h, w = 4, 5, 3, 11, 23  # 253 pixels: not a multiple of 64
  if setting == "binary":
    num_classes, class_ids, ignore, binary = 2, None, None, True
  else:
    num_classes, class_ids, binary = 5, [0, 2, 3], False
    ignore = 255 if setting == "multiclass_ignore" else None
  samples = _random_masks(rng, (batch, s, h, w), num_classes)
  refs = _random_masks(rng, (batch, r, h, w), num_classes)
  if ignore is not None:
    refs[:, :, :3, :] = ignore  # shared void band
    refs[1, 0, 5, 5] = ignore  # void in one reference only
  if setting == "multiclass":
    refs[2, 0] = 1  # a reference and two samples without evaluated classes: NaN pairs
    samples[2, :2] = 4
    refs[3] = 1  # no reference holds an evaluated class: the image is NaN
  weights = (rng.dirichlet(np.ones(r), size=batch) if weighted else np.full((batch, r), 1.0 / r))
  got, *terms = metrics.ged(samples, refs, weights if weighted else None,
                            num_classes=num_classes, class_ids=class_ids, ignore_index=ignore,
                            unbiased=unbiased, return_terms=True)
  classes = [1] if binary else class_ids
  expected = _direct_ged(samples, refs, weights, classes, binary, ignore, unbiased)
  _assert_nan_equal(got, expected)
  if setting == "multiclass":
    assert np.isfinite(got[2]) and np.isnan(got[3])
  else:
    assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, metrics.ged(samples, refs, weights if weighted else None,
                                              num_classes=num_classes, class_ids=class_ids,
                                              ignore_index=ignore, unbiased=unbiased))
  _assert_nan_equal(got, 2 * terms[0] - terms[1] - terms[2])


def test_ged_nan_image_when_no_evaluated_class():
  refs = np.ones((2, 2, 6, 6), np.int64)
  samples = np.ones((2, 3, 6, 6), np.int64)
  refs[1, :, 0, 0] = 0  # image 1 has class 0 in its references and in sample 0
  samples[1, 0, 0, 0] = 0
  got, d_sy, d_ss, d_yy = metrics.ged(samples, refs, num_classes=3, class_ids=[0, 2],
                                      return_terms=True)
  # Image 0: every pair is NaN. Image 1: the sample pairs among S1, S2 (diagonal included) are
  # NaN and dropped; the remaining 5 pairs are (S0, S0) with d = 0 and four S0-vs-S1/S2 pairs
  # with d = 1.
  assert np.isnan(got[0])
  assert d_ss[1] == pytest.approx(4 / 5)
  assert d_yy[1] == 0.0
  # d(S0, Y) = 0 (both hold class 0 only at the same pixel), d(S1, Y) = d(S2, Y) = 1.
  assert d_sy[1] == pytest.approx(2 / 3)
  assert got[1] == pytest.approx(2 * 2 / 3 - 4 / 5)


def test_iou_distance_matrix_matches_direct():
  rng = np.random.default_rng(7)
  for trial in range(6):
    num_classes = 2 if trial % 2 == 0 else 4
    class_ids = None if trial % 2 == 0 else [1, 3]
    ignore = 255 if trial % 3 == 0 else None
    a = _random_masks(rng, (2, 3, 9, 70), num_classes)
    b = _random_masks(rng, (2, 4, 9, 70), num_classes)
    if ignore is not None:
      b[:, 1, :, :4] = ignore
    got = metrics.iou_distance_matrix(a, b, num_classes=num_classes, class_ids=class_ids,
                                      ignore_index=ignore)
    for i in range(2):
      valid = None if ignore is None else ~np.any(b[i] == ignore, axis=0)
      expected = [[_direct_distance(x, y, valid, class_ids, class_ids is None) for y in b[i]]
                  for x in a[i]]
      _assert_nan_equal(got[i], np.array(expected))


@pytest.mark.parametrize("dense_support", [-1.0, 2.0])  # every class dense / every class sparse
def test_chunking_does_not_change_results(monkeypatch, dense_support):
  rng = np.random.default_rng(3)
  samples = _random_masks(rng, (9, 6, 20, 40), 3)
  refs = _random_masks(rng, (9, 4, 20, 40), 3)
  kwargs = dict(num_classes=3, class_ids=[0, 1, 2])
  full = metrics.ged(samples, refs, **kwargs)
  cross = metrics.iou_distance_matrix(samples, refs, **kwargs)
  monkeypatch.setattr(metrics.distance, "_CHUNK_ELEMENTS", 1)
  monkeypatch.setattr(metrics.distance, "_DENSE_SUPPORT", dense_support)
  np.testing.assert_allclose(metrics.ged(samples, refs, **kwargs), full, rtol=0, atol=1e-12)
  np.testing.assert_allclose(metrics.iou_distance_matrix(samples, refs, **kwargs), cross,
                             rtol=0, atol=1e-12)


def _blocky_masks(rng, shape, num_classes):
  """Piecewise-constant label maps: 4x4 blocks shared by all masks of an image, each mask
  relabelling a few blocks (so pixel columns repeat, in runs and across rows)."""
  b, m, h, w = shape
  base = rng.integers(0, num_classes, (b, 1, h // 4, w // 4))
  grid = np.repeat(base, m, axis=1)
  hit = rng.random(grid.shape) < 0.1
  grid[hit] = rng.integers(0, num_classes, hit.sum())
  return np.repeat(np.repeat(grid, 4, axis=2), 4, axis=3)


@pytest.mark.parametrize("masks", [(5, 3), (5, 11)])  # 8 and 16 masks per image, 1 byte each
@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
@pytest.mark.parametrize("binary", [True, False])
def test_distinct_columns_give_the_per_pixel_results(monkeypatch, masks, dtype, binary):
  """The distinct-column path (runs, merged rows) equals the per-pixel path and the direct
  per-pair computation, with void pixels, for label maps with and without repeated columns."""
  rng = np.random.default_rng(17)
  num_classes = 2 if binary else 5
  classes = [1] if binary else [0, 2, 3]
  ignore = 255
  for make in (_blocky_masks, lambda r, shape, k: _random_masks(r, shape, k)):
    a = make(rng, (2, masks[0], 16, 24), num_classes).astype(dtype)
    b = make(rng, (2, masks[1], 16, 24), num_classes).astype(dtype)
    b[0, 1, :3, :5] = ignore
    kwargs = dict(num_classes=num_classes, class_ids=None if binary else classes,
                  ignore_index=ignore)
    monkeypatch.setattr(metrics.distance, "_CHUNK_ELEMENTS", 1)  # one image per chunk
    results = []
    for fraction in (2.0, -1.0):  # every image by distinct columns / every image per pixel
      monkeypatch.setattr(metrics.distance, "_ROW_FRACTION", fraction)
      results.append((metrics.iou_distance_matrix(a, b, **kwargs),
                      metrics.ged(a, b, **kwargs)))
    for i in range(2):
      valid = ~np.any(b[i] == ignore, axis=0)
      expected = [[_direct_distance(x, y, valid, classes, binary) for y in b[i]] for x in a[i]]
      _assert_nan_equal(results[0][0][i], np.array(expected))
    _assert_nan_equal(results[0][0], results[1][0])
    _assert_nan_equal(results[0][1], results[1][1])


def test_merging_equal_columns_is_exact_under_hash_collisions(monkeypatch):
  rng = np.random.default_rng(4)
  rows = rng.integers(0, 3, (50, 12)).astype(np.uint8)
  rows[25:] = rows[:25]  # every row twice
  weights = rng.integers(1, 9, 50)
  merged, merged_w = metrics.distance._merge_equal_rows(rows, weights)
  distinct = np.unique(rows, axis=0)
  assert len(merged) == len(distinct) == 25
  assert merged_w.sum() == weights.sum()
  for row, w in zip(merged, merged_w):
    assert w == weights[np.all(rows == row, axis=1)].sum()
  # A hash that sends every row to one bucket: the check finds it and nothing is merged.
  monkeypatch.setattr(metrics.distance, "_HASH_MULTIPLIERS", np.zeros(256, np.uint64))
  same, same_w = metrics.distance._merge_equal_rows(rows, weights)
  np.testing.assert_array_equal(same, rows)
  np.testing.assert_array_equal(same_w, weights)
  samples = _blocky_masks(rng, (2, 4, 16, 24), 3)
  refs = _blocky_masks(rng, (2, 4, 16, 24), 3)
  monkeypatch.setattr(metrics.distance, "_CHUNK_ELEMENTS", 1)
  monkeypatch.setattr(metrics.distance, "_ROW_FRACTION", 2.0)
  collided = metrics.ged(samples, refs, num_classes=3)
  monkeypatch.setattr(metrics.distance, "_ROW_FRACTION", -1.0)
  np.testing.assert_allclose(collided, metrics.ged(samples, refs, num_classes=3), rtol=0,
                             atol=1e-12)


def test_input_dtypes_agree():
  rng = np.random.default_rng(5)
  samples = _random_masks(rng, (2, 4, 8, 8), 2)
  refs = _random_masks(rng, (2, 3, 8, 8), 2)
  expected = metrics.ged(samples, refs)
  for dtype in (np.uint8, np.int32, bool, np.float32):
    np.testing.assert_allclose(metrics.ged(samples.astype(dtype), refs.astype(dtype)), expected)


# ----------------------------------------------------------------------------------------------
# Hungarian-matched IoU and sample diversity.


def test_hungarian_permuted_identical_sets():
  rng = np.random.default_rng(11)
  refs = _random_masks(rng, (3, 4, 10, 10), 2)
  refs[:, :, 0, :] = np.arange(4)[None, :, None] % 2  # make the four masks distinct
  refs[:, :, 1, 0] = np.arange(4)[None, :] // 2
  samples = refs[:, [2, 0, 3, 1]]
  np.testing.assert_allclose(metrics.hungarian_matched_iou(samples, refs), 1.0)


def test_hungarian_hand_worked():
  # 1x8 masks. IoU(S0, Y0) = 4/6, IoU(S0, Y1) = 2/8, IoU(S1, Y0) = 2/4, IoU(S1, Y1) = 0.
  # Greedy (S0 -> Y0) would give (2/3 + 0) / 2 = 0.333; the optimal matching is
  # S0 -> Y1, S1 -> Y0 with (0.25 + 0.5) / 2 = 0.375.
  y = np.array([[[1, 1, 1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 1, 1, 1, 1]]])
  s = np.array([[[1, 1, 1, 1, 1, 1, 0, 0]], [[1, 1, 0, 0, 0, 0, 0, 0]]])
  got = metrics.hungarian_matched_iou(s[None], y[None])
  np.testing.assert_allclose(got, [0.375])


def test_hungarian_lcm_tiling_matches_brute_force():
  rng = np.random.default_rng(2)
  samples = _random_masks(rng, (2, 3, 8, 8), 2)
  refs = _random_masks(rng, (2, 2, 8, 8), 2)
  got = metrics.hungarian_matched_iou(samples, refs)
  d = metrics.iou_distance_matrix(samples, refs)
  for b in range(2):
    size = math.lcm(3, 2)
    best = max(np.mean([1 - d[b, k % 3, perm[k] % 2] for k in range(size)])
               for perm in itertools.permutations(range(size)))
    assert got[b] == pytest.approx(best)


def _tiled_hungarian(d):
  """The former HM-IoU: Hungarian matching on both sets tiled to lcm(S, R), per image."""
  out = []
  for di in d:
    s, r = di.shape
    size = math.lcm(s, r)
    tiled = di[(np.arange(size) % s)[:, None], (np.arange(size) % r)[None, :]]
    ri, ci = scipy.optimize.linear_sum_assignment(tiled)
    out.append(1.0 - tiled[ri, ci].mean())
  return np.array(out)


@pytest.mark.parametrize("s,r", [(16, 4), (6, 4), (3, 5)])
def test_transport_hm_iou_equals_tiled_hungarian_for_uniform_weights(s, r):
  rng = np.random.default_rng(s * r)
  samples = _random_masks(rng, (4, s, 10, 12), 2)
  refs = _random_masks(rng, (4, r, 10, 12), 2)
  expected = _tiled_hungarian(metrics.iou_distance_matrix(samples, refs))
  np.testing.assert_allclose(metrics.hungarian_matched_iou(samples, refs), expected, atol=1e-9)
  np.testing.assert_allclose(
      metrics.hungarian_matched_iou(samples, refs, np.full(r, 1.0 / r)), expected, atol=1e-9)


def test_transport_hm_iou_skewed_weights_hand_worked():
  # 1x8 masks, the sets of test_hungarian_hand_worked: IoU(S0, Y0) = 2/3, IoU(S0, Y1) = 1/4,
  # IoU(S1, Y0) = 1/2, IoU(S1, Y1) = 0. Each sample carries mass 1/2.
  y = np.array([[[1, 1, 1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 1, 1, 1, 1]]])[None]
  s = np.array([[[1, 1, 1, 1, 1, 1, 0, 0]], [[1, 1, 0, 0, 0, 0, 0, 0]]])[None]
  # Uniform weights: S0 -> Y1, S1 -> Y0, (1/4 + 1/2) / 2 = 0.375 (the Hungarian result).
  np.testing.assert_allclose(metrics.hungarian_matched_iou(s, y, [0.5, 0.5]), [0.375])
  # Weights (0.9, 0.1). With x = T(S0, Y1) in [0, 0.1] the plan is T(S0, Y0) = 0.5 - x,
  # T(S1, Y0) = 0.4 + x, T(S1, Y1) = 0.1 - x, and the matched IoU is
  # (0.5 - x) 2/3 + x 1/4 + (0.4 + x) 1/2 + (0.1 - x) 0 = 0.5333 + x / 12, largest at x = 0.1:
  # 0.4 * 2/3 + 0.1 * 1/4 + 0.5 * 1/2 = 0.541667 (the Hungarian pairing would give 0.375).
  np.testing.assert_allclose(metrics.hungarian_matched_iou(s, y, [0.9, 0.1]),
                             [0.4 * 2 / 3 + 0.1 / 4 + 0.5 / 2])
  # A zero-weight reference is padding: both samples go to Y0, (2/3 + 1/2) / 2.
  np.testing.assert_allclose(metrics.hungarian_matched_iou(s, y, [1.0, 0.0]),
                             [(2 / 3 + 1 / 2) / 2])


def test_sample_diversity_excludes_diagonal():
  samples, _ = _two_mode_example()  # d(S0, S1) = 0.5
  np.testing.assert_allclose(metrics.sample_diversity(samples), [0.5])
  three = np.concatenate([samples, samples[:, :1]], axis=1)  # pairs: 0.5, 0, 0.5 (x2)
  np.testing.assert_allclose(metrics.sample_diversity(three), [1.0 / 3.0])


def test_sample_diversity_void_from_references():
  samples = np.zeros((1, 2, 1, 4), np.int64)
  samples[0, 0, 0, 0] = 1
  samples[0, 1, 0, 1] = 1
  refs = np.zeros((1, 1, 1, 4), np.int64)
  assert metrics.sample_diversity(samples)[0] == 1.0
  refs[0, 0, 0, :2] = 255
  got = metrics.sample_diversity(samples, ignore_index=255, ignore_mask_from=refs)
  assert got[0] == 0.0  # the differing pixels are void: both masks empty


# ----------------------------------------------------------------------------------------------
# S_NCC.


def _direct_sncc(samples, refs, num_classes, eps, ignore_index=None):
  """PHiSeg's S_NCC with explicit one-hot maps and loops over samples and references."""
  out = []
  for s_img, y_img in zip(samples, refs):
    valid = np.ones(s_img.shape[1:], bool)
    if ignore_index is not None:
      valid = ~np.any(y_img == ignore_index, axis=0)
    onehot = lambda m: np.stack([(m == c).astype(float) for c in range(num_classes)])
    probs = [onehot(s) for s in s_img]
    mean = np.mean(probs, axis=0)
    a = np.mean([-(mean * np.log(p + eps)).sum(0) for p in probs], axis=0)
    nccs = []
    for y in y_img:
      b = np.mean([-(onehot(y) * np.log(p + eps)).sum(0) for p in probs], axis=0)
      if a[valid].std() == 0 or b[valid].std() == 0:
        nccs.append(np.nan)
      else:
        nccs.append(np.corrcoef(a[valid], b[valid])[0, 1])
    out.append(np.nan if np.all(np.isnan(nccs)) else np.nanmean(nccs))
  return np.array(out)


def test_s_ncc_matches_direct_and_samples_equal_references():
  rng = np.random.default_rng(4)
  refs = _random_masks(rng, (3, 4, 12, 12), 3)
  refs[:, :, 0, :4] = np.arange(4)[None, :, None] % 3  # references differ
  got = metrics.s_ncc_labels(refs, refs, num_classes=3)
  np.testing.assert_allclose(got, _direct_sncc(refs, refs, 3, 1e-7), rtol=1e-6)
  assert np.all(np.isfinite(got))
  assert np.all(got > 0.5)
  samples = _random_masks(rng, (3, 5, 12, 12), 3)
  np.testing.assert_allclose(metrics.s_ncc_labels(samples, refs, num_classes=3),
                             _direct_sncc(samples, refs, 3, 1e-7), rtol=1e-6)


def test_s_ncc_void_pixels_excluded():
  rng = np.random.default_rng(13)
  refs = _random_masks(rng, (2, 3, 10, 10), 3)
  samples = _random_masks(rng, (2, 4, 10, 10), 3)
  refs[:, 1, :2] = 255
  samples[:, 0, 5, 5] = 255  # a void sample pixel belongs to no class
  got = metrics.s_ncc_labels(samples, refs, num_classes=3, ignore_index=255)
  np.testing.assert_allclose(got, _direct_sncc(samples, refs, 3, 1e-7, ignore_index=255),
                             rtol=1e-6)


def test_s_ncc_identical_samples_is_nan():
  rng = np.random.default_rng(6)
  refs = _random_masks(rng, (1, 2, 8, 8), 2)
  samples = np.repeat(refs[:, :1], 3, axis=1)
  assert np.isnan(metrics.s_ncc_labels(samples, refs)[0])


def _phiseg_variance_ncc(sample_arr, gt_arr, weights=None, valid=None):
  """PHiSeg's `variance_ncc_dist` as published: loops over samples and references.

  `sample_arr` `[N, H, W, K]` softmax maps, `gt_arr` `[M, H, W, K]` one-hot maps; `weights`
  replaces the 1 / M of the mean; `valid` `[H, W]` keeps pixels (PHiSeg has no void).
  """
  def pixel_wise_xent(m_samp, m_gt, eps=1e-8):
    return -1.0 * np.sum(m_gt * np.log(m_samp + eps), axis=-1)

  def ncc(a, v):
    a, v = a.flatten(), v.flatten()
    a = (a - np.mean(a)) / (np.std(a) * len(a))
    v = (v - np.mean(v)) / np.std(v)
    return np.correlate(a, v)[0]

  mean_seg = np.mean(sample_arr, axis=0)
  n, m = sample_arr.shape[0], gt_arr.shape[0]
  e_ss = np.mean([pixel_wise_xent(sample_arr[i], mean_seg) for i in range(n)], axis=0)
  e_sy = np.mean([[pixel_wise_xent(sample_arr[i], gt_arr[j]) for i in range(n)]
                  for j in range(m)], axis=1)
  keep = np.ones(e_ss.shape, bool) if valid is None else valid
  weights = np.full(m, 1.0 / m) if weights is None else weights
  return sum(weights[j] * ncc(e_ss[keep], e_sy[j][keep]) for j in range(m))


def _random_softmax(rng, shape, num_classes, temperature=1.5):
  logits = rng.normal(0.0, temperature, shape + (num_classes,))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("num_classes,num_refs", [(2, 4), (5, 3)])
def test_s_ncc_probabilities_matches_phiseg(num_classes, num_refs):
  rng = np.random.default_rng(num_classes)
  probs = _random_softmax(rng, (3, 6, 9, 11), num_classes)
  refs = rng.integers(0, num_classes, (3, num_refs, 9, 11))
  got = metrics.s_ncc(probs, refs, num_classes=num_classes)
  onehot = np.eye(num_classes)[refs]
  expected = [_phiseg_variance_ncc(probs[b].astype(np.float64), onehot[b]) for b in range(3)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)  # float32 logarithms
  # Reference weights replace PHiSeg's 1 / M.
  w = rng.dirichlet(np.ones(num_refs), 3)
  got_w = metrics.s_ncc(probs, refs, w, num_classes=num_classes)
  expected_w = [_phiseg_variance_ncc(probs[b].astype(np.float64), onehot[b], w[b])
                for b in range(3)]
  np.testing.assert_allclose(got_w, expected_w, rtol=1e-6)
  assert not np.allclose(got_w, got)
  # Prefixes in one pass equal separate calls on the first n samples.
  prefixes = metrics.s_ncc(probs, refs, w, num_classes=num_classes, num_samples=(2, 6))
  np.testing.assert_allclose(prefixes["6"], got_w, rtol=1e-12)
  np.testing.assert_allclose(prefixes["2"], metrics.s_ncc(probs[:, :2], refs, w,
                                                          num_classes=num_classes), rtol=1e-12)


def test_s_ncc_probabilities_void_and_one_hot():
  rng = np.random.default_rng(7)
  probs = _random_softmax(rng, (2, 4, 8, 8), 3)
  refs = rng.integers(0, 3, (2, 2, 8, 8))
  refs[:, 1, :2, :] = 255
  got = metrics.s_ncc(probs, refs, num_classes=3, ignore_index=255)
  onehot = np.eye(3)[np.where(refs == 255, 0, refs)]
  valid = ~np.any(refs == 255, axis=1)
  expected = [_phiseg_variance_ncc(probs[b].astype(np.float64), onehot[b], valid=valid[b])
              for b in range(2)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # On one-hot samples the probability form equals the label form.
  labels = _random_masks(rng, (2, 5, 8, 8), 3)
  np.testing.assert_allclose(
      metrics.s_ncc(np.eye(3)[labels], refs, num_classes=3, eps=1e-7, ignore_index=255),
      metrics.s_ncc_labels(labels, refs, num_classes=3, eps=1e-7, ignore_index=255), rtol=1e-9)


def test_s_ncc_probabilities_identical_samples_is_nan():
  rng = np.random.default_rng(8)
  refs = rng.integers(0, 2, (2, 3, 8, 8))
  same = np.repeat(np.eye(2)[refs[:, :1]], 4, axis=1)  # four identical one-hot samples
  assert np.all(np.isnan(metrics.s_ncc(same, refs, num_classes=2)))
  # Identical soft samples are defined: E_ss is the entropy of their shared softmax.
  soft = np.repeat(_random_softmax(rng, (2, 1, 8, 8), 2), 4, axis=1)
  assert np.all(np.isfinite(metrics.s_ncc(soft, refs, num_classes=2)))


# ----------------------------------------------------------------------------------------------
# Mode statistics.


def _mode_dataset(rng, batch, samples_per_image, probs, size=8):
  """Modes m = a horizontal band at row m; samples are exact copies drawn from `probs`."""
  num_modes = len(probs)
  modes = np.zeros((batch, num_modes, size, size), np.int64)
  for m in range(num_modes):
    modes[:, m, m, :] = 1
  drawn = rng.choice(num_modes, size=(batch, samples_per_image), p=probs)
  samples = np.take_along_axis(modes, drawn[:, :, None, None], axis=1)
  return samples, modes, drawn


def test_assign_modes_exact_copies():
  rng = np.random.default_rng(8)
  probs = [0.5, 0.3, 0.2]
  samples, modes, drawn = _mode_dataset(rng, 10, 6, probs)
  np.testing.assert_array_equal(metrics.assign_modes(samples, modes, probs), drawn)


def test_assign_modes_skips_padding_and_breaks_ties_low():
  rng = np.random.default_rng(9)
  samples, modes, drawn = _mode_dataset(rng, 4, 5, [0.6, 0.4])
  padded = np.concatenate([modes[:, :1], modes], axis=1)  # padding copy of mode 0 at index 0
  got = metrics.assign_modes(samples, padded, [0.0, 0.6, 0.4])
  np.testing.assert_array_equal(got, drawn + 1)
  twins = np.concatenate([modes[:, :1], modes[:, :1]], axis=1)
  got = metrics.assign_modes(samples[:, :1] * 0 + modes[:, :1], twins, [0.5, 0.5])
  np.testing.assert_array_equal(got, 0)


def test_assign_modes_nan_counts_as_infinite():
  modes = np.zeros((1, 2, 4, 4), np.int64)
  modes[0, 1, 0, 0] = 2  # mode 1 holds class 2, mode 0 only background
  samples = np.zeros((1, 1, 4, 4), np.int64)  # d(mode 0, sample) = NaN for class_ids=[2]
  got = metrics.assign_modes(samples, modes, [0.5, 0.5], num_classes=3, class_ids=[2])
  assert got[0, 0] == 1


def test_mode_statistics_perfect_sampler():
  rng = np.random.default_rng(10)
  probs = [0.5, 0.3, 0.2]
  samples, modes, _ = _mode_dataset(rng, 400, 16, probs)
  stats = metrics.mode_statistics(samples, modes, np.tile(probs, (400, 1)), num_samples=(1, 4, 16))
  np.testing.assert_allclose(stats["mode_freq_true"], probs)
  assert stats["mode_tv"]["16"] < 0.03
  assert sum(stats["mode_freq_sampled"]["16"]) == pytest.approx(1.0)
  floors = [stats["mode_tv_per_image_floor"][k] for k in ("1", "4", "16")]
  assert all(f > 0 for f in floors)
  assert floors[0] > floors[1] > floors[2]
  # A perfect sampler's per-image TV sits at the floor.
  for k in ("1", "4", "16"):
    assert stats["mode_tv_per_image"][k] == pytest.approx(stats["mode_tv_per_image_floor"][k],
                                                          abs=0.04)
    assert len(stats["per_image_tv"][k]) == 400
  # n = 1: each image's TV is 1 - p of the drawn mode.
  assert stats["mode_tv_per_image_floor"]["1"] == pytest.approx(
      sum(p * (1 - p) for p in probs), abs=0.02)
  again = metrics.mode_statistics(samples, modes, probs, num_samples=(4,))
  assert again["mode_tv_per_image_floor"]["4"] == stats["mode_tv_per_image_floor"]["4"]


def test_mode_statistics_collapsed_sampler():
  rng = np.random.default_rng(12)
  probs = [0.5, 0.3, 0.2]
  _, modes, _ = _mode_dataset(rng, 20, 4, probs)
  samples = np.repeat(modes[:, :1], 4, axis=1)  # always mode 0
  stats = metrics.mode_statistics(samples, modes, probs, num_samples=(4,))
  np.testing.assert_allclose(stats["mode_freq_sampled"]["4"], [1.0, 0.0, 0.0])
  assert stats["mode_tv"]["4"] == pytest.approx(0.5)


def test_pixel_flip_rates_names_and_rates():
  labels = np.zeros((2, 4, 4), np.int64)
  labels[:, :2] = 1
  samples = np.repeat(labels[:, None], 4, axis=1).copy()
  samples[:, :1][samples[:, :1] == 1] = 5  # one of four samples flips class 1 -> 5
  got = metrics.pixel_flip_rates(samples, labels, [(1, 5, 0.25)], class_names={1: "sidewalk"})
  assert got["sidewalk"]["sampled"] == pytest.approx(0.25)
  assert got["sidewalk"]["true"] == 0.25


# ----------------------------------------------------------------------------------------------
# Validation.

_S = np.zeros((2, 3, 4, 4), np.int64)
_Y = np.zeros((2, 2, 4, 4), np.int64)


@pytest.mark.parametrize("call, name", [
    (lambda: metrics.ged(_S[0], _Y), "samples"),
    (lambda: metrics.ged(_S, _Y[..., :3]), "references"),
    (lambda: metrics.ged(_S, _Y[:1]), "references"),
    (lambda: metrics.ged(_S, _Y + 2), "references"),
    (lambda: metrics.ged(_S - 1, _Y), "samples"),
    (lambda: metrics.ged(_S + 255, _Y, num_classes=2), "samples"),
    (lambda: metrics.ged(_S[:, :0], _Y), "samples"),
    (lambda: metrics.ged(_S[:, :1], _Y, unbiased=True), "samples"),
    (lambda: metrics.ged(_S + 0.5, _Y), "samples"),
    (lambda: metrics.ged(_S, _Y, [[0.5, 0.6], [0.5, 0.5]]), "reference_weights"),
    (lambda: metrics.ged(_S, _Y, [[1.0], [1.0]]), "reference_weights"),
    (lambda: metrics.ged(_S, _Y, [[1.5, -0.5], [0.5, 0.5]]), "reference_weights"),
    (lambda: metrics.ged(_S, _Y, num_classes=3, class_ids=[0, 3]), "class_ids"),
    (lambda: metrics.ged(_S, _Y, num_classes=3, class_ids=[]), "class_ids"),
    (lambda: metrics.ged(_S, _Y, num_classes=1), "num_classes"),
    (lambda: metrics.ged(_S, _Y, ignore_index=1), "ignore_index"),
    (lambda: metrics.iou_distance_matrix(_S, _Y[..., :2, :]), "b"),
    (lambda: metrics.iou_distance_matrix(_S[..., 0], _Y), "a"),
    (lambda: metrics.hungarian_matched_iou(_S, _Y[:, :0]), "references"),
    (lambda: metrics.sample_diversity(_S[:, :1]), "samples"),
    (lambda: metrics.sample_diversity(_S, ignore_index=255, ignore_mask_from=_Y[:1]),
     "ignore_mask_from"),
    (lambda: metrics.s_ncc_labels(_S, _Y + 3), "references"),
    (lambda: metrics.s_ncc_labels(_S, _Y, eps=0.0), "eps"),
    (lambda: metrics.s_ncc(np.full(_S.shape + (3,), 0.5), _Y, num_classes=2), "probabilities"),
    (lambda: metrics.s_ncc(np.full(_S.shape + (2,), 1.5), _Y, num_classes=2), "probabilities"),
    (lambda: metrics.assign_modes(_S, _Y, [[0.5, 0.4], [0.5, 0.5]]), "mode_probs"),
    (lambda: metrics.mode_statistics(_S, _Y, [0.5, 0.5], num_samples=(4,)), "num_samples"),
    (lambda: metrics.mode_statistics(_S, _Y, [0.5, 0.5], num_samples=(1,),
                                           floor_repeats=0), "floor_repeats"),
    (lambda: metrics.pixel_flip_rates(_S, _Y, [(0, 1, 0.5)]), "labels"),
    (lambda: metrics.pixel_flip_rates(_S, _Y[:, 0], [(0, 1)]), "flips"),
])
def test_validation_errors_name_the_argument(call, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    call()


def test_ignore_index_accepted_in_labels():
  refs = _Y.copy()
  refs[:, :, 0, 0] = 255
  samples = _S.copy()
  samples[:, :, 1, 1] = 255
  assert np.all(np.isfinite(metrics.ged(samples, refs, ignore_index=255)))


def test_reliability_hand_worked_and_additive():
  # Foreground frequencies per pixel: samples (1, 0.5, 0, 0.25), graders (1, 0.5, 0.5, 0).
  samples = np.array([[1, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])[None, :, None]
  refs = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])[None, :, None]
  counts = metrics.reliability_counts(samples, refs, bins=2)
  # Bin [0, 0.5): pixels 2 and 3; bin [0.5, 1]: pixels 0 and 1.
  np.testing.assert_allclose(counts, [[2, 0.25, 0.5], [2, 1.5, 1.5]])
  assert metrics.expected_calibration_error(counts) == pytest.approx(0.25 / 4)
  diagram = metrics.reliability_diagram(counts)
  assert diagram["predicted"] == [0.125, 0.75] and diagram["observed"] == [0.25, 0.75]
  # Counts of two batches add up to the counts of both; weights and void are honoured.
  both = np.concatenate([samples, samples[:, ::-1]])
  np.testing.assert_allclose(
      metrics.reliability_counts(both, np.concatenate([refs, refs]), bins=2),
      counts + metrics.reliability_counts(samples[:, ::-1], refs, bins=2))
  weighted = metrics.reliability_counts(samples, refs, [1.0, 0.0], bins=2)
  np.testing.assert_allclose(weighted[:, 2], [1.0, 2.0])
  void = refs.copy()
  void[0, 1, 0, 3] = 255
  np.testing.assert_allclose(metrics.reliability_counts(samples, void, bins=2, ignore_index=255),
                             [[1, 0.0, 0.5], [2, 1.5, 1.5]])


def test_package_imports_only_numpy_scipy():
  roots = set()
  for path in pathlib.Path(metrics.__file__).parent.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        roots.update(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if node.level == 0 and not module.startswith("tf_prob_unet.metrics"):
          roots.add(module.split(".")[0])
  assert roots <= {"math", "numpy", "scipy"}, roots
