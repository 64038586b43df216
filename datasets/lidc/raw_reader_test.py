"""Tests of the raw LIDC-IDRI reader (DICOM + XML -> crops).

Two kinds of data:
- series written by the tests (pydicom DICOM slices with a known bright disc, XML written here):
  geometry, holes, grouping, and every kind of bad input;
- the three real patients of the shared raw sample (`LIDC_IDRI_RAW_SAMPLE` or a
  `shared/data/lidc_idri_raw_sample` folder next to or above the repository). Those tests are
  skipped, with the path they looked for, when the sample is absent (e.g. on CI).
"""

import collections
import functools
import importlib
import json
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from tf_prob_unet import input_pipeline

pydicom = pytest.importorskip("pydicom")

_HERE = pathlib.Path(__file__).resolve().parent


def _load_reader():
  """Imports raw_reader as part of the builder package (it imports its siblings relatively)."""
  input_pipeline._ensure_package("tf_prob_unet_datasets", str(_HERE.parent))  # pylint: disable=protected-access
  input_pipeline._ensure_package("tf_prob_unet_datasets.lidc", str(_HERE))  # pylint: disable=protected-access
  return importlib.import_module("tf_prob_unet_datasets.lidc.raw_reader")


rr = _load_reader()
NS = "http://www.nih.gov"


# -----------------------------------------------------------------------------
# Generated series.
# -----------------------------------------------------------------------------


def write_slice(path, *, sop_uid, series_uid, z, spacing=(0.8, 0.8), size=64, disc=None,
                slice_location="same", modality="CT", pixel_spacing=True):
  """Writes one CT slice: air (-1000 HU) with an optional soft-tissue disc (40 HU).

  Args:
    disc: (row, col, radius) in pixels, or None.
    slice_location: "same" (= z), None (absent) or a number.
    pixel_spacing: False leaves PixelSpacing out.
  """
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom.uid import ExplicitVRLittleEndian  # pylint: disable=g-import-not-at-top
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = sop_uid
  ds.SeriesInstanceUID = series_uid
  ds.Modality = modality
  ds.ImagePositionPatient = [-100.0, -100.0, z]
  if slice_location == "same":
    ds.SliceLocation = z
  elif slice_location is not None:
    ds.SliceLocation = slice_location
  if pixel_spacing:
    ds.PixelSpacing = list(spacing)
  ds.Rows = ds.Columns = size
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.BitsAllocated = ds.BitsStored = 16
  ds.HighBit = 15
  ds.PixelRepresentation = 1
  ds.RescaleSlope = 1
  ds.RescaleIntercept = -1024
  hu = np.full((size, size), -1000, np.int16)
  if disc is not None:
    rows, cols = np.mgrid[:size, :size]
    hu[(rows - disc[0])**2 + (cols - disc[1])**2 <= disc[2]**2] = 40
  ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def circle(row, col, radius, n=48):
  """Polygon points (x, y) of a circle."""
  angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
  return [(col + radius * np.cos(a), row + radius * np.sin(a)) for a in angles]


def _inclusion_text(inclusion):
  if isinstance(inclusion, str):  # Written as given (bad-input tests).
    return inclusion
  return "TRUE" if inclusion else "FALSE"


