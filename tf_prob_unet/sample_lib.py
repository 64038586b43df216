"""Sampling a user's own images, flag-free: masks, a grid and an uncertainty map per image.

`run(SampleConfig)` loads a training run (`model_dir`, any model of the registry) or an export
(`saved_model`, a version directory written by `export_lib.export_saved_model`), and for every
image writes to `output_dir/<image stem>/`:

- `sample_00.png` ... : each sampled mask, 8-bit; binary masks as 0 / 255, multi-class masks as
  the class ids;
- `grid.png`: the image and its samples side by side;
- `uncertainty.png` and `uncertainty.npy`: the per-pixel entropy of the class frequencies over
  the samples (nats, float32 `[H, W]`; the PNG maps 0 .. log K to black .. white).

Every image must have the model's size and channels (`H x W x C` of its `input_shape`); another
size or channel count stops with one line saying what the model takes and what the file has.
Input preprocessing (the SavedModel does the same in its graph):
- PNG (or any image Pillow reads): 8-bit values as they are (a palette is expanded, a fully
  opaque alpha channel dropped, and an RGB image whose three channels are equal read as
  grayscale for a 1-channel model), then / 255.
- `.npy`: raw CT values in Hounsfield units, `[H, W]` or `[H, W, C]`: clipped to `ct_window`
  (default -1350 .. 150 HU, the lung window: level -600, width 1500), scaled linearly to
  0 .. 255 and rounded to uint8, then / 255.

With a seed, the Keras model and its export draw the same samples (the export's
`sample_with_noise` is fed the noise `sample` would draw).
"""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_prob_unet import export_lib
from tf_prob_unet import plots
from tf_prob_unet import run_dir
from tf_prob_unet.models import common


@dataclasses.dataclass
class SampleConfig:
  """Settings of the sample binary; field names are its flag names."""
  model_dir: str = ""
  saved_model: str = ""
  image: tuple = ()
  num_samples: int = 16
  output_dir: str = ""
  seed: int = 0
  ct_window: tuple = (-1350.0, 150.0)

  def validate(self):
    if bool(self.model_dir) == bool(self.saved_model):
      raise ValueError("--model_dir / --saved_model: expected exactly one of them, found "
                       f"{'both' if self.model_dir else 'neither'}.")
    if not self.image:
      raise ValueError("--image: expected at least one image file, found none.")
    if self.num_samples < 1:
      raise ValueError(f"--num_samples: expected >= 1, found {self.num_samples}.")
    if not self.output_dir:
      raise ValueError("--output_dir: expected a directory, found an empty string.")
    run_dir.check_writable(self.output_dir, "--output_dir")
    if len(self.ct_window) != 2 or not self.ct_window[0] < self.ct_window[1]:
      raise ValueError(f"--ct_window: expected LOW,HIGH with LOW < HIGH, found "
                       f"{list(self.ct_window)}.")


def window_ct(values, ct_window):
  """Raw CT values (HU) -> uint8: clip to `ct_window`, scale linearly to 0 .. 255, round."""
  low, high = ct_window
  scaled = (np.clip(np.asarray(values, np.float64), low, high) - low) / (high - low) * 255.0
  return np.round(scaled).astype(np.uint8)


NPY = ".npy of CT values"  # what `read_image` says a `.npy` file holds


