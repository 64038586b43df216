"""LIDC crops made from the raw LIDC-IDRI download: the CT slices (DICOM) and the radiologists' XML.

The paper's preprocessing, written out (its code was never published; see README.md, `raw`):

1. Each CT series folder `LIDC-IDRI/<patient>/<study>/<series>/` holds the series' DICOM slices and
   one XML file (`LidcReadMessage`) with up to four reading sessions, one per radiologist. A
   session's `unblindedReadNodule`s carry one `roi` per slice: `imageZposition`, `imageSOP_UID`,
   `inclusion` (TRUE: region, FALSE: hole) and the `edgeMap` outline points (x = column,
   y = row, pixels). Rois of fewer than 3 points are the point marks of nodules < 3 mm; they
   outline nothing and are counted, not used.
2. Slices whose |SliceLocation| differs from |z of ImagePositionPatient| are dropped (as in the
   paper's data); an outline whose slice is missing or dropped is skipped and counted.
3. The outlined nodules of different radiologists are grouped into one lesion when their
   bounding boxes (columns x rows x z) overlap, transitively (`group_lesions`).
4. For every slice of a lesion: each radiologist's mask is the union of their inclusion polygons
   minus their exclusion polygons (a pixel belongs to a polygon when its centre lies inside,
   even-odd rule); the slice is resampled to `spacing_mm` in-plane (bilinear, in Hounsfield
   units) on a `crop_size` grid centred on the centre of mass of the union of the masks, masks
   are rasterised directly on that grid, then the central 128 x 128 window is kept. A
   radiologist who did not outline the lesion on that slice gives an empty mask; up to 4 masks,
   in the order of the reading sessions in the XML.

`process_series` does all of it for one series and returns the crops plus a `collections.Counter`
of what was used and what was skipped, so the whole download can be run as one Apache Beam
element per series (`split_generators`) and the counts summed.

Every input problem raises `LidcError` (a `ValueError`) naming the file, what was expected and
what was found; `process_series` turns problems of one series or one slice into counted skips
with a warning, never into a crop.
"""

import collections
import dataclasses
import json
import logging
import math
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
from scipy import ndimage

from tf_prob_unet import extras

from . import lidc_common

LidcError = lidc_common.LidcError


class NotCtError(LidcError):
  """A DICOM file that is not a CT slice (LIDC-IDRI also holds chest X-ray series)."""


XML_ROOT = "LidcReadMessage"
# Slices are kept when ||SliceLocation| - |z|| is at most this (DICOM DS values are decimal
# strings; LIDC writes 6 decimals).
SLICE_LOCATION_TOLERANCE_MM = 1e-3
# An outline whose SOP UID is not in the series is matched to the slice at its imageZposition
# when one lies within this distance.
Z_MATCH_TOLERANCE_MM = 1e-3
MIN_OUTLINE_POINTS = 3


@dataclasses.dataclass(frozen=True)
class RawOptions:
  """How crops are made (the defaults follow the paper).

  Attributes:
    spacing_mm: in-plane pixel size of the crops, mm.
    crop_size: side of the crop cut around the lesion, pixels at `spacing_mm`.
    window_center_hu, window_width_hu: Hounsfield window mapped linearly to 0..255 (clipped).
  """
  spacing_mm: float = 0.5
  crop_size: int = 180
  window_center_hu: float = -600.0
  window_width_hu: float = 1500.0

  def __post_init__(self):
    if not self.spacing_mm > 0:
      raise ValueError(f"spacing_mm: expected > 0, found {self.spacing_mm}.")
    if self.crop_size < lidc_common.IMAGE_SIZE:
      raise ValueError(f"crop_size: expected >= {lidc_common.IMAGE_SIZE} (the stored size), "
                       f"found {self.crop_size}.")
    if not self.window_width_hu > 0:
      raise ValueError(f"window_width_hu: expected > 0, found {self.window_width_hu}.")


# -----------------------------------------------------------------------------
# XML.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outline:
  """One roi of one radiologist's nodule on one slice.

  Attributes:
    sop_uid: the slice's SOPInstanceUID (`imageSOP_UID`).
    z: `imageZposition`, mm.
    inclusion: True for a region, False for a hole.
    points: float64 [P, 2], (x = column, y = row) in pixels of the slice.
  """
  sop_uid: str
  z: float
  inclusion: bool
  points: np.ndarray


@dataclasses.dataclass(frozen=True)
class ReaderNodule:
  """One `unblindedReadNodule` of one reading session that has at least one outline.

  Attributes:
    reader: index of the reading session in the file (0-based).
    nodule_id: the session's `noduleID` (unique only inside the session).
    outlines: tuple of `Outline`s (rois of >= 3 points).
  """
  reader: int
  nodule_id: str
  outlines: tuple

  def bounding_box(self):
    """((x_min, x_max), (y_min, y_max), (z_min, z_max)) over the inclusion outlines."""
    regions = [o for o in self.outlines if o.inclusion] or list(self.outlines)
    points = np.concatenate([o.points for o in regions])
    zs = [o.z for o in regions]
    return ((points[:, 0].min(), points[:, 0].max()), (points[:, 1].min(), points[:, 1].max()),
            (min(zs), max(zs)))


