"""Cityscapes with the Probabilistic U-Net paper's label flips, optionally with a cue input.

The paper (Kohl et al., NeurIPS 2018) makes Cityscapes ambiguous on purpose: five classes are
relabelled to "synonym" classes with known probabilities, independently per image, so the true
distribution of segmentations (32 modes) is known. This builder stores the **unflipped** labels
(19 trainIds, void = 255) at quarter resolution, 256x512; the input pipeline
(`tf_prob_unet/input_pipeline.py`) flips them per image and per training step from the `flips`
metadata and builds the 32 modes with their probabilities for evaluation.

Configs:
* `rgb`: `image`, `label`, `id` (the paper's setup).
* `cue`: adds `cue`, the label map predicted by a black-box segmenter (trainIds, void = 255, never
  flipped), which the input pipeline one-hot encodes and concatenates to the image (CAR, MoSE).

Manual download (https://www.cityscapes-dataset.com/downloads/): `leftImg8bit_trainvaltest.zip`
and `gtFine_trainvaltest.zip` in the manual directory, or their extracted folders `leftImg8bit/`
and `gtFine/` there. The `cue` config also reads `cues/` (see `find_cues`).

Splits (the reference's): train = the official train cities except darmstadt, monchengladbach and
ulm (2,701 frames); validation = those three cities (274); test = the official val set (500).

This module has no relative imports and does not import `tf_prob_unet`: it is loaded by file path.
"""

import dataclasses
import io
import os
import re
import zipfile

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# -----------------------------------------------------------------------------
# Classes.
# -----------------------------------------------------------------------------

VOID = 255
# The 19 Cityscapes training classes in trainId order, each with its labelId (the value in the
# `*_gtFine_labelIds.png` files). Every other labelId (0-6, 9, 10, 14-16, 18, 29, 30 and the
# license plate's -1) is void.
TRAIN_CLASSES = (
    ("road", 7), ("sidewalk", 8), ("building", 11), ("wall", 12), ("fence", 13), ("pole", 17),
    ("traffic light", 19), ("traffic sign", 20), ("vegetation", 21), ("terrain", 22),
    ("sky", 23), ("person", 24), ("rider", 25), ("car", 26), ("truck", 27), ("bus", 28),
    ("train", 31), ("motorcycle", 32), ("bicycle", 33))
NUM_BASE_CLASSES = len(TRAIN_CLASSES)  # 19
MIN_LABEL_ID, MAX_LABEL_ID = -1, 33  # the labelIds Cityscapes defines

# labelId -> trainId lookup table (index = labelId; the license plate's -1 is handled apart).
LABEL_ID_TO_TRAIN_ID = np.full(MAX_LABEL_ID + 1, VOID, np.uint8)
for _train_id, (_, _label_id) in enumerate(TRAIN_CLASSES):
  LABEL_ID_TO_TRAIN_ID[_label_id] = _train_id

# The paper's flips: (trainId, synonym class, probability), in the order of the mode bits
# (sidewalk the most significant bit, road the least).
FLIPS = ((1, 19, 8 / 17), (11, 20, 7 / 17), (13, 21, 6 / 17), (8, 22, 5 / 17), (0, 23, 4 / 17))
MODE_BIT_ORDER = ("sidewalk", "person", "car", "vegetation", "road")
NUM_CLASSES = NUM_BASE_CLASSES + len(FLIPS)  # 24
CLASS_NAMES = tuple(name for name, _ in TRAIN_CLASSES) + tuple(
    f"{name}_2" for name in MODE_BIT_ORDER)


