"""Synthetic ambiguous-segmentation dataset with an exactly known distribution.

Three kinds of examples are generated procedurally (no download), each by a module of its own:

* ``lidc_like`` (`lidc_like.py`): a grey-scale "CT patch" with one or two lesions whose
  segmentation is ambiguous; four segmentation modes with probabilities known from what the
  image shows, and four graders drawing i.i.d. from them.
* ``cityscapes_like`` (`cityscapes_like.py`): an RGB street scene with a 6-class label map and a
  black-box-style cue; stochastic label flips give 8 modes with known probabilities.
* ``multiscale`` (`multiscale.py`): a grey-scale lesion ambiguous at two scales, a global choice
  (is it marked at all) and four independent boundary parts: 17 modes with exact probabilities.

All generation logic is pure NumPy/SciPy (`common.py` holds what they share), so it can be used
without TFDS. Each example depends only on ``(seed, split, index)`` through `example_rng`, so
generation is deterministic and order-independent. The builder does not import ``tf_prob_unet``.
"""

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import os
import sys

import numpy as np
import tensorflow_datasets as tfds


def _generator_modules():
  """`(common, lidc_like, multiscale, cityscapes_like)`, imported relative to this module's package.

  Loaded by file path outside a package (e.g. by its test), this folder is registered as a
  package of its own first, so the generators' relative imports work the same way.
  """
  package = __package__
  if not package:
    package = "_synthetic_ambiguous_generators"
    if package not in sys.modules:
      folder = os.path.dirname(os.path.abspath(__file__))
      spec = importlib.machinery.PathFinder.find_spec(os.path.basename(folder),
                                                      [os.path.dirname(folder)])
      spec.name = package
      sys.modules[package] = importlib.util.module_from_spec(spec)
  return tuple(importlib.import_module(f"{package}.{name}")
               for name in ("common", "lidc_like", "multiscale", "cityscapes_like"))


common, lidc_like, multiscale, cityscapes_like = _generator_modules()

# The generators' public names, as this module has always offered them.
SPLIT_CODES = common.SPLIT_CODES
example_rng = common.example_rng
NUM_GRADERS = lidc_like.NUM_GRADERS
LIDC_MODE_NAMES = lidc_like.LIDC_MODE_NAMES
lidc_mode_probs = lidc_like.lidc_mode_probs
generate_lidc_like = lidc_like.generate_lidc_like
BORDER_MARGIN = lidc_like.BORDER_MARGIN
generate_multiscale = multiscale.generate_multiscale
multiscale_mode_names = multiscale.multiscale_mode_names
multiscale_mode_probs = multiscale.multiscale_mode_probs
_part_bits = multiscale._part_bits  # pylint: disable=protected-access
VOID = cityscapes_like.VOID
NUM_BASE_CLASSES = cityscapes_like.NUM_BASE_CLASSES
NUM_CITY_CLASSES = cityscapes_like.NUM_CITY_CLASSES
CITY_CLASS_NAMES = cityscapes_like.CITY_CLASS_NAMES
FLIPS = cityscapes_like.FLIPS
MODE_BIT_ORDER = cityscapes_like.MODE_BIT_ORDER
city_mode_probs = cityscapes_like.city_mode_probs
flip_modes = cityscapes_like.flip_modes
generate_cityscapes_like = cityscapes_like.generate_cityscapes_like

# -----------------------------------------------------------------------------
# TFDS builder.
# -----------------------------------------------------------------------------

KINDS = ("lidc_like", "cityscapes_like", "multiscale")


@dataclasses.dataclass(eq=False)
class SyntheticAmbiguousConfig(tfds.core.BuilderConfig):
  """BuilderConfig of `synthetic_ambiguous`.

  Attributes:
    kind: "lidc_like", "cityscapes_like" or "multiscale".
    image_size: int, image height and width S.
    num_train: number of training examples.
    num_validation: number of validation examples.
    num_test: number of test examples.
    seed: int, base seed; example i of split k uses ``[seed, k, i]``.
  """

  kind: str = "lidc_like"
  image_size: int = 64
  num_train: int = 4000
  num_validation: int = 400
  num_test: int = 400
  seed: int = 0


