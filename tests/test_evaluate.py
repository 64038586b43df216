"""Tests of the streaming evaluation (evaluate_lib.Scorer) on hand-made splits, without a model."""

import numpy as np
import pytest

from tf_prob_unet import evaluate_lib
from tf_prob_unet import input_pipeline
from tf_prob_unet import metrics
from tf_prob_unet import plots

FLIPS = ((1, 3, 0.4), (2, 4, 0.3))


def _softmax(rng, shape, num_classes):
  logits = rng.normal(0.0, 2.0, shape + (num_classes,))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _graders_split(rng, images=7, samples=5, size=12):
  """A binary split with 3 graders and 4 weighted modes (the synthetic LIDC-like layout)."""
  spec = input_pipeline.DatasetSpec(kind="graders", num_classes=2, image_shape=(size, size, 1),
                                    has_modes=True, mode_names=("a", "b", "c", "d"))
  probs = _softmax(rng, (images, samples, size, size), 2)
  modes = (rng.random((images, 4, size, size)) < 0.3).astype(np.uint8)
  modes[:, 0] = 0  # an empty mode
  mode_probs = rng.dirichlet(np.ones(4), images).astype(np.float32)
  data = {"image": rng.random((images, size, size, 1)).astype(np.float32),
          "samples": probs.argmax(-1).astype(np.uint8), "probabilities": probs,
          "mean_prediction": (rng.random((images, size, size)) < 0.2).astype(np.uint8),
          "references": modes[:, 1:], "reference_weights": np.full((images, 3), 1 / 3, np.float32),
          "modes": modes, "mode_probs": mode_probs}
  return spec, data


def _flips_split(rng, images=6, samples=4, size=10):
  """A flip split: 5 classes, 2 switchable, void pixels, 4 weighted modes from the label."""
  bits = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
  p = np.array([f[2] for f in FLIPS])
  mode_probs = np.prod(np.where(bits == 1, p, 1 - p), axis=1)
  spec = input_pipeline.DatasetSpec(
      kind="flips", num_classes=5, image_shape=(size, size, 3), has_modes=True, flips=FLIPS,
      num_base_classes=3, class_ids=(1, 2, 3, 4), mode_names=("none", "b", "a", "a+b"))
  label = rng.integers(0, 3, (images, size, size)).astype(np.uint8)
  label[:, 0, :3] = input_pipeline.VOID
  modes = np.repeat(label[:, None], 4, axis=1)
  for m, row in enumerate(bits):
    for (c, c2, _), bit in zip(FLIPS, row):
      if bit:
        modes[:, m][label == c] = c2
  probs = _softmax(rng, (images, samples, size, size), 5)
  weights = np.broadcast_to(mode_probs, (images, 4)).astype(np.float32)
  data = {"image": rng.random((images, size, size, 3)).astype(np.float32),
          "samples": probs.argmax(-1).astype(np.uint8), "probabilities": probs,
          "mean_prediction": rng.integers(0, 5, (images, size, size)).astype(np.uint8),
          "references": modes, "reference_weights": weights, "modes": modes,
          "mode_probs": weights, "label": label}
  return spec, data


def _assert_same(a, b, path="result"):
  if isinstance(a, dict):
    assert set(a) == set(b), path
    for key in a:
      _assert_same(a[key], b[key], f"{path}.{key}")
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), path
    for k, (x, y) in enumerate(zip(a, b)):
      _assert_same(x, y, f"{path}[{k}]")
  elif isinstance(a, float) or isinstance(b, float):
    if a is None or b is None:
      assert a == b, path
    else:
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=path)
  else:
    assert a == b, path


@pytest.mark.parametrize("make", [_graders_split, _flips_split])
def test_streaming_equals_whole_split(make):
  spec, data = make(np.random.default_rng(0))
  counts = (1, 2, 4)
  whole = evaluate_lib.score(data, spec, counts, seed=3)
  scorer = evaluate_lib.Scorer(spec, counts, seed=3)
  images = len(data["samples"])
  for lo in range(0, images, 3):  # batches of 3, 3, 1 (or 3, 3)
    scorer.update({k: v[lo:lo + 3] for k, v in data.items()})
  _assert_same(scorer.result(), whole)
  assert whole["num_images"] == images
  assert np.isfinite(whole["ece"]) and np.isfinite(whole["ncc"]["4"])


def test_scorer_matches_the_whole_array_measures():
  spec, data = _flips_split(np.random.default_rng(1))
  result = evaluate_lib.score(data, spec, (2, 4), seed=0)
  kw = dict(num_classes=5, class_ids=[1, 2, 3, 4], ignore_index=input_pipeline.VOID)
  w = data["mode_probs"].astype(np.float64)
  w /= w.sum(axis=1, keepdims=True)  # as the scorer normalises the float32 weights
  for n in (2, 4):
    s = data["samples"][:, :n]
    assert result["ged"][str(n)] == pytest.approx(
        np.nanmean(metrics.ged(s, data["modes"], w, **kw)), rel=1e-12)
    assert result["hm_iou"][str(n)] == pytest.approx(
        np.nanmean(metrics.hungarian_matched_iou(s, data["references"], w, **kw)), rel=1e-9)
    assert result["ncc"][str(n)] == pytest.approx(np.nanmean(metrics.s_ncc(
        data["probabilities"][:, :n], data["references"], w, num_classes=5,
        ignore_index=input_pipeline.VOID)), rel=1e-12)
  assert result["ged_resampled"] == pytest.approx(
      metrics.resampled_ged(data["samples"], data["modes"], w, (2, 4), **kw), rel=1e-12)
  stats = metrics.mode_statistics(data["samples"], data["modes"], w, num_samples=(2, 4), **kw)
  assert result["mode_tv"] == pytest.approx(stats["mode_tv"], rel=1e-12)
  flips = metrics.pixel_flip_rates(data["samples"], data["label"], FLIPS,
                                   class_names={1: "a", 2: "b"})
  assert result["flip_rates"] == flips
  assert result["ece"] == pytest.approx(metrics.expected_calibration_error(
      metrics.reliability_counts(data["samples"], data["modes"], w, **kw)), rel=1e-12)
  assert len(result["per_image"]["ged"]["4"]) == len(data["samples"])


def test_summary_names_the_split():
  spec, data = _graders_split(np.random.default_rng(2))
  result = evaluate_lib.score(data, spec, (1, 4))
  result.update(split="validation", dataset="synthetic_ambiguous/lidc_like", step=5)
  text = evaluate_lib.summary_table("run", result, (1, 4))
  assert "scored on the validation split of synthetic_ambiguous/lidc_like" in text
  assert "synthetic_ambiguous/lidc_like:validation" in evaluate_lib.report_markdown(
      {"run": result}, (1, 4))


def test_reliability_and_flip_rate_figures(tmp_path):
  spec, data = _flips_split(np.random.default_rng(3))
  result = evaluate_lib.score(data, spec, (1, 4))
  assert set(result["flip_rates"]) == {"a", "b"}  # named by the single-flip modes
  reliability = plots.reliability_diagram(str(tmp_path / "r.png"), {"run": result["reliability"]})
  flips = plots.flip_rates(str(tmp_path / "f.png"), {"run": result["flip_rates"]})
  modes = plots.mode_frequencies(str(tmp_path / "m.png"), result["mode_freq_true"],
                                 {"run": result["mode_freq_sampled"]["4"]}, result["mode_names"])
  for path in (reliability, flips, modes):
    assert (tmp_path / path).stat().st_size > 1000