@dataclasses.dataclass(frozen=True)
class Reads:
  """What one XML file says.

  Attributes:
    series_uid: `ResponseHeader/SeriesInstanceUid`.
    num_sessions: number of `readingSession`s.
    nodules: tuple of `ReaderNodule`s with outlines.
    counts: `collections.Counter` of `point_marks` (nodules without any outline) and
      `point_rois` (rois of < 3 points inside outlined nodules).
  """
  series_uid: str
  num_sessions: int
  nodules: tuple
  counts: collections.Counter


def _local_name(tag):
  return tag.rsplit("}", 1)[-1]


def _children(element, name):
  return [child for child in element if _local_name(child.tag) == name]


def _text(element, name, where):
  """The stripped text of `element`'s single child `name`; a `LidcError` if it is missing."""
  found = _children(element, name)
  if len(found) != 1 or not (found[0].text or "").strip():
    raise LidcError(f"{where}: expected one non-empty <{name}>, found "
                    f"{len(found) if len(found) != 1 else 'an empty one'}.")
  return found[0].text.strip()


def _number(text, where, name):
  try:
    value = float(text)
  except ValueError:
    raise LidcError(f"{where}: expected a number in <{name}>, found {text!r}.") from None
  if not math.isfinite(value):
    raise LidcError(f"{where}: expected a finite number in <{name}>, found {text!r}.")
  return value


def parse_xml(data, name):
  """Parses one LIDC XML file.

  Args:
    data: the file's bytes.
    name: the file's name, for error messages.

  Returns:
    `Reads`.

  Raises:
    LidcError: not well-formed XML, not a `LidcReadMessage` (e.g. the chest X-ray
      `IdriReadMessage`), or a roi without its z position, SOP UID, inclusion flag or with
      non-numeric coordinates.
  """
  try:
    root = ElementTree.fromstring(data)
  except ElementTree.ParseError as e:
    raise LidcError(f"{name}: expected well-formed XML, found a syntax error ({e}).") from None
  if _local_name(root.tag) != XML_ROOT:
    raise LidcError(f"{name}: expected a <{XML_ROOT}> document, found <{_local_name(root.tag)}>.")
  headers = _children(root, "ResponseHeader")
  if len(headers) != 1:
    raise LidcError(f"{name}: expected one <ResponseHeader>, found {len(headers)}.")
  series_uid = _text(headers[0], "SeriesInstanceUid", f"{name}: <ResponseHeader>")
  counts = collections.Counter()
  nodules = []
  sessions = _children(root, "readingSession")
  for reader, session in enumerate(sessions):
    for nodule in _children(session, "unblindedReadNodule"):
      nodule_id = _text(nodule, "noduleID", f"{name}: readingSession {reader}")
      where = f"{name}: readingSession {reader}, nodule {nodule_id!r}"
      outlines = []
      for roi in _children(nodule, "roi"):
        z = _number(_text(roi, "imageZposition", where), where, "imageZposition")
        sop_uid = _text(roi, "imageSOP_UID", where)
        inclusion = _text(roi, "inclusion", where).upper()
        if inclusion not in ("TRUE", "FALSE"):
          raise LidcError(f"{where}: expected <inclusion> TRUE or FALSE, found {inclusion!r}.")
        points = [(_number(_text(edge, "xCoord", where), where, "xCoord"),
                   _number(_text(edge, "yCoord", where), where, "yCoord"))
                  for edge in _children(roi, "edgeMap")]
        if len(points) < MIN_OUTLINE_POINTS:
          counts["point_rois"] += 1
          continue
        outlines.append(Outline(sop_uid, z, inclusion == "TRUE", np.asarray(points, np.float64)))
      if any(o.inclusion for o in outlines):
        nodules.append(ReaderNodule(reader, nodule_id, tuple(outlines)))
      else:
        counts["point_marks"] += 1
        counts["point_rois"] -= len(_children(nodule, "roi")) - len(outlines)
  counts += collections.Counter()  # Drops the zero entries.
  return Reads(series_uid, len(sessions), tuple(nodules), counts)


# -----------------------------------------------------------------------------
# Lesions.
# -----------------------------------------------------------------------------


def _boxes_overlap(a, b):
  return all(lo_a <= hi_b and lo_b <= hi_a for (lo_a, hi_a), (lo_b, hi_b) in zip(a, b))