def _configs():
  """Returns the list of predefined configs."""
  configs = []
  for kind in KINDS:
    configs.append(SyntheticAmbiguousConfig(
        name=kind, description=f"{kind}, 64x64 images.", kind=kind))
    configs.append(SyntheticAmbiguousConfig(
        name=f"{kind}_128", description=f"{kind}, 128x128 images.",
        kind=kind, image_size=128))
    configs.append(SyntheticAmbiguousConfig(
        name=f"{kind}_tiny",
        description=f"{kind}, 32x32 images, 40/8/8 examples (for tests).",
        kind=kind, image_size=32, num_train=40, num_validation=8, num_test=8))
  return configs


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for synthetic_ambiguous."""

  # Explicit, so the module can be loaded under any module name.
  name = "synthetic_ambiguous"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "lidc_like"
  # README.md and CITATIONS.bib sit next to this file. Setting the folder
  # explicitly lets the module be loaded by file path under any module name
  # (TFDS would otherwise look for them in the module's package).
  pkg_dir_path = tfds.core.Path(__file__).parent

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    config = self.builder_config
    size = config.image_size
    zlib = tfds.features.Encoding.ZLIB
    if config.kind in ("lidc_like", "multiscale"):
      mode_names = (LIDC_MODE_NAMES if config.kind == "lidc_like" else
                    multiscale_mode_names())
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8),
          "masks": tfds.features.Tensor(
              shape=(NUM_GRADERS, size, size), dtype=np.uint8, encoding=zlib),
          "modes": tfds.features.Tensor(
              shape=(len(mode_names), size, size), dtype=np.uint8,
              encoding=zlib),
          "mode_probs": tfds.features.Tensor(
              shape=(len(mode_names),), dtype=np.float32),
          "grader_modes": tfds.features.Tensor(
              shape=(NUM_GRADERS,), dtype=np.int32),
          "id": tfds.features.Text(),
      })
      metadata = tfds.core.MetadataDict(
          num_classes=2, mode_names=list(mode_names))
    elif config.kind == "cityscapes_like":
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
          "label": tfds.features.Tensor(
              shape=(size, size), dtype=np.uint8, encoding=zlib),
          "cue": tfds.features.Tensor(
              shape=(size, size), dtype=np.uint8, encoding=zlib),
          "id": tfds.features.Text(),
      })
      metadata = tfds.core.MetadataDict(
          num_classes=NUM_CITY_CLASSES,
          num_base_classes=NUM_BASE_CLASSES,
          class_names=list(CITY_CLASS_NAMES),
          flips=[[source, target, prob] for source, target, prob in FLIPS],
          mode_bit_order=list(MODE_BIT_ORDER),
          void=VOID)
    else:
      raise ValueError(f"Unknown kind: {config.kind!r}")
    return self.dataset_info_from_configs(
        features=features,
        supervised_keys=None,
        homepage="https://arxiv.org/abs/1806.05034",
        metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the split generators (nothing is downloaded)."""
    del dl_manager  # Unused: the data is generated.
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.num_train),
        "validation": self._generate_examples(
            "validation", config.num_validation),
        "test": self._generate_examples("test", config.num_test),
    }

  def _generate_examples(self, split, num_examples):
    """Yields ``(key, example)`` for one split."""
    config = self.builder_config
    generate = {"lidc_like": generate_lidc_like,
                "cityscapes_like": generate_cityscapes_like,
                "multiscale": generate_multiscale}[config.kind]
    for index in range(num_examples):
      rng = example_rng(config.seed, split, index)
      example = generate(rng, config.image_size)
      key = f"{split}_{index:06d}"
      example["id"] = key
      yield key, example
