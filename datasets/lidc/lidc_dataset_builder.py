"""LIDC-IDRI lesion crops with the masks of four radiologists, from any of its common layouts.

One builder config per layout, one reader module per config (`<config>_reader.py`, each with
`DESCRIPTION`, `MANUAL_INSTRUCTIONS` and `split_generators(manual_dir)`); all produce the same
features (see `lidc_common`). Build with
`tfds build datasets/lidc --config=slices --manual_dir=DIR --data_dir=OUT`.

The layouts without a split of their own are split by `lidc_common.patient_split`; what that gives
is on record in `splits/` and every build is checked against it (`split_record`).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from . import deepmind_reader
from . import lidc_common
from . import pickle_reader
from . import raw_reader
from . import slices_reader
from . import split_record

# Config name -> reader module. A new layout is one reader module and one entry here.
READERS = {
    "slices": slices_reader,
    "deepmind": deepmind_reader,
    "pickle": pickle_reader,
    "raw": raw_reader,  # An Apache Beam pipeline (one element per CT series).
}


CPU_CROP_SIZE = 64


@dataclasses.dataclass
class LidcConfig(tfds.core.BuilderConfig):
  """A layout (`reader`, a key of `READERS`) and the image size stored.

  `image_size` < 128 keeps the central `image_size` x `image_size` window of image and masks (a
  cheaper problem for CPU training: the crops are centred on the lesion).
  """
  reader: str = "slices"
  image_size: int = lidc_common.IMAGE_SIZE


@dataclasses.dataclass
class RawConfig(LidcConfig):
  """A config of crops made from the raw download (`raw_reader`); `options` says how.

  Other resolutions need no code, e.g. `RawConfig(name="raw_1mm", description="...",
  options=raw_reader.RawOptions(spacing_mm=1.0))` passed as `tfds.builder("lidc", config=...)`.
  """
  reader: str = "raw"
  options: raw_reader.RawOptions = raw_reader.RawOptions()


def _configs():
  configs = [LidcConfig(name=name, description=reader.DESCRIPTION, reader=name)
             for name, reader in READERS.items() if reader is not raw_reader]
  configs.append(LidcConfig(
      name=f"slices_{CPU_CROP_SIZE}", reader="slices", image_size=CPU_CROP_SIZE,
      description=(f"The `slices` examples centre-cropped to {CPU_CROP_SIZE}x{CPU_CROP_SIZE} "
                   f"(same ids and splits): the data of the CPU training recipe.")))
  configs.append(RawConfig(name="raw", description=raw_reader.DESCRIPTION))
  return configs


def crop_example(example, size):
  """The example with its image and masks cut to the central `size` x `size` window."""
  if size == lidc_common.IMAGE_SIZE:
    return example
  name = example["id"]
  return dict(example,
              image=lidc_common.center_crop(example["image"], size, name),
              masks=lidc_common.center_crop(example["masks"].transpose(1, 2, 0), size,
                                            name).transpose(2, 0, 1))


def _cropped(examples, size):
  for key, example in examples:
    yield key, crop_example(example, size)


def _beam_cropped(transform, split, size):
  """`_cropped` for a Beam `PTransform` of (key, example)."""
  if size == lidc_common.IMAGE_SIZE:
    return transform
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  return transform | f"CentreCrop_{split}" >> beam.MapTuple(
      lambda key, example: (key, crop_example(example, size)))


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for lidc (manual download)."""

  name = "lidc"  # Explicit, so the module can be loaded under any module name.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs slices, deepmind, pickle, slices_64, raw."}
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "slices"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the files of one layout in the manual dir (`--manual_dir`, default "
      "<data_dir>/downloads/manual) and build the matching config:\n\n" +
      "\n\n".join(reader.MANUAL_INSTRUCTIONS for reader in READERS.values()))
  # README.md and CITATIONS.bib sit next to this file (found whatever the module's name).
  pkg_dir_path = tfds.core.Path(__file__).parent

  def _info(self) -> tfds.core.DatasetInfo:
    size, readers = self.builder_config.image_size, lidc_common.NUM_READERS
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8),
            "masks": tfds.features.Tensor(shape=(readers, size, size), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "patient_id": tfds.features.Text(),
            "lesion_id": tfds.features.Text(),
            "slice_id": tfds.features.Text(),
            "id": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX",
        metadata=tfds.core.MetadataDict(num_classes=2, num_readers=readers),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    # Each split is checked against the recorded split of its layout before it is finalised;
    # its patients' counts go to `patients-<split>.json` for `_download_and_prepare`.
    if isinstance(config, RawConfig):  # Beam PTransforms, one element per CT series.
      generators = raw_reader.split_generators(str(dl_manager.manual_dir),
                                               counts_dir=self.data_dir, options=config.options)
      raw_reader.pickle_by_value(split_record)
      return {split: (_beam_cropped(transform, split, config.image_size)
                      | f"Record_{split}" >> split_record.beam_counted(config.reader, split,
                                                                       self.data_dir))
              for split, transform in generators.items()}
    generators = READERS[config.reader].split_generators(str(dl_manager.manual_dir))
    return {split: split_record.counted(_cropped(examples, config.image_size), config.reader,
                                        split, self.data_dir)
            for split, examples in generators.items()}

  def _download_and_prepare(self, dl_manager, download_config):
    """Writes the splits, then checks them together against the record (`check_all`)."""
    super()._download_and_prepare(dl_manager, download_config)
    split_record.check_all(self.builder_config.reader, split_record.read_observed(self.data_dir))

  def _generate_examples(self):
    raise NotImplementedError("The readers' split_generators yield the examples.")
