"""Training augmentation: the reference's Cityscapes pipeline (batchgenerators), in TF ops.

The reference (`data/cityscapes/data_loader.py` with `training/prob_unet_config.py`, on
MIC-DKFZ/batchgenerators) augments every training example, before the label flips, with

1. a horizontal mirror (p = 0.5);
2. one spatial transform of image and labels together: an elastic deformation (a displacement
   field of uniform noise in [-1, 1] smoothed by a Gaussian of sigma in [25, 35] px and scaled
   by alpha in [0, 800]), a rotation by an angle in [-pi/8, pi/8], a scaling by a factor in
   [0.8, 1.2] (half of the draws below 1, half above), and a crop of the input size around a
   random centre (the reference's centre range is a single point at 256x512, see
   `AugmentConfig.max_shift`); image pixels from outside the input are 0, label pixels 255
   (ignored);
3. a gamma transform of the image (p = 0.3 per example; per channel, gamma in [0.7, 1.5], half
   of the draws below 1; each channel's mean and standard deviation restored).

Here the image is resampled bilinearly (the reference: cubic splines), label maps (the label, a
cue, grader masks) by nearest neighbour, so every output label value is an input value or the
fill value, and an ignored pixel stays ignored wherever it moves.

Every random draw comes from stateless RNG ops keyed by `example_key(seed, example id, step)`:
the augmentation of an example depends on nothing else (not on the pipeline position, the worker
or the replica), so a resumed run and one or many replicas see the same augmented examples.
"""

import dataclasses
import math

import keras
import tensorflow as tf