def label_ids_to_train_ids(label_ids, source):
  """Maps Cityscapes labelIds to trainIds through `LABEL_ID_TO_TRAIN_ID`.

  Args:
    label_ids: integer array of labelIds, any shape; values in -1..33.
    source: file name used in the error message.

  Returns:
    uint8 array of the same shape: trainIds 0..18, void = 255.

  Raises:
    ValueError: a value is not a Cityscapes labelId (names `source`).
  """
  label_ids = np.asarray(label_ids)
  if not np.issubdtype(label_ids.dtype, np.integer):
    raise ValueError(f"{source}: expected integer labelIds, found dtype {label_ids.dtype}.")
  bad = (label_ids < MIN_LABEL_ID) | (label_ids > MAX_LABEL_ID)
  if bad.any():
    found = np.unique(label_ids[bad])[:8].tolist()
    raise ValueError(f"{source}: expected Cityscapes labelIds in {MIN_LABEL_ID}..{MAX_LABEL_ID}, "
                     f"found {found}.")
  return np.where(label_ids < 0, VOID, LABEL_ID_TO_TRAIN_ID[np.maximum(label_ids, 0)]).astype(
      np.uint8)


def check_train_ids(train_ids, source):
  """Returns `train_ids` as uint8 after checking they are trainIds 0..18 or 255 (names `source`)."""
  train_ids = np.asarray(train_ids)
  if not np.issubdtype(train_ids.dtype, np.integer):
    raise ValueError(f"{source}: expected integer trainIds, found dtype {train_ids.dtype}.")
  bad = ((train_ids < 0) | (train_ids >= NUM_BASE_CLASSES)) & (train_ids != VOID)
  if bad.any():
    found = np.unique(train_ids[bad])[:8].tolist()
    raise ValueError(f"{source}: expected trainIds 0..{NUM_BASE_CLASSES - 1} or {VOID}, "
                     f"found {found}.")
  return train_ids.astype(np.uint8)


# -----------------------------------------------------------------------------
# Splits.
# -----------------------------------------------------------------------------

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "dusseldorf", "erfurt", "hamburg",
                "hanover", "jena", "krefeld", "strasbourg", "stuttgart", "tubingen", "weimar",
                "zurich")
VALIDATION_CITIES = ("darmstadt", "monchengladbach", "ulm")  # held out of the official train
TEST_CITIES = ("frankfurt", "lindau", "munster")  # the official val
# Our split -> (official split folder, its cities).
SPLITS = {
    "train": ("train", TRAIN_CITIES),
    "validation": ("train", VALIDATION_CITIES),
    "test": ("val", TEST_CITIES),
}
EXPECTED_COUNTS = {"train": 2701, "validation": 274, "test": 500}

