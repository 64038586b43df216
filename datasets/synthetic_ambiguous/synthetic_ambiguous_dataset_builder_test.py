"""Tests of the synthetic_ambiguous dataset builder and its generators.

The builder module is loaded by file path (the `datasets` folder is not a
package). `tfds.testing.DatasetBuilderTestCase` is not used because
`tensorflow_datasets.testing` needs `dill`, which is not a dependency of the
project; `test_build_and_read` does the equivalent: it really generates the
tiny configs into a temporary data_dir and reads them back.
"""

import importlib.util
import itertools
import pathlib
import sys

import numpy as np
import pytest

_MODULE_NAME = "synthetic_ambiguous_dataset_builder"
_MODULE_PATH = pathlib.Path(__file__).with_name(_MODULE_NAME + ".py")


def _load_builder_module():
  """Imports the builder module by file path (once per process)."""
  if _MODULE_NAME in sys.modules:
    return sys.modules[_MODULE_NAME]
  spec = importlib.util.spec_from_file_location(_MODULE_NAME, _MODULE_PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[_MODULE_NAME] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[_MODULE_NAME]
    raise
  return module


sa = _load_builder_module()

NUM_STAT_EXAMPLES = 3000
STAT_SIZE = 32


def _iou_distance(a, b):
  """1 - IoU of two binary masks [S, S] (0 if both are empty)."""
  a, b = a.astype(bool), b.astype(bool)
  union = np.count_nonzero(a | b)
  if union == 0:
    return 0.0
  return 1.0 - np.count_nonzero(a & b) / union


@pytest.fixture(scope="module")
def lidc_examples():
  """NUM_STAT_EXAMPLES lidc_like examples at STAT_SIZE (train split)."""
  return [
      sa.generate_lidc_like(sa.example_rng(0, "train", i), STAT_SIZE)
      for i in range(NUM_STAT_EXAMPLES)
  ]


@pytest.fixture(scope="module")
def city_examples():
  """200 cityscapes_like examples at 64x64 (train split)."""
  return [
      sa.generate_cityscapes_like(sa.example_rng(0, "train", i), 64)
      for i in range(200)
  ]


# -----------------------------------------------------------------------------
# TFDS builder.
# -----------------------------------------------------------------------------


def test_configs():
  configs = {c.name: c for c in sa.Builder.BUILDER_CONFIGS}
  assert set(configs) == {
      "lidc_like", "lidc_like_128", "lidc_like_tiny", "cityscapes_like",
      "cityscapes_like_128", "cityscapes_like_tiny", "multiscale",
      "multiscale_128", "multiscale_tiny"
  }
  assert sa.Builder.name == "synthetic_ambiguous"
  assert sa.Builder.DEFAULT_CONFIG_NAME == "lidc_like"
  assert str(sa.Builder.VERSION) == "1.0.0"
  assert "1.0.0" in sa.Builder.RELEASE_NOTES
  for name in ("lidc_like", "cityscapes_like", "multiscale"):
    config = configs[name]
    assert (config.image_size, config.num_train, config.num_validation,
            config.num_test, config.seed) == (64, 4000, 400, 400, 0)
    assert configs[name + "_128"].image_size == 128
    tiny = configs[name + "_tiny"]
    assert (tiny.image_size, tiny.num_train, tiny.num_validation,
            tiny.num_test) == (32, 40, 8, 8)
    assert config.kind == tiny.kind == configs[name + "_128"].kind == name


@pytest.mark.slow
@pytest.mark.parametrize("config_name",
                         ["lidc_like_tiny", "cityscapes_like_tiny",
                          "multiscale_tiny"])
def test_build_and_read(config_name, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = sa.Builder(config=config_name, data_dir=str(tmp_path))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  config = builder.builder_config
  size = config.image_size
  expected = {"train": 40, "validation": 8, "test": 8}
  assert set(builder.info.splits.keys()) == set(expected)
  if config.kind == "lidc_like":
    shapes = {
        "image": ((size, size, 1), np.uint8),
        "masks": ((4, size, size), np.uint8),
        "modes": ((4, size, size), np.uint8),
        "mode_probs": ((4,), np.float32),
        "grader_modes": ((4,), np.int32),
        "id": ((), object),
    }
    assert builder.info.metadata["num_classes"] == 2
    assert list(builder.info.metadata["mode_names"]) == [
        "empty", "tight", "wide", "rare"
    ]
    generate = sa.generate_lidc_like
  elif config.kind == "multiscale":
    shapes = {
        "image": ((size, size, 1), np.uint8),
        "masks": ((4, size, size), np.uint8),
        "modes": ((17, size, size), np.uint8),
        "mode_probs": ((17,), np.float32),
        "grader_modes": ((4,), np.int32),
        "id": ((), object),
    }
    assert builder.info.metadata["num_classes"] == 2
    names = list(builder.info.metadata["mode_names"])
    assert names[:3] == ["absent", "lesion_0000", "lesion_0001"]
    assert names[-1] == "lesion_1111" and len(names) == 17
    generate = sa.generate_multiscale
  else:
    shapes = {
        "image": ((size, size, 3), np.uint8),
        "label": ((size, size), np.uint8),
        "cue": ((size, size), np.uint8),
        "id": ((), object),
    }
    metadata = builder.info.metadata
    assert metadata["num_classes"] == 9
    assert metadata["num_base_classes"] == 6
    assert len(metadata["class_names"]) == 9
    assert metadata["void"] == 255
    assert list(metadata["mode_bit_order"]) == ["sidewalk", "vegetation", "car"]
    np.testing.assert_allclose(
        np.array(metadata["flips"], dtype=np.float64),
        [[1, 6, 8 / 17], [3, 7, 6 / 17], [4, 8, 4 / 17]])
    generate = sa.generate_cityscapes_like
  assert set(builder.info.features.keys()) == set(shapes)

  all_ids = set()
  for split, count in expected.items():
    assert builder.info.splits[split].num_examples == count
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert len(examples) == count
    for example in examples:
      for key, (shape, dtype) in shapes.items():
        value = np.asarray(example[key])
        assert value.shape == shape, key
        if dtype is not object:
          assert value.dtype == dtype, key
    ids = {example["id"].decode() for example in examples}
    assert ids == {f"{split}_{i:06d}" for i in range(count)}
    all_ids |= ids
    # What was stored is exactly what the generator makes for that example.
    stored = next(e for e in examples if e["id"].decode() == f"{split}_000003")
    fresh = generate(sa.example_rng(config.seed, split, 3), size)
    for key, value in fresh.items():
      np.testing.assert_array_equal(stored[key], value, err_msg=key)
  assert len(all_ids) == sum(expected.values())


# -----------------------------------------------------------------------------
# lidc_like.
# -----------------------------------------------------------------------------


def test_lidc_shapes_and_dtypes():
  for size in (32, 64):
    example = sa.generate_lidc_like(sa.example_rng(0, "test", 1), size)
    assert example["image"].shape == (size, size, 1)
    assert example["image"].dtype == np.uint8
    for key in ("masks", "modes"):
      assert example[key].shape == (4, size, size)
      assert example[key].dtype == np.uint8
      assert set(np.unique(example[key])) <= {0, 1}
    assert example["mode_probs"].shape == (4,)
    assert example["mode_probs"].dtype == np.float32
    assert example["grader_modes"].shape == (4,)
    assert example["grader_modes"].dtype == np.int32


def test_lidc_mode_probs_formula():
  # Extremes of the documented formulas.
  np.testing.assert_allclose(
      sa.lidc_mode_probs(0.08, 0.0, 0.06),
      [0.40, 0.56 * 0.85, 0.56 * 0.15, 0.04])
  np.testing.assert_allclose(
      sa.lidc_mode_probs(0.5, 0.25, 0.25),
      [0.04, 0.86 * 0.15, 0.86 * 0.85, 0.10])
  cn, hn, tn = 0.3, 0.6, 0.2
  probs = sa.lidc_mode_probs(0.08 + 0.42 * cn, 0.25 * hn, 0.06 + 0.19 * tn)
  p_rare = 0.04 + 0.06 * tn
  p_empty = 0.04 + 0.36 * (1 - cn)
  rest = 1 - p_rare - p_empty
  np.testing.assert_allclose(
      probs,
      [p_empty, rest * (0.85 - 0.7 * hn), rest * (0.15 + 0.7 * hn), p_rare])


def test_lidc_stored_probs(lidc_examples):
  probs = np.stack([e["mode_probs"] for e in lidc_examples])
  assert probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
  eps = 1e-6
  assert np.all(probs[:, 3] >= 0.04 - eps) and np.all(probs[:, 3] <= 0.10 + eps)
  assert np.all(probs[:, 0] >= 0.04 - eps) and np.all(probs[:, 0] <= 0.40 + eps)
  assert np.all(probs[:, 1] >= 0.0) and np.all(probs[:, 2] >= 0.0)
  rest = 1.0 - probs[:, 0] - probs[:, 3]
  wide_share = probs[:, 2] / rest
  assert np.all(wide_share >= 0.15 - eps) and np.all(wide_share <= 0.85 + eps)
  # The parameters are spread over their ranges.
  assert probs[:, 0].min() < 0.06 and probs[:, 0].max() > 0.38
  assert probs[:, 3].min() < 0.045 and probs[:, 3].max() > 0.095


@pytest.mark.slow
def test_lidc_grader_frequencies_match_probs(lidc_examples):
  probs = np.stack([e["mode_probs"] for e in lidc_examples]).astype(np.float64)
  drawn = np.concatenate([e["grader_modes"] for e in lidc_examples])
  counts = np.bincount(drawn, minlength=4)
  expected = sa.NUM_GRADERS * probs.sum(axis=0)
  # Draws are independent given the probabilities of their example.
  std = np.sqrt(sa.NUM_GRADERS * np.sum(probs * (1.0 - probs), axis=0))
  assert np.all(np.abs(counts - expected) <= 4.0 * std), (counts, expected, std)
  # Chi-square with 3 degrees of freedom: P(chi2 > 21.1) = 1e-4.
  chi2 = np.sum((counts - expected)**2 / expected)
  assert chi2 < 21.1, chi2


def test_lidc_masks_match_modes(lidc_examples):
  for example in lidc_examples[:500]:
    for grader, mode in enumerate(example["grader_modes"]):
      np.testing.assert_array_equal(example["masks"][grader],
                                    example["modes"][mode])


def test_lidc_mode_structure(lidc_examples):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  second_lesions = 0
  for example in lidc_examples[:1000]:
    empty, tight, wide, rare = example["modes"].astype(bool)
    assert not empty.any()
    assert tight.any()
    assert np.all(wide[tight]) and np.all(rare[tight])
    assert np.any(rare & ~wide)  # The tail sticks out of the wide outline.
    border = np.ones_like(wide)
    border[1:-1, 1:-1] = False
    assert not np.any((wide | rare) & border)  # Everything fits.
    second_lesions += ndimage.label(tight)[1] > 1
  # About 40% of the images have a second lesion (most of them fit).
  assert 0.25 < second_lesions / 1000 < 0.45, second_lesions


@pytest.mark.parametrize("size,count", [(32, 3000), (64, 500), (128, 100)])
def test_lidc_modes_are_far_apart(size, count, lidc_examples):
  if size == STAT_SIZE:
    examples = lidc_examples[:count]
  else:
    examples = [
        sa.generate_lidc_like(sa.example_rng(3, "validation", i), size)
        for i in range(count)
    ]
  smallest = 1.0
  for example in examples:
    for a, b in itertools.combinations((1, 2, 3), 2):
      smallest = min(smallest,
                     _iou_distance(example["modes"][a], example["modes"][b]))
  assert smallest >= 0.35, smallest


def test_lidc_image_shows_the_lesion():
  """The core is brighter than its surroundings by about its contrast."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  gaps, contrasts = [], []
  for i in range(100):
    example = sa.generate_lidc_like(sa.example_rng(0, "test", i), 64)
    image = example["image"][..., 0].astype(np.float64) / 255.0
    _, tight, wide, rare = example["modes"].astype(bool)
    lesion = wide | rare
    ring = ndimage.binary_dilation(lesion, iterations=6) & ~(
        ndimage.binary_dilation(lesion, iterations=2))
    gaps.append(image[tight].mean() - image[ring].mean())
    # The contrast c, recovered from p_empty = 0.04 + 0.36 (1 - cn).
    cn = 1.0 - (example["mode_probs"][0] - 0.04) / 0.36
    contrasts.append(0.08 + 0.42 * cn)
  assert min(gaps) > 0.02, min(gaps)
  assert np.corrcoef(gaps, contrasts)[0, 1] > 0.9


# -----------------------------------------------------------------------------
# Determinism.
# -----------------------------------------------------------------------------


def _assert_examples_equal(a, b):
  assert set(a) == set(b)
  for key in a:
    assert a[key].dtype == b[key].dtype
    assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.parametrize("kind", ["lidc_like", "cityscapes_like", "multiscale"])
def test_deterministic(kind):
  generate = {"lidc_like": sa.generate_lidc_like,
              "cityscapes_like": sa.generate_cityscapes_like,
              "multiscale": sa.generate_multiscale}[kind]
  first = generate(sa.example_rng(7, "validation", 5), 32)
  # Other examples in between do not matter (order independence).
  for index in range(3):
    generate(sa.example_rng(7, "validation", index), 32)
  again = generate(sa.example_rng(7, 1, 5), 32)  # Split given by its code.
  _assert_examples_equal(first, again)
  for other in (sa.example_rng(7, "validation", 6),
                sa.example_rng(7, "train", 5), sa.example_rng(8, "validation",
                                                              5)):
    different = generate(other, 32)
    assert first["image"].tobytes() != different["image"].tobytes()


def test_example_rng_split_codes():
  assert sa.SPLIT_CODES == {"train": 0, "validation": 1, "test": 2}
  for name, code in sa.SPLIT_CODES.items():
    a = sa.example_rng(0, name, 9).integers(1 << 30, size=4)
    b = np.random.default_rng([0, code, 9]).integers(1 << 30, size=4)
    np.testing.assert_array_equal(a, b)


# -----------------------------------------------------------------------------
# cityscapes_like.
# -----------------------------------------------------------------------------


def test_city_shapes_and_values(city_examples):
  for example in city_examples:
    assert example["image"].shape == (64, 64, 3)
    assert example["image"].dtype == np.uint8
    assert example["label"].shape == example["cue"].shape == (64, 64)
    assert example["label"].dtype == example["cue"].dtype == np.uint8
    assert set(np.unique(example["label"])) <= {0, 1, 2, 3, 4, 5, 255}
    assert set(np.unique(example["cue"])) <= {0, 1, 2, 3, 4, 5}
  voids = [np.any(e["label"] == 255) for e in city_examples]
  assert 0.3 < np.mean(voids) < 0.7


def test_city_flip_classes_present(city_examples):
  for example in city_examples:
    for source, _, _ in sa.FLIPS:
      assert np.mean(example["label"] == source) >= 0.02


def test_city_cue_accuracy(city_examples):
  accuracies = []
  for example in city_examples:
    valid = example["label"] != 255
    accuracies.append(
        np.mean(example["cue"][valid] == example["label"][valid]))
  assert 0.8 <= min(accuracies) and max(accuracies) <= 0.97, (
      min(accuracies), max(accuracies))
  assert 0.87 <= np.mean(accuracies) <= 0.93, np.mean(accuracies)


def test_city_tiny_size():
  example = sa.generate_cityscapes_like(sa.example_rng(0, "test", 0), 32)
  assert example["image"].shape == (32, 32, 3)
  for source, _, _ in sa.FLIPS:
    assert np.mean(example["label"] == source) >= 0.02


def test_flip_modes(city_examples):
  label = city_examples[0]["label"].copy()
  label[-1, :] = 255  # Make sure there is void.
  modes, probs = sa.flip_modes(label)
  assert modes.shape == (8, 64, 64) and modes.dtype == np.uint8
  assert probs.shape == (8,) and probs.dtype == np.float64
  np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-12)
  p = np.array([8 / 17, 6 / 17, 4 / 17])
  for mode in range(8):
    bits = [(mode >> 2) & 1, (mode >> 1) & 1, mode & 1]
    np.testing.assert_allclose(
        probs[mode], np.prod(np.where(bits, p, 1 - p)), rtol=1e-12)
    expected = label.copy()
    for bit, (source, target) in zip(bits, [(1, 6), (3, 7), (4, 8)]):
      if bit:
        expected[label == source] = target
    np.testing.assert_array_equal(modes[mode], expected)
    assert np.all(modes[mode][label == 255] == 255)
  # All 8 modes differ from each other.
  for a, b in itertools.combinations(range(8), 2):
    assert not np.array_equal(modes[a], modes[b])
  np.testing.assert_allclose(sa.city_mode_probs(), probs)


# -----------------------------------------------------------------------------
# multiscale.


def test_multiscale_mode_probs_are_a_global_times_independent_local_choices():
  probs = sa.multiscale_mode_probs(0.5, [0.0, 0.25, 0.125, 0.25])
  p_present = 0.35 + 0.6 * (0.5 - 0.08) / (0.5 - 0.08)
  q = np.array([0.1, 0.9, 0.5, 0.9])
  assert probs.shape == (17,)
  assert probs.sum() == pytest.approx(1.0, abs=1e-12)
  assert probs[0] == pytest.approx(1.0 - p_present)
  for index, name in enumerate(sa.multiscale_mode_names()[1:], start=1):
    bits = np.array([int(c) for c in name[len("lesion_"):]])
    want = p_present * np.prod(np.where(bits == 1, q, 1.0 - q))
    assert probs[index] == pytest.approx(want, rel=1e-12), name
  # Marginals: each part is included with q_j given that the lesion is marked.
  bits = sa._part_bits(4)  # pylint: disable=protected-access
  for j in range(4):
    assert probs[1:][bits[:, j] == 1].sum() / p_present == pytest.approx(q[j])


@pytest.mark.parametrize("size", [32, 64])
def test_multiscale_modes_are_the_core_plus_distinct_parts(size):
  for index in range(12):
    example = sa.generate_multiscale(sa.example_rng(0, "test", index), size)
    modes = example["modes"].astype(bool)
    assert modes.shape == (17, size, size)
    assert not modes[0].any()
    core = modes[1]
    assert core.any()
    parts = [modes[1 + (1 << (3 - j))] & ~core for j in range(4)]
    for j, part in enumerate(parts):
      assert part.any(), (index, j)
      for other in parts[j + 1:]:
        assert not (part & other).any()
    for i, name in enumerate(sa.multiscale_mode_names()[1:], start=1):
      want = core.copy()
      for j, bit in enumerate(name[len("lesion_"):]):
        if bit == "1":
          want |= parts[j]
      np.testing.assert_array_equal(modes[i], want, err_msg=name)
    assert len({m.tobytes() for m in example["modes"]}) == 17
    np.testing.assert_array_equal(example["masks"],
                                  example["modes"][example["grader_modes"]])
    assert example["mode_probs"].dtype == np.float32
    assert abs(float(example["mode_probs"].sum()) - 1.0) < 1e-6
    # A 2-pixel margin to the border.
    margin = int(sa.BORDER_MARGIN * size / 64)
    assert not modes[-1][:margin].any() and not modes[-1][-margin:].any()
    assert not modes[-1][:, :margin].any() and not modes[-1][:, -margin:].any()


def test_multiscale_probabilities_follow_what_the_image_shows():
  """Brighter parts are marked more often: the image carries the local choices."""
  rows = []
  for index in range(40):
    example = sa.generate_multiscale(sa.example_rng(0, "train", index), 64)
    image = example["image"][..., 0].astype(np.float64)
    modes = example["modes"].astype(bool)
    bits = sa._part_bits(4)  # pylint: disable=protected-access
    p_present = 1.0 - example["mode_probs"][0]
    for j in range(4):
      part = modes[1 + (1 << (3 - j))] & ~modes[1]
      q = example["mode_probs"][1:][bits[:, j] == 1].sum() / p_present
      rows.append((image[part].mean(), q))
  rows = np.array(rows)
  assert np.corrcoef(rows[:, 0], rows[:, 1])[0, 1] > 0.8


def test_multiscale_modes_work_with_the_mode_statistics():
  """A sampler that draws the exact modes scores near the perfect-sampler floor."""
  metrics = pytest.importorskip("tf_prob_unet.metrics")
  examples = [sa.generate_multiscale(sa.example_rng(0, "test", i), 32)
              for i in range(16)]
  modes = np.stack([e["modes"] for e in examples]).astype(np.int64)
  probs = np.stack([e["mode_probs"] for e in examples]).astype(np.float64)
  rng = np.random.default_rng(0)
  picks = np.stack([rng.choice(17, size=16, p=p / p.sum()) for p in probs])
  samples = np.take_along_axis(modes, picks[:, :, None, None], axis=1)
  stats = metrics.mode_statistics(samples, modes, probs, num_samples=(16,))
  assert len(stats["mode_freq_true"]) == 17
  assert stats["mode_tv_per_image"]["16"] < stats["mode_tv_per_image_floor"]["16"] + 0.1
  # The sampled modes are recovered exactly by the nearest-mode assignment.
  np.testing.assert_array_equal(metrics.assign_modes(samples, modes, probs), picks)
