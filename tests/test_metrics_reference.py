"""Reference GED values (ideal samplers and sets) and resampled GED, in `metrics`."""

import numpy as np
import pytest

from tf_prob_unet import metrics


def _two_modes(batch=3, size=8):
  """Two disjoint masks per image (left / right half), d(A, B) = 1, with probabilities 1/2."""
  modes = np.zeros((batch, 2, size, size), np.int64)
  modes[:, 0, :, :size // 2] = 1
  modes[:, 1, :, size // 2:] = 1
  return modes, np.full((batch, 2), 0.5)


def test_stratified_counts_follow_the_probabilities():
  probs = np.array([[0.15, 0.33, 0.43, 0.09], [0.5, 0.5, 0.0, 0.0]])
  counts = metrics._stratified_counts(probs, 16)
  assert counts.sum(axis=1).tolist() == [16, 16]
  assert np.all(np.abs(counts - 16 * probs) < 1)
  assert counts[1].tolist() == [8, 8, 0, 0]


def test_ideal_geds_ideal_set_is_exact_and_iid_has_the_pair_bias():
  modes, probs = _two_modes()
  ref = metrics.ideal_geds(modes, probs, [2, 8], seed=0, draws=400)
  # The set {A, B} matches the distribution exactly: 2 * 1/2 - 1/2 - 1/2 = 0.
  assert ref["set"]["2"] == pytest.approx(0.0, abs=1e-9)
  # n iid draws: E[d(S, S')] over the n^2 pairs is (1 - 1/n) / 2, so GED_n = 1 / (2n).
  assert ref["iid"]["2"] == pytest.approx(0.25, abs=0.03)
  assert ref["iid"]["8"] == pytest.approx(1 / 16, abs=0.015)


def test_resampled_ged_of_a_constant_set_equals_its_ged():
  modes, probs = _two_modes()
  samples = np.repeat(modes[:, :1], 4, axis=1)  # four copies of mode A
  resampled = metrics.resampled_ged(samples, modes, probs, [1, 4], seed=0)
  direct = metrics.ged(samples, modes, probs).mean()
  assert resampled["4"] == pytest.approx(direct) and resampled["1"] == pytest.approx(direct)
  # A set of both modes is exact as a set (GED 0) but used as a sampler it is n iid draws from
  # {A, B}: GED_4 = 1 / 8 in expectation (here over 200 images).
  modes, probs = _two_modes(batch=200)
  both = np.concatenate([modes, modes], axis=1)  # A, B, A, B
  assert metrics.ged(both, modes, probs).mean() == pytest.approx(0.0, abs=1e-9)
  assert metrics.resampled_ged(both, modes, probs, [4], seed=0)["4"] == pytest.approx(
      0.125, abs=0.03)