def read_image(path, ct_window=SampleConfig.ct_window):
  """An image file as it is: uint8 `[H, W, C]` with the file's own channels, and a description
  of its channels (the Pillow mode, e.g. `L`, `RGB`, or `.npy`).

  PNG (any image Pillow reads): palette images are expanded, a fully opaque alpha channel is
  dropped, 16-bit and integer grayscale must hold values 0 .. 255. `.npy`: CT values in
  Hounsfield units `[H, W]` or `[H, W, C]`, windowed to `ct_window` (`window_ct`).

  Raises:
    ValueError: a missing or unreadable file, or values that are not 8-bit.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--image: expected an image file, found nothing at {path!r}.")
  if path.lower().endswith(".npy"):
    values = np.load(path, allow_pickle=False)
    if values.ndim == 2:
      values = values[..., np.newaxis]
    if values.ndim != 3:
      raise ValueError(f"--image: expected a [H, W] or [H, W, C] array of CT values in "
                       f"{path!r}, found shape {list(values.shape)}.")
    return window_ct(values, ct_window), NPY
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
      elif mode == "1":
        img = img.convert("L")
      array = np.asarray(img)
  except OSError as e:
    raise ValueError(f"--image: expected a PNG (or another image Pillow reads), could not read "
                     f"{path!r}: {e}.") from None
  if array.dtype != np.uint8:
    if array.size and (array.min() < 0 or array.max() > 255 or np.any(array != np.round(array))):
      raise ValueError(f"--image: expected 8-bit values 0 .. 255, found {array.min()} .. "
                       f"{array.max()} in {path!r} (mode {mode}); pass raw CT values as .npy.")
    array = array.astype(np.uint8)
  if array.ndim == 2:
    array = array[..., np.newaxis]
  if img.mode in ("LA", "RGBA") and np.all(array[..., -1] == 255):
    array = array[..., :-1]  # an opaque alpha channel carries nothing
  return array, mode


def load_image(path, channels, ct_window=SampleConfig.ct_window, size=None):
  """One image as uint8 `[H, W, channels]`, refused unless it has the model's channels (and
  `size`, `(H, W)`, when given).

  A colour image whose three channels are equal (grayscale stored as RGB) is read as grayscale
  for a 1-channel model; nothing else is converted (see the module docstring).

  Raises:
    ValueError: an unreadable file, or an image of another channel count or size than the model
      takes (one line: what the model takes, what the file has).
  """
  array, kind = read_image(path, ct_window)
  if kind != NPY and channels == 1 and array.shape[-1] == 3 and np.all(array == array[..., :1]):
    array = array[..., :1]
  found = (array.shape[0], array.shape[1], array.shape[-1])
  expected = (tuple(size) if size else found[:2]) + (channels,)
  if found != expected:
    takes = (f"{expected[0]}x{expected[1]}x{channels} images (height x width x channels)"
             if size else f"{channels}-channel images")
    raise ValueError(f"--image: the model takes {takes}, found {found[0]}x{found[1]}x{found[2]} "
                     f"({kind}) in {path!r}; resize or convert the image first.")
  return array


def keras_sampler(model, channels):
  """`fn(images uint8 [B, H, W, C], num_samples, seed) -> (labels, probabilities)` of a model."""

  @tf.function(reduce_retracing=True)
  def draw(images, seed, num_samples):
    x = export_lib.preprocess(images, channels)
    return model.sample(x, num_samples, seed=seed, return_probs=True)

  def fn(images, num_samples, seed):
    labels, probabilities = draw(tf.constant(images), seed, int(num_samples))
    return labels.numpy(), probabilities.numpy()
  return fn


def saved_model_sampler(loaded, info):
  """The same contract through an export's `sample_with_noise` signature (`info`: its
  `export_lib.read_info` record, which gives the noise size per image size)."""
  signature = loaded.signatures["sample_with_noise"]

  def fn(images, num_samples, seed):
    size = export_lib.noise_size(info, images.shape[1], images.shape[2])
    noise = common.normal_noise(tf.stack([images.shape[0], num_samples, size]), seed)
    out = signature(images=tf.constant(images), noise=noise)
    return out["labels"].numpy(), out["probabilities"].numpy()
  return fn


def _write_png(path, array):
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".png")
  os.close(fd)
  Image.fromarray(array).save(tmp)
  os.replace(tmp, path)


def _write_npy(path, array):
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npy")
  with os.fdopen(fd, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)


def _output_names(paths):
  """A directory name per image: its stem, made unique by an index where stems repeat."""
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  return [s if stems.count(s) == 1 else f"{i:03d}_{s}" for i, s in enumerate(stems)]


def run(config, log=print):
  """Samples every image of `config.image`; returns a list of per-image dicts of written paths."""
  config.validate()
  if config.model_dir:
    model, info = run_dir.load_model(config.model_dir)
    channels = int(info["input_shape"][-1])
    sampler = keras_sampler(model, channels)
    num_classes = model.num_classes
  else:
    info = export_lib.read_info(config.saved_model)
    channels = int(info["input_shape"][-1])
    sampler = saved_model_sampler(tf.saved_model.load(config.saved_model), info)
    num_classes = info["num_classes"]
  size = tuple(int(v) for v in info["input_shape"][:2])
  images = [load_image(p, channels, config.ct_window, size) for p in config.image]
  results = []
  for index, (path, image, name) in enumerate(zip(config.image, images,
                                                  _output_names(config.image))):
    seed = tf.constant([config.seed, index], tf.int64)
    labels, probabilities = sampler(image[np.newaxis], config.num_samples, seed)
    stats = export_lib.uncertainty(labels, probabilities)
    entropy = stats["entropy"].numpy()[0].astype(np.float32)
    out_dir = os.path.join(config.output_dir, name)
    os.makedirs(out_dir, exist_ok=True)
    scale = 255 if num_classes == 2 else 1
    masks = []
    for j in range(config.num_samples):
      masks.append(os.path.join(out_dir, f"sample_{j:02d}.png"))
      _write_png(masks[-1], (labels[0, j] * scale).astype(np.uint8))
    uncertainty_png = os.path.join(out_dir, "uncertainty.png")
    _write_png(uncertainty_png,
               np.round(entropy / np.log(num_classes) * 255).clip(0, 255).astype(np.uint8))
    uncertainty_npy = os.path.join(out_dir, "uncertainty.npy")
    _write_npy(uncertainty_npy, entropy)
    grid = plots.sample_grid(os.path.join(out_dir, "grid.png"),
                             image[np.newaxis].astype(np.float32) / 255.0,
                             np.zeros((1, 0) + image.shape[:2], np.int32), labels,
                             num_classes=num_classes, max_images=1,
                             max_samples=config.num_samples)
    results.append({"image": path, "masks": masks, "grid": grid,
                    "uncertainty_png": uncertainty_png, "uncertainty_npy": uncertainty_npy,
                    "mean_entropy": float(entropy.mean())})
    log(f"{path}: {config.num_samples} samples, mean entropy {entropy.mean():.3f} nats -> "
        f"{out_dir}")
  return results
