"""A user's own 2-D multi-rater files -> cases -> examples (no TFDS, no training code).

Two source formats:

- `pickle`: `{key: {"image": [H, W] or [H, W, C], "masks": [R arrays [H, W]], ...}}`, read with
  the LIDC builder's restricted unpickler (NumPy arrays and plain Python types only).
- `folder`: one image and R masks per case, found by two patterns relative to the source folder
  (see `Pattern`). Files are PNG, JPEG, `.npy` or NIfTI (`.nii`, `.nii.gz`; 3-D volumes are cut
  into 2-D slices along `slice_axis`).

`scan(options)` reads every case once, checks it (same R everywhere, masks of the image's shape,
mask values) and returns a `Scan`: the cases per split, R, K, the stored image size and channels.
`examples(scan, cases)` reads them again and yields the TFDS examples
(`image` uint8 `[H, W, C]`, `masks` uint8 `[R, H, W]` in `[0, K)`, `id`, `group`).

Every bad input raises `ImportError_` with one line naming the file or key, what was expected
and what was found.
"""

import dataclasses
import io
import math
import os
import re
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from ..lidc import lidc_common
from ..lidc import pickle_reader

SPLITS = lidc_common.SPLITS
FORMATS = ("pickle", "folder")
# Without --class_values, masks whose values all lie below this are class indices (0..K-1);
# otherwise they are thresholded at the middle of their value range (e.g. {0, 255} PNGs, JPEG).
MAX_INFERRED_CLASSES = 16
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".npy", ".nii", ".nii.gz")
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation",
                "validation": "validation", "test": "test", "testing": "test"}


class ImportError_(ValueError):  # pylint: disable=invalid-name
  """A bad user input (the message is one line naming the file or key)."""


@dataclasses.dataclass(frozen=True)
class ImportOptions:
  """How to read a user's files (the flags of `tf_prob_unet.import_data`).

  Attributes:
    source: a pickle file (`format="pickle"`) or a folder (`format="folder"`).
    format: `"pickle"` or `"folder"`.
    image: folder format: the image pattern relative to `source` (see `Pattern`).
    masks: folder format: the mask pattern; its matches per case, sorted, are the raters.
    slice_axis: the axis along which 3-D NIfTI/npy volumes are cut into 2-D slices.
    slices: `"all"` slices of a volume, or the `"annotated"` ones (any rater marks something).
    split_from_path: take the split from a component of the case key (`train`/`training`,
      `val`/`validation`, `test`/`testing`) instead of hashing the group. Without any
      validation case, the train groups that `patient_split` puts in validation (about 15%)
      become the validation split.
    group: a regular expression searched in the case key; its first capture group (or the whole
      match) is the group id, which decides the split; None: the whole key.
    num_classes: K (None: inferred from the masks, at least 2).
    class_values: mask values mapped to 0..K-1 (None: see `MAX_INFERRED_CLASSES`).
    image_size: `(H, W)` to resize to (images bilinear, masks nearest), or None.
    pad_to_multiple: pad images and masks at the bottom/right to the common size rounded up to a
      multiple of this (0: no padding).
  """
  source: str
  format: str = "folder"
  image: str = ""
  masks: str = ""
  slice_axis: int = 2
  slices: str = "all"
  split_from_path: bool = False
  group: Optional[str] = None
  num_classes: Optional[int] = None
  class_values: Optional[Tuple[int, ...]] = None
  image_size: Optional[Tuple[int, int]] = None
  pad_to_multiple: int = 0

  def validate(self):
    if self.format not in FORMATS:
      raise ImportError_(f"--format: expected one of {list(FORMATS)}, found {self.format!r}.")
    if self.format == "pickle" and not os.path.isfile(self.source):
      raise ImportError_(f"--source: expected a pickle file, found "
                         f"{'a folder' if os.path.isdir(self.source) else 'nothing'} at "
                         f"{self.source!r}.")
    if self.format == "folder":
      if not os.path.isdir(self.source):
        raise ImportError_(f"--source: expected a folder, found "
                           f"{'a file' if os.path.exists(self.source) else 'nothing'} at "
                           f"{self.source!r}.")
      if not self.image or not self.masks:
        raise ImportError_("--image/--masks: expected two patterns with --format=folder, found "
                           f"image={self.image!r} masks={self.masks!r}.")
    if self.slices not in ("all", "annotated"):
      raise ImportError_(f"--slices: expected all or annotated, found {self.slices!r}.")
    if self.num_classes is not None and self.num_classes < 2:
      raise ImportError_(f"--num_classes: expected at least 2, found {self.num_classes}.")
    if self.class_values is not None:
      if len(set(self.class_values)) != len(self.class_values) or len(self.class_values) < 2:
        raise ImportError_(f"--class_values: expected at least 2 distinct values, found "
                           f"{list(self.class_values)}.")
      if self.num_classes is not None and self.num_classes != len(self.class_values):
        raise ImportError_(f"--num_classes: expected {len(self.class_values)} (the number of "
                           f"--class_values), found {self.num_classes}.")
    if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
      raise ImportError_(f"--image_size: expected H,W, found {self.image_size}.")
    if self.pad_to_multiple < 0:
      raise ImportError_(f"--pad_to_multiple: expected >= 0, found {self.pad_to_multiple}.")
    if self.group is not None:
      try:
        re.compile(self.group)
      except re.error as e:
        raise ImportError_(f"--group: expected a regular expression, found {self.group!r} "
                           f"({e}).") from None


