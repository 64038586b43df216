"""The `slices` config: the "LIDC-IDRI-slices" layout, from its zip or its extracted folder.

Layout (inside `LIDC-IDRI-slices.zip` or the folder `LIDC-IDRI-slices/` in the manual dir):

  LIDC-IDRI-slices/<patient>/nodule-<n>/images/slice-<k>.png     128x128 8-bit grey
  LIDC-IDRI-slices/<patient>/nodule-<n>/mask-<r>/slice-<k>.png   r = 0..3, 8-bit, {0, 255}

The zip is read in place (never extracted). Ids: `patient_id` = `<patient>`, `lesion_id` =
`nodule-<n>`, `slice_id` = `slice-<k>`, `id` = `<patient>/nodule-<n>/slice-<k>`. The layout has no
split: patients are split by `lidc_common.patient_split`.
"""

import os
import re
import zipfile

from . import lidc_common

ZIP_NAME = "LIDC-IDRI-slices.zip"
FOLDER_NAME = "LIDC-IDRI-slices"
DESCRIPTION = ("LIDC-IDRI-slices layout (<patient>/nodule-<n>/images/slice-<k>.png with "
               "mask-0..3/slice-<k>.png), from LIDC-IDRI-slices.zip or the extracted folder; "
               "splits by a stable hash of the patient id (70/15/15).")
MANUAL_INSTRUCTIONS = f"""\
`slices`: put `{ZIP_NAME}` (the Kaggle dataset zhangweiled/lidcidri, also in
github.com/periclesanfe/Pulmoseg as the folder LIDC-IDRI-slices/) or the extracted folder
`{FOLDER_NAME}/` in the manual dir. The zip is read without extracting it."""

_IMAGE_RE = re.compile(r"(?:^|/)(?P<patient>[^/]+)/(?P<lesion>nodule-[^/]+)/images/"
                       r"(?P<slice>slice-[^/]+)\.png$")


class _ZipSource:
  """Files inside a zip archive, by their archive name."""

  def __init__(self, path):
    self.path = path
    try:
      self._zip = zipfile.ZipFile(path)
      self.names = set(self._zip.namelist())
    except (OSError, zipfile.BadZipFile) as e:
      raise lidc_common.LidcError(f"{path}: expected a readable zip archive ({e}).") from None

  def describe(self, name):
    return f"{self.path}:{name}"

  def read(self, name):
    if name not in self.names:
      raise lidc_common.LidcError(f"{self.describe(name)}: expected this file, it is missing.")
    try:
      return self._zip.read(name)
    except (OSError, zipfile.BadZipFile, EOFError) as e:
      raise lidc_common.LidcError(f"{self.describe(name)}: could not be read ({e}).") from None

  def close(self):
    self._zip.close()


class _FolderSource:
  """Files under a folder, by their '/'-separated path relative to it."""

  def __init__(self, path):
    self.path = path
    self.names = set()
    for root, _, files in os.walk(path):
      rel = os.path.relpath(root, path).replace(os.sep, "/")
      for f in files:
        self.names.add(f if rel == "." else f"{rel}/{f}")

  def describe(self, name):
    return os.path.join(self.path, name)

  def read(self, name):
    if name not in self.names:
      raise lidc_common.LidcError(f"{self.describe(name)}: expected this file, it is missing.")
    return lidc_common.read_file(self.describe(name))

  def close(self):
    pass


def open_source(manual_dir):
  """The zip (preferred) or the extracted folder in `manual_dir`.

  Raises:
    LidcError: neither is there, naming both and what the directory holds.
  """
  zip_path = os.path.join(manual_dir, ZIP_NAME)
  folder = os.path.join(manual_dir, FOLDER_NAME)
  if os.path.isfile(zip_path):
    return _ZipSource(zip_path)
  if os.path.isdir(folder):
    return _FolderSource(folder)
  raise lidc_common.LidcError(
      f"lidc/slices: expected {zip_path} or the folder {folder}/, found neither (manual dir "
      f"holds: {lidc_common.list_manual_dir(manual_dir)}).")


def index_images(names, where):
  """The image files of a listing, grouped by patient.

  Args:
    names: iterable of '/'-separated file names.
    where: the archive or folder, for error messages.

  Returns:
    {patient_id: sorted list of (image_name, lesion, slice)}.
  """
  patients = {}
  for name in names:
    match = _IMAGE_RE.search(name)
    if match:
      patients.setdefault(match["patient"], []).append(
          (name, match["lesion"], match["slice"]))
  if not patients:
    raise lidc_common.LidcError(
        f"{where}: expected files <patient>/nodule-<n>/images/slice-<k>.png, found none.")
  return {p: sorted(v) for p, v in sorted(patients.items())}


def mask_name(image_name, reader):
  """`.../nodule-<n>/images/slice-<k>.png` -> `.../nodule-<n>/mask-<reader>/slice-<k>.png`."""
  head, _, tail = image_name.rpartition("/images/")
  return f"{head}/mask-{reader}/{tail}"


def _examples(manual_dir, items):
  """Yields (key, example) for `items`: (patient, image_name, lesion, slice) tuples."""
  source = open_source(manual_dir)
  try:
    for patient, image_name, lesion, slice_ in items:
      image = lidc_common.decode_gray_png(source.read(image_name), source.describe(image_name))
      masks = []
      for reader in range(lidc_common.NUM_READERS):
        name = mask_name(image_name, reader)
        masks.append(lidc_common.decode_gray_png(source.read(name), source.describe(name)))
      example_id = f"{patient}/{lesion}/{slice_}"
      yield example_id, lidc_common.make_example(
          image, masks, patient, lesion, slice_, example_id, source.describe(image_name))
  finally:
    source.close()


def split_generators(manual_dir):
  """{split: iterator of (key, example)}, patients split by `lidc_common.patient_split`."""
  source = open_source(manual_dir)
  try:
    patients = index_images(source.names, source.path)
  finally:
    source.close()
  by_split = {split: [] for split in lidc_common.SPLITS}
  for patient, images in patients.items():
    by_split[lidc_common.patient_split(patient)].extend((patient,) + item for item in images)
  return {split: _examples(manual_dir, items) for split, items in by_split.items()}