# Salt of the augmentation keys, so they never equal the pipeline's other stateless keys.
_SALT = 0x4A7567


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Parameters of `augment_example`; the defaults are the reference's Cityscapes values.

  Attributes:
    mirror_p: probability of the horizontal mirror.
    elastic_alpha: range of alpha, the scale of the smoothed displacement field (pixels).
    elastic_sigma: range of the Gaussian sigma smoothing the displacement noise (pixels).
    rotation: range of the rotation angle (radians).
    scale: range of the scale factor of the sampling grid (> 1 zooms out); when it spans 1,
      half of the draws are below 1 and half above, as in batchgenerators.
    max_shift: `(rows, cols)`: the crop centre is the image centre plus a uniform shift in
      `[-max_shift, max_shift]` pixels. The reference draws the centre in `[d, size - d]` with
      `d` half the patch size and a patch as large as the image, i.e. no shift: `(0, 0)`.
    gamma: range of the per-channel gamma exponent (half of the draws below 1 when it spans 1).
    gamma_p: probability that an example's image gets the gamma transform.
    image_fill: image value outside the input.
    label_fill: label value outside the input (the ignore label).
    truncate: the Gaussian kernel's radius in sigmas (SciPy's `gaussian_filter` default).
  """
  mirror_p: float = 0.5
  elastic_alpha: tuple = (0.0, 800.0)
  elastic_sigma: tuple = (25.0, 35.0)
  rotation: tuple = (-math.pi / 8, math.pi / 8)
  scale: tuple = (0.8, 1.2)
  max_shift: tuple = (0.0, 0.0)
  gamma: tuple = (0.7, 1.5)
  gamma_p: float = 0.3
  image_fill: float = 0.0
  label_fill: int = 255
  truncate: float = 4.0


REFERENCE = AugmentConfig()

# Label-map features resampled with the image: `[H, W]` (label, cue) or `[R, H, W]` (masks).
LABEL_KEYS = ("label", "cue", "masks", "modes")


def example_key(seed, example_id, step):
  """The stateless RNG key `[2]` int64 of one example's augmentation at one training step.

  Args:
    seed: the run's seed (int or scalar tensor).
    example_id: the example's identity: a string (hashed with FarmHash's fingerprint, the same
      on every machine) or an integer (e.g. its index in the dataset).
    step: the training step (or epoch) the example is drawn for (int or scalar tensor).
  """
  example_id = tf.convert_to_tensor(example_id)
  if example_id.dtype == tf.string:
    example_id = tf.strings.to_hash_bucket_fast(example_id, 2**63 - 1)
  key = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SALT, tf.int64)])
  key = tf.random.experimental.stateless_fold_in(key, tf.cast(example_id, tf.int64))
  return tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int64))


def _two_sided(key, low, high):
  """batchgenerators' draw for scale and gamma: with p = 0.5 from `[low, 1)`, else from
  `[max(low, 1), high)` (always the latter when `low >= 1`)."""
  keys = tf.random.split(key, 2)
  above = tf.random.stateless_uniform([], keys[1], max(low, 1.0), high)
  if low >= 1.0:
    return above
  below = tf.random.stateless_uniform([], keys[0], low, 1.0)
  pick = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(key, 7))
  return tf.where(pick < 0.5, below, above)


def gaussian_smoothing_matrix(size, sigma, max_sigma, truncate=4.0):
  """`G [size, size]` with `G @ x` = SciPy's `gaussian_filter1d(x, sigma, mode="constant")`.

  The kernel has radius `floor(truncate * sigma + 0.5)` and sums to 1 over that radius; taps that
  fall outside the signal are dropped (zero padding), as in SciPy's constant mode.

  Args:
    size: signal length (static int).
    sigma: scalar float tensor.
    max_sigma: a static upper bound of `sigma` (fixes the kernel's normalisation range).
    truncate: radius in sigmas.
  """
  sigma = tf.cast(sigma, tf.float32)
  radius = tf.floor(truncate * sigma + 0.5)
  max_radius = int(truncate * max_sigma + 0.5) + 1
  taps = tf.range(-max_radius, max_radius + 1, dtype=tf.float32)
  norm = tf.reduce_sum(tf.where(tf.abs(taps) <= radius, tf.exp(-0.5 * (taps / sigma)**2), 0.0))
  index = tf.range(size, dtype=tf.float32)
  distance = tf.abs(index[:, None] - index[None, :])
  return tf.where(distance <= radius, tf.exp(-0.5 * (distance / sigma)**2), 0.0) / norm


def sampling_grid(key, height, width, config=REFERENCE):
  """Where each output pixel samples the input: `(rows, cols)`, each `[H, W]` float32.

  The zero-centred output grid is elastically displaced, rotated and scaled (in this order, as
  batchgenerators' `augment_spatial`), moved to the crop centre, and mirrored horizontally with
  probability `config.mirror_p` (the reference mirrors the input first; sampling a mirrored input
  at `(r, c)` is sampling the input at `(r, W - 1 - c)`).
  """
  keys = tf.random.split(key, 8)
  rows = tf.range(height, dtype=tf.float32)[:, None] - (height - 1) / 2.0
  cols = tf.range(width, dtype=tf.float32)[None, :] - (width - 1) / 2.0
  rows, cols = rows + tf.zeros([1, width]), cols + tf.zeros([height, 1])
  # Elastic deformation: alpha * (uniform noise in [-1, 1] smoothed by a Gaussian), per axis.
  alpha = tf.random.stateless_uniform([], keys[0], *config.elastic_alpha)
  sigma = tf.random.stateless_uniform([], keys[1], *config.elastic_sigma)
  noise = tf.random.stateless_uniform([2, height, width], keys[2], -1.0, 1.0)
  max_sigma = max(config.elastic_sigma)
  smooth_rows = gaussian_smoothing_matrix(height, sigma, max_sigma, config.truncate)
  smooth_cols = gaussian_smoothing_matrix(width, sigma, max_sigma, config.truncate)
  field = alpha * tf.matmul(tf.matmul(smooth_rows[None], noise), smooth_cols[None],
                            transpose_b=True)
  rows, cols = rows + field[0], cols + field[1]
  # Rotation (batchgenerators' rotate_coords_2d: coords^T @ [[cos, -sin], [sin, cos]]).
  angle = tf.random.stateless_uniform([], keys[3], *config.rotation)
  cos, sin = tf.cos(angle), tf.sin(angle)
  rows, cols = rows * cos + cols * sin, cols * cos - rows * sin
  # Scaling of the sampling grid (> 1 samples a larger region: the content shrinks).
  factor = _two_sided(keys[4], *config.scale)
  rows, cols = rows * factor, cols * factor
  # The crop centre.
  shift = tf.random.stateless_uniform([2], keys[5], -1.0, 1.0) * tf.constant(
      config.max_shift, tf.float32)
  rows = rows + (height - 1) / 2.0 + shift[0]
  cols = cols + (width - 1) / 2.0 + shift[1]
  mirror = tf.random.stateless_uniform([], keys[6]) < config.mirror_p
  cols = tf.where(mirror, (width - 1) - cols, cols)
  return rows, cols


def _resample(channels, rows, cols, order, fill):
  """Samples each `[H, W]` map of the list `channels` at `(rows, cols)` (order 0 or 1)."""
  coordinates = tf.stack([rows, cols])
  return [keras.ops.image.map_coordinates(c, coordinates, order=order, fill_mode="constant",
                                          fill_value=fill) for c in channels]


def gamma_transform(image, key, config=REFERENCE):
  """batchgenerators' `augment_gamma` (per channel, statistics kept) with p = `gamma_p`.

  Args:
    image: `[H, W, C]` float32.
    key: stateless RNG key `[2]`.
    config: `AugmentConfig`.

  Returns:
    `[H, W, C]` float32: with probability `gamma_p` each channel `x` becomes
    `((x - min) / (max - min + 1e-7))**gamma * (max - min) + min`, then is shifted and scaled
    back to its former mean and standard deviation; otherwise `image` unchanged. (The
    reference's copy of this function adds the mean back before dividing by the new standard
    deviation, which scales the mean too; here both statistics are kept, as in later
    batchgenerators versions.)
  """
  keys = tf.random.split(key, image.shape[-1] + 1)
  gammas = tf.stack([_two_sided(keys[c + 1], *config.gamma) for c in range(image.shape[-1])])
  axes = [0, 1]
  mean = tf.reduce_mean(image, axes)
  std = tf.math.reduce_std(image, axes)
  low = tf.reduce_min(image, axes)
  span = tf.reduce_max(image, axes) - low
  out = tf.pow((image - low) / (span + 1e-7), gammas) * span + low
  out = out - tf.reduce_mean(out, axes)
  out = out / (tf.math.reduce_std(out, axes) + 1e-8) * std + mean
  apply = tf.random.stateless_uniform([], keys[0]) < config.gamma_p
  return tf.where(apply, out, image)


def augment_example(example, key, config=REFERENCE):
  """One training example, augmented: image and label maps through one spatial transform.

  Args:
    example: a dict with `image` `[H, W, C]` (any real dtype; e.g. uint8 0..255) and any of the
      label maps `label` `[H, W]`, `cue` `[H, W]`, `masks` / `modes` `[R, H, W]` (integers).
      Other entries pass through. H, W and C must be static.
    key: the stateless RNG key `[2]` int64 of this example (see `example_key`).
    config: `AugmentConfig` (default: the reference's Cityscapes pipeline).

  Returns:
    The dict with `image` float32 `[H, W, C]` on the input's scale (bilinear; `image_fill`
    outside the input; gamma-transformed with probability `gamma_p`) and each label map in its
    dtype and shape (nearest neighbour; `label_fill` outside the input).
  """
  image = tf.cast(example["image"], tf.float32)
  if image.shape.rank != 3 or not image.shape.is_fully_defined():
    raise ValueError(f"augment: expected an image of static shape [H, W, C], found "
                     f"{image.shape}.")
  height, width, num_channels = image.shape
  spatial_key, gamma_key = tf.unstack(tf.random.split(key, 2))
  rows, cols = sampling_grid(spatial_key, height, width, config)
  out = dict(example)
  image = tf.stack(_resample(tf.unstack(image, num_channels, axis=-1), rows, cols, 1,
                             config.image_fill), axis=-1)
  out["image"] = gamma_transform(image, gamma_key, config)
  for name in LABEL_KEYS:
    if name not in example:
      continue
    maps = tf.convert_to_tensor(example[name])
    if maps.shape.rank == 2:
      out[name] = _resample([maps], rows, cols, 0, config.label_fill)[0]
    else:
      out[name] = tf.stack(_resample(tf.unstack(maps, maps.shape[0]), rows, cols, 0,
                                     config.label_fill))
  return out