IMAGE_ARCHIVE, LABEL_ARCHIVE = "leftImg8bit", "gtFine"
ZIP_NAMES = {IMAGE_ARCHIVE: "leftImg8bit_trainvaltest.zip", LABEL_ARCHIVE: "gtFine_trainvaltest.zip"}
_FRAME_RE = re.compile(r"^(?P<city>[a-z]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


# -----------------------------------------------------------------------------
# Reading the manual directory: zips or extracted folders.
# -----------------------------------------------------------------------------


class _Source:
  """One of the two downloads, as a zip or as its extracted folder.

  Member names are POSIX paths as in the zip, e.g. `leftImg8bit/train/aachen/...png`.
  """

  def __init__(self, manual_dir, archive):
    folder = os.path.join(manual_dir, archive)
    zip_path = os.path.join(manual_dir, ZIP_NAMES[archive])
    self._zip = None
    if os.path.isdir(folder):
      self.where = folder
      self._root = manual_dir
      names = []
      for directory, _, files in os.walk(folder):
        rel = os.path.relpath(directory, manual_dir).replace(os.sep, "/")
        names.extend(f"{rel}/{f}" for f in files)
      self.names = frozenset(names)
    elif os.path.isfile(zip_path):
      self.where = zip_path
      try:
        self._zip = zipfile.ZipFile(zip_path)
      except zipfile.BadZipFile as e:
        raise ValueError(f"{zip_path}: expected a zip archive, found an unreadable file "
                         f"({e}).") from None
      self.names = frozenset(n for n in self._zip.namelist() if not n.endswith("/"))
    else:
      raise FileNotFoundError(
          f"cityscapes_ambiguous: missing {zip_path} (or its extracted folder {folder}/); "
          f"download it from https://www.cityscapes-dataset.com/downloads/ into the manual "
          f"directory.")

  def path(self, name):
    """A readable description of member `name` (for messages)."""
    if self._zip is None:
      return os.path.join(self._root, *name.split("/"))
    return f"{self.where}:{name}"

  def read(self, name):
    if self._zip is None:
      with open(self.path(name), "rb") as f:
        return f.read()
    return self._zip.read(name)


def list_frames(images, labels, split):
  """The frames of one of our splits, with their image and label member names.

  Args:
    images: the `leftImg8bit` `_Source`.
    labels: the `gtFine` `_Source`.
    split: "train", "validation" or "test".

  Returns:
    Sorted list of `(frame_id, image_name, label_name)`, `frame_id` = `<city>_<seq>_<frame>`.

  Raises:
    FileNotFoundError: a frame has no `*_gtFine_labelIds.png` (names both files).
    ValueError: a city folder of the official split is not a Cityscapes city of it.
  """
  official, cities = SPLITS[split]
  known = {c for s, cs in SPLITS.values() if s == official for c in cs}
  prefix = f"{IMAGE_ARCHIVE}/{official}/"
  frames = []
  for name in sorted(images.names):
    if not name.startswith(prefix):
      continue
    parts = name[len(prefix):].split("/")
    if len(parts) != 2:
      continue
    city, filename = parts
    if city not in known:
      raise ValueError(f"{images.path(name)}: expected a city of the official {official} split "
                       f"({', '.join(sorted(known))}), found {city!r}.")
    match = _FRAME_RE.match(filename)
    if city not in cities or not match:
      continue
    if match["city"] != city:
      raise ValueError(f"{images.path(name)}: expected a frame of {city}, found one of "
                       f"{match['city']}.")
    frame_id = f"{city}_{match['seq']}_{match['frame']}"
    label_name = f"{LABEL_ARCHIVE}/{official}/{city}/{frame_id}_gtFine_labelIds.png"
    if label_name not in labels.names:
      raise FileNotFoundError(f"{images.path(name)}: the frame has no label file; expected "
                              f"{labels.path(label_name)}.")
    frames.append((frame_id, name, label_name))
  return frames


# Cue files, by name: regular expression -> the id space of the stored values.
CUE_PATTERNS = (
    # CAR's published black-box predictions: despite the name they hold labelIds (-1..33).
    (re.compile(r"^(?P<id>[a-z]+_\d{6}_\d{6})_prior_preds_trainIds\.npy$"), "labelIds"),
    (re.compile(r"^(?P<id>[a-z]+_\d{6}_\d{6})_cue_labelIds\.png$"), "labelIds"),
    (re.compile(r"^(?P<id>[a-z]+_\d{6}_\d{6})_cue_trainIds\.png$"), "trainIds"),
)
CUE_DIR = "cues"


def find_cues(cue_dir):
  """Indexes the cue files below `cue_dir` (any depth) by frame id.

  Recognised names (`<id>` = `<city>_<seq>_<frame>`):
  * `<id>_prior_preds_trainIds.npy`: CAR's layout (`<split>/<city>/bb_preds/`), labelIds;
  * `<id>_cue_labelIds.png`: a PNG label map of labelIds;
  * `<id>_cue_trainIds.png`: a PNG label map of trainIds (void 255).

  Returns:
    dict frame id -> `(path, "labelIds" | "trainIds")`.

  Raises:
    FileNotFoundError: `cue_dir` does not exist.
    ValueError: two cue files for the same frame (names both).
  """
  if not os.path.isdir(cue_dir):
    raise FileNotFoundError(f"cityscapes_ambiguous/cue: missing the cue folder {cue_dir}/ "
                            f"(CAR's bb_preds files or *_cue_trainIds.png label maps).")
  cues = {}
  for directory, _, files in os.walk(cue_dir):
    for filename in files:
      for pattern, id_space in CUE_PATTERNS:
        match = pattern.match(filename)
        if match:
          path = os.path.join(directory, filename)
          if match["id"] in cues:
            raise ValueError(f"{path}: a second cue for frame {match['id']}; the first is "
                             f"{cues[match['id']][0]}.")
          cues[match["id"]] = (path, id_space)
  return cues


# -----------------------------------------------------------------------------
# Decoding and resizing.
# -----------------------------------------------------------------------------


def _open_png(data, source):
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises several types for corrupt data.
    raise ValueError(f"{source}: expected a PNG image, found unreadable data ({e}).") from None
  return image


def load_image(data, source, size):
  """Decodes an RGB PNG and resizes it to `size` (H, W) with PIL's bilinear filter.

  Returns:
    `(image uint8 [H, W, 3], source size (h, w))`.
  """
  image = _open_png(data, source)
  if image.mode != "RGB":
    raise ValueError(f"{source}: expected an RGB image, found mode {image.mode}.")
  original = (image.height, image.width)
  if original != tuple(size):
    image = image.resize((size[1], size[0]), Image.BILINEAR)
  return np.asarray(image, np.uint8), original


def resize_nearest(label_map, size):
  """Nearest-neighbour resize of a label map `[h, w]` to `size` (H, W).

  Output pixel i takes source pixel floor((i + 0.5) * h / H), as PIL's NEAREST filter does
  (for the 4x reduction: rows and columns 2, 6, 10, ...).
  """
  label_map = np.asarray(label_map)
  if label_map.shape == tuple(size):
    return label_map
  rows = np.minimum(((np.arange(size[0]) + 0.5) * label_map.shape[0] / size[0]).astype(int),
                    label_map.shape[0] - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * label_map.shape[1] / size[1]).astype(int),
                    label_map.shape[1] - 1)
  return label_map[rows[:, None], cols[None, :]]


