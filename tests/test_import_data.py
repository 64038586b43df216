"""import_data: a user's own multi-rater files -> a prepared dataset, on files written here."""

import collections
import io
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tests import helpers
from tf_prob_unet import import_lib
from tf_prob_unet import input_pipeline

LIB = import_lib.lib_module()


def write_png(path, array, fmt="PNG", quality=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  kw = {"quality": quality} if quality else {}
  Image.fromarray(array).save(path, format=fmt, **kw)


def make_cases(rng, n, raters, size=(20, 24), classes=2, channels=1):
  """`{key: (image uint8 [H, W, C], labels uint8 [R, H, W])}` with rater-specific discs."""
  cases = {}
  yy, xx = np.mgrid[:size[0], :size[1]]
  for i in range(n):
    image = rng.integers(0, 256, size + (channels,), dtype=np.uint8)
    labels = np.zeros((raters,) + size, np.uint8)
    for r in range(raters):
      cy, cx = rng.integers(4, size[0] - 4), rng.integers(4, size[1] - 4)
      for c in range(1, classes):
        disc = (yy - cy) ** 2 + (xx - cx - 2 * c) ** 2 <= (2 + r % 3 + c) ** 2
        labels[r][disc] = c
    cases[f"case{i:02d}"] = (image, labels)
  return cases


def write_folder(root, cases, mask_scale=255, mask_fmt="PNG", layout="flat", quality=None):
  """Writes cases as `<key>/image.png` + `<key>/rater_<r>.<ext>` (flat) or one folder per rater."""
  ext = "jpg" if mask_fmt == "JPEG" else "png"
  for key, (image, labels) in cases.items():
    img = image[..., 0] if image.shape[-1] == 1 else image
    if layout == "flat":
      write_png(os.path.join(root, key, "image.png"), img)
    else:
      write_png(os.path.join(root, key.split("/")[0], "images", key.split("/")[1] + ".png"), img)
    for r, label in enumerate(labels):
      path = (os.path.join(root, key, f"rater_{r}.{ext}") if layout == "flat" else
              os.path.join(root, key.split("/")[0], f"mask-{r}", key.split("/")[1] + f".{ext}"))
      write_png(path, (label * mask_scale).astype(np.uint8), mask_fmt, quality)


def run_import(tmp_path, name="my_data", **options):
  options.setdefault("source", str(tmp_path / "src"))
  config = import_lib.ImportConfig(name=name, data_dir=str(tmp_path / "tfds"),
                                   options=LIB.ImportOptions(**options))
  logs = []
  import_lib.run(config, log=logs.append)
  return input_pipeline.get_builder(name, str(tmp_path / "tfds")), logs


def read_all(builder):
  out = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      out[ex["id"].decode()] = (split, ex)
  return out


def assert_nothing_prepared(tmp_path, name="my_data"):
  folder = tmp_path / "tfds" / name
  assert not folder.exists() or not any(p.name[0].isdigit() for p in folder.iterdir())


@pytest.mark.parametrize("raters", [1, 2, 3])
def test_folder_png_any_raters_round_trip(tmp_path, raters):
  cases = make_cases(np.random.default_rng(raters), 10, raters)
  write_folder(tmp_path / "src", cases)
  builder, logs = run_import(tmp_path, image="{case}/image.png", masks="{case}/rater_*.png")
  assert builder.info.metadata["num_raters"] == raters
  assert builder.info.metadata["num_classes"] == 2
  assert any(f"R={raters}" in line for line in logs)
  got = read_all(builder)
  assert sorted(got) == sorted(cases)
  for key, (image, labels) in cases.items():
    np.testing.assert_array_equal(got[key][1]["image"], image)
    np.testing.assert_array_equal(got[key][1]["masks"], labels)
  spec = input_pipeline.dataset_spec(builder)
  assert spec.kind == "graders" and spec.image_shape == (20, 24, 1)


def test_pickle_seven_raters_float_images_and_one_rater(tmp_path):
  rng = np.random.default_rng(7)
  cases = make_cases(rng, 12, 7)
  data = {f"{k}_s{i}": {"image": img[..., 0] / 255.0, "masks": [m for m in lab], "series": "x"}
          for i, (k, (img, lab)) in enumerate(cases.items())}
  (tmp_path / "d.pickle").write_bytes(pickle.dumps(data))
  builder, _ = run_import(tmp_path, source=str(tmp_path / "d.pickle"), format="pickle",
                          group=r"^(case\d+)_")
  assert builder.info.metadata["num_raters"] == 7
  got = read_all(builder)
  for key, value in data.items():
    np.testing.assert_array_equal(got[key][1]["image"][..., 0],
                                  np.round(value["image"] * 255).astype(np.uint8))
    np.testing.assert_array_equal(got[key][1]["masks"], np.stack(value["masks"]))
    assert got[key][1]["group"].decode() == key.split("_")[0]
  one = {k: {"image": v["image"], "masks": v["masks"][:1]} for k, v in data.items()}
  (tmp_path / "one.pickle").write_bytes(pickle.dumps(one))
  builder, _ = run_import(tmp_path, name="one_rater", source=str(tmp_path / "one.pickle"),
                          format="pickle")
  assert builder.info.features["masks"].shape == (1, 20, 24)


def test_train_pipeline_draws_each_of_seven_raters_uniformly(tmp_path):
  # Rater r marks exactly r + 1 pixels, so the drawn label tells which rater was drawn.
  data = {}
  for i in range(4):
    masks = []
    for r in range(7):
      m = np.zeros((8, 8), np.uint8)
      m.flat[:r + 1] = 1
      masks.append(m)
    data[f"k{i}"] = {"image": np.full((8, 8), i, np.uint8), "masks": masks}
  (tmp_path / "d.pickle").write_bytes(pickle.dumps(data))
  builder, _ = run_import(tmp_path, source=str(tmp_path / "d.pickle"), format="pickle",
                          split_from_path=False)
  spec = input_pipeline.dataset_spec(builder)
  split = next(iter(builder.info.splits))
  ds = input_pipeline.train_dataset(builder, spec, batch_size=4, split=split, seed=3)
  counts = collections.Counter()
  for _, labels in ds.take(175):
    counts.update(int(n) - 1 for n in tf.reduce_sum(labels, [1, 2]).numpy())
  total = sum(counts.values())
  assert sorted(counts) == list(range(7))
  for r in range(7):  # 700 draws: each rater 100 +- 4 sigma.
    assert abs(counts[r] - total / 7) < 4 * np.sqrt(total / 7 * 6 / 7), counts


def test_jpeg_masks_with_compression_noise_are_thresholded(tmp_path):
  cases = make_cases(np.random.default_rng(1), 8, 2, size=(32, 32))
  write_folder(tmp_path / "src", cases, mask_fmt="JPEG", quality=60)
  noisy = np.asarray(Image.open(tmp_path / "src" / "case00" / "rater_0.jpg"))
  assert len(np.unique(noisy)) > 2  # The test data really is noisy.
  builder, _ = run_import(tmp_path, image="{case}/image.png", masks="{case}/rater_*.jpg")
  got = read_all(builder)
  for key, (_, labels) in cases.items():
    np.testing.assert_array_equal(got[key][1]["masks"], labels)
  # Empty JPEG masks with faint noise are still binary (not classes 0..3).
  quiet = {k: (image, (labels * 0 + (np.random.default_rng(0).random(labels.shape) < 0.1) * 3
                       ).astype(np.uint8)) for k, (image, labels) in cases.items()}
  write_folder(tmp_path / "quiet", quiet, mask_scale=1, mask_fmt="JPEG", quality=60)
  builder, _ = run_import(tmp_path, name="quiet", source=str(tmp_path / "quiet"),
                          image="{case}/image.png", masks="{case}/rater_*.jpg")
  assert builder.info.metadata["num_classes"] == 2
  assert not any(ex["masks"].any() for _, ex in read_all(builder).values())


def test_three_classes_by_class_values_and_by_index(tmp_path):
  cases = make_cases(np.random.default_rng(2), 8, 3, classes=3)
  write_folder(tmp_path / "src", cases, mask_scale=100)  # Values 0, 100, 200.
  builder, _ = run_import(tmp_path, image="{case}/image.png", masks="{case}/rater_*.png",
                          class_values=(0, 100, 200))
  assert builder.info.metadata["num_classes"] == 3
  got = read_all(builder)
  for key, (_, labels) in cases.items():
    np.testing.assert_array_equal(got[key][1]["masks"], labels)
  assert input_pipeline.dataset_spec(builder).class_ids == (0, 1, 2)
  write_folder(tmp_path / "idx", cases, mask_scale=1)  # Values 0, 1, 2: inferred K = 3.
  builder, _ = run_import(tmp_path, name="by_index", source=str(tmp_path / "idx"),
                          image="{case}/image.png", masks="{case}/rater_*.png")
  assert builder.info.metadata["num_classes"] == 3
  assert all(np.array_equal(ex["masks"], cases[k][1]) for k, (_, ex) in read_all(builder).items())


def test_pre_split_tree_one_folder_per_rater(tmp_path):
  rng = np.random.default_rng(3)
  cases = {}
  for split in ("training", "testing"):
    for key, value in make_cases(rng, 6, 2).items():
      cases[f"{split}/{split[:3]}{key}/s{rng.integers(100)}"] = value
  for key, (image, labels) in cases.items():
    split, patient, slice_ = key.split("/")
    write_png(str(tmp_path / "src" / split / patient / "images" / f"{slice_}.png"), image[..., 0])
    for r, label in enumerate(labels):
      write_png(str(tmp_path / "src" / split / patient / f"mask-{r}" / f"{slice_}.png"),
                label * 255)
  builder, _ = run_import(tmp_path, image="{patient}/images/{slice}.png",
                          masks="{patient}/mask-*/{slice}.png", split_from_path=True,
                          group=r"^\w+/(\w+)/")
  groups = {k.split("/")[1] for k in cases if k.startswith("training/")}
  assert any(LIB.lidc_common.patient_split(g) == "validation" for g in groups)  # Test data.
  assert set(builder.info.splits) == {"train", "validation", "test"}
  for key, (split, ex) in read_all(builder).items():
    if key.startswith("testing/"):
      assert split == "test"
    else:  # No validation folder: the train groups that hash into validation.
      want = LIB.lidc_common.patient_split(key.split("/")[1])
      assert split == ("validation" if want == "validation" else "train")
    np.testing.assert_array_equal(ex["masks"], cases[key][1])


def test_hashed_splits_keep_groups_disjoint(tmp_path):
  rng = np.random.default_rng(4)
  cases = {}
  for p in range(30):
    for s in range(3):
      cases[f"patient{p:02d}/slice{s}"] = make_cases(rng, 1, 2, size=(12, 12))["case00"]
  for key, (image, labels) in cases.items():
    write_png(str(tmp_path / "src" / key / "img.png"), image[..., 0])
    for r, label in enumerate(labels):
      write_png(str(tmp_path / "src" / key / f"m{r}.png"), label * 255)
  builder, _ = run_import(tmp_path, image="{case}/img.png", masks="{case}/m*.png",
                          group=r"^(patient\d+)/")
  groups = collections.defaultdict(set)
  for key, (split, ex) in read_all(builder).items():
    assert ex["group"].decode() == key.split("/")[0]
    groups[ex["group"].decode()].add(split)
  assert len(groups) == 30 and all(len(s) == 1 for s in groups.values())
  assert {s for v in groups.values() for s in v} == {"train", "validation", "test"}
  # The same rule as the LIDC layouts without a split: the hash of the group id.
  for group, splits in groups.items():
    assert splits == {LIB.lidc_common.patient_split(group)}


def test_image_size_resizes_and_pad_to_multiple_pads(tmp_path):
  cases = make_cases(np.random.default_rng(5), 6, 2, size=(20, 24), channels=3)
  write_folder(tmp_path / "src", cases)
  builder, _ = run_import(tmp_path, image="{case}/image.png", masks="{case}/rater_*.png",
                          image_size=(10, 12))
  got = read_all(builder)
  assert builder.info.features["image"].shape == (10, 12, 3)
  for key, (image, labels) in cases.items():
    want = np.asarray(Image.fromarray(labels[1] * 255).resize((12, 10), Image.NEAREST)) // 255
    np.testing.assert_array_equal(got[key][1]["masks"][1], want)
    assert abs(float(got[key][1]["image"].mean()) - float(image.mean())) < 8
  builder, _ = run_import(tmp_path, name="padded", image="{case}/image.png",
                          masks="{case}/rater_*.png", pad_to_multiple=16)
  assert builder.info.features["image"].shape == (32, 32, 3)
  for key, (_, ex) in read_all(builder).items():
    np.testing.assert_array_equal(ex["image"][:20, :24], cases[key][0])
    assert not ex["image"][20:].any() and not ex["masks"][:, :, 24:].any()
    np.testing.assert_array_equal(ex["masks"][:, :20, :24], cases[key][1])


def _nifti(path, array):
  nib = pytest.importorskip("nibabel")
  nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def test_nifti_2d_and_3d_volumes_with_annotated_slices(tmp_path):
  rng = np.random.default_rng(6)
  (tmp_path / "src").mkdir()
  volumes = {}
  for p in range(3):
    image = rng.normal(-500, 300, (12, 14, 6)).astype(np.int16)  # CT-like values.
    masks = np.zeros((3, 12, 14, 6), np.uint8)
    for r in range(3):
      masks[r, 3:6 + r, 4:8, 2:4] = 1  # Slices 2 and 3 are annotated.
    _nifti(tmp_path / "src" / f"p{p}.nii.gz", image)
    for r in range(3):
      _nifti(tmp_path / "src" / f"p{p}_rater{r}.nii.gz", masks[r])
    volumes[f"p{p}"] = (image, masks)
  builder, _ = run_import(tmp_path, image="{case}.nii.gz", masks="{case}_rater*.nii.gz",
                          slices="annotated")
  got = read_all(builder)
  assert sorted(got) == [f"p{p}/slice-{k:03d}" for p in range(3) for k in (2, 3)]
  for key, (_, ex) in got.items():
    case, k = key.split("/")[0], int(key[-3:])
    image, masks = volumes[case]
    np.testing.assert_array_equal(ex["masks"], masks[..., k])
    assert ex["group"].decode() == case  # Slices of a volume stay in one split.
    lo, hi = image.min(), image.max()  # Scaled from the volume's own range.
    want = np.round((image[..., k].astype(float) - lo) / (hi - lo) * 255).astype(np.uint8)
    np.testing.assert_array_equal(ex["image"][..., 0], want)
  builder, _ = run_import(tmp_path, name="all_slices", image="{case}.nii.gz",
                          masks="{case}_rater*.nii.gz", slice_axis=0)
  assert sum(s.num_examples for s in builder.info.splits.values()) == 3 * 12
  assert builder.info.features["image"].shape == (14, 6, 1)
  # 2-D NIfTI files.
  flat = tmp_path / "flat"
  flat.mkdir()
  for p, (image, masks) in volumes.items():
    _nifti(flat / f"{p}_img.nii", image[..., 2].astype(np.float32) / 4096.0 + 0.5)
    for r in range(3):
      _nifti(flat / f"{p}_seg{r}.nii", masks[r, ..., 2])
  builder, _ = run_import(tmp_path, name="flat", source=str(flat), image="{case}_img.nii",
                          masks="{case}_seg*.nii")
  got = read_all(builder)
  assert sorted(got) == ["p0", "p1", "p2"]
  for key, (_, ex) in got.items():
    np.testing.assert_array_equal(ex["masks"], volumes[key][1][..., 2])


def test_npy_files(tmp_path):
  cases = make_cases(np.random.default_rng(8), 5, 2)
  for key, (image, labels) in cases.items():
    (tmp_path / "src" / key).mkdir(parents=True)
    np.save(tmp_path / "src" / key / "image.npy", image[..., 0])
    for r, label in enumerate(labels):
      np.save(tmp_path / "src" / key / f"mask{r}.npy", label.astype(bool))
  builder, _ = run_import(tmp_path, image="{case}/image.npy", masks="{case}/mask*.npy")
  for key, (_, ex) in read_all(builder).items():
    np.testing.assert_array_equal(ex["masks"], cases[key][1])
    np.testing.assert_array_equal(ex["image"], cases[key][0])


# --- bad input: one line naming the file or key, nothing prepared ------------------------------

class _Evil:
  def __reduce__(self):
    return (os.system, ("true",))


def _bad_sources(root):
  """{what: (options, expected substrings)} for a set of broken sources written under `root`."""
  cases = make_cases(np.random.default_rng(9), 4, 2)
  bad = {}

  def folder(name, mutate=None, **kw):
    path = root / name
    write_folder(path, cases)
    if mutate:
      mutate(path)
    opts = dict(source=str(path), image="{case}/image.png", masks="{case}/rater_*.png")
    opts.update(kw)
    return opts

  bad["missing mask"] = (folder("missing", lambda p: [os.remove(p / f"case01/rater_{r}.png")
                                                      for r in range(2)]),
                         ["case01/image.png", "case01"])
  bad["raters differ"] = (folder("raters", lambda p: write_png(
      str(p / "case02/rater_2.png"), np.zeros((20, 24), np.uint8))),
                          ["case02/image.png", "expected 2 masks", "found 3"])
  bad["mask shape"] = (folder("shape", lambda p: write_png(
      str(p / "case03/rater_1.png"), np.zeros((20, 23), np.uint8))),
                       ["case03/rater_1.png", "[20, 24]", "[20, 23]"])
  bad["class values"] = (folder("values", class_values=(0, 100)), ["rater_0.png", "--class_values", "255"])
  bad["unreadable"] = (folder("corrupt", lambda p: (p / "case00/rater_0.png").write_bytes(
      b"not a png")), ["case00/rater_0.png", "could not read"])
  bad["no match"] = (folder("nomatch", image="{case}/img.tif"), ["--image", "matches no file"])
  (root / "evil.pickle").write_bytes(pickle.dumps(
      {"a": {"image": np.zeros((4, 4)), "masks": [np.zeros((4, 4))], "x": _Evil()}}))
  bad["evil pickle"] = (dict(source=str(root / "evil.pickle"), format="pickle"),
                        ["evil.pickle", "refusing to unpickle", "system"])
  return bad


def test_bad_inputs_fail_with_one_line_and_prepare_nothing(tmp_path):
  for what, (options, expected) in _bad_sources(tmp_path).items():
    with pytest.raises(ValueError) as info:
      run_import(tmp_path, **options)
    message = str(info.value)
    assert "\n" not in message, (what, message)
    for part in expected:
      assert part in message, (what, message)
    assert_nothing_prepared(tmp_path)
    assert not (tmp_path / "tfds" / "my_data").exists(), what


def test_failure_while_writing_leaves_nothing_prepared(tmp_path, monkeypatch):
  cases = make_cases(np.random.default_rng(10), 30, 2)
  write_folder(tmp_path / "src", cases)
  calls = []
  original = LIB.to_example

  def failing(*args):
    calls.append(1)
    if len(calls) > 10:
      raise LIB.ImportError_("disk vanished")
    return original(*args)

  monkeypatch.setattr(LIB, "to_example", failing)
  with pytest.raises(ValueError, match="disk vanished"):
    run_import(tmp_path, image="{case}/image.png", masks="{case}/rater_*.png")
  assert_nothing_prepared(tmp_path)
  with pytest.raises(ValueError, match="no prepared dataset"):
    input_pipeline.get_builder("my_data", str(tmp_path / "tfds"))


def test_existing_dataset_needs_overwrite_and_names_are_checked(tmp_path):
  cases = make_cases(np.random.default_rng(11), 4, 2)
  write_folder(tmp_path / "src", cases)
  kw = dict(image="{case}/image.png", masks="{case}/rater_*.png")
  run_import(tmp_path, **kw)
  with pytest.raises(ValueError, match="already prepared.*--overwrite"):
    run_import(tmp_path, **kw)
  for name in ("lidc", "My-Data"):
    with pytest.raises(ValueError, match="--name"):
      run_import(tmp_path, name=name, **kw)


@pytest.mark.slow  # A subprocess importing TensorFlow.
def test_binary_reports_bad_input_in_one_line(tmp_path):
  result = helpers.run_binary("tf_prob_unet.import_data", "--name=x", f"--source={tmp_path}/no",
                              f"--data_dir={tmp_path}/tfds", "--image={c}.png",
                              "--masks={c}_m.png", timeout=300)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("import_data: --source: expected a folder") and "Traceback" not in (
      result.stderr)


# --- real data: the LIDC-IDRI slices through --format=folder ------------------------------------

# The shared data sits next to the repository (`../shared`), or next to a worktree's parent.
_CANDIDATES = [os.path.join(base, "shared", "data", "lidc_idri_slices", "LIDC-IDRI-slices.zip")
               for base in (os.path.dirname(helpers.REPO),
                            os.path.dirname(os.path.dirname(helpers.REPO)))]
SHARED_ZIP = os.environ.get("LIDC_SLICES_ZIP", next(
    (p for p in _CANDIDATES if os.path.isfile(p)), _CANDIDATES[0]))


@pytest.mark.skipif(not os.path.isfile(SHARED_ZIP), reason=f"no shared zip at {SHARED_ZIP}")
def test_lidc_slices_through_folder_format_equal_the_lidc_builder(tmp_path):
  import importlib  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  package = LIB.__name__.rsplit(".", 2)[0]
  slices_reader = importlib.import_module(f"{package}.lidc.slices_reader")
  with zipfile.ZipFile(SHARED_ZIP) as z:
    names = z.namelist()
    patients = sorted({n.split("/")[1] for n in names if n.count("/") >= 4})[:4]
    z.extractall(tmp_path / "manual", [n for n in names if n.count("/") >= 2
                                       and n.split("/")[1] in patients and not n.endswith("/")])
  source = tmp_path / "manual" / slices_reader.FOLDER_NAME
  builder, _ = run_import(tmp_path, name="lidc_folder", source=str(source),
                          image="{patient}/{lesion}/images/{slice}.png",
                          masks="{patient}/{lesion}/mask-*/{slice}.png", group=r"^([^/]+)/")
  got = read_all(builder)
  want = {}
  for split, examples in slices_reader.split_generators(str(tmp_path / "manual")).items():
    want.update({key: (split, ex) for key, ex in examples})
  assert len(want) > 10 and sorted(got) == sorted(want)
  assert builder.info.metadata["num_raters"] == 4 and builder.info.metadata["num_classes"] == 2
  for key, (split, ex) in want.items():
    assert got[key][0] == split
    np.testing.assert_array_equal(got[key][1]["image"], ex["image"])
    np.testing.assert_array_equal(got[key][1]["masks"], ex["masks"])
