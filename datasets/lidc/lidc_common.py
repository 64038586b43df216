"""What every LIDC layout reader shares: the example format, the patient split, PNG decoding.

Every reader (one module per builder config: `slices_reader`, `deepmind_reader`,
`pickle_reader`) turns its layout into examples of the same form, made by `make_example`:

  image       uint8 [128, 128, 1]
  masks       uint8 [4, 128, 128], values {0, 1} (one mask per reader; empty = not marked)
  patient_id  str, e.g. "LIDC-IDRI-0001"
  lesion_id   str, the lesion inside the patient (layout-specific, see README.md)
  slice_id    str, the slice or crop inside the lesion (layout-specific)
  id          str, unique in the dataset (also the TFDS key)

and exposes `split_generators(manual_dir) -> {split: iterator of (key, example)}`.
"""

import hashlib
import io
import os

import numpy as np
from PIL import Image

IMAGE_SIZE = 128
NUM_READERS = 4
SPLITS = ("train", "validation", "test")
# Percent of patients per split for layouts that come without a split (see `patient_split`).
SPLIT_PERCENT = (70, 15, 15)


class LidcError(ValueError):
  """A missing, unreadable or unexpected input file (the message names it)."""


def patient_split(patient_id):
  """The split of a patient, for layouts without a split of their own.

  Bucket = the first 8 bytes of SHA-256(patient_id, UTF-8) as a big-endian integer, modulo 100;
  buckets 0-69 are `train`, 70-84 `validation`, 85-99 `test`. It depends on nothing but the
  patient id (not on the file order, the machine or the Python hash seed), so a patient is in the
  same split in every build and in every layout that names it the same way.

  Args:
    patient_id: str, e.g. "LIDC-IDRI-0001".

  Returns:
    "train", "validation" or "test".
  """
  digest = hashlib.sha256(patient_id.encode("utf-8")).digest()
  bucket = int.from_bytes(digest[:8], "big") % 100
  edge = 0
  for split, percent in zip(SPLITS, SPLIT_PERCENT):
    edge += percent
    if bucket < edge:
      return split
  raise AssertionError("SPLIT_PERCENT must sum to 100")


def decode_gray_png(data, name):
  """Decodes an 8-bit grey-scale PNG (grey RGB(A) or grey+alpha are reduced to one channel).

  Args:
    data: the file's bytes.
    name: the file's name, for error messages.

  Returns:
    uint8 [H, W].

  Raises:
    LidcError: not a PNG, not 8-bit, or colour.
  """
  try:
    with Image.open(io.BytesIO(data)) as png:
      png.load()
      mode = png.mode
      array = np.asarray(png)
  except Exception as e:  # PIL raises many types for corrupt files.
    raise LidcError(f"{name}: expected an 8-bit grey-scale PNG, could not decode it ({e}).") from None
  if mode == "P":
    raise LidcError(f"{name}: expected an 8-bit grey-scale PNG, found a palette image.")
  if array.dtype == bool:
    array = array.astype(np.uint8) * 255
  if array.dtype != np.uint8:
    raise LidcError(f"{name}: expected an 8-bit grey-scale PNG, found mode {mode} "
                    f"({array.dtype}).")
  if array.ndim == 3:
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if np.any(colour != colour[..., :1]):
      raise LidcError(f"{name}: expected an 8-bit grey-scale PNG, found colour mode {mode}.")
    array = colour[..., 0]
  return array


def read_file(path):
  """The bytes of `path`; a missing or unreadable file is a `LidcError` naming it."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise LidcError(f"{path}: expected a readable file, {e.strerror.lower()}.") from None


def to_uint8_image(array, name):
  """A float image in [0, 1] or a uint8 image as uint8 (floats are scaled by 255 and rounded)."""
  array = np.asarray(array)
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.floating):
    if array.size and (np.nanmin(array) < -1e-3 or np.nanmax(array) > 1 + 1e-3):
      raise LidcError(f"{name}: expected image values in [0, 1], found "
                      f"[{np.nanmin(array):.4g}, {np.nanmax(array):.4g}].")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
  raise LidcError(f"{name}: expected a uint8 or float image, found dtype {array.dtype}.")


def center_crop(array, size, name):
  """The central `size` x `size` window of a [H, W, ...] array (odd margins: one more at the end)."""
  height, width = array.shape[:2]
  if height < size or width < size:
    raise LidcError(f"{name}: expected at least {size}x{size} pixels, found {height}x{width}.")
  top, left = (height - size) // 2, (width - size) // 2
  return array[top:top + size, left:left + size]


def make_example(image, masks, patient_id, lesion_id, slice_id, example_id, name):
  """Validates and packs one example (see the module docstring).

  Args:
    image: [128, 128] or [128, 128, 1], uint8.
    masks: sequence of 4 arrays [128, 128], any numeric dtype; binarised with `> 0`.
    patient_id, lesion_id, slice_id, example_id: str.
    name: what the example was read from, for error messages.

  Returns:
    The feature dict.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 1) or image.dtype != np.uint8:
    raise LidcError(f"{name}: expected a uint8 {IMAGE_SIZE}x{IMAGE_SIZE} image, found "
                    f"{image.dtype} {'x'.join(map(str, image.shape))}.")
  if len(masks) != NUM_READERS:
    raise LidcError(f"{name}: expected {NUM_READERS} reader masks, found {len(masks)} (data "
                    f"with another number of raters: `python -m tf_prob_unet.import_data`).")
  stacked = []
  for k, mask in enumerate(masks):
    mask = np.asarray(mask)
    if mask.shape != (IMAGE_SIZE, IMAGE_SIZE):
      raise LidcError(f"{name}: expected mask {k} of {IMAGE_SIZE}x{IMAGE_SIZE} pixels, found "
                      f"{'x'.join(map(str, mask.shape))}.")
    stacked.append(mask > 0)
  return {
      "image": image,
      "masks": np.stack(stacked).astype(np.uint8),
      "patient_id": patient_id,
      "lesion_id": lesion_id,
      "slice_id": slice_id,
      "id": example_id,
  }


def list_manual_dir(manual_dir):
  """The sorted entries of the manual directory, for error messages ("(empty)" if none)."""
  try:
    entries = sorted(os.listdir(manual_dir))
  except OSError:
    return "(not a readable directory)"
  return ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "") if entries else "(empty)"