def load_label(data, source, size, expected_shape):
  """Decodes a `*_gtFine_labelIds.png`, resizes it (nearest) and maps it to trainIds.

  Args:
    data: PNG bytes.
    source: file name for messages.
    size: output (H, W).
    expected_shape: (h, w) of the frame's image; the label must have the same size.

  Returns:
    uint8 `[H, W]` trainIds, void = 255.
  """
  image = _open_png(data, source)
  if image.mode not in ("L", "P", "I", "I;16"):
    raise ValueError(f"{source}: expected a single-channel labelIds image, found mode "
                     f"{image.mode}.")
  label_ids = np.asarray(image).astype(np.int32)
  if label_ids.shape != tuple(expected_shape):
    raise ValueError(f"{source}: expected the image's size {tuple(expected_shape)}, found "
                     f"{label_ids.shape}.")
  return label_ids_to_train_ids(resize_nearest(label_ids, size), source)


def load_cue(path, id_space, size, image_shape):
  """Reads a cue file (see `find_cues`) as uint8 trainIds `[H, W]` (void 255).

  The cue must have the output size `size` or the source image's size `image_shape` (then it is
  resized with nearest neighbours).

  Raises:
    ValueError: wrong shape, dtype or values (names the file).
  """
  if path.endswith(".npy"):
    try:
      cue = np.load(path, allow_pickle=False)
    except ValueError as e:
      raise ValueError(f"{path}: expected a NumPy array of integer labels, found {e}.") from None
    if cue.ndim == 3 and 1 in (cue.shape[0], cue.shape[-1]):
      cue = cue.reshape(cue.shape[1:] if cue.shape[0] == 1 else cue.shape[:-1])
  else:
    with open(path, "rb") as f:
      image = _open_png(f.read(), path)
    if image.mode not in ("L", "P", "I", "I;16"):
      raise ValueError(f"{path}: expected a single-channel label map, found mode {image.mode}.")
    cue = np.asarray(image).astype(np.int32)
  allowed = {tuple(size), tuple(image_shape)}
  if cue.shape not in allowed:
    raise ValueError(f"{path}: expected a cue label map of shape "
                     f"{' or '.join(str(s) for s in sorted(allowed))}, found {cue.shape}.")
  cue = resize_nearest(cue, size)
  if id_space == "labelIds":
    return label_ids_to_train_ids(cue, path)
  return check_train_ids(cue, path)


