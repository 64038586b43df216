"""Tests of metrics.qubiq_dice: a hand-worked case, the empty-empty rule, the definition in loops."""

import numpy as np
import pytest

from tf_prob_unet import metrics


def _direct(samples, references):
  """The QUBIQ score of one image, threshold by threshold, pixel by pixel."""
  p = [np.mean([s[i] for s in samples]) for i in range(samples.shape[1])]
  q = [np.mean([r[i] for r in references]) for i in range(references.shape[1])]
  scores = []
  for k in range(1, 10):
    t = k / 10
    a = [x > t for x in p]
    b = [y > t for y in q]
    inter = sum(x and y for x, y in zip(a, b))
    total = sum(a) + sum(b)
    scores.append(1.0 if total == 0 else 2 * inter / total)
  return np.mean(scores)


def test_hand_worked_example():
  refs = np.array([[[[1, 1, 0, 0]], [[1, 0, 0, 0]]]])  # Q = 1, .5, 0, 0
  samples = np.array([[[[1, 1, 1, 0]], [[1, 0, 0, 0]], [[1, 1, 0, 0]], [[0, 0, 0, 0]]]])
  # P = .75, .5, .25, 0. t = .1, .2: Dice(1110, 1100) = .8; t = .3, .4: 1; t = .5 to .7: 1
  # (.5 is not > .5); t = .8, .9: P is empty, Q is not: 0. Mean = (2 * .8 + 5) / 9.
  np.testing.assert_allclose(metrics.qubiq_dice(samples, refs), [(2 * 0.8 + 5) / 9])


def test_empty_empty_is_one_and_one_empty_is_zero():
  empty = np.zeros((1, 3, 4, 4), np.uint8)
  full = np.ones((1, 2, 4, 4), np.uint8)
  np.testing.assert_array_equal(metrics.qubiq_dice(empty, empty[:, :2]), [1.0])
  np.testing.assert_array_equal(metrics.qubiq_dice(empty, full), [0.0])
  np.testing.assert_array_equal(metrics.qubiq_dice(full, empty), [0.0])
  np.testing.assert_array_equal(metrics.qubiq_dice(full, full), [1.0])


@pytest.mark.parametrize("s,r", [(1, 1), (3, 7), (16, 4), (5, 2)])
def test_matches_the_definition_for_any_counts(s, r):
  rng = np.random.default_rng(s * 10 + r)
  samples = (rng.random((6, s, 1, 30)) < rng.random((6, 1, 1, 30))).astype(np.int32)
  refs = (rng.random((6, r, 1, 30)) < rng.random((6, 1, 1, 30))).astype(np.uint8)
  want = [_direct(samples[b, :, 0], refs[b, :, 0]) for b in range(6)]
  np.testing.assert_allclose(metrics.qubiq_dice(samples, refs), want)


def test_probabilities_are_averaged_like_masks():
  rng = np.random.default_rng(0)
  probs = rng.random((2, 3, 5, 5))
  refs = (rng.random((2, 4, 5, 5)) < 0.5).astype(np.uint8)
  got = metrics.qubiq_dice(probs, refs)
  want = [_direct(probs[b].reshape(3, -1), refs[b].reshape(4, -1)) for b in range(2)]
  np.testing.assert_allclose(got, want)


def test_rejects_multiclass_and_mismatched_shapes():
  with pytest.raises(ValueError, match="binary"):
    metrics.qubiq_dice(np.full((1, 2, 3, 3), 2), np.zeros((1, 2, 3, 3)))
  with pytest.raises(ValueError, match="share B, H, W"):
    metrics.qubiq_dice(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))


def test_evaluate_score_reports_num_raters_and_qubiq_for_any_r():
  from tf_prob_unet import evaluate_lib, input_pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  for r in (1, 3, 7):
    refs = (rng.random((3, r, 8, 8)) < 0.4).astype(np.int32)
    data = {"samples": (rng.random((3, 4, 8, 8)) < 0.4).astype(np.uint8),
            "mean_prediction": np.zeros((3, 8, 8), np.uint8), "references": refs,
            "reference_weights": np.full((3, r), 1.0 / r)}
    spec = input_pipeline.DatasetSpec(kind="graders", num_classes=2, image_shape=(8, 8, 1),
                                      has_modes=False)
    result = evaluate_lib.score(data, spec, (1, 4))
    assert result["num_raters"] == r
    for n in (1, 4):
      want = metrics.qubiq_dice(data["samples"][:, :n], refs).mean()
      assert result["qubiq_dice"][str(n)] == pytest.approx(want)