def xml_text(series_uid, sessions, root="LidcReadMessage"):
  """An LIDC XML document.

  Args:
    sessions: list (one per reader) of lists of nodules (nodule_id, [rois]); a roi is
      (z, sop_uid, inclusion, points); `inclusion` is a bool or the text to write.
  """
  lines = [f'<?xml version="1.0" encoding="UTF-8"?>', f'<{root} xmlns="{NS}">',
           f"<ResponseHeader><SeriesInstanceUid>{series_uid}</SeriesInstanceUid></ResponseHeader>"]
  for nodules in sessions:
    lines.append("<readingSession>")
    for nodule_id, rois in nodules:
      lines.append(f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>")
      for z, sop_uid, inclusion, points in rois:
        lines.append(f"<roi><imageZposition>{z:.6f} </imageZposition>"
                     f"<imageSOP_UID>{sop_uid}</imageSOP_UID>"
                     f"<inclusion>{_inclusion_text(inclusion)}</inclusion>")
        lines += [f"<edgeMap><xCoord>{x:g}</xCoord><yCoord>{y:g}</yCoord></edgeMap>"
                  for x, y in points]
        lines.append("</roi>")
      lines.append("</unblindedReadNodule>")
    lines.append("</readingSession>")
  lines.append(f"</{root}>")
  return "\n".join(lines)


def make_series(root, patient="LIDC-IDRI-9001", series_uid="1.2.3.4", num_slices=3,
                spacing=(0.8, 0.8), disc=(32, 30, 8), sessions=None, xml=True, **slice_kwargs):
  """Writes LIDC-IDRI/<patient>/1.2.3/<series_uid>/ with slices 0..n-1 at z = -10 * i.

  By default every slice holds the disc and two readers outline it on every slice (reader 0
  with the disc's own circle, reader 1 one pixel wider).

  Returns:
    (series folder, list of (sop_uid, z)).
  """
  folder = pathlib.Path(root) / "LIDC-IDRI" / patient / "1.2.3" / series_uid
  folder.mkdir(parents=True)
  slices = [(f"{series_uid}.{i + 1}", -10.0 * i) for i in range(num_slices)]
  for sop_uid, z in slices:
    write_slice(folder / f"{z:.6f}.dcm", sop_uid=sop_uid, series_uid=series_uid, z=z,
                spacing=spacing, disc=disc, **slice_kwargs)
  if sessions is None:
    sessions = [[("n0", [(z, uid, True, circle(disc[0], disc[1], disc[2])) for uid, z in slices])],
                [("n1", [(z, uid, True, circle(disc[0], disc[1], disc[2] + 1))
                         for uid, z in slices])]]
  if xml:
    (folder / "001.xml").write_text(xml_text(series_uid, sessions))
  return folder, slices


def test_rasterize_polygon_square_and_triangle():
  square = rr.rasterize_polygon([(2, 3), (12, 3), (12, 9), (2, 9)], (16, 16))
  rows, cols = np.nonzero(square)
  assert square.sum() == 10 * 6  # Half-open: columns 2..11, rows 3..8.
  assert (cols.min(), cols.max(), rows.min(), rows.max()) == (2, 11, 3, 8)
  triangle = [(1.3, 2.7), (40.2, 5.1), (17.9, 37.4)]
  assert rr.rasterize_polygon(triangle, (48, 48)).sum() == pytest.approx(
      rr.polygon_area(triangle), rel=0.03)


def test_resampled_crop_has_true_physical_size_and_aligned_mask(tmp_path):
  # The disc (radius 8 px at 0.8 mm = 6.4 mm) must come out with radius 12.8 px at 0.5 mm,
  # centred, and the masks must lie on it, for two different pixel spacings.
  for spacing, name in (((0.8, 0.8), "a"), ((0.6, 0.7), "b")):
    folder, _ = make_series(tmp_path / name, spacing=spacing, num_slices=1)
    result = rr.process_series(folder, "LIDC-IDRI-9001")
    assert result.counts["crops"] == 1, result.warnings
    crop = result.crops[0]
    assert crop.image.shape == (128, 128) and crop.masks.shape == (4, 128, 128)
    bright = crop.image > 128  # 40 HU is 0.69 of the -600 +- 750 window; air is 0.
    area_mm2 = np.pi * (8 * spacing[0]) * (8 * spacing[1])
    assert bright.sum() * 0.25 == pytest.approx(area_mm2, rel=0.05)
    rows, cols = np.nonzero(bright)
    assert abs(rows.mean() - 63.5) < 1 and abs(cols.mean() - 63.5) < 1
    tight = crop.masks[0].astype(bool)
    assert (tight & bright).sum() / (tight | bright).sum() > 0.9
    assert crop.masks[1].sum() > crop.masks[0].sum()  # Reader 1 drew one pixel wider.
    assert not crop.masks[2].any() and not crop.masks[3].any()
    assert crop.readers == (0, 1)


def test_exclusion_outline_cuts_a_hole(tmp_path):
  ring = [[("ring", [(0.0, "1.2.3.4.1", True, circle(32, 32, 12)),
                     (0.0, "1.2.3.4.1", False, circle(32, 32, 6))])]]
  folder, _ = make_series(tmp_path, num_slices=1, disc=(32, 32, 12), sessions=ring)
  crop = rr.process_series(folder, "LIDC-IDRI-9001").crops[0]
  mask = crop.masks[0].astype(bool)
  assert not mask[62:66, 62:66].any()  # The hole at the centre.
  expected_mm2 = (rr.polygon_area(circle(32, 32, 12)) - rr.polygon_area(circle(32, 32, 6))) * 0.64
  assert mask.sum() * 0.25 == pytest.approx(expected_mm2, rel=0.05)
  assert crop.outline_areas_mm2[0] == pytest.approx(expected_mm2, rel=1e-4)  # XML rounding.


def test_lesions_grouped_by_overlapping_boxes(tmp_path):
  near = [(0.0, "1.2.3.4.1", True, circle(20, 20, 5))]
  shifted = [(0.0, "1.2.3.4.1", True, circle(22, 23, 5))]
  far = [(0.0, "1.2.3.4.1", True, circle(48, 48, 4))]
  sessions = [[("a", near), ("b", far)], [("c", shifted)], [("d", far)],
              [("e", [(0.0, "1.2.3.4.1", True, circle(48, 48, 4))]),
               ("f", [(0.0, "1.2.3.4.1", True, circle(49, 49, 3))])]]
  folder, _ = make_series(tmp_path, num_slices=1, disc=None, sessions=sessions)
  reads = rr.parse_xml((folder / "001.xml").read_bytes(), "001.xml")
  groups = [sorted(reads.nodules[i].nodule_id for i in g) for g in rr.group_lesions(reads.nodules)]
  assert groups == [["a", "c"], ["b", "d", "e", "f"]]
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts["lesions"] == 2 and result.counts["nodules_merged_same_reader"] == 1
  first, second = result.crops
  assert [m.any() for m in first.masks] == [True, True, False, False]
  assert [m.any() for m in second.masks] == [True, False, True, True]
  # Reader 3's two nodules of one lesion give one mask: the union of both outlines.
  assert second.masks[3].sum() >= second.masks[2].sum()


def test_slice_location_disagreement_drops_the_slice(tmp_path):
  folder, slices = make_series(tmp_path, num_slices=2)
  bad_uid, bad_z = slices[1]
  write_slice(next(folder.glob(f"{bad_z:.6f}.dcm")), sop_uid=bad_uid, series_uid="1.2.3.4",
              z=bad_z, disc=(32, 30, 8), slice_location=bad_z + 5)
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts["slices_dropped_slice_location"] == 1
  assert result.counts["outlines_slice_dropped"] == 2  # Both readers' outlines on that slice.
  assert any("1 slice(s) dropped" in line and "-5.0 vs -10.0" in line for line in result.warnings)
  assert any("2 outline(s) skipped, their 1 slice(s) are dropped (z = -10)" in line
             for line in result.warnings)
  assert [c.sop_uid for c in result.crops] == [slices[0][0]]


def test_outline_on_a_missing_slice_is_counted_and_z_matches_a_renamed_one(tmp_path):
  sessions = [[("n", [(0.0, "1.2.3.4.1", True, circle(32, 30, 8)),
                      (-10.0, "9.9.9", True, circle(32, 30, 8)),  # Unknown UID, known z.
                      (-55.0, "8.8.8", True, circle(32, 30, 8))])]]  # Unknown UID and z.
  folder, _ = make_series(tmp_path, num_slices=2, sessions=sessions)
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts["outlines_slice_missing"] == 1
  assert result.warnings == [f"{folder}: 1 outline(s) skipped, their 1 slice(s) are missing from "
                             "the folder or unreadable (z = -55)."]
  assert result.counts["outlines_matched_by_z"] == 1
  assert result.counts["crops"] == 2 and result.counts["outlines_used"] == 2


def test_point_marks_are_counted_not_cropped(tmp_path):
  sessions = [[("small", [(0.0, "1.2.3.4.1", True, [(30, 30)])])],
              [("outlined", [(0.0, "1.2.3.4.1", True, circle(32, 30, 8)),
                             (-10.0, "1.2.3.4.2", True, [(30, 30), (31, 30)])])]]
  folder, _ = make_series(tmp_path, num_slices=2, sessions=sessions)
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts["point_marks"] == 1 and result.counts["point_rois"] == 1
  assert [c.readers for c in result.crops] == [(1,)]


def test_malformed_xml_is_a_clear_error_and_a_counted_skip(tmp_path):
  folder, _ = make_series(tmp_path, num_slices=1)
  (folder / "001.xml").write_text("<LidcReadMessage><ResponseHeader>")
  with pytest.raises(rr.LidcError, match=r"001\.xml: expected well-formed XML"):
    rr.parse_xml((folder / "001.xml").read_bytes(), str(folder / "001.xml"))
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts["series_skipped_bad_xml"] == 1 and not result.crops
  assert "001.xml" in result.warnings[0]


@pytest.mark.parametrize("text, message", [
    ('<IdriReadMessage xmlns="http://www.nih.gov"/>', "expected a <LidcReadMessage> document"),
    (xml_text("1.2.3.4", [[("n", [(0.0, "1.2.3.4.1", "maybe", circle(5, 5, 2))])]]),
     "expected <inclusion> TRUE or FALSE"),
    (xml_text("1.2.3.4", [[("n", [(0.0, "1.2.3.4.1", True, circle(5, 5, 2))])]]).replace(
        "<imageZposition>0.000000 </imageZposition>", ""), "expected one non-empty <imageZposition>"),
    (xml_text("1.2.3.4", [[("n", [(0.0, "1.2.3.4.1", True, circle(5, 5, 2))])]]).replace(
        "<xCoord>7</xCoord>", "<xCoord>seven</xCoord>"), "expected a number in <xCoord>"),
])
def test_bad_xml_content_names_the_problem(text, message):
  with pytest.raises(rr.LidcError, match=message) as info:
    rr.parse_xml(text.encode(), "x/072.xml")
  assert str(info.value).startswith("x/072.xml")


def test_dicom_without_pixel_spacing_is_a_clear_error_and_a_counted_skip(tmp_path):
  folder, slices = make_series(tmp_path, num_slices=2)
  path = folder / f"{slices[1][1]:.6f}.dcm"
  write_slice(path, sop_uid=slices[1][0], series_uid="1.2.3.4", z=slices[1][1],
              disc=(32, 30, 8), pixel_spacing=False)
  with pytest.raises(rr.LidcError, match=r"expected the DICOM attribute PixelSpacing \(0028,0030\), "
                     "found none"):
    rr.read_slice_header(path)
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts["slices_unreadable"] == 1
  assert result.counts["outlines_slice_missing"] == 2
  assert [c.sop_uid for c in result.crops] == [slices[0][0]]
  assert any(str(path) in line and "PixelSpacing" in line for line in result.warnings)


def test_scans_without_xml_are_a_counted_skip(tmp_path):
  folder, _ = make_series(tmp_path, num_slices=2, xml=False)
  result = rr.process_series(folder, "LIDC-IDRI-9001")
  assert result.counts == collections.Counter(series=1, series_skipped_no_xml=1)
  assert "expected one LIDC XML file next to the 2 DICOM slices, found none" in result.warnings[0]


def test_other_series_problems_are_counted_skips(tmp_path):
  folder, _ = make_series(tmp_path / "xray", num_slices=1, modality="DX")
  assert rr.process_series(folder, "p").counts["series_skipped_not_ct"] == 1
  folder, _ = make_series(tmp_path / "other", num_slices=1)
  (folder / "001.xml").write_text(xml_text("5.5.5", []))
  assert rr.process_series(folder, "p").counts["series_skipped_series_mismatch"] == 1
  folder, _ = make_series(tmp_path / "noloc", num_slices=1, slice_location=None)
  counts = rr.process_series(folder, "p").counts
  assert counts["series_skipped_no_slices"] == 1 and counts["slices_dropped_no_slice_location"] == 1
  (tmp_path / "garbage").mkdir()
  (tmp_path / "garbage" / "x.dcm").write_bytes(b"not a dicom")
  with pytest.raises(rr.LidcError, match="expected a DICOM file"):
    rr.read_slice_header(tmp_path / "garbage" / "x.dcm")


def test_lesion_larger_than_the_window_is_counted(tmp_path):
  # Radius 25 px at 1.5 mm = 37.5 mm: wider than the 64 mm (128 px at 0.5 mm) window.
  folder, _ = make_series(tmp_path, num_slices=1, spacing=(1.5, 1.5), disc=(32, 32, 25))
  result = rr.process_series(folder, "p")
  assert result.counts["crops_mask_at_border"] == 1
  assert result.crops[0].masks[0][:, 0].any() and result.crops[0].masks[0][0, :].any()
  folder, _ = make_series(tmp_path / "small", num_slices=1)
  assert "crops_mask_at_border" not in rr.process_series(folder, "p").counts


def test_find_series_layouts_and_error(tmp_path):
  folder, _ = make_series(tmp_path, num_slices=1)
  expected = [("LIDC-IDRI-9001", str(folder))]
  assert rr.find_series(tmp_path) == expected
  assert rr.find_series(tmp_path / "LIDC-IDRI") == expected
  with pytest.raises(rr.LidcError, match=r"expected the raw download's LIDC-IDRI/<patient>"):
    rr.find_series(tmp_path / "LIDC-IDRI" / "LIDC-IDRI-9001")


# -----------------------------------------------------------------------------
# The three real patients of the shared sample.
# -----------------------------------------------------------------------------


def _sample_dir():
  """The shared raw sample: $LIDC_IDRI_RAW_SAMPLE, else shared/data/... above the repo."""
  if os.environ.get("LIDC_IDRI_RAW_SAMPLE"):
    return pathlib.Path(os.environ["LIDC_IDRI_RAW_SAMPLE"])
  for parent in _HERE.parents:
    candidate = parent / "shared" / "data" / "lidc_idri_raw_sample"
    if candidate.is_dir():
      return candidate
  return None


@pytest.fixture(scope="module")
def sample():
  """{patient: (SeriesResult, series folder)} for the shared sample, or a skip saying why."""
  root = _sample_dir()
  if root is None or not (root / "LIDC-IDRI").is_dir():
    pytest.skip("the shared LIDC-IDRI raw sample is absent: set LIDC_IDRI_RAW_SAMPLE to the "
                "folder holding LIDC-IDRI/ (looked for shared/data/lidc_idri_raw_sample above "
                f"{_HERE})")
  return {patient: (rr.process_series(folder, patient), pathlib.Path(folder))
          for patient, folder in rr.find_series(root)}


def _xml_outlines(folder):
  """The test's own reading of the XML.

  Returns:
    ({sop_uid: {reader: [inclusion polygons, each a list of (x, y)]}},
     {sop_uid: number of outlines (inclusion or exclusion, >= 3 points)}).
  """
  root = ElementTree.parse(next(folder.glob("*.xml"))).getroot()
  by_slice = collections.defaultdict(lambda: collections.defaultdict(list))
  num_outlines = collections.Counter()
  for reader, session in enumerate(root.iter(f"{{{NS}}}readingSession")):
    for roi in session.iter(f"{{{NS}}}roi"):
      points = [(float(e.find(f"{{{NS}}}xCoord").text), float(e.find(f"{{{NS}}}yCoord").text))
                for e in roi.iter(f"{{{NS}}}edgeMap")]
      sop_uid = roi.find(f"{{{NS}}}imageSOP_UID").text.strip()
      num_outlines[sop_uid] += len(points) >= 3
      if len(points) >= 3 and roi.find(f"{{{NS}}}inclusion").text.strip() == "TRUE":
        by_slice[sop_uid][reader].append(points)
  return by_slice, num_outlines


def _shoelace(points):
  x, y = np.asarray(points).T
  return 0.5 * abs(np.sum(x * np.roll(y, -1) - y * np.roll(x, -1)))


@pytest.mark.parametrize("patient, readers", [
    ("LIDC-IDRI-0001", {0, 1, 2, 3}), ("LIDC-IDRI-0002", {2, 3}), ("LIDC-IDRI-0003", {0, 1, 2, 3})])
def test_sample_lesions_and_masks_match_the_xml(sample, patient, readers):
  result, folder = sample[patient]
  crops = result.crops
  assert crops, result.warnings
  assert len({c.lesion_id for c in crops}) == 1  # One lesion on the included slices.
  assert set().union(*(c.readers for c in crops)) == readers
  outlines, num_outlines = _xml_outlines(folder)
  sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.glob("*.dcm")}
  # Every slice of the folder that the XML outlines gives exactly one crop.
  assert sorted(c.sop_uid for c in crops) == sorted(set(outlines) & sops)
  for crop in crops:
    expected = set(outlines[crop.sop_uid])
    assert {k for k in range(4) if crop.masks[k].any()} == expected, crop.slice_id
  missing = sum(n for sop, n in num_outlines.items() if sop not in sops)
  assert result.counts["outlines_slice_missing"] == missing
  assert result.counts["outlines"] == result.counts["outlines_used"] + missing