# -----------------------------------------------------------------------------
# TFDS builder.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CityscapesAmbiguousConfig(tfds.core.BuilderConfig):
  """BuilderConfig of `cityscapes_ambiguous`.

  Attributes:
    cue: whether to add the black-box prediction (`cue` feature).
    height: output height (the reference's quarter resolution: 256).
    width: output width (512).
  """

  cue: bool = False
  height: int = 256
  width: int = 512


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for cityscapes_ambiguous."""

  # Explicit, so the module can be loaded under any module name.
  name = "cityscapes_ambiguous"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      CityscapesAmbiguousConfig(name="rgb", description="RGB image, unflipped label, 256x512."),
      CityscapesAmbiguousConfig(
          name="cue", cue=True,
          description="RGB image, unflipped label and the black-box prediction (cue), 256x512."),
  ]
  DEFAULT_CONFIG_NAME = "rgb"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register at https://www.cityscapes-dataset.com/ and download `leftImg8bit_trainvaltest.zip` and
  `gtFine_trainvaltest.zip` into the manual directory (`--manual_dir`, default
  `<data_dir>/downloads/manual`). Extracted folders `leftImg8bit/` and `gtFine/` there work too.
  The `cue` config also needs `cues/` there: CAR's `<split>/<city>/bb_preds/*_prior_preds_trainIds.npy`
  files or `<city>_<seq>_<frame>_cue_trainIds.png` / `_cue_labelIds.png` label maps (any depth).
  """
  # README.md and CITATIONS.bib sit next to this file (the module may be loaded by path).
  pkg_dir_path = tfds.core.Path(__file__).parent

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    shape = (config.height, config.width)
    zlib = tfds.features.Encoding.ZLIB
    features = {
        "image": tfds.features.Image(shape=shape + (3,), dtype=np.uint8),
        "label": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=zlib),
        "id": tfds.features.Text(),
    }
    if config.cue:
      features["cue"] = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=zlib)
    metadata = tfds.core.MetadataDict(
        num_classes=NUM_CLASSES, num_base_classes=NUM_BASE_CLASSES,
        class_names=list(CLASS_NAMES),
        flips=[[source, target, prob] for source, target, prob in FLIPS],
        mode_bit_order=list(MODE_BIT_ORDER), void=VOID)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage="https://www.cityscapes-dataset.com/",
        metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    images = _Source(manual_dir, IMAGE_ARCHIVE)
    labels = _Source(manual_dir, LABEL_ARCHIVE)
    cues = find_cues(os.path.join(manual_dir, CUE_DIR)) if self.builder_config.cue else None
    generators = {}
    for split in SPLITS:
      frames = list_frames(images, labels, split)
      if not frames:
        raise FileNotFoundError(
            f"{images.where}: no frames of the {split} split (cities "
            f"{', '.join(SPLITS[split][1])} under {IMAGE_ARCHIVE}/{SPLITS[split][0]}/).")
      if len(frames) != EXPECTED_COUNTS[split]:
        logging.warning("cityscapes_ambiguous: %d %s frames in %s; the full dataset has %d.",
                        len(frames), split, images.where, EXPECTED_COUNTS[split])
      if cues is not None:
        missing = [(f, image) for f, image, _ in frames if f not in cues]
        if missing:
          frame_id, image = missing[0]
          raise FileNotFoundError(
              f"{images.path(image)}: no cue for this frame ({len(missing)} {split} frames have "
              f"none); expected {frame_id}_prior_preds_trainIds.npy or "
              f"{frame_id}_cue_trainIds.png below {os.path.join(manual_dir, CUE_DIR)}.")
      generators[split] = self._generate_examples(images, labels, frames, cues)
    return generators

  def _generate_examples(self, images, labels, frames, cues):
    """Yields `(frame_id, example)` for the frames of one split."""
    config = self.builder_config
    size = (config.height, config.width)
    for frame_id, image_name, label_name in frames:
      image, original = load_image(images.read(image_name), images.path(image_name), size)
      label = load_label(labels.read(label_name), labels.path(label_name), size, original)
      example = {"image": image, "label": label, "id": frame_id}
      if cues is not None:
        example["cue"] = load_cue(*cues[frame_id], size, original)
      yield frame_id, example
