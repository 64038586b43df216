"""The `deepmind` config: the DeepMind LIDC crops release (180x180 PNGs, its own split).

Layout (the three archives gs://hpunet-data/lidc_crops/{train,val,test}.tar.gz extracted into
the manual dir, or into `lidc_crops/` inside it):

  <split>/images/<patient>/z-<z>_c<n>.png        180x180 8-bit grey
  <split>/gt/<patient>/z-<z>_c<n>_l<k>.png       4 masks per image, k = 0..3 or 1..4

Images and masks are centre-cropped to 128x128 (26 pixels off each side of a 180x180 crop) and
masks are binarised with `> 0` (they come as {0, 255} or {0, 1}). The release's README says the
reader index runs 1-4, its colab reads 0-3: both are accepted (per image, exactly one of the two).
Splits: the release's own (`val` -> `validation`). Ids: `patient_id` = `<patient>`, `lesion_id`
= `c<n>` (the crop index within the slice), `slice_id` = `z-<z>`, `id` =
`<patient>/z-<z>_c<n>`.
"""

import os
import re

from . import lidc_common

RELEASE_SPLITS = {"train": "train", "validation": "val", "test": "test"}
SUBFOLDER = "lidc_crops"
DESCRIPTION = ("DeepMind LIDC crops release (<split>/images/<patient>/z-<z>_c<n>.png, "
               "<split>/gt/<patient>/z-<z>_c<n>_l<k>.png), 180x180 centre-cropped to 128x128; "
               "the release's train/val/test split.")
MANUAL_INSTRUCTIONS = """\
`deepmind`: download gs://hpunet-data/lidc_crops/{train,val,test}.tar.gz (the DeepMind
hierarchical Probabilistic U-Net release) and extract all three into the manual dir (or into
`lidc_crops/` inside it), giving `train/`, `val/` and `test/` folders with `images/` and `gt/`."""

_IMAGE_RE = re.compile(r"^(?P<slice>z-.+)_c(?P<crop>\d+)\.png$")
_MASK_RE = re.compile(r"^(?P<stem>z-.+_c\d+)_l(?P<reader>\d+)\.png$")
_READER_SETS = (tuple(range(lidc_common.NUM_READERS)),
                tuple(range(1, lidc_common.NUM_READERS + 1)))


def find_root(manual_dir):
  """The folder holding `train/`, `val/`, `test/` (the manual dir or `lidc_crops/` in it)."""
  for root in (manual_dir, os.path.join(manual_dir, SUBFOLDER)):
    if all(os.path.isdir(os.path.join(root, s, "images")) for s in RELEASE_SPLITS.values()):
      return root
  missing = [os.path.join(manual_dir, s, "images") for s in RELEASE_SPLITS.values()
             if not os.path.isdir(os.path.join(manual_dir, s, "images"))]
  raise lidc_common.LidcError(
      f"lidc/deepmind: expected the extracted release folders train/, val/, test/ (each with "
      f"images/ and gt/) in {manual_dir} or {os.path.join(manual_dir, SUBFOLDER)}; missing "
      f"{', '.join(missing)} (manual dir holds: {lidc_common.list_manual_dir(manual_dir)}).")


def _listdir(path):
  try:
    return sorted(os.listdir(path))
  except OSError as e:
    raise lidc_common.LidcError(f"{path}: expected a readable folder, "
                                f"{e.strerror.lower()}.") from None


def mask_files(gt_dir, stem):
  """The reader masks of one image: [(reader, path)] sorted by reader, validated.

  Args:
    gt_dir: `<split>/gt/<patient>`.
    stem: `z-<z>_c<n>`.

  Raises:
    LidcError: the readers are not exactly 0-3 or 1-4.
  """
  found = {}
  for name in (_listdir(gt_dir) if os.path.isdir(gt_dir) else []):
    match = _MASK_RE.match(name)
    if match and match["stem"] == stem:
      found[int(match["reader"])] = os.path.join(gt_dir, name)
  readers = tuple(sorted(found))
  if readers not in _READER_SETS:
    raise lidc_common.LidcError(
        f"{os.path.join(gt_dir, stem + '_l<k>.png')}: expected 4 reader masks with k = 0..3 or "
        f"1..4, found k = {list(readers) or 'none'}.")
  return [(k, found[k]) for k in readers]


def _crop(path, size=lidc_common.IMAGE_SIZE):
  array = lidc_common.decode_gray_png(lidc_common.read_file(path), path)
  return lidc_common.center_crop(array, size, path)


def _examples(root, release_split):
  images_dir = os.path.join(root, release_split, "images")
  gt_root = os.path.join(root, release_split, "gt")
  for patient in _listdir(images_dir):
    patient_dir = os.path.join(images_dir, patient)
    if not os.path.isdir(patient_dir):
      continue
    for name in _listdir(patient_dir):
      match = _IMAGE_RE.match(name)
      if not match:
        continue
      stem = name[:-len(".png")]
      path = os.path.join(patient_dir, name)
      masks = [_crop(p) for _, p in mask_files(os.path.join(gt_root, patient), stem)]
      example_id = f"{patient}/{stem}"
      yield example_id, lidc_common.make_example(
          _crop(path), masks, patient, f"c{match['crop']}", match["slice"], example_id, path)


def split_generators(manual_dir):
  """{split: iterator of (key, example)} in the release's own split."""
  root = find_root(manual_dir)
  return {split: _examples(root, release) for split, release in RELEASE_SPLITS.items()}