@pytest.mark.parametrize("patient", ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"])
def test_sample_crops_are_centred_and_areas_match_the_polygons(sample, patient):
  result, folder = sample[patient]
  outlines, _ = _xml_outlines(folder)
  spacing = [float(s) for s in pydicom.dcmread(next(folder.glob("*.dcm"))).PixelSpacing]
  for crop in result.crops:
    assert crop.image.shape == (128, 128) and crop.image.dtype == np.uint8
    assert crop.masks.shape == (4, 128, 128) and set(np.unique(crop.masks)) <= {0, 1}
    rows, cols = np.nonzero(crop.masks.max(axis=0))
    assert abs(rows.mean() - 63.5) <= 2 and abs(cols.mean() - 63.5) <= 2, crop.slice_id
    for reader, polygons in outlines[crop.sop_uid].items():
      polygon_mm2 = sum(_shoelace(p) for p in polygons) * spacing[0] * spacing[1]
      mask_mm2 = crop.masks[reader].sum() * 0.5 * 0.5
      assert mask_mm2 == pytest.approx(polygon_mm2, rel=0.10), (crop.slice_id, reader)


def test_sample_passes_the_recorded_split_and_a_moved_patient_fails(sample, tmp_path):
  # The sample's crops through the builder's check (`split_record.beam_counted`), in Beam.
  beam = pytest.importorskip("apache_beam")
  from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top
  record = importlib.import_module("tf_prob_unet_datasets.lidc.split_record")
  by_split = collections.defaultdict(list)
  for patient, (result, _) in sample.items():
    by_split[rr.lidc_common.patient_split(patient)] += [rr.crop_to_example(c) for c in result.crops]

  def build(split, observed_dir, record_dir=None):
    with beam.Pipeline(runner=fn_api_runner.FnApiRunner()) as pipeline:
      _ = (pipeline | beam.Create(by_split[split])
           | record.beam_counted("raw", split, str(observed_dir), record_dir))

  for split in by_split:
    build(split, tmp_path)
  observed = record.read_observed(tmp_path)
  assert observed == {split: dict(collections.Counter(ex["patient_id"] for _, ex in examples))
                      for split, examples in by_split.items()}
  assert sum(map(len, observed.values())) == 3
  assert record.check_all("raw", observed) is None  # No totals on record for raw.
  # The record with one sample patient listed in another split.
  patient = "LIDC-IDRI-0001"
  split = rr.lidc_common.patient_split(patient)
  other = next(s for s in rr.lidc_common.SPLITS if s != split)
  splits = {s: dict(v) for s, v in record.read_record("raw").splits.items()}
  splits[other][patient] = splits[split].pop(patient)
  record.write_record("raw", splits, "moved", str(tmp_path / "record"))
  with pytest.raises(rr.LidcError, match=(
      rf"raw_{split}.txt: expected the recorded split of lidc/raw \({len(splits[split])} "
      rf"patients in {split}, examples not recorded\), found patient {patient} in {split}, "
      rf"recorded in {other}\.")):
    build(split, tmp_path / "moved", str(tmp_path / "record"))


# -----------------------------------------------------------------------------
# The Beam pipeline.
# -----------------------------------------------------------------------------


def _generated_download(root):
  """Two patients: 2 + 3 outlined slices, and one series without XML. Returns {split: keys}."""
  make_series(root, patient="LIDC-IDRI-9001", series_uid="1.2.3.4", num_slices=2)
  make_series(root, patient="LIDC-IDRI-9001", series_uid="1.2.3.5", num_slices=1, xml=False)
  make_series(root, patient="LIDC-IDRI-9002", series_uid="1.2.3.6", num_slices=3)
  expected = collections.defaultdict(list)
  for patient, series_uid, n in (("LIDC-IDRI-9001", "1.2.3.4", 2), ("LIDC-IDRI-9002", "1.2.3.6", 3)):
    expected[rr.lidc_common.patient_split(patient)].extend(
        f"{patient}/{series_uid}/lesion-0/z{-10.0 * i + 0.0:+.3f}" for i in range(n))
  return expected


def _check_build(data_dir, expected):
  """Reads the built lidc/raw back and checks examples, splits and the counts files."""
  builder = input_pipeline.get_builder("lidc/raw", data_dir=str(data_dir), prepare=False)
  assert isinstance(builder.builder_config, sys.modules[type(builder).__module__].RawConfig)
  assert set(builder.info.splits) == set(expected)
  counts = collections.Counter()
  for split, keys in expected.items():
    examples = list(builder.as_dataset(split=split).as_numpy_iterator())
    assert sorted(e["id"].decode() for e in examples) == sorted(keys)
    for example in examples:
      assert example["image"].shape == (128, 128, 1) and example["masks"].shape == (4, 128, 128)
      assert [m.any() for m in example["masks"]] == [True, True, False, False]
      assert example["lesion_id"].decode() in example["id"].decode()
    counts.update(json.loads(pathlib.Path(builder.data_dir, f"raw_counts-{split}.json").read_text()))
    # The builder checked the split against the record and wrote its patients beside the data.
    patients = json.loads(pathlib.Path(builder.data_dir, f"patients-{split}.json").read_text())
    assert sum(patients.values()) == len(keys) and set(patients) <= {"LIDC-IDRI-9001",
                                                                     "LIDC-IDRI-9002"}
  assert counts["series"] == 3 and counts["series_skipped_no_xml"] == 1
  assert counts["crops"] == 5 and counts["outlines_used"] == 10
  spec = input_pipeline.dataset_spec(builder)
  assert spec.kind == "graders" and spec.image_shape == (128, 128, 1)


@pytest.mark.slow
def test_raw_config_at_another_resolution_and_size(tmp_path):
  beam = pytest.importorskip("apache_beam")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top
  expected = _generated_download(tmp_path / "download")
  module = sys.modules[type(input_pipeline.get_builder("lidc/raw", prepare=False)).__module__]
  config = module.RawConfig(name="raw_1mm_64", description="1 mm, 64 x 64", image_size=64,
                            options=rr.RawOptions(spacing_mm=1.0))
  builder = module.Builder(config=config, data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "download"),
      beam_runner=fn_api_runner.FnApiRunner(),  # DirectRunner's in-process fallback (no Prism).
      beam_options=beam.options.pipeline_options.PipelineOptions()))
  split = next(iter(expected))
  examples = list(builder.as_dataset(split=split).as_numpy_iterator())
  assert sorted(e["id"].decode() for e in examples) == sorted(expected[split])
  for example in examples:
    assert example["image"].shape == (64, 64, 1) and example["masks"].shape == (4, 64, 64)
    # The disc: radius 8 px at 0.8 mm = 6.4 mm = 6.4 px at 1 mm.
    assert (example["image"] > 128).sum() == pytest.approx(np.pi * 6.4**2, rel=0.1)