def group_lesions(nodules):
  """Groups the outlined nodules of different readers whose bounding boxes overlap.

  Two nodules are linked when they come from different reading sessions and their boxes
  (columns x rows x z, closed intervals, from the inclusion outlines) overlap; lesions are the
  connected groups. A reader with two nodules in one lesion contributes the union of both.

  Args:
    nodules: sequence of `ReaderNodule`.

  Returns:
    list of lesions, each a list of indices into `nodules`, ordered by the lesions' smallest z,
    then row, then column.
  """
  boxes = [n.bounding_box() for n in nodules]
  parent = list(range(len(nodules)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for i in range(len(nodules)):
    for j in range(i + 1, len(nodules)):
      if nodules[i].reader != nodules[j].reader and _boxes_overlap(boxes[i], boxes[j]):
        parent[find(i)] = find(j)
  groups = collections.defaultdict(list)
  for i in range(len(nodules)):
    groups[find(i)].append(i)

  def order(members):
    return (min(boxes[i][2][0] for i in members), min(boxes[i][1][0] for i in members),
            min(boxes[i][0][0] for i in members))

  return sorted(groups.values(), key=order)


# -----------------------------------------------------------------------------
# Rasterisation and resampling.
# -----------------------------------------------------------------------------


def rasterize_polygon(points, shape):
  """Fills a closed polygon: the pixels whose centre lies inside (even-odd rule).

  Pixel (i, j) has its centre at (x = j, y = i). A centre exactly on a left or top edge (small
  x or y) is inside, on a right or bottom edge outside, so polygons sharing an edge do not
  overlap.

  Args:
    points: float [P, 2], vertices (x = column, y = row), in order; the last joins the first.
    shape: (height, width) of the output.

  Returns:
    bool [height, width].
  """
  height, width = shape
  points = np.asarray(points, np.float64)
  x0, y0 = points[:, 0], points[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
  rows = np.arange(height, dtype=np.float64)[None, :]  # [1, H]
  low, high = np.minimum(y0, y1)[:, None], np.maximum(y0, y1)[:, None]
  crosses = (rows >= low) & (rows < high)  # [E, H]; horizontal edges never cross.
  with np.errstate(divide="ignore", invalid="ignore"):
    x_cross = x0[:, None] + (rows - y0[:, None]) * ((x1 - x0) / (y1 - y0))[:, None]
  edge, row = np.nonzero(crosses)
  # Centres at or right of a crossing see it on their left: toggle from the first such column.
  first = np.clip(np.ceil(x_cross[edge, row]).astype(np.int64), 0, width)
  toggles = np.zeros((height, width + 1), np.int64)
  np.add.at(toggles, (row, first), 1)
  return (np.cumsum(toggles[:, :width], axis=1) % 2).astype(bool)


def reader_mask(outlines, transform, shape):
  """One reader's mask on one slice: union of inclusion polygons minus exclusion polygons.

  Args:
    outlines: sequence of `Outline` (one reader, one slice).
    transform: function mapping points [P, 2] (x, y) in slice pixels to grid (x, y).
    shape: (height, width) of the grid.

  Returns:
    bool [height, width].
  """
  mask = np.zeros(shape, bool)
  for outline in sorted(outlines, key=lambda o: not o.inclusion):  # Holes last.
    polygon = rasterize_polygon(transform(outline.points), shape)
    mask = mask | polygon if outline.inclusion else mask & ~polygon
  return mask


def polygon_area(points):
  """Area of a simple polygon (shoelace), in squared input units."""
  x, y = np.asarray(points, np.float64).T
  return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def window_to_uint8(hounsfield, center, width):
  """Maps [center - width / 2, center + width / 2] HU linearly to 0..255 (clipped, rounded)."""
  scaled = (np.asarray(hounsfield, np.float64) - (center - width / 2.0)) / width
  return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def resample_crop(hounsfield, pixel_spacing, center_rc, options):
  """Resamples a window of a slice to `options.spacing_mm`, centred on a point.

  Output pixel (i, j) samples the slice at row `c_r + (i - (n - 1) / 2) * s / spacing_r` and
  column `c_c + (j - (n - 1) / 2) * s / spacing_c` (bilinear; outside the slice: -1024 HU, air),
  with n = `options.crop_size`, s = `options.spacing_mm`. This equals resampling the whole slice
  to s with its grid shifted by less than one output pixel, then cutting the n x n crop.

  Args:
    hounsfield: float [rows, cols], the slice in HU.
    pixel_spacing: (row spacing, column spacing), mm (DICOM PixelSpacing).
    center_rc: (row, column) of the crop centre in slice pixels.
    options: `RawOptions`.

  Returns:
    float32 [n, n], HU.
  """
  offsets = (np.arange(options.crop_size) - (options.crop_size - 1) / 2.0) * options.spacing_mm
  rows = center_rc[0] + offsets / pixel_spacing[0]
  cols = center_rc[1] + offsets / pixel_spacing[1]
  grid = np.meshgrid(rows, cols, indexing="ij")
  return ndimage.map_coordinates(np.asarray(hounsfield, np.float32), grid, order=1,
                                 mode="constant", cval=-1024.0)


def to_crop_grid(pixel_spacing, center_rc, options):
  """The function mapping slice pixel points (x, y) to the crop grid of `resample_crop`."""
  middle = (options.crop_size - 1) / 2.0
  scale = np.array([pixel_spacing[1], pixel_spacing[0]]) / options.spacing_mm
  center_xy = np.array([center_rc[1], center_rc[0]], np.float64)

  def transform(points):
    return (np.asarray(points, np.float64) - center_xy) * scale + middle

  return transform


def lesion_center(outlines_by_reader, pixel_spacing, options):
  """Centre of mass (row, column) in slice pixels of the union of the readers' masks.

  The union is rasterised on the crop grid (`to_crop_grid`) centred on the outlines' bounding
  box, where the integer LIDC vertices do not sit on pixel centres (on the slice's own grid a
  half-open pixel rule would shift the centre by half a slice pixel).

  Args:
    outlines_by_reader: dict reader -> sequence of `Outline` on one slice.
    pixel_spacing: (row spacing, column spacing), mm.
    options: `RawOptions`.

  Returns:
    (row, column) floats, or None when every mask is empty.
  """
  points = np.concatenate([o.points for outlines in outlines_by_reader.values()
                           for o in outlines if o.inclusion])
  start = tuple((points.min(axis=0) + points.max(axis=0))[::-1] / 2.0)
  transform = to_crop_grid(pixel_spacing, start, options)
  shape = (options.crop_size, options.crop_size)
  union = np.zeros(shape, bool)
  for outlines in outlines_by_reader.values():
    union |= reader_mask(outlines, transform, shape)
  if not union.any():
    return None
  middle = (options.crop_size - 1) / 2.0
  com = np.asarray(ndimage.center_of_mass(union))
  return tuple(start + (com - middle) * options.spacing_mm / np.asarray(pixel_spacing))


# -----------------------------------------------------------------------------
# DICOM.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SliceHeader:
  """What is needed of one CT slice's DICOM header.

  Attributes:
    path: the file.
    sop_uid, series_uid: SOPInstanceUID, SeriesInstanceUID.
    z: ImagePositionPatient[2], mm.
    slice_location: SliceLocation, mm (None if absent).
    pixel_spacing: (row spacing, column spacing), mm.
    shape: (Rows, Columns).
  """
  path: str
  sop_uid: str
  series_uid: str
  z: float
  slice_location: object
  pixel_spacing: tuple
  shape: tuple


def _open(path):
  from etils import epath  # pylint: disable=g-import-not-at-top  (TFDS dependency; GCS paths)
  return epath.Path(path).open("rb")


def _dcmread(path, stop_before_pixels):
  import pydicom  # pylint: disable=g-import-not-at-top  (only the raw config needs it)
  from pydicom import errors  # pylint: disable=g-import-not-at-top
  try:
    with _open(path) as f:
      return pydicom.dcmread(f, stop_before_pixels=stop_before_pixels)
  except (errors.InvalidDicomError, EOFError, OSError) as e:
    raise LidcError(f"{path}: expected a DICOM file, could not read it ({e}).") from None


def _attribute(dataset, keyword, tag, count, path):
  value = dataset.get(keyword)
  if value is None or value == "":
    raise LidcError(f"{path}: expected the DICOM attribute {keyword} {tag}, found none.")
  values = list(value) if count > 1 else [value]
  try:
    numbers = [float(v) for v in values]
  except (TypeError, ValueError):
    numbers = []
  if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
    raise LidcError(f"{path}: expected {count} number(s) in {keyword} {tag}, found {value!r}.")
  return numbers


def read_slice_header(path):
  """Reads a CT slice's header (not its pixels).

  Raises:
    NotCtError: Modality is not CT.
    LidcError: not DICOM, or without SOPInstanceUID, SeriesInstanceUID,
      ImagePositionPatient, PixelSpacing (> 0), Rows or Columns.
  """
  dataset = _dcmread(path, stop_before_pixels=True)
  modality = dataset.get("Modality")
  if modality != "CT":
    raise NotCtError(f"{path}: expected a CT slice (Modality CT), found Modality {modality!r}.")
  for keyword, tag in (("SOPInstanceUID", "(0008,0018)"), ("SeriesInstanceUID", "(0020,000E)")):
    if not dataset.get(keyword):
      raise LidcError(f"{path}: expected the DICOM attribute {keyword} {tag}, found none.")
  position = _attribute(dataset, "ImagePositionPatient", "(0020,0032)", 3, path)
  spacing = _attribute(dataset, "PixelSpacing", "(0028,0030)", 2, path)
  if min(spacing) <= 0:
    raise LidcError(f"{path}: expected PixelSpacing (0028,0030) > 0, found {spacing}.")
  rows = _attribute(dataset, "Rows", "(0028,0010)", 1, path)[0]
  cols = _attribute(dataset, "Columns", "(0028,0011)", 1, path)[0]
  location = dataset.get("SliceLocation")
  return SliceHeader(path=str(path), sop_uid=str(dataset.SOPInstanceUID),
                     series_uid=str(dataset.SeriesInstanceUID), z=position[2],
                     slice_location=None if location in (None, "") else float(location),
                     pixel_spacing=tuple(spacing), shape=(int(rows), int(cols)))


def read_hounsfield(header):
  """The slice's pixels in Hounsfield units (RescaleSlope / RescaleIntercept applied).

  Returns:
    float32 [rows, cols].

  Raises:
    LidcError: no pixel data, or not the shape the header announced.
  """
  dataset = _dcmread(header.path, stop_before_pixels=False)
  try:
    pixels = dataset.pixel_array
  except Exception as e:  # pydicom raises many types for missing or undecodable pixel data.
    raise LidcError(f"{header.path}: expected decodable pixel data, found none ({e}).") from None
  if pixels.shape != header.shape:
    raise LidcError(f"{header.path}: expected {header.shape[0]}x{header.shape[1]} pixels, "
                    f"found {'x'.join(map(str, pixels.shape))}.")
  slope = float(dataset.get("RescaleSlope", 1.0))
  intercept = float(dataset.get("RescaleIntercept", 0.0))
  return (pixels.astype(np.float32) * slope + intercept).astype(np.float32)


def slice_location_agrees(header):
  """|SliceLocation| == |ImagePositionPatient z| (within `SLICE_LOCATION_TOLERANCE_MM`)."""
  return (header.slice_location is not None and
          abs(abs(header.slice_location) - abs(header.z)) <= SLICE_LOCATION_TOLERANCE_MM)


# -----------------------------------------------------------------------------
# One series.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Crop:
  """One example made from one slice of one lesion.

  Attributes:
    image: uint8 [128, 128].
    masks: uint8 [4, 128, 128], values {0, 1}.
    patient_id, series_uid, sop_uid: where it comes from.
    lesion_index: index of the lesion in the series (`group_lesions` order).
    z: the slice's ImagePositionPatient z, mm.
    readers: sorted tuple of the readers with an outline on this slice.
    center_rc: the crop centre (row, column) in slice pixels.
    pixel_spacing: the slice's (row, column) spacing, mm.
    outline_areas_mm2: dict reader -> the reader's polygon area on this slice in mm^2
      (inclusion areas minus exclusion areas, shoelace).
  """
  image: np.ndarray
  masks: np.ndarray
  patient_id: str
  series_uid: str
  sop_uid: str
  lesion_index: int
  z: float
  readers: tuple
  center_rc: tuple
  pixel_spacing: tuple
  outline_areas_mm2: dict

  @property
  def lesion_id(self):
    return f"{self.series_uid}/lesion-{self.lesion_index}"

  @property
  def slice_id(self):
    return f"z{self.z + 0.0:+.3f}"  # + 0.0: no "-0.000".

  @property
  def example_id(self):
    return f"{self.patient_id}/{self.lesion_id}/{self.slice_id}"


@dataclasses.dataclass(frozen=True)
class SeriesResult:
  """`process_series`'s answer: crops, counts (`collections.Counter`) and warning lines."""
  crops: list
  counts: collections.Counter
  warnings: list


def _list_series_files(series_dir):
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    files = sorted(p for p in epath.Path(series_dir).iterdir() if p.is_file())
  except OSError as e:
    raise LidcError(f"{series_dir}: expected a readable series folder ({e}).") from None
  xmls = [p for p in files if p.suffix.lower() == ".xml"]
  dicoms = [p for p in files if p.suffix.lower() == ".dcm"]
  return xmls, dicoms


def process_series(series_dir, patient_id, options=RawOptions()):
  """Makes every crop of one series folder; problems become counted skips.

  Counts (keys of `SeriesResult.counts`): `series`, `series_used`, `series_skipped_<reason>`
  (`no_xml`, `several_xml`, `bad_xml`, `no_dicom`, `not_ct`, `series_mismatch`, `no_slices`),
  `slices`, `slices_unreadable`, `slices_dropped_slice_location` (|SliceLocation| differs from
  |z|), `slices_dropped_no_slice_location`, `point_marks`, `point_rois`,
  `outlines`, `outlines_used`, `outlines_matched_by_z`, `outlines_slice_missing`,
  `outlines_slice_dropped`, `outlines_rasterised_empty`, `readers_beyond_max` (sessions past
  the fourth), `nodules_merged_same_reader`, `lesions`, `crops`, `crops_no_mask`,
  `crops_mask_at_border` (a mask reaches the edge of the 128 x 128 window: the lesion is larger
  than the window and its mask is cut).

  Args:
    series_dir: the folder of one series (str or path, local or any `etils.epath` path).
    patient_id: e.g. "LIDC-IDRI-0001".
    options: `RawOptions`.

  Returns:
    `SeriesResult`.
  """
  counts = collections.Counter(series=1)
  warnings = []

  def skip(reason, message):
    counts[f"series_skipped_{reason}"] += 1
    warnings.append(message)
    return SeriesResult([], counts, warnings)

  xmls, dicoms = _list_series_files(series_dir)
  if not dicoms:
    return skip("no_dicom", f"{series_dir}: expected DICOM slices (*.dcm), found none; skipped.")
  if not xmls:
    return skip("no_xml", f"{series_dir}: expected one LIDC XML file next to the {len(dicoms)} "
                f"DICOM slices, found none; series skipped.")
  if len(xmls) > 1:
    return skip("several_xml", f"{series_dir}: expected one XML file, found {len(xmls)} "
                f"({', '.join(p.name for p in xmls)}); series skipped.")
  try:
    with _open(xmls[0]) as f:
      reads = parse_xml(f.read(), str(xmls[0]))
  except (LidcError, OSError) as e:
    return skip("bad_xml", f"{e} Series skipped.")
  counts.update(reads.counts)

  headers = []
  for path in dicoms:
    try:
      headers.append(read_slice_header(path))
    except NotCtError as e:
      return skip("not_ct", f"{e} Series skipped.")
    except LidcError as e:
      counts["slices_unreadable"] += 1
      warnings.append(f"{e} Slice skipped.")
  counts["slices"] += len(dicoms)
  series_uids = {h.series_uid for h in headers}
  if series_uids - {reads.series_uid}:
    return skip("series_mismatch", f"{series_dir}: expected the slices of series "
                f"{reads.series_uid} (from {xmls[0].name}), found {sorted(series_uids)}; "
                f"series skipped.")
  kept = {}
  dropped = set()
  for header in headers:
    if slice_location_agrees(header):
      kept[header.sop_uid] = header
    else:
      dropped.add(header.sop_uid)
      counts["slices_dropped_slice_location" if header.slice_location is not None else
             "slices_dropped_no_slice_location"] += 1
  if not kept:
    return skip("no_slices", f"{series_dir}: expected slices whose SliceLocation agrees with "
                f"ImagePositionPatient, found none of {len(dicoms)}; series skipped.")
  by_z = {round(h.z / Z_MATCH_TOLERANCE_MM): h for h in kept.values()}
  dropped_z = {round(h.z / Z_MATCH_TOLERANCE_MM) for h in headers if h.sop_uid in dropped}

  if dropped:
    first = min((h for h in headers if h.sop_uid in dropped), key=lambda h: h.path)
    warnings.append(f"{series_dir}: {len(dropped)} slice(s) dropped, SliceLocation absent or "
                    f"|SliceLocation| != |ImagePositionPatient z| (e.g. {first.path}: "
                    f"{first.slice_location} vs {first.z}).")
  nodules = list(reads.nodules)
  missing_zs, dropped_zs = set(), set()
  crops = []
  lesions = group_lesions(nodules)
  for lesion_index, members in enumerate(lesions):
    readers_in = [nodules[i].reader for i in members]
    counts["nodules_merged_same_reader"] += len(readers_in) - len(set(readers_in))
    by_slice = collections.defaultdict(lambda: collections.defaultdict(list))
    for i in members:
      nodule = nodules[i]
      for outline in nodule.outlines:
        counts["outlines"] += 1
        header = kept.get(outline.sop_uid)
        if header is None and outline.sop_uid not in dropped:
          header = by_z.get(round(outline.z / Z_MATCH_TOLERANCE_MM))
          if header is not None:
            counts["outlines_matched_by_z"] += 1
        if header is None:
          on_dropped = (outline.sop_uid in dropped or
                        round(outline.z / Z_MATCH_TOLERANCE_MM) in dropped_z)
          counts["outlines_slice_dropped" if on_dropped else "outlines_slice_missing"] += 1
          (dropped_zs if on_dropped else missing_zs).add(outline.z)
          continue
        if nodule.reader >= lidc_common.NUM_READERS:
          counts["readers_beyond_max"] += 1
          continue
        by_slice[header.sop_uid][nodule.reader].append(outline)
    if not by_slice:
      continue
    counts["lesions"] += 1
    for sop_uid in sorted(by_slice, key=lambda uid: kept[uid].z):
      header = kept[sop_uid]
      outlines_by_reader = by_slice[sop_uid]
      crop = _make_crop(header, outlines_by_reader, patient_id, reads.series_uid, lesion_index,
                        options, counts, warnings)
      if crop is not None:
        crops.append(crop)
  for zs, what, count in ((missing_zs, "missing from the folder or unreadable",
                           "outlines_slice_missing"),
                          (dropped_zs, "dropped", "outlines_slice_dropped")):
    if zs:
      shown = ", ".join(f"{z:g}" for z in sorted(zs)[:5]) + (", ..." if len(zs) > 5 else "")
      warnings.append(f"{series_dir}: {counts[count]} outline(s) skipped, their {len(zs)} "
                      f"slice(s) are {what} (z = {shown}).")
  counts["series_used"] += 1
  counts["crops"] += len(crops)
  return SeriesResult(crops, counts + collections.Counter(), warnings)


def _make_crop(header, outlines_by_reader, patient_id, series_uid, lesion_index, options,
               counts, warnings):
  """One `Crop` (or None, counted) from one slice's outlines of one lesion."""
  where = f"{header.path} (lesion {lesion_index})"
  center = lesion_center(outlines_by_reader, header.pixel_spacing, options)
  if center is None:
    counts["crops_no_mask"] += 1
    counts["outlines_rasterised_empty"] += sum(map(len, outlines_by_reader.values()))
    warnings.append(f"{where}: expected outlines enclosing a pixel centre, found none; "
                    f"crop skipped.")
    return None
  try:
    hounsfield = read_hounsfield(header)
  except LidcError as e:
    counts["slices_unreadable"] += 1
    counts["outlines_slice_missing"] += sum(map(len, outlines_by_reader.values()))
    warnings.append(f"{e} Crop skipped.")
    return None
  image = window_to_uint8(resample_crop(hounsfield, header.pixel_spacing, center, options),
                          options.window_center_hu, options.window_width_hu)
  transform = to_crop_grid(header.pixel_spacing, center, options)
  shape = (options.crop_size, options.crop_size)
  masks = []
  areas = {}
  pixel_area = header.pixel_spacing[0] * header.pixel_spacing[1]
  for reader in range(lidc_common.NUM_READERS):
    outlines = outlines_by_reader.get(reader, [])
    mask = reader_mask(outlines, transform, shape)
    if outlines:
      counts["outlines_used"] += len(outlines)
      if not mask.any():
        counts["outlines_rasterised_empty"] += len(outlines)
      areas[reader] = pixel_area * sum(
          polygon_area(o.points) * (1 if o.inclusion else -1) for o in outlines)
    masks.append(lidc_common.center_crop(mask, lidc_common.IMAGE_SIZE, where))
  edges = np.stack(masks)[:, [0, -1], :].any() or np.stack(masks)[:, :, [0, -1]].any()
  counts["crops_mask_at_border"] += int(edges)
  return Crop(
      image=lidc_common.center_crop(image, lidc_common.IMAGE_SIZE, where),
      masks=np.stack(masks).astype(np.uint8), patient_id=patient_id, series_uid=series_uid,
      sop_uid=header.sop_uid, lesion_index=lesion_index, z=header.z,
      readers=tuple(sorted(outlines_by_reader)), center_rc=tuple(center),
      pixel_spacing=header.pixel_spacing, outline_areas_mm2=areas)


# -----------------------------------------------------------------------------
# The download.
# -----------------------------------------------------------------------------


def find_series(manual_dir):
  """The series folders of a raw download, with their patient.

  Args:
    manual_dir: a folder holding `LIDC-IDRI/<patient>/<study>/<series>/`, or the `LIDC-IDRI`
      folder itself.

  Returns:
    sorted list of (patient_id, series folder path as str).

  Raises:
    LidcError: no `LIDC-IDRI-*` patient folder found.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(manual_dir)
  if (root / "LIDC-IDRI").is_dir():
    root = root / "LIDC-IDRI"
  patients = []
  if root.is_dir():
    patients = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("LIDC-IDRI-"))
  if not patients:
    raise LidcError(f"{manual_dir}: expected the raw download's LIDC-IDRI/<patient>/<study>/"
                    f"<series>/ folders, found {lidc_common.list_manual_dir(manual_dir)}.")
  series = []
  for patient in patients:
    for study in sorted(p for p in patient.iterdir() if p.is_dir()):
      for folder in sorted(p for p in study.iterdir() if p.is_dir()):
        series.append((patient.name, str(folder)))
  return series


def crop_to_example(crop):
  """The TFDS (key, example) of a `Crop` (`lidc_common.make_example`)."""
  example = lidc_common.make_example(crop.image, list(crop.masks), crop.patient_id,
                                     crop.lesion_id, crop.slice_id, crop.example_id,
                                     crop.example_id)
  return crop.example_id, example


def format_counts(counts):
  """One line: `key=value` pairs of a counts mapping, sorted by key."""
  return ", ".join(f"{key}={value}" for key, value in sorted(counts.items()))


DESCRIPTION = (
    "Crops made here from the raw LIDC-IDRI download (DICOM slices + the radiologists' XML), "
    "following the paper: outlined lesions only, readers grouped by overlapping bounding "
    "boxes, 0.5 mm in-plane, 180x180 crop centred on the lesion, then the 128x128 centre "
    "crop; lung window -600 +- 750 HU. An Apache Beam pipeline (one element per series); "
    "split by patient (SHA-256 of the id, 70/15/15).")

MANUAL_INSTRUCTIONS = (
    "raw: the TCIA download of LIDC-IDRI (DICOM + XML, NBIA Data Retriever, 'Descriptive "
    "Directory Name' off), i.e. `<manual_dir>/LIDC-IDRI/LIDC-IDRI-NNNN/<StudyInstanceUID>/"
    "<SeriesInstanceUID>/` holding each series' *.dcm slices and its one *.xml file.")

COUNTS_PREFIX = "raw_counts-"


def split_generators(manual_dir, counts_dir=None, options=None):
  """One Beam `PTransform` per split: one element per series, crops as (key, example).

  Patients go to splits with `lidc_common.patient_split`; splits without any series are left
  out (TFDS cannot write an empty split). Each split's counts (see `process_series`) are
  summed, logged (`lidc raw <split> counts: ...`) and, with `counts_dir`, written as JSON to
  `<counts_dir>/raw_counts-<split>.json`; each count is also a Beam counter (namespace
  `lidc_raw`), which distributed runners show while they run.

  Args:
    manual_dir: see `find_series`.
    counts_dir: folder for the counts files (the builder passes its dataset folder), or None.
    options: `RawOptions` (None: the defaults).

  Returns:
    dict split -> `beam.PTransform` producing (key, example).
  """
  # Checked here, on the driver (the Beam workers' steps must not need tf_prob_unet).
  beam = extras.require("apache_beam", "dicom", "the lidc/raw config")
  extras.require("pydicom", "dicom", "the lidc/raw config")
  options = options or RawOptions()
  pickle_by_value()
  by_split = collections.defaultdict(list)
  for patient_id, folder in find_series(manual_dir):
    by_split[lidc_common.patient_split(patient_id)].append((patient_id, folder))

  def make_transform(split, elements):

    @beam.ptransform_fn
    def transform(pipeline):
      outputs = (pipeline
                 | f"Series_{split}" >> beam.Create(elements)
                 | f"Reshuffle_{split}" >> beam.Reshuffle()
                 | f"Crops_{split}" >> beam.FlatMap(_beam_process, options=options).with_outputs(
                     "counts", main="crops"))
      _ = (outputs.counts
           | f"SumCounts_{split}" >> beam.CombineGlobally(_sum_counts)
           | f"ReportCounts_{split}" >> beam.Map(_report_counts, split=split,
                                                 counts_dir=counts_dir))
      return outputs.crops

    return transform()  # pylint: disable=no-value-for-parameter

  return {split: make_transform(split, elements) for split, elements in sorted(by_split.items())}


def _beam_process(element, options):
  """Beam step: one (patient_id, series folder) -> counts (tagged) and (key, example)s."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  patient_id, folder = element
  result = process_series(folder, patient_id, options)
  for line in result.warnings:
    logging.warning("lidc raw: %s", line)
  for key, value in result.counts.items():
    beam.metrics.Metrics.counter("lidc_raw", key).inc(value)
  yield beam.pvalue.TaggedOutput("counts", dict(result.counts))
  for crop in result.crops:
    yield crop_to_example(crop)


def _sum_counts(dicts):
  total = collections.Counter()
  for counts in dicts:
    total.update(counts)
  return dict(sorted(total.items()))


def _report_counts(counts, split, counts_dir):
  """Logs a split's counts and writes them (atomically) to `counts_dir`."""
  logging.warning("lidc raw %s counts: %s", split, format_counts(counts))
  if counts_dir is None:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(counts_dir) / f"{COUNTS_PREFIX}{split}.json"
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
  temporary.replace(path)


def pickle_by_value(*modules):
  """Ships this module, `lidc_common` and `modules` to Beam workers inside the pickled steps.

  The builder folder is imported under a name of the caller's choosing (`lidc.` from the
  `tfds build` command, `tf_prob_unet_datasets.lidc.` from the training code), which a remote
  worker could not import; pickled by value, the workers need only the installed packages
  (numpy, scipy, pydicom, etils, tensorflow-datasets).
  """
  picklers = []
  try:  # Beam's default pickler is its own copy of cloudpickle.
    from apache_beam.internal.cloudpickle import cloudpickle as beam_cloudpickle  # pylint: disable=g-import-not-at-top
    picklers.append(beam_cloudpickle)
  except ImportError:
    pass
  try:
    import cloudpickle  # pylint: disable=g-import-not-at-top
    picklers.append(cloudpickle)
  except ImportError:
    pass
  for pickler in picklers:  # With dill instead, the workers need the folder on their path.
    for module in (sys.modules[__name__], lidc_common) + modules:
      pickler.register_pickle_by_value(module)
