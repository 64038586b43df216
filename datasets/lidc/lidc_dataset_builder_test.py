"""Tests of the lidc builder on dummy data written here in each layout, plus one integration test
on the shared LIDC-IDRI-slices zip when it is present.

The builder is loaded the way the training pipeline loads it (`input_pipeline.get_builder`), so
its reader modules are importable as siblings of the builder module.
"""

import importlib
import io
import os
import pickle
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tf_prob_unet import input_pipeline

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The shared data sits next to the repository (`../shared`), or next to a worktree's parent.
_CANDIDATES = [os.path.join(base, "shared", "data", "lidc_idri_slices", "LIDC-IDRI-slices.zip")
               for base in (os.path.dirname(_REPO), os.path.dirname(os.path.dirname(_REPO)))]
SHARED_ZIP = os.environ.get("LIDC_SLICES_ZIP", next(
    (p for p in _CANDIDATES if os.path.isfile(p)), _CANDIDATES[0]))


def _modules(tmp_path_factory=None):
  builder = input_pipeline.get_builder("lidc/slices", prepare=False)
  module = sys.modules[type(builder).__module__]
  package = module.__name__.rpartition(".")[0]
  readers = {n: importlib.import_module(f"{package}.{n}_reader")
             for n in ("slices", "deepmind", "pickle")}
  return (module, importlib.import_module(f"{package}.lidc_common"), readers,
          importlib.import_module(f"{package}.split_record"))


BUILDER_MODULE, COMMON, READERS, RECORD = _modules()


def _patients_covering_splits(per_split=2):
  """Patient ids (LIDC-IDRI-NNNN) chosen so every split gets `per_split` of them."""
  chosen = {s: [] for s in COMMON.SPLITS}
  for n in range(1, 1000):
    pid = f"LIDC-IDRI-{n:04d}"
    split = COMMON.patient_split(pid)
    if len(chosen[split]) < per_split:
      chosen[split].append(pid)
    if all(len(v) == per_split for v in chosen.values()):
      return chosen
  raise AssertionError("unreachable with 1000 ids")


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _dummy_case(rng, size=128, mask_value=255):
  """A random image and 4 masks (disc or empty per reader), as uint8 arrays."""
  image = rng.integers(0, 256, (size, size), dtype=np.uint8)
  yy, xx = np.mgrid[:size, :size]
  masks = []
  for _ in range(4):
    if rng.random() < 0.3:
      masks.append(np.zeros((size, size), np.uint8))
    else:
      cy, cx, r = rng.uniform(size * 0.4, size * 0.6, 2).tolist() + [rng.uniform(3, 12)]
      masks.append((((yy - cy)**2 + (xx - cx)**2) <= r * r).astype(np.uint8) * mask_value)
  return image, masks