# --- folder patterns ----------------------------------------------------------------------------

class Pattern:
  """A path pattern with named placeholders.

  `{name}` stands for one or more path components or part of a file name, `*` for any characters
  inside one component; everything else is literal. A placeholder named twice must take the same
  value. `match(path)` returns the placeholder values by name, or None.
  """

  def __init__(self, text, flag):
    self.text = text
    self.names = []
    parts = []
    for token in re.split(r"(\{[^{}]*\}|\*)", text.replace(os.sep, "/")):
      if token == "*":
        parts.append(r"[^/]*")
      elif token.startswith("{") and token.endswith("}"):
        name = token[1:-1]
        if not name.isidentifier():
          raise ImportError_(f"{flag}: expected placeholders like {{case}}, found {token!r} in "
                             f"{text!r}.")
        if name in self.names:
          parts.append(f"(?P={name})")
        else:
          self.names.append(name)
          parts.append(f"(?P<{name}>.+?)")
      else:
        parts.append(re.escape(token))
    self._regex = re.compile("".join(parts) + r"\Z")

  def match(self, path):
    m = self._regex.match(path)
    return None if m is None else {n: m[n] for n in self.names}


def list_files(folder):
  """Every file under `folder`, as sorted '/'-separated relative paths."""
  names = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    rel = os.path.relpath(root, folder).replace(os.sep, "/")
    names.extend(f if rel == "." else f"{rel}/{f}" for f in files)
  return sorted(names)


def match_folder(source, image_pattern, masks_pattern):
  """The cases of a folder: `[(key, image path, [mask paths])]`, sorted by key.

  Raises:
    ImportError_: placeholders differ between the patterns, a pattern matches nothing, a key has
      two images, or a case has no mask.
  """
  image, masks = Pattern(image_pattern, "--image"), Pattern(masks_pattern, "--masks")
  if sorted(image.names) != sorted(masks.names):
    raise ImportError_(f"--masks: expected the placeholders of --image {image.names}, found "
                       f"{masks.names} in {masks_pattern!r}.")
  files = list_files(source)
  images, by_values = {}, {}
  for name in files:  # A file matching both patterns is a mask (`{case}.nii`, `{case}_r*.nii`).
    values = masks.match(name)
    if values is not None:
      by_values.setdefault("/".join(values[n] for n in image.names), []).append(name)
      continue
    values = image.match(name)
    if values is not None:
      key = "/".join(values[n] for n in image.names)
      if key in images:
        raise ImportError_(f"{os.path.join(source, name)}: expected one image per case, found a "
                           f"second one for {key!r} (the other: {images[key]}).")
      images[key] = name
  if not images:
    raise ImportError_(f"--image: {image_pattern!r} matches no file under {source} "
                       f"({len(files)} files, e.g. {files[:3]}).")
  if not by_values:
    raise ImportError_(f"--masks: {masks_pattern!r} matches no file under {source} "
                       f"({len(files)} files, e.g. {files[:3]}).")
  cases = []
  for key in sorted(images):
    if key not in by_values:
      raise ImportError_(f"{os.path.join(source, images[key])}: expected masks matching "
                         f"{masks_pattern!r} for case {key!r}, found none.")
    cases.append((key, os.path.join(source, images[key]),
                  [os.path.join(source, m) for m in sorted(by_values[key])]))
  stray = sorted(set(by_values) - set(images))
  if stray:
    raise ImportError_(f"{os.path.join(source, by_values[stray[0]][0])}: expected an image "
                       f"matching {image_pattern!r} for case {stray[0]!r}, found none.")
  return cases