@pytest.mark.slow
def test_tfds_build_command_raw_config(tmp_path):
  # The documented command. FnApiRunner is what the DirectRunner falls back to when it cannot
  # fetch its Prism binary (offline); naming it skips the attempt.
  expected = _generated_download(tmp_path / "download")
  tfds_command = pathlib.Path(sys.executable).with_name("tfds")
  done = subprocess.run(
      [str(tfds_command), "build", str(_HERE), "--config=raw",
       f"--manual_dir={tmp_path / 'download'}", f"--data_dir={tmp_path / 'data'}",
       "--beam_pipeline_options=runner=FnApiRunner"],
      capture_output=True, timeout=900, check=False, cwd=tmp_path)
  assert done.returncode == 0, done.stderr.decode()[-3000:]
  log = done.stdout.decode() + done.stderr.decode()
  assert "lidc raw train counts: " in log or "lidc raw validation counts: " in log, log[-3000:]
  _check_build(tmp_path / "data", expected)


def test_beam_step_runs_where_the_builder_folder_is_not_importable(tmp_path):
  # Distributed workers know nothing of the builder folder: the pickled step carries the code.
  pytest.importorskip("apache_beam")
  from apache_beam.internal import pickler  # pylint: disable=g-import-not-at-top
  folder, _ = make_series(tmp_path, num_slices=1)
  rr.split_generators(str(tmp_path))  # Registers the modules for pickling by value.
  step = pickler.dumps(functools.partial(rr._beam_process, options=rr.RawOptions()))  # pylint: disable=protected-access
  script = ("import sys; from apache_beam.internal import pickler\n"
            "assert not any('lidc' in m for m in sys.modules)\n"
            "step = pickler.loads(sys.stdin.buffer.read())\n"
            f"out = list(step(('LIDC-IDRI-9001', {str(folder)!r})))\n"
            "print(out[0].value['crops'], out[1][0], out[1][1]['masks'].shape)\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run([sys.executable, "-c", script], input=step, capture_output=True,
                        env=env, cwd=tmp_path, timeout=300, check=False)
  assert done.returncode == 0, done.stderr.decode()[-2000:]
  assert done.stdout.decode().split() == ["1", "LIDC-IDRI-9001/1.2.3.4/lesion-0/z+0.000",
                                          "(4,", "128,", "128)"]