def write_slices(root, rng, as_zip):
  """Writes the LIDC-IDRI-slices layout into `root` (zip or folder); returns the truth by id."""
  files, truth = {}, {}
  for split, patients in _patients_covering_splits().items():
    for p_index, patient in enumerate(patients):
      for nodule in range(1 + p_index % 2):
        for k in range(2 + nodule):
          image, masks = _dummy_case(rng)
          base = f"LIDC-IDRI-slices/{patient}/nodule-{nodule}"
          files[f"{base}/images/slice-{k}.png"] = _png(image)
          for r, m in enumerate(masks):
            files[f"{base}/mask-{r}/slice-{k}.png"] = _png(m)
          truth[f"{patient}/nodule-{nodule}/slice-{k}"] = (split, image, masks)
  os.makedirs(root, exist_ok=True)
  if as_zip:
    with zipfile.ZipFile(os.path.join(root, "LIDC-IDRI-slices.zip"), "w") as z:
      for name, data in files.items():
        z.writestr(name, data)
  else:
    for name, data in files.items():
      path = os.path.join(root, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
  return truth


def write_deepmind(root, rng, first_reader=0, mask_value=255):
  """Writes the DeepMind crops layout (180x180) into `root`; returns the truth by id."""
  truth = {}
  for i, (split, release) in enumerate((("train", "train"), ("validation", "val"),
                                         ("test", "test"))):
    for patient in (f"LIDC-IDRI-{2 * i + 1:04d}", f"LIDC-IDRI-{2 * i + 2:04d}"):
      for stem in ("z-101.5_c0", "z--20.0_c1"):
        image, masks = _dummy_case(rng, size=180, mask_value=mask_value)
        os.makedirs(os.path.join(root, release, "images", patient), exist_ok=True)
        os.makedirs(os.path.join(root, release, "gt", patient), exist_ok=True)
        Image.fromarray(image).save(os.path.join(root, release, "images", patient, stem + ".png"))
        for r, m in enumerate(masks):
          Image.fromarray(m).save(
              os.path.join(root, release, "gt", patient, f"{stem}_l{r + first_reader}.png"))
        truth[f"{patient}/{stem}"] = (split, image, masks)
  return truth


def write_pickle(root, rng, float_images=True):
  """Writes data_lidc.pickle into `root`; returns the truth by key."""
  data, truth = {}, {}
  for split, patients in _patients_covering_splits().items():
    for patient in patients:
      for suffix in ("slice0", "slice1"):
        image, masks = _dummy_case(rng, mask_value=1)
        stored = image.astype(np.float32) / 255.0 if float_images else image
        key = f"{patient}_{suffix}"
        data[key] = {"image": stored, "masks": [m.astype(np.uint8) for m in masks],
                     "series_uid": f"1.2.3.{len(data)}"}
        truth[key] = (split, image, masks)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "data_lidc.pickle"), "wb") as f:
    pickle.dump(data, f)
  return truth


def _read_split_generators(reader, manual_dir):
  return {split: dict(gen) for split, gen in reader.split_generators(str(manual_dir)).items()}


def _check_against_truth(by_split, truth, patient_of=lambda key: key.split("/")[0]):
  """Every example matches what was written, in the right split, patients disjoint."""
  seen = {}
  for split, examples in by_split.items():
    for key, ex in examples.items():
      expected_split, image, masks = truth[key]
      assert split == expected_split, key
      assert ex["id"] == key and ex["patient_id"] == patient_of(key)
      assert ex["image"].shape == (128, 128, 1) and ex["image"].dtype == np.uint8
      assert ex["masks"].shape == (4, 128, 128) and ex["masks"].dtype == np.uint8
      assert set(np.unique(ex["masks"])) <= {0, 1}
      crop = (image.shape[0] - 128) // 2
      window = np.s_[crop:crop + 128, crop:crop + 128]
      np.testing.assert_array_equal(ex["image"][..., 0], image[window])
      for k in range(4):
        np.testing.assert_array_equal(ex["masks"][k], masks[k][window] > 0)
      seen.setdefault(ex["patient_id"], set()).add(split)
  assert sum(len(v) for v in by_split.values()) == len(truth)
  assert all(len(splits) == 1 for splits in seen.values())


# ----------------------------------------------------------------------------- split


def test_patient_split_is_stable_hash_about_70_15_15():
  import hashlib
  ids = [f"LIDC-IDRI-{n:04d}" for n in range(1, 3001)]
  splits = [COMMON.patient_split(i) for i in ids]
  for pid, split in zip(ids[:50], splits):
    bucket = int(hashlib.sha256(pid.encode()).hexdigest()[:16], 16) % 100
    assert split == ("train" if bucket < 70 else "validation" if bucket < 85 else "test")
  fractions = [splits.count(s) / len(ids) for s in COMMON.SPLITS]
  np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.025)


