"""Tests of the cityscapes_ambiguous builder on fake downloads in the official layout.

Cityscapes needs a registration, so `dummy_data/fake_cityscapes.py` writes stand-ins with the
official folder layout and file names (full-size 1024x2048 frames, a few per split, as folders and
as the two zips). The builder is loaded by the repository's loader (`input_pipeline`), which also
makes the fake-data module importable. `tfds.testing.DatasetBuilderTestCase` is not used (it needs
`dill`); the build tests really build into a temporary data_dir and read the result back.
"""

import importlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_prob_unet import input_pipeline

cs = input_pipeline._local_builder_module("cityscapes_ambiguous")  # pylint: disable=protected-access
fake = importlib.import_module(
    "tf_prob_unet_datasets.cityscapes_ambiguous.dummy_data.fake_cityscapes")

# The official Cityscapes label definition (cityscapesScripts, helpers/labels.py): name, labelId,
# trainId, ignoreInEval. trainId 255 / -1 and ignoreInEval mean void.
OFFICIAL_LABELS = (
    ("unlabeled", 0, 255, True), ("ego vehicle", 1, 255, True),
    ("rectification border", 2, 255, True), ("out of roi", 3, 255, True),
    ("static", 4, 255, True), ("dynamic", 5, 255, True), ("ground", 6, 255, True),
    ("road", 7, 0, False), ("sidewalk", 8, 1, False), ("parking", 9, 255, True),
    ("rail track", 10, 255, True), ("building", 11, 2, False), ("wall", 12, 3, False),
    ("fence", 13, 4, False), ("guard rail", 14, 255, True), ("bridge", 15, 255, True),
    ("tunnel", 16, 255, True), ("pole", 17, 5, False), ("polegroup", 18, 255, True),
    ("traffic light", 19, 6, False), ("traffic sign", 20, 7, False),
    ("vegetation", 21, 8, False), ("terrain", 22, 9, False), ("sky", 23, 10, False),
    ("person", 24, 11, False), ("rider", 25, 12, False), ("car", 26, 13, False),
    ("truck", 27, 14, False), ("bus", 28, 15, False), ("caravan", 29, 255, True),
    ("trailer", 30, 255, True), ("train", 31, 16, False), ("motorcycle", 32, 17, False),
    ("bicycle", 33, 18, False), ("license plate", -1, -1, True),
)


def official_train_ids(label_ids):
  """labelIds -> trainIds (void 255) from `OFFICIAL_LABELS`, independently of the builder."""
  out = np.full(np.shape(label_ids), 255, np.uint8)
  for _, label_id, train_id, ignored in OFFICIAL_LABELS:
    if not ignored:
      out[np.asarray(label_ids) == label_id] = train_id
  return out


OUR_SPLIT = {("train", c): "validation" for c in ("darmstadt", "monchengladbach", "ulm")}


def our_split(frame):
  """The split a fake frame belongs to (None: the official test split, not used)."""
  official = frame["split"]
  return {"val": "test", "test": None}.get(official, OUR_SPLIT.get((official, frame["city"]),
                                                                   "train"))


def build(config, manual_dir, data_dir):
  return fake.build(cs.Builder, config, manual_dir, data_dir)


def read_all(builder):
  """{id: example} over every split, and {split: sorted ids}."""
  examples, ids = {}, {}
  for split in builder.info.splits:
    rows = list(tfds.as_numpy(builder.as_dataset(split=split)))
    ids[split] = sorted(r["id"].decode() for r in rows)
    examples.update({r["id"].decode(): r for r in rows})
  return examples, ids


def _link(src_root, dst_root, names):
  """A manual directory that shares `names` (folders or zips) with another one."""
  os.makedirs(dst_root, exist_ok=True)
  for name in names:
    os.symlink(os.path.join(src_root, name), os.path.join(dst_root, name))


@pytest.fixture(scope="module")
def fake_download(tmp_path_factory):
  """Full-size fake frames as extracted folders: (manual_dir, frames)."""
  root = tmp_path_factory.mktemp("manual_folders")
  return root, fake.write_cityscapes(str(root))


@pytest.fixture(scope="module")
def rgb_from_folders(fake_download, tmp_path_factory):
  root, _ = fake_download
  return build("rgb", root, tmp_path_factory.mktemp("data_rgb"))


# -----------------------------------------------------------------------------
# The label table, the flips and the modes.
# -----------------------------------------------------------------------------