# --- file readers -------------------------------------------------------------------------------

def _extension(path):
  lower = path.lower()
  return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def read_array(path):
  """The pixels of one file as a NumPy array (PNG/JPEG `[H, W]` or `[H, W, 3]`; npy; NIfTI).

  Raises:
    ImportError_: unknown extension, unreadable file, or no NIfTI support installed.
  """
  ext = _extension(path)
  if ext not in IMAGE_EXTENSIONS:
    raise ImportError_(f"{path}: expected one of {', '.join(IMAGE_EXTENSIONS)}, found a "
                       f"{ext or 'extension-less'} file.")
  try:
    if ext == ".npy":
      return np.load(path, allow_pickle=False)
    if ext in (".nii", ".nii.gz"):
      try:
        import nibabel  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise ImportError_(f"{path}: reading NIfTI needs nibabel; install it with "
                           f"`pip install tf_prob_unet[nifti]`.") from None
      return np.asanyarray(nibabel.load(path).dataobj)
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
      if img.mode in ("LA", "RGBA"):
        img = img.convert(img.mode[:-1])
      if img.mode == "CMYK":
        img = img.convert("RGB")
      array = np.asarray(img)
      if img.mode == "1":
        array = array.astype(np.uint8) * 255
      return array
  except ImportError_:
    raise
  except Exception as e:  # PIL, NumPy and nibabel raise many types for corrupt files.
    raise ImportError_(f"{path}: expected a readable {ext} file, could not read it "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None


def _is_volume(path, array):
  return _extension(path) in (".nii", ".nii.gz", ".npy") and array.ndim == 3 and not (
      _extension(path) == ".npy" and array.shape[-1] in (1, 3))


def to_uint8_values(array, name):
  """Pixel values as uint8, any shape (see `to_uint8_image`; a volume is scaled as a whole)."""
  array = np.asarray(array)
  if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or not array.size:
    raise ImportError_(f"{name}: expected a numeric image, found dtype {array.dtype} of shape "
                       f"{list(array.shape)}.")
  if array.dtype == np.uint8:
    return array
  if (np.issubdtype(array.dtype, np.floating) and np.nanmin(array) >= 0
      and np.nanmax(array) <= 1):
    return np.round(np.nan_to_num(array) * 255.0).astype(np.uint8)
  lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
  scaled = (np.nan_to_num(array.astype(np.float64), nan=lo) - lo) / max(hi - lo, 1e-12)
  return np.round(scaled * 255.0).astype(np.uint8)


def to_uint8_image(array, name):
  """An image as uint8 `[H, W, C]`, C in {1, 3}.

  uint8 is kept; floats in [0, 1] are scaled by 255; any other numeric image (e.g. CT values) is
  scaled from its own [min, max] to [0, 255].
  """
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ImportError_(f"{name}: expected an image [H, W] or [H, W, C] with C in 1, 3, found "
                       f"shape {list(array.shape)}.")
  out = to_uint8_values(array[..., :3], name)
  if out.shape[-1] == 3 and np.all(out == out[..., :1]):
    out = out[..., :1]  # Grey stored as RGB.
  return out


def raw_mask(array, name):
  """A mask as an integer `[H, W]` array of its stored values (floats in (0, 1) thresholded)."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] in (3, 4):
    colour = array[..., :3]
    if np.any(colour != colour[..., :1]):
      raise ImportError_(f"{name}: expected a grey-scale mask [H, W], found a colour image.")
    array = colour[..., 0]
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise ImportError_(f"{name}: expected a mask [H, W], found shape {list(array.shape)}.")
  if array.dtype == bool:
    return array.astype(np.int64)
  if not np.issubdtype(array.dtype, np.number):
    raise ImportError_(f"{name}: expected a numeric mask, found dtype {array.dtype}.")
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)):
      raise ImportError_(f"{name}: expected finite mask values, found NaN or inf.")
    if np.any(array != np.round(array)):
      if array.min() < 0 or array.max() > 1:
        raise ImportError_(f"{name}: expected integer mask values (or soft values in [0, 1]), "
                           f"found values in [{array.min():.4g}, {array.max():.4g}].")
      return (array >= 0.5).astype(np.int64)
  return array.astype(np.int64)


@dataclasses.dataclass
class MaskRule:
  """How stored mask values become class indices (decided once per dataset, see `scan`)."""
  kind: str  # "index" | "threshold" | "class_values"
  threshold: int = 0
  class_values: Tuple[int, ...] = ()

  def apply(self, raw, name):
    if self.kind == "index":
      return raw
    if self.kind == "threshold":
      return (raw >= self.threshold).astype(np.int64)
    lookup = {v: i for i, v in enumerate(self.class_values)}
    values = np.unique(raw)
    bad = [int(v) for v in values if int(v) not in lookup]
    if bad:
      raise ImportError_(f"{name}: expected mask values in --class_values "
                         f"{list(self.class_values)}, found {bad[:5]}.")
    out = np.zeros(raw.shape, np.int64)
    for value, index in lookup.items():
      out[raw == value] = index
    return out

  def describe(self):
    if self.kind == "index":
      return "mask values are class indices"
    if self.kind == "threshold":
      return f"masks thresholded at {self.threshold} (foreground: >= {self.threshold})"
    return f"mask values {list(self.class_values)} -> classes 0..{len(self.class_values) - 1}"


# --- cases --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
  """One 2-D example to be: where its image and masks come from.

  Attributes:
    key: the example id (a folder case's key, plus `/slice-<k>` for a slice of a volume).
    group: the group id that decides the split.
    image: the image's file (folder) or the pickle key.
    masks: the masks' files (folder), empty for pickles.
    index: the slice index in a volume, or None.
  """
  key: str
  group: str
  image: str
  masks: Tuple[str, ...] = ()
  index: Optional[int] = None


def _group(options, key):
  if options.group is None:
    return key
  m = re.search(options.group, key)
  if m is None:
    raise ImportError_(f"case {key!r}: expected a match of --group={options.group!r}, found "
                       f"none.")
  return m.group(1) if m.re.groups else m.group(0)


def split_of(options, key, group):
  """The split of a case: from its path (`split_from_path`) or a stable hash of its group."""
  if not options.split_from_path:
    return lidc_common.patient_split(group)
  found = {_SPLIT_WORDS[c.lower()] for c in key.split("/") if c.lower() in _SPLIT_WORDS}
  if len(found) != 1:
    raise ImportError_(f"case {key!r}: expected exactly one path component naming the split "
                       f"({'/'.join(sorted(_SPLIT_WORDS))}) with --split_from_path, found "
                       f"{sorted(found) or 'none'}.")
  return found.pop()


def _load_pickle(path):
  try:
    data = pickle_reader.load(path)
  except lidc_common.LidcError as e:
    raise ImportError_(str(e)) from None
  if not isinstance(data, dict) or not data:
    raise ImportError_(f"{path}: expected a non-empty dict {{key: {{'image', 'masks'}}}}, found "
                       f"{type(data).__name__}{' (empty)' if isinstance(data, dict) else ''}.")
  return data


def _pickle_entry(data, path, key):
  where = f"{path}[{key!r}]"
  value = data[key]
  if not isinstance(value, dict) or not {"image", "masks"} <= set(value):
    raise ImportError_(f"{where}: expected a dict with 'image' and 'masks', found "
                       f"{sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__}.")
  masks = value["masks"]
  if isinstance(masks, np.ndarray) and masks.ndim == 3:
    masks = list(masks)
  if not isinstance(masks, (list, tuple)) or not masks:
    raise ImportError_(f"{where}['masks']: expected a non-empty list of [H, W] arrays, found "
                       f"{type(masks).__name__}.")
  return (np.asarray(value["image"]), [np.asarray(m) for m in masks], where)


class _Reader:
  """Reads the image and the raw masks of a `Case`, caching the last volume."""

  def __init__(self, options, pickle_data=None):
    self.options = options
    self.pickle_data = pickle_data
    self._volumes = {}  # The volumes of the last case read, by (path, is image).

  def _volume(self, path, image=False):
    if (path, image) not in self._volumes:  # The image volume is scaled to uint8 as a whole.
      array = read_array(path)
      self._volumes[(path, image)] = to_uint8_values(array, path) if image else array
    return self._volumes[(path, image)]

  def read(self, case):
    """`(image array, [raw mask [H, W] int64], name of the image)`."""
    if self.pickle_data is not None:
      image, masks, where = _pickle_entry(self.pickle_data, self.options.source, case.image)
      return (to_uint8_image(image, f"{where}['image']"),
              [raw_mask(m, f"{where}['masks'][{i}]") for i, m in enumerate(masks)], where)
    paths = (case.image,) + case.masks
    if (case.image, True) not in self._volumes:
      self._volumes.clear()
    arrays = [self._volume(p, image=k == 0) if case.index is not None else read_array(p)
              for k, p in enumerate(paths)]
    name = case.image
    if case.index is not None:
      axis = self.options.slice_axis
      shape = arrays[0].shape
      for p, a in zip(paths[1:], arrays[1:]):
        if a.shape != shape:
          raise ImportError_(f"{p}: expected a mask volume of the image's shape {list(shape)}, "
                             f"found {list(a.shape)}.")
      arrays = [np.take(a, case.index, axis=axis) for a in arrays]
      name = f"{case.image} (slice {case.index} along axis {axis})"
    return (to_uint8_image(arrays[0], name),
            [raw_mask(a, p) for p, a in zip(paths[1:], arrays[1:])], name)


def _folder_cases(options, log):
  found = match_folder(options.source, options.image, options.masks)
  cases = []
  for key, image, masks in found:
    group = _group(options, key)
    if _extension(image) in (".nii", ".nii.gz", ".npy"):
      array = read_array(image)
      if _is_volume(image, array):
        axis = options.slice_axis
        if not -3 <= axis < 3:
          raise ImportError_(f"--slice_axis: expected 0, 1 or 2 for the volume {image} of shape "
                             f"{list(array.shape)}, found {axis}.")
        cases.extend(Case(f"{key}/slice-{k:03d}", group, image, tuple(masks), k)
                     for k in range(array.shape[axis]))
        continue
    cases.append(Case(key, group, image, tuple(masks)))
  log(f"Found {len(found)} cases ({len(cases)} 2-D images) under {options.source}.")
  return cases


@dataclasses.dataclass
class Scan:
  """What `scan` found: everything the builder's features and the summary need.

  Attributes:
    options: the `ImportOptions`.
    splits: `{split: [Case]}` (only splits with cases).
    num_raters: R.
    num_classes: K.
    height, width: the stored image size (after resizing or padding).
    channels: 1 or 3.
    mask_rule: how mask values become classes.
    source_size: the image sizes found, `{(H, W): count}`.
    pickle_data: the unpickled dict (pickle format).
  """
  options: ImportOptions
  splits: dict
  num_raters: int
  num_classes: int
  height: int
  width: int
  channels: int
  mask_rule: MaskRule
  source_size: dict
  pickle_data: Optional[dict] = None

  def summary(self):
    counts = ", ".join(f"{s} {len(c)}" for s, c in self.splits.items())
    sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(self.source_size.items()))
    return (f"cases per split: {counts}; raters R={self.num_raters}; classes K="
            f"{self.num_classes} ({self.mask_rule.describe()}); images {sizes} -> stored "
            f"{self.height}x{self.width}x{self.channels}.")


def _progress(iterable, total, desc):
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return iterable
  return tqdm.tqdm(iterable, total=total, desc=desc, unit=" images", leave=False, mininterval=2)


def scan(options, log=print):
  """Finds and reads every case once; checks them; decides R, K, the size and the splits.

  Raises:
    ImportError_: any bad input (see the module docstring).
  """
  options.validate()
  pickle_data = None
  if options.format == "pickle":
    pickle_data = _load_pickle(options.source)
    keys = sorted(pickle_data, key=str)
    for key in keys:
      if not isinstance(key, str):
        raise ImportError_(f"{options.source}: expected str keys, found {key!r}.")
    cases = [Case(key, _group(options, key), key) for key in keys]
    log(f"Found {len(cases)} cases in {options.source}.")
  else:
    cases = _folder_cases(options, log)
  reader = _Reader(options, pickle_data)
  num_raters, sizes, channels, values, kept = None, {}, 1, set(), []
  first = None
  for case in _progress(cases, len(cases), "scanning"):
    image, masks, name = reader.read(case)
    if num_raters is None:
      num_raters, first = len(masks), name
    elif len(masks) != num_raters:
      raise ImportError_(f"{name}: expected {num_raters} masks (as for {first}), found "
                         f"{len(masks)}.")
    for k, mask in enumerate(masks):
      if mask.shape != image.shape[:2]:
        where = case.masks[k] if case.masks else f"{name}['masks'][{k}]"
        raise ImportError_(f"{where}: expected a mask of the image's shape "
                           f"{list(image.shape[:2])}, found {list(mask.shape)}.")
    uniques = [np.unique(m) for m in masks]
    if options.class_values is not None:
      for k, values_k in enumerate(uniques):
        bad = sorted(set(values_k.tolist()) - set(options.class_values))
        if bad:
          where = case.masks[k] if case.masks else f"{name}['masks'][{k}]"
          raise ImportError_(f"{where}: expected mask values in --class_values "
                             f"{list(options.class_values)}, found {bad[:5]}.")
    merged = np.unique(np.concatenate(uniques))
    if merged.size and merged.min() < 0:
      raise ImportError_(f"{name}: expected mask values >= 0, found {int(merged.min())}.")
    values.update(int(v) for v in merged)
    if options.slices == "annotated" and case.index is not None and not any(
        np.any(m != m.flat[0]) or m.flat[0] != 0 for m in masks):
      continue
    kept.append(case)
    sizes[image.shape[:2]] = sizes.get(image.shape[:2], 0) + 1
    channels = max(channels, image.shape[-1])
  if not kept:
    raise ImportError_(f"{options.source}: expected at least one annotated slice with "
                       f"--slices=annotated, found none.")
  lossy = any(_extension(m) in (".jpg", ".jpeg") for case in kept for m in case.masks)
  rule = _mask_rule(options, values, lossy)
  if options.slices == "annotated" and rule.kind != "index":  # Re-check with the final rule.
    kept = [c for c in kept if c.index is None or _annotated(reader, c, rule)]
  num_classes = options.num_classes or (len(rule.class_values) if rule.kind == "class_values"
                                        else 2 if rule.kind == "threshold"
                                        else max(2, max(values) + 1))
  if rule.kind == "index" and max(values) >= num_classes:
    raise ImportError_(f"--num_classes: expected more than the largest mask value "
                       f"{max(values)}, found {num_classes}.")
  height, width = _stored_size(options, sizes)
  by_split = {s: [] for s in SPLITS}
  group_split = {}
  assigned = [(case, split_of(options, case.key, case.group)) for case in kept]
  carve = options.split_from_path and "validation" not in {s for _, s in assigned}
  for case, split in assigned:
    if carve and split == "train" and lidc_common.patient_split(case.group) == "validation":
      split = "validation"  # A source without a validation folder: ~15% of its train groups.
    if group_split.setdefault(case.group, split) != split:
      raise ImportError_(f"case {case.key!r}: expected its group {case.group!r} in one split, "
                         f"found it in {group_split[case.group]} and {split}.")
    by_split[split].append(case)
  splits = {s: c for s, c in by_split.items() if c}
  return Scan(options, splits, num_raters, num_classes, height, width, channels, rule, sizes,
              pickle_data)


def _annotated(reader, case, rule):
  _, masks, name = reader.read(case)
  return any(np.any(rule.apply(m, name) > 0) for m in masks)


def _mask_rule(options, values, lossy=False):
  """How mask values become classes; JPEG (`lossy`) masks are always thresholded."""
  if options.class_values is not None:
    bad = sorted(values - set(options.class_values))
    if bad:
      raise ImportError_(f"{options.source}: expected mask values in --class_values "
                         f"{list(options.class_values)}, found {bad[:5]}.")
    return MaskRule("class_values", class_values=tuple(options.class_values))
  top = max(values) if values else 0
  if top < MAX_INFERRED_CLASSES and not lossy:
    return MaskRule("index")
  if options.num_classes not in (None, 2):
    raise ImportError_(f"{options.source}: expected class indices below "
                       f"{MAX_INFERRED_CLASSES} for --num_classes={options.num_classes}, found "
                       f"mask values up to {top}; pass --class_values.")
  bits = max(8, int(math.ceil(math.log2(top + 1))))
  return MaskRule("threshold", threshold=2 ** (bits - 1))


def _stored_size(options, sizes):
  if options.image_size is not None:
    height, width = options.image_size
  elif len(sizes) == 1 or options.pad_to_multiple:
    height, width = (max(h for h, _ in sizes), max(w for _, w in sizes))
  else:
    (h0, w0), (h1, w1) = sorted(sizes)[:2]
    raise ImportError_(f"{options.source}: expected images of one size, found {h0}x{w0} and "
                       f"{h1}x{w1}; pass --image_size=H,W or --pad_to_multiple=N.")
  m = options.pad_to_multiple
  if m:
    height, width = -(-height // m) * m, -(-width // m) * m
  return height, width


def _resize(array, size, resample):
  """`[H, W, C]` uint8 resized to `size` with PIL."""
  channels = [np.asarray(Image.fromarray(array[..., c]).resize((size[1], size[0]), resample))
              for c in range(array.shape[-1])]
  return np.stack(channels, -1)


def to_example(scan_result, case, image, masks, name):
  """Converts one case's arrays to the stored example (mask rule, resize, pad, channels)."""
  rule, options = scan_result.mask_rule, scan_result.options
  labels = [rule.apply(m, name) for m in masks]
  for k, label in enumerate(labels):
    if label.max(initial=0) >= scan_result.num_classes:
      raise ImportError_(f"{name}: expected mask {k} values in [0, {scan_result.num_classes}), "
                         f"found {int(label.max())}.")
  labels = np.stack(labels).astype(np.uint8)  # [R, H, W]
  if image.shape[-1] != scan_result.channels:
    image = np.repeat(image, scan_result.channels, axis=-1)
  if options.image_size is not None and tuple(image.shape[:2]) != tuple(options.image_size):
    image = _resize(image, options.image_size, Image.BILINEAR)
    labels = _resize(labels.transpose(1, 2, 0), options.image_size,
                     Image.NEAREST).transpose(2, 0, 1)
  pad_h, pad_w = scan_result.height - image.shape[0], scan_result.width - image.shape[1]
  if pad_h or pad_w:
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
    labels = np.pad(labels, ((0, 0), (0, pad_h), (0, pad_w)))
  return {"image": image, "masks": labels, "id": case.key, "group": case.group}


def examples(scan_result, cases):
  """Yields `(key, example)` for `cases` (read again; see `to_example`)."""
  reader = _Reader(scan_result.options, scan_result.pickle_data)
  for case in cases:
    image, masks, name = reader.read(case)
    yield case.key, to_example(scan_result, case, image, masks, name)