# ----------------------------------------------------------------------------- slices


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_slices_reader(tmp_path, as_zip):
  truth = write_slices(tmp_path, np.random.default_rng(0), as_zip)
  by_split = _read_split_generators(READERS["slices"], tmp_path)
  _check_against_truth(by_split, truth)
  ex = by_split["train"][next(iter(by_split["train"]))]
  assert ex["lesion_id"].startswith("nodule-") and ex["slice_id"].startswith("slice-")
  if as_zip:
    assert not os.path.exists(tmp_path / "LIDC-IDRI-slices")  # Read in place, not extracted.


def test_slices_errors_name_the_file(tmp_path):
  with pytest.raises(COMMON.LidcError, match="LIDC-IDRI-slices.zip or the folder"):
    READERS["slices"].split_generators(str(tmp_path))
  write_slices(tmp_path, np.random.default_rng(1), as_zip=False)
  victim = sorted((tmp_path / "LIDC-IDRI-slices").rglob("mask-2/slice-1.png"))[0]
  victim.unlink()
  with pytest.raises(COMMON.LidcError, match=f"{victim}: expected this file, it is missing"):
    _read_split_generators(READERS["slices"], tmp_path)
  write_slices(tmp_path, np.random.default_rng(1), as_zip=False)
  victim.write_bytes(b"not a png")
  with pytest.raises(COMMON.LidcError, match=f"{victim}: expected an 8-bit grey-scale PNG"):
    _read_split_generators(READERS["slices"], tmp_path)


def test_slices_bad_zip_and_empty_zip(tmp_path):
  (tmp_path / "LIDC-IDRI-slices.zip").write_bytes(b"garbage")
  with pytest.raises(COMMON.LidcError, match="LIDC-IDRI-slices.zip: expected a readable zip"):
    READERS["slices"].split_generators(str(tmp_path))
  with zipfile.ZipFile(tmp_path / "LIDC-IDRI-slices.zip", "w") as z:
    z.writestr("README.txt", "nothing")
  with pytest.raises(COMMON.LidcError, match=r"expected files <patient>/nodule-<n>/images"):
    READERS["slices"].split_generators(str(tmp_path))


# ----------------------------------------------------------------------------- deepmind


@pytest.mark.parametrize("first_reader,mask_value", [(0, 255), (1, 1)])
def test_deepmind_reader_crops_and_keeps_release_split(tmp_path, first_reader, mask_value):
  truth = write_deepmind(tmp_path / "lidc_crops", np.random.default_rng(2), first_reader,
                         mask_value)
  by_split = _read_split_generators(READERS["deepmind"], tmp_path)
  _check_against_truth(by_split, truth)
  ex = by_split["test"]["LIDC-IDRI-0005/z--20.0_c1"]
  assert (ex["lesion_id"], ex["slice_id"]) == ("c1", "z--20.0")


def test_deepmind_errors(tmp_path):
  with pytest.raises(COMMON.LidcError, match=r"expected the extracted release folders.*missing"):
    READERS["deepmind"].split_generators(str(tmp_path))
  write_deepmind(tmp_path, np.random.default_rng(3))
  victim = tmp_path / "val" / "gt" / "LIDC-IDRI-0003" / "z-101.5_c0_l3.png"
  victim.unlink()
  with pytest.raises(COMMON.LidcError, match=r"z-101.5_c0_l<k>.png: expected 4 reader masks "
                     r"with k = 0..3 or 1..4, found k = \[0, 1, 2\]"):
    _read_split_generators(READERS["deepmind"], tmp_path)
  Image.fromarray(np.zeros((100, 100), np.uint8)).save(victim)
  with pytest.raises(COMMON.LidcError, match=f"{victim}: expected at least 128x128 pixels"):
    _read_split_generators(READERS["deepmind"], tmp_path)


# ----------------------------------------------------------------------------- pickle


@pytest.mark.parametrize("float_images", [True, False])
def test_pickle_reader(tmp_path, float_images):
  truth = write_pickle(tmp_path, np.random.default_rng(4), float_images)
  by_split = _read_split_generators(READERS["pickle"], tmp_path)
  _check_against_truth(by_split, truth, patient_of=lambda key: key.split("_")[0])
  ex = by_split["validation"][next(iter(by_split["validation"]))]
  assert ex["slice_id"] in ("slice0", "slice1") and ex["lesion_id"] == ""


