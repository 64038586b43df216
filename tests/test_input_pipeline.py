"""The tf.data pipeline on the tiny synthetic configs: grader draws, flips, evaluation batches."""

import numpy as np
import pytest
import tensorflow as tf

from tf_prob_unet import input_pipeline


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _first_batches(builder, spec, seed, n=3):
  ds = input_pipeline.train_dataset(builder, spec, 4, seed=seed, shuffle_buffer=8)
  return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_grader_training_stream_is_seeded_and_draws_real_graders(data_dir):
  builder = input_pipeline.get_builder("synthetic_ambiguous/lidc_like_tiny", data_dir)
  spec = input_pipeline.dataset_spec(builder)
  assert spec.kind == "graders" and spec.num_classes == 2 and spec.image_shape == (32, 32, 1)
  a, b = _first_batches(builder, spec, 3), _first_batches(builder, spec, 3)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  c = _first_batches(builder, spec, 4)
  assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
  # Every training label is one of that image's four grader masks.
  examples = {ex["image"].numpy().tobytes(): ex["masks"].numpy()
              for ex in builder.as_dataset(split="train")}
  for x, y in a:
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    for xi, yi in zip(x, y):
      masks = examples[np.round(xi * 255).astype(np.uint8).tobytes()]
      assert any(np.array_equal(yi, m) for m in masks)


def test_grader_eval_batches_keep_every_grader_and_mode(data_dir):
  builder = input_pipeline.get_builder("synthetic_ambiguous/lidc_like_tiny", data_dir)
  spec = input_pipeline.dataset_spec(builder)
  batch = next(iter(input_pipeline.eval_dataset(builder, spec, 4, split="test")))
  assert batch["references"].shape == (4, 4, 32, 32)
  np.testing.assert_allclose(batch["reference_weights"].numpy(), 0.25)
  assert batch["modes"].shape == (4, 4, 32, 32)
  np.testing.assert_allclose(batch["mode_probs"].numpy().sum(-1), 1.0, rtol=1e-5)


def test_flip_stream_and_modes(data_dir):
  builder = input_pipeline.get_builder("synthetic_ambiguous/cityscapes_like_tiny", data_dir)
  spec = input_pipeline.dataset_spec(builder)
  assert spec.kind == "flips" and spec.has_cue
  assert spec.image_shape == (32, 32, 3 + spec.num_base_classes)
  assert len(spec.flips) == 3 and spec.num_classes == 9
  batch = next(iter(input_pipeline.eval_dataset(builder, spec, 4, split="test")))
  modes, probs, label = batch["modes"].numpy(), batch["mode_probs"].numpy(), batch["label"].numpy()
  assert modes.shape == (4, 8, 32, 32)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(modes[:, 0], label)  # mode 0: nothing flipped
  # Mode 7 flips all three classes; void stays void.
  flipped = label.copy()
  for src, dst, _ in spec.flips:
    flipped[label == src] = dst
  np.testing.assert_array_equal(modes[:, 7], flipped)
  assert probs[0, 0] == pytest.approx((9 / 17) * (11 / 17) * (13 / 17), rel=1e-5)
  # The cue is one-hot in the extra channels.
  cue = batch["image"].numpy()[..., 3:]
  np.testing.assert_allclose(cue.sum(-1), 1.0)
  # Training flips: each class is relabelled to its synonym at about its probability.
  ds = input_pipeline.train_dataset(builder, spec, 8, seed=0, shuffle_buffer=8)
  counts = np.zeros(3)
  n = 0
  for _, y in ds.take(40):
    y = y.numpy()
    for i, (src, dst, _) in enumerate(spec.flips):
      present = [(yi == src).any() or (yi == dst).any() for yi in y]
      flipped = [(yi == dst).any() for yi in y]
      assert not any((yi == src).any() and (yi == dst).any() for yi in y)  # whole class flips
      counts[i] += sum(f for f, p in zip(flipped, present) if p)
    n += len(y)
  rates = counts / n
  for rate, (_, _, p) in zip(rates, spec.flips):
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.02


def test_unknown_dataset_is_a_clear_error(data_dir):
  with pytest.raises(ValueError, match="--dataset"):
    input_pipeline.get_builder("no_such_dataset/x", data_dir)
  with pytest.raises(ValueError, match="--dataset"):
    input_pipeline.get_builder("synthetic_ambiguous/no_such_config", data_dir)
