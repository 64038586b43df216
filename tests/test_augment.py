"""The training augmentation (`tf_prob_unet.augment`): alignment of image, cue and label, the
ignore label, the reference's gamma transform, repeatability and independence of the replicas.

The replica test needs a fresh process (logical devices are fixed at start-up), so it starts this
file as a script (`python tests/test_augment.py replicas DIR`).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # when run as a script
  sys.path.insert(0, REPO)

from tf_prob_unet import augment, input_pipeline, train_lib  # noqa: E402

NO_GAMMA = augment.AugmentConfig(gamma_p=0.0)
TINY_FLIPS = "synthetic_ambiguous/cityscapes_like_tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _augment(example, step, config=augment.REFERENCE, example_id="frame", seed=0):
  out = augment.augment_example(example, augment.example_key(seed, example_id, step), config)
  return {k: v.numpy() for k, v in out.items()}


def test_smoothing_matrix_is_scipys_constant_mode_gaussian_filter():
  noise = np.random.default_rng(0).uniform(-1, 1, (40, 70))
  for sigma in (3.0, 7.5):
    rows = augment.gaussian_smoothing_matrix(40, sigma, 8.0).numpy()
    cols = augment.gaussian_smoothing_matrix(70, sigma, 8.0).numpy()
    np.testing.assert_allclose(rows @ noise @ cols.T,
                               ndimage.gaussian_filter(noise, sigma, mode="constant", cval=0.0),
                               atol=1e-6)


def test_label_drawn_from_the_image_stays_aligned():
  """A piecewise-constant image (blocks of 50, 150, 250) and its label = image // 100: wherever
  the bilinear image is still exactly a block value, the nearest-neighbour label agrees with it;
  wherever the image is the outside fill, the label is ignored."""
  rng = np.random.default_rng(1)
  blocks = rng.integers(0, 3, (6, 8))
  label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)  # [48, 64]
  image = (50 + 100 * label).astype(np.uint8)[..., None].repeat(3, axis=-1)
  checked = moved = outside = 0
  for step in range(6):
    out = _augment({"image": image, "label": label, "cue": label}, step, NO_GAMMA)
    value, lab = out["image"], out["label"]
    assert value.shape == (48, 64, 3) and lab.shape == (48, 64) and lab.dtype == np.uint8
    np.testing.assert_array_equal(out["cue"], lab)
    np.testing.assert_array_equal(value[..., 0], value[..., 2])
    inside = np.isin(np.round(value[..., 0], 4), [50, 150, 250])
    np.testing.assert_array_equal(lab[inside], (value[..., 0][inside] // 100).astype(np.uint8))
    fill = value[..., 0] == 0
    assert (lab[fill] == 255).all()
    checked += inside.sum()
    moved += (lab != label).sum()
    outside += fill.sum()
  assert checked > 0.5 * 6 * 48 * 64 and moved > 0 and outside > 0


def test_image_cue_and_label_sample_the_same_point():
  """The image encodes its own coordinates (row, column ramps; a constant channel marks samples
  that stay inside): label and cue must be the input's at the nearest pixel to the decoded point,
  ignored pixels included, and 255 where the point left the input."""
  height, width = 48, 64
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  image = np.stack([3 * rows, 3 * cols, np.full_like(rows, 200)], -1).astype(np.uint8)
  rng = np.random.default_rng(2)
  label = rng.integers(0, 7, (height, width)).astype(np.uint8)
  label[rng.random((height, width)) < 0.2] = 255  # ignored pixels
  cue = rng.integers(0, 5, (height, width)).astype(np.uint8)
  checked = ignored = mirrored = 0
  for step in range(8):
    out = _augment({"image": image, "label": label, "cue": cue}, step, NO_GAMMA)
    r, c = out["image"][..., 0] / 3, out["image"][..., 1] / 3
    sure = ((np.abs(out["image"][..., 2] - 200) < 1e-3)  # the whole bilinear stencil inside
            & (np.abs(r % 1 - 0.5) > 1e-3) & (np.abs(c % 1 - 0.5) > 1e-3))  # no rounding ties
    ri, ci = np.round(r[sure]).astype(int), np.round(c[sure]).astype(int)
    np.testing.assert_array_equal(out["label"][sure], label[ri, ci])
    np.testing.assert_array_equal(out["cue"][sure], cue[ri, ci])
    checked += sure.sum()
    ignored += (label[ri, ci] == 255).sum()
    mirrored += c[height // 2, 1] > c[height // 2, -2]
    # Every output label is an input label or the fill; the points that left the input are 255.
    assert set(np.unique(out["label"])) <= set(np.unique(label)) | {255}
    assert (out["label"][out["image"][..., 2] == 0] == 255).all()
  assert checked > 0.5 * 8 * height * width and ignored > 0 and 0 < mirrored < 8


def test_grader_masks_move_with_the_image():
  image = np.zeros((32, 32, 1), np.uint8)
  image[8:20, 10:24] = 255
  masks = np.zeros((4, 32, 32), np.uint8)
  masks[:, 8:20, 10:24] = 1
  masks[3] = 0  # an empty grader stays empty
  out = _augment({"image": image, "masks": masks}, 3, NO_GAMMA)
  assert out["masks"].shape == (4, 32, 32)
  np.testing.assert_array_equal(out["masks"][0], out["masks"][2])
  assert set(np.unique(out["masks"][3])) <= {0, 255}
  bright = out["image"][..., 0] > 254.5
  assert bright.sum() > 50 and (out["masks"][0][bright] == 1).all()
  assert (out["masks"][0][out["image"][..., 0] < 0.5] != 1).all()


def test_gamma_keeps_each_channels_statistics_and_order():
  rng = np.random.default_rng(3)
  image = tf.constant(rng.uniform(0, 255, (16, 16, 3)), tf.float32)
  always = augment.AugmentConfig(gamma_p=1.0)
  out = augment.gamma_transform(image, tf.constant([5, 6], tf.int64), always).numpy()
  x = image.numpy()
  np.testing.assert_allclose(out.mean((0, 1)), x.mean((0, 1)), rtol=1e-4)
  np.testing.assert_allclose(out.std((0, 1)), x.std((0, 1)), rtol=1e-3)
  assert not np.allclose(out, x, atol=1e-2)
  for ch in range(3):  # a monotone map of each channel, with its own gamma
    order = np.argsort(x[..., ch], axis=None)
    assert (np.diff(out[..., ch].ravel()[order]) >= -1e-3).all()
  # The exponent of channel 0, recovered from the min/max-normalised values, is in [0.7, 1.5].
  xs, os_ = [(v[..., 0] - v[..., 0].min()) / np.ptp(v[..., 0]) for v in (x, out)]
  mid = (xs > 0.2) & (xs < 0.8)
  gamma = np.median(np.log(os_[mid]) / np.log(xs[mid]))
  assert 0.7 <= gamma <= 1.5
  # Applied to about 30% of the examples.
  gamma = tf.function(augment.gamma_transform)
  applied = [not np.array_equal(gamma(image, tf.constant([0, k], tf.int64)).numpy(), x)
             for k in range(300)]
  assert 0.22 < np.mean(applied) < 0.38


def test_augmentation_is_repeatable_and_keyed_by_example_and_step():
  rng = np.random.default_rng(4)
  example = {"image": rng.integers(0, 256, (24, 32, 3)).astype(np.uint8),
             "label": rng.integers(0, 5, (24, 32)).astype(np.uint8)}
  a, b = _augment(example, 7), _augment(example, 7)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  # The key is a function of (seed, id, step) only, whatever their Python or tensor types.
  np.testing.assert_array_equal(augment.example_key(0, "frame", 7).numpy(),
                                augment.example_key(tf.constant(0), tf.constant("frame"),
                                                    tf.constant(7, tf.int64)).numpy())
  for other in (_augment(example, 8), _augment(example, 7, example_id="other"),
                _augment(example, 7, seed=1)):
    assert not np.array_equal(a["image"], other["image"])


def _images_by_id(builder):
  return {ex["id"].decode(): ex for ex in builder.as_dataset(split="train").as_numpy_iterator()}


def test_pipeline_rows_are_each_example_augmented_on_its_own(data_dir):
  """Each row of a training batch is its example augmented with the key (seed, id, step) alone:
  any worker or replica that reads that example for that step makes the same row."""
  builder = input_pipeline.get_builder(TINY_FLIPS, data_dir)
  spec = input_pipeline.dataset_spec(builder)
  batches = [(x.numpy(), y.numpy()) for x, y in input_pipeline.train_dataset(
      builder, spec, 4, seed=5, shuffle_buffer=8, augment=True).take(3)]
  again = [x.numpy() for x, _ in input_pipeline.train_dataset(
      builder, spec, 4, seed=5, shuffle_buffer=8, augment=True).take(3)]
  plain = [x.numpy() for x, _ in input_pipeline.train_dataset(
      builder, spec, 4, seed=5, shuffle_buffer=8).take(3)]
  examples = _images_by_id(builder)
  alone_fn = tf.function(lambda ex, key: input_pipeline.model_inputs(
      augment.augment_example(ex, key), spec))
  for step, (x, y) in enumerate(batches):
    np.testing.assert_array_equal(x, again[step])
    assert not np.array_equal(x, plain[step])
    allowed = set(range(spec.num_classes)) | {255}
    assert set(np.unique(y)) <= allowed
    alone = {i: alone_fn({k: ex[k] for k in ("image", "label", "cue")},
                         augment.example_key(5, i, step)).numpy() for i, ex in examples.items()}
    for row in range(4):
      # Equal up to float rounding (graph and eager kernels may sum in another order).
      assert sum(np.abs(x[row] - a).max() < 1e-5 for a in alone.values()) == 1, (step, row)


def test_a_resumed_pipeline_sees_the_same_augmentation(data_dir, tmp_path):
  builder = input_pipeline.get_builder(TINY_FLIPS, data_dir)
  spec = input_pipeline.dataset_spec(builder)
  make = lambda: iter(input_pipeline.train_dataset(  # noqa: E731
      builder, spec, 4, seed=2, shuffle_buffer=8, augment=True))
  iterator = make()
  next(iterator)
  path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt"))
  expected = [next(iterator)[0].numpy() for _ in range(2)]
  resumed = make()
  tf.train.Checkpoint(iterator=resumed).restore(path)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)[0].numpy(), batch)


def _child_replicas(root):
  """Runs in a fresh process: the first augmented batch on one device and as the two replicas
  of a MirroredStrategy on two logical CPUs receive it."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  builder = input_pipeline.get_builder(TINY_FLIPS, os.path.join(root, "data"))
  spec = input_pipeline.dataset_spec(builder)
  images, labels = next(iter(input_pipeline.train_dataset(builder, spec, 4, seed=3,
                                                           shuffle_buffer=8, augment=True)))
  strategy = train_lib.make_strategy("mirrored")
  per_replica = strategy.run(lambda x, y: (tf.identity(x), tf.identity(y)),
                             args=train_lib.distribute_batch(strategy, (images, labels)))
  parts = [strategy.experimental_local_results(t) for t in per_replica]
  out = {"replicas": strategy.num_replicas_in_sync,
         "images_equal": bool(np.array_equal(np.concatenate([p.numpy() for p in parts[0]]),
                                              images.numpy())),
         "labels_equal": bool(np.array_equal(np.concatenate([p.numpy() for p in parts[1]]),
                                             labels.numpy()))}
  print(json.dumps(out))


@pytest.mark.slow
def test_one_and_two_replicas_see_the_same_augmentation(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, __file__, "replicas", str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["replicas"] == 2 and out["images_equal"] and out["labels_equal"]


if __name__ == "__main__":
  if sys.argv[1] == "replicas":
    _child_replicas(sys.argv[2])