class _Payload:
  """Unpickling this calls `os.remove` on a marker file (what a malicious pickle would do)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.remove, (self.path,))


def test_pickle_refuses_code_and_names_the_global(tmp_path):
  marker = tmp_path / "marker"
  marker.write_text("still here")
  with open(tmp_path / "data_lidc.pickle", "wb") as f:
    pickle.dump({"LIDC-IDRI-0001_a": {"image": np.zeros((128, 128)), "masks": [],
                                      "x": _Payload(str(marker))}}, f)
  with pytest.raises(COMMON.LidcError, match=r"data_lidc.pickle: expected only NumPy arrays and "
                     r"plain Python types, found the global (posix|nt)\.remove"):
    READERS["pickle"].split_generators(str(tmp_path))
  assert marker.read_text() == "still here"


def test_pickle_errors(tmp_path):
  with pytest.raises(COMMON.LidcError, match=r"data_lidc.pickle, it is missing"):
    READERS["pickle"].split_generators(str(tmp_path))
  (tmp_path / "data_lidc.pickle").write_bytes(b"\x80\x04truncated")
  with pytest.raises(COMMON.LidcError, match="expected a pickled dict, could not unpickle"):
    READERS["pickle"].split_generators(str(tmp_path))
  with open(tmp_path / "data_lidc.pickle", "wb") as f:
    pickle.dump({"LIDC-IDRI-0001_a": {"image": np.zeros((128, 128)),
                                      "masks": [np.zeros((128, 128))] * 3}}, f)
  with pytest.raises(COMMON.LidcError, match=r"\['LIDC-IDRI-0001_a'\]: expected 4 reader masks, "
                     r"found 3"):
    _read_split_generators(READERS["pickle"], tmp_path)


# ----------------------------------------------------------------------------- builder


@pytest.mark.parametrize("config,writer", [
    ("slices", lambda d, rng: write_slices(d, rng, as_zip=True)),
    ("deepmind", write_deepmind),
    ("pickle", write_pickle),
    ("slices_64", lambda d, rng: write_slices(d, rng, as_zip=False)),
])
def test_builder_builds_each_config_for_the_pipeline(tmp_path, config, writer):
  manual = tmp_path / "manual"
  truth = writer(manual, np.random.default_rng(5))
  builder = BUILDER_MODULE.Builder(config=config, data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  counts = {s: builder.info.splits[s].num_examples for s in COMMON.SPLITS}
  assert counts == {s: sum(1 for v in truth.values() if v[0] == s) for s in COMMON.SPLITS}
  # The record of the layout (none for deepmind) holds the dummy patients in their splits; the
  # build wrote each split's patients beside the data.
  expected_check = None if config == "deepmind" else False
  assert RECORD.check_prepared(builder) == {s: expected_check for s in COMMON.SPLITS}
  assert RECORD.read_observed(builder.data_dir) == RECORD.observed_counts(builder)
  spec = input_pipeline.dataset_spec(builder)
  size = 64 if config == "slices_64" else 128
  assert spec.kind == "graders" and spec.num_classes == 2 and spec.image_shape == (size, size, 1)
  batch = next(iter(input_pipeline.eval_dataset(builder, spec, 2, split="test")))
  assert batch["references"].shape == (2, 4, size, size)
  for i, key in enumerate(batch["id"].numpy()):
    _, image, masks = truth[key.decode()]
    c = (image.shape[0] - size) // 2
    np.testing.assert_array_equal(np.round(batch["image"][i].numpy()[..., 0] * 255),
                                  image[c:c + size, c:c + size])
    for k in range(4):
      np.testing.assert_array_equal(batch["references"][i].numpy()[k],
                                    masks[k][c:c + size, c:c + size] > 0)


def test_manual_instructions_name_every_layout():
  text = BUILDER_MODULE.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  for name in ("LIDC-IDRI-slices.zip", "hpunet-data/lidc_crops", "data_lidc.pickle"):
    assert name in text
  assert [c.name for c in BUILDER_MODULE.Builder.BUILDER_CONFIGS] == [
      "slices", "deepmind", "pickle", "slices_64", "raw"]


# ----------------------------------------------------------------------------- split record


def _truth_counts(truth):
  counts = {s: {} for s in COMMON.SPLITS}
  for key, (split, _, _) in truth.items():
    patient = key.split("/")[0]
    counts[split][patient] = counts[split].get(patient, 0) + 1
  return counts


@pytest.mark.skipif(not os.path.isfile(SHARED_ZIP), reason=f"no shared zip at {SHARED_ZIP}")
def test_slices_record_is_the_split_rule_applied_to_the_shared_zip():
  with zipfile.ZipFile(SHARED_ZIP) as z:
    patients = READERS["slices"].index_images(z.namelist(), SHARED_ZIP)
  expected = {s: {} for s in COMMON.SPLITS}
  for patient, images in patients.items():
    expected[COMMON.patient_split(patient)][patient] = len(images)
  assert RECORD.read_record("slices").splits == expected
  assert [len(expected[s]) for s in COMMON.SPLITS] == [579, 125, 119]
  assert [sum(expected[s].values()) for s in COMMON.SPLITS] == [10377, 2078, 2145]


def test_layouts_without_a_record_are_not_checked(tmp_path):
  assert RECORD.read_record("pickle", str(tmp_path)) is None
  assert RECORD.check_split("pickle", "train", {"LIDC-IDRI-0001": 3}, str(tmp_path)) is None


def test_splits_are_checked_against_the_record(tmp_path):
  truth = write_slices(tmp_path / "manual", np.random.default_rng(6), as_zip=True)
  counts = _truth_counts(truth)
  record_dir = str(tmp_path / "record")
  RECORD.write_record("slices", counts, "the test's dummy data", record_dir)
  assert RECORD.read_record("slices", record_dir).splits == counts

  def check(record_counts):
    RECORD.write_record("slices", record_counts, "edited", record_dir)
    return {split: RECORD.check_split("slices", split, counts[split], record_dir)
            for split in COMMON.SPLITS}

  assert check(counts) == {s: True for s in COMMON.SPLITS}
  # Other data (the record has one more patient): only the recorded patients' splits count.
  extra = {s: dict(v) for s, v in counts.items()}
  extra["train"]["LIDC-IDRI-9999"] = 5
  assert check(extra) == {"train": False, "validation": True, "test": True}
  # The data matches the record but a patient has another number of examples.
  patient = sorted(counts["test"])[0]
  fewer = {s: dict(v) for s, v in counts.items()}
  fewer["test"][patient] += 1
  with pytest.raises(COMMON.LidcError, match=(
      rf"slices_test.txt: expected the recorded split of lidc/slices \(2 patients, "
      rf"{sum(fewer['test'].values())} examples in test\), found patient {patient} with "
      rf"{counts['test'][patient]} examples, recorded {counts['test'][patient] + 1}\.$")):
    check(fewer)
  # A patient of the data recorded in another split (the split rule changed).
  moved = {s: dict(v) for s, v in counts.items()}
  moved["validation"][patient] = moved["test"].pop(patient)
  with pytest.raises(COMMON.LidcError, match=rf"found patient {patient} in test, recorded in "
                     r"validation( \(and \d+ more\))?\.$"):
    check(moved)


def test_builder_stops_on_a_split_that_disagrees_with_the_record(tmp_path, monkeypatch):
  manual = tmp_path / "manual"
  truth = write_slices(manual, np.random.default_rng(7), as_zip=True)
  counts = _truth_counts(truth)
  patient = sorted(counts["train"])[0]
  counts["train"][patient] += 2
  monkeypatch.setattr(RECORD, "RECORD_DIR", str(tmp_path / "record"))
  RECORD.write_record("slices", counts, "edited")
  builder = BUILDER_MODULE.Builder(config="slices", data_dir=str(tmp_path / "data"))
  with pytest.raises(COMMON.LidcError, match=rf"slices_train.txt: .* found patient {patient} "
                     rf"with {counts['train'][patient] - 2} examples"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def test_record_files_are_well_formed_or_named(tmp_path):
  RECORD.write_record("pickle", {"train": {"LIDC-IDRI-0001": 2}}, "test", str(tmp_path))
  path = tmp_path / "pickle_validation.txt"
  path.write_text(path.read_text() + "LIDC-IDRI-0002 two\n")
  with pytest.raises(COMMON.LidcError, match=r"pickle_validation.txt:\d+: expected "
                     r"'<patient_id> \[<examples>\]' or 'all splits: <n> patients, <n> examples', "
                     r"found 'LIDC-IDRI-0002 two'\.$"):
    RECORD.read_record("pickle", str(tmp_path))
  path.write_text(path.read_text().replace("LIDC-IDRI-0002 two\n", "LIDC-IDRI-0001\n"))
  with pytest.raises(COMMON.LidcError, match=r"pickle_validation.txt:\d+: expected each patient "
                     r"listed once, found LIDC-IDRI-0001 again \(also in .*pickle_train.txt:\d+\)"):
    RECORD.read_record("pickle", str(tmp_path))
  RECORD.write_record("pickle", {"train": {"LIDC-IDRI-0001": 2}}, "test", str(tmp_path),
                      totals=(1, 2))
  path.write_text(path.read_text().replace("all splits: 1 patients, 2 examples",
                                           "all splits: 1 patients, 3 examples"))
  with pytest.raises(COMMON.LidcError, match=r"pickle_validation.txt:\d+: expected one totals "
                     r"line per file, the same as .*pickle_train.txt:\d+, found 'all splits: 1 "
                     r"patients, 3 examples'"):
    RECORD.read_record("pickle", str(tmp_path))
  path.unlink()
  with pytest.raises(COMMON.LidcError, match=r"pickle_validation.txt: expected the record of "
                     r"split 'validation'.*missing"):
    RECORD.read_record("pickle", str(tmp_path))


@pytest.mark.parametrize("layout,totals", [("pickle", (875, 15096)), ("raw", (None, None))])
def test_collection_records_are_the_split_rule_on_the_id_range(layout, totals):
  record = RECORD.read_record(layout)
  expected = {s: {} for s in COMMON.SPLITS}
  for n in range(1, 1013):
    expected[COMMON.patient_split(f"LIDC-IDRI-{n:04d}")][f"LIDC-IDRI-{n:04d}"] = None
  assert record.splits == expected
  assert [len(expected[s]) for s in COMMON.SPLITS] == [699, 156, 157]
  assert (record.total_patients, record.total_examples) == totals


def _moved_record(layout, patient, to_split, directory):
  """Writes the committed record of `layout` into `directory`, `patient` listed in `to_split`."""
  record = RECORD.read_record(layout)
  splits = {s: dict(v) for s, v in record.splits.items()}
  from_split = next(s for s, v in splits.items() if patient in v)
  splits[to_split][patient] = splits[from_split].pop(patient)
  RECORD.write_record(layout, splits, "moved", directory,
                      totals=(record.total_patients, record.total_examples))
  return from_split


def test_pickle_build_with_a_patient_recorded_in_another_split_fails(tmp_path, monkeypatch):
  manual = tmp_path / "manual"
  write_pickle(manual, np.random.default_rng(8))
  patient = _patients_covering_splits()["validation"][0]
  _moved_record("pickle", patient, "test", str(tmp_path / "record"))
  monkeypatch.setattr(RECORD, "RECORD_DIR", str(tmp_path / "record"))
  builder = BUILDER_MODULE.Builder(config="pickle", data_dir=str(tmp_path / "data"))
  with pytest.raises(COMMON.LidcError, match=(
      r"pickle_validation.txt: expected the recorded split of lidc/pickle \(155 patients in "
      rf"validation, examples not recorded\), found patient {patient} in validation, recorded "
      r"in test\.$")):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def test_recorded_totals_are_checked_when_the_data_has_the_recorded_patients(tmp_path,
                                                                              monkeypatch):
  manual = tmp_path / "manual"
  truth = write_pickle(manual, np.random.default_rng(9))
  observed = {s: {} for s in COMMON.SPLITS}
  for key, (split, _, _) in truth.items():
    patient = key.split("_")[0]
    observed[split][patient] = observed[split].get(patient, 0) + 1
  record_dir = str(tmp_path / "record")
  splits = RECORD.read_record("pickle").splits

  def check(totals):
    RECORD.write_record("pickle", splits, "edited", record_dir, totals=totals)
    return RECORD.check_all("pickle", observed, record_dir)

  assert check((6, 12)) is True  # The dummy pickle: 6 patients, 12 examples.
  assert check((7, 12)) is False  # Other data (another number of patients): not compared.
  assert check((6, None)) is None and check((None, None)) is None
  with pytest.raises(COMMON.LidcError, match=(
      r"pickle_\*.txt: expected the recorded lidc/pickle \(6 patients, 13 examples in all "
      r"splits\), found 12 examples of 6 patients\.$")):
    check((6, 13))
  # The builder checks the totals once every split is written: nothing is prepared.
  monkeypatch.setattr(RECORD, "RECORD_DIR", record_dir)
  builder = BUILDER_MODULE.Builder(config="pickle", data_dir=str(tmp_path / "data"))
  with pytest.raises(COMMON.LidcError, match=r"found 12 examples of 6 patients\.$"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def test_a_patient_in_two_splits_fails_with_or_without_a_record(tmp_path):
  observed = {"train": {"LIDC-IDRI-9001": 2}, "test": {"LIDC-IDRI-9001": 1}}
  for directory in (None, str(tmp_path)):
    with pytest.raises(COMMON.LidcError, match=r"^lidc/pickle: expected each patient in one "
                       r"split, found LIDC-IDRI-9001 in train and in test\.$"):
      RECORD.check_all("pickle", observed, directory)


# ----------------------------------------------------------------------------- integration


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(SHARED_ZIP), reason=f"no shared zip at {SHARED_ZIP}")
def test_build_slices_from_shared_zip(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  os.symlink(SHARED_ZIP, manual / "LIDC-IDRI-slices.zip")
  builder = BUILDER_MODULE.Builder(config="slices", data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  with zipfile.ZipFile(SHARED_ZIP) as z:
    expected = sum(1 for n in z.namelist() if "/images/slice-" in n and n.endswith(".png"))
  counts = {s: builder.info.splits[s].num_examples for s in COMMON.SPLITS}
  assert sum(counts.values()) == expected
  patients = {}
  for split in COMMON.SPLITS:
    ids = [p.decode() for p in tfds.as_numpy(
        builder.as_dataset(split=split).map(lambda ex: ex["patient_id"]))]
    assert len(ids) == counts[split]
    patients[split] = set(ids)
    assert all(COMMON.patient_split(p) == split for p in patients[split])
  assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"]
              or patients["validation"] & patients["test"])
  total = sum(len(v) for v in patients.values())
  for split, share in zip(COMMON.SPLITS, COMMON.SPLIT_PERCENT):
    assert abs(len(patients[split]) / total - share / 100) < 0.05
  # The prepared dataset is the recorded one, patient by patient.
  assert RECORD.check_prepared(builder) == {s: True for s in COMMON.SPLITS}
  assert RECORD.observed_counts(builder) == RECORD.read_record("slices").splits
  assert RECORD.read_observed(builder.data_dir) == RECORD.read_record("slices").splits