def test_label_table_matches_the_official_one_for_every_id():
  for name, label_id, train_id, ignored in OFFICIAL_LABELS:
    expected = 255 if ignored else train_id
    got = cs.label_ids_to_train_ids(np.array([label_id]), "x")[0]
    assert got == expected, (name, label_id, got, expected)
    if not ignored:
      assert cs.TRAIN_CLASSES[train_id] == (name, label_id)
  assert {i for _, i, _, _ in OFFICIAL_LABELS} == set(range(-1, 34))
  assert len(cs.TRAIN_CLASSES) == 19 and cs.CLASS_NAMES[19:] == (
      "sidewalk_2", "person_2", "car_2", "vegetation_2", "road_2")
  # The reference's void list.
  void = [-1, 0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
  assert np.all(cs.label_ids_to_train_ids(np.array(void), "x") == 255)
  with pytest.raises(ValueError, match=r"some_file\.png: expected Cityscapes labelIds.*\[34"):
    cs.label_ids_to_train_ids(np.array([[7, 34]]), "some_file.png")
  with pytest.raises(ValueError, match=r"cue\.png: expected trainIds 0\.\.18 or 255, found \[19\]"):
    cs.check_train_ids(np.array([0, 18, 255, 19]), "cue.png")


def test_configs_metadata_and_spec(tmp_path):
  assert [c.name for c in cs.Builder.BUILDER_CONFIGS] == ["rgb", "cue"]
  for config, channels in (("rgb", 3), ("cue", 3 + 19)):
    builder = cs.Builder(config=config, data_dir=str(tmp_path))
    features = builder.info.features
    assert features["image"].shape == (256, 512, 3) and features["label"].shape == (256, 512)
    assert ("cue" in features) == (config == "cue")
    spec = input_pipeline.dataset_spec(builder)
    assert spec.kind == "flips" and spec.num_classes == 24 and spec.num_base_classes == 19
    assert spec.image_shape == (256, 512, channels) and spec.has_cue == (config == "cue")
    assert spec.class_ids == (0, 1, 8, 11, 13, 19, 20, 21, 22, 23)  # the 10 evaluated classes
    assert spec.flips == ((1, 19, 8 / 17), (11, 20, 7 / 17), (13, 21, 6 / 17), (8, 22, 5 / 17),
                          (0, 23, 4 / 17))
    assert spec.mode_names[0] == "none" and spec.mode_names[16] == "sidewalk"
    assert spec.mode_names[1] == "road" and len(spec.mode_names) == 32


def test_the_32_modes_and_their_probabilities(tmp_path):
  spec = input_pipeline.dataset_spec(cs.Builder(config="rgb", data_dir=str(tmp_path)))
  label = np.array([[0, 1, 8, 11], [13, 2, 255, 18]], np.uint8)
  modes, probs = input_pipeline.flip_modes(tf.constant(label), spec.flips)
  modes, probs = modes.numpy(), probs.numpy().astype(np.float64)
  assert modes.shape == (32, 2, 4) and probs.shape == (32,)
  assert probs.sum() == pytest.approx(1.0, abs=1e-6)
  assert round(probs[0], 4) == 0.1088
  assert probs[0] == pytest.approx(9 * 10 * 11 * 12 * 13 / 17**5, rel=1e-6)
  assert round(probs[16], 4) == 0.0967 and round(probs[31], 4) == 0.0047
  assert probs.argmax() == 0
  # Bit order: sidewalk is the most significant bit, road the least.
  by_class = {1: 19, 11: 20, 13: 21, 8: 22, 0: 23}
  for m in range(32):
    flipped = [src for bit, src in zip(f"{m:05b}", (1, 11, 13, 8, 0)) if bit == "1"]
    expected = label.copy()
    for src in flipped:
      expected[label == src] = by_class[src]
    np.testing.assert_array_equal(modes[m], expected)


# -----------------------------------------------------------------------------
# Building on fake data.
# -----------------------------------------------------------------------------


@pytest.mark.slow
def test_build_rgb_from_folders(fake_download, rgb_from_folders):
  _, frames = fake_download
  examples, ids = read_all(rgb_from_folders)
  expected = {s: sorted(f for f, fr in frames.items() if our_split(fr) == s)
              for s in ("train", "validation", "test")}
  assert ids == expected
  assert ids["validation"] == ["darmstadt_000000_000019", "monchengladbach_000000_000026",
                               "ulm_000000_000019"]
  assert all(f.split("_")[0] in ("frankfurt", "lindau", "munster") for f in ids["test"])
  for fid, ex in examples.items():
    source = frames[fid]
    assert ex["image"].shape == (256, 512, 3) and ex["image"].dtype == np.uint8
    assert ex["label"].shape == (256, 512) and ex["label"].dtype == np.uint8
    # Labels: nearest neighbour (PIL's centre sampling: rows and columns 2, 6, ...), official
    # trainIds.
    np.testing.assert_array_equal(ex["label"],
                                  official_train_ids(source["label_ids"][2::4, 2::4]))
    assert set(np.unique(ex["label"])) == set(range(19)) | {255}
    # Image: bilinear with antialiasing (as PIL reduces), within rounding of TensorFlow's.
    resized = tf.image.resize(source["image"][None].astype(np.float32), (256, 512), "bilinear",
                              antialias=True)[0].numpy()
    assert np.abs(ex["image"] - resized).max() <= 1.01


@pytest.mark.slow
def test_build_from_zips_equals_build_from_folders(fake_download, rgb_from_folders, tmp_path):
  root, _ = fake_download
  fake.zip_folders(str(root), str(tmp_path / "manual"))
  assert sorted(os.listdir(tmp_path / "manual")) == ["gtFine_trainvaltest.zip",
                                                     "leftImg8bit_trainvaltest.zip"]
  from_zips, zip_ids = read_all(build("rgb", tmp_path / "manual", tmp_path / "data"))
  from_folders, folder_ids = read_all(rgb_from_folders)
  assert zip_ids == folder_ids
  for fid, ex in from_zips.items():
    for key in ("image", "label"):
      np.testing.assert_array_equal(ex[key], from_folders[fid][key], err_msg=f"{fid} {key}")


@pytest.mark.slow
@pytest.mark.parametrize("kind,zips", [("car", False), ("png", True)])
def test_build_cue(kind, zips, fake_download, rgb_from_folders, tmp_path):
  """CAR's npy cues (labelIds at 256x512) from folders; full-size PNG cues next to the zips."""
  root, frames = fake_download
  manual = tmp_path / "manual"
  if zips:
    fake.zip_folders(str(root), str(manual))
  else:
    _link(str(root), str(manual), ["leftImg8bit", "gtFine"])
  cues = fake.write_cues(str(manual), frames, kind)
  builder = build("cue", manual, tmp_path / "data")
  examples, ids = read_all(builder)
  rgb, rgb_ids = read_all(rgb_from_folders)
  assert ids == rgb_ids
  for fid, ex in examples.items():
    cue = cues[fid] if kind == "car" else cues[fid][2::4, 2::4]
    assert ex["cue"].dtype == np.uint8
    np.testing.assert_array_equal(ex["cue"], official_train_ids(cue))
    np.testing.assert_array_equal(ex["label"], rgb[fid]["label"])
    np.testing.assert_array_equal(ex["image"], rgb[fid]["image"])
  # The model input is the image plus the one-hot cue (void: all zeros); the cue is never
  # flipped, the label is.
  spec = input_pipeline.dataset_spec(builder)
  by_image = {ex["image"].tobytes(): ex for f, ex in examples.items() if f in ids["train"]}
  unflip = np.arange(256)
  for src, dst, _ in spec.flips:
    unflip[dst] = src
  for x, y in input_pipeline.train_dataset(builder, spec, 3, seed=1, shuffle_buffer=4).take(4):
    for xi, yi in zip(x.numpy(), y.numpy()):
      ex = by_image[np.round(xi[..., :3] * 255).astype(np.uint8).tobytes()]
      np.testing.assert_array_equal(
          xi[..., 3:], (ex["cue"][..., None] == np.arange(19)).astype(np.float32))
      np.testing.assert_array_equal(unflip[yi], ex["label"])


@pytest.mark.slow
def test_flip_rates_over_many_pipeline_draws(rgb_from_folders):
  """Per-class flip rates and the joint mode frequencies of 2,000 real training draws."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  spec = input_pipeline.dataset_spec(rgb_from_folders)
  ds = input_pipeline.train_dataset(rgb_from_folders, spec, 50, seed=0, shuffle_buffer=8)
  bits = []
  for _, y in ds.take(40):
    y = y.numpy()
    for src, dst, _ in spec.flips:
      has_src = (y == src).any(axis=(1, 2))
      has_dst = (y == dst).any(axis=(1, 2))
      assert not np.any(has_src & has_dst)  # every pixel of a class flips together
      assert np.all(has_src | has_dst)  # every fake frame shows the five classes
    bits.append(np.stack([(y == dst).any(axis=(1, 2)) for _, dst, _ in spec.flips], 1))
  bits = np.concatenate(bits).astype(int)
  n = len(bits)
  assert n == 2000
  p = np.array([q for _, _, q in spec.flips])
  sigma = np.sqrt(p * (1 - p) / n)
  rates = bits.mean(0)
  assert np.all(np.abs(rates - p) < 4 * sigma), (rates, p, sigma)
  # Independence: the 32 mode frequencies against their exact probabilities.
  modes = bits @ (2 ** np.arange(4, -1, -1))
  counts = np.bincount(modes, minlength=32)
  probs = np.prod(np.where((np.arange(32)[:, None] >> np.arange(4, -1, -1)) & 1, p, 1 - p), 1)
  chi2 = np.sum((counts - n * probs)**2 / (n * probs))
  assert chi2 < stats.chi2.ppf(1 - 1e-4, 31), chi2


# -----------------------------------------------------------------------------
# Clear errors.
# -----------------------------------------------------------------------------

TINY = (64, 128)
TINY_FRAMES = (("train", "aachen", 0, 19), ("train", "ulm", 0, 19), ("val", "lindau", 0, 0))


def _expect_error(config, manual, tmp_path, error, match):
  with pytest.raises(error, match=match):
    build(config, manual, tmp_path / "data")


def test_missing_zip_names_the_file(tmp_path):
  manual = tmp_path / "manual"
  fake.write_cityscapes(str(manual), TINY_FRAMES, TINY, zips=True)
  os.remove(manual / "gtFine_trainvaltest.zip")
  _expect_error("rgb", manual, tmp_path, FileNotFoundError,
                r"missing .*manual/gtFine_trainvaltest\.zip \(or its extracted folder")


def test_frame_without_label_names_the_file(tmp_path):
  manual = tmp_path / "manual"
  fake.write_cityscapes(str(manual), TINY_FRAMES, TINY)
  os.remove(manual / "gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png")
  _expect_error("rgb", manual, tmp_path, FileNotFoundError,
                r"ulm_000000_000019_leftImg8bit\.png: the frame has no label file; expected "
                r".*gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds\.png")


def test_frame_without_label_in_the_zip_names_the_member(tmp_path):
  folders, manual = tmp_path / "folders", tmp_path / "manual"
  fake.write_cityscapes(str(folders), TINY_FRAMES, TINY)
  os.remove(folders / "gtFine/val/lindau/lindau_000000_000000_gtFine_labelIds.png")
  fake.zip_folders(str(folders), str(manual))
  _expect_error("rgb", manual, tmp_path, FileNotFoundError,
                r"gtFine_trainvaltest\.zip:gtFine/val/lindau/lindau_000000_000000_gtFine_labelIds")


def test_cue_of_wrong_shape_names_the_file(tmp_path):
  manual = tmp_path / "manual"
  frames = fake.write_cityscapes(str(manual), TINY_FRAMES, TINY)
  fake.write_cues(str(manual), frames, "car")
  bad = manual / "cues/train/ulm/bb_preds/ulm_000000_000019_prior_preds_trainIds.npy"
  np.save(bad, np.zeros((100, 200), np.int64))
  _expect_error("cue", manual, tmp_path, ValueError,
                r"ulm_000000_000019_prior_preds_trainIds\.npy: expected a cue label map of shape "
                r"\(64, 128\) or \(256, 512\), found \(100, 200\)")


def test_missing_cue_and_bad_label_values_name_the_file(tmp_path):
  manual = tmp_path / "manual"
  frames = fake.write_cityscapes(str(manual), TINY_FRAMES, TINY)
  _expect_error("cue", manual, tmp_path, FileNotFoundError, r"missing the cue folder")
  fake.write_cues(str(manual), frames, "png")
  os.remove(manual / "cues/val/lindau/lindau_000000_000000_cue_labelIds.png")
  _expect_error("cue", manual, tmp_path, FileNotFoundError,
                r"lindau_000000_000000_leftImg8bit\.png: no cue for this frame")
  # A trainIds image where labelIds are expected (255 is not a labelId).
  label = manual / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.full(TINY, 255, np.uint8)).save(label)
  _expect_error("rgb", manual, tmp_path / "2", ValueError,
                r"aachen_000000_000019_gtFine_labelIds\.png: expected Cityscapes labelIds in "
                r"-1\.\.33, found \[255\]")


def test_unknown_city_is_an_error(tmp_path):
  manual = tmp_path / "manual"
  fake.write_cityscapes(str(manual), TINY_FRAMES + (("train", "atlantis", 0, 1),), TINY)
  _expect_error("rgb", manual, tmp_path, ValueError,
                r"atlantis_000000_000001_leftImg8bit\.png: expected a city of the official "
                r"train split .*found 'atlantis'")
