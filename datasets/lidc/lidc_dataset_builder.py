"""LIDC-IDRI lesion crops with the masks of four radiologists, from any of its common layouts.

One builder config per layout, one reader module per config (`<config>_reader.py`, each with
`DESCRIPTION`, `MANUAL_INSTRUCTIONS` and `split_generators(manual_dir)`); all produce the same
features (see `lidc_common`). Build with
`tfds build datasets/lidc --config=slices --manual_dir=DIR --data_dir=OUT`.
"""

import numpy as np
import tensorflow_datasets as tfds

from . import deepmind_reader
from . import lidc_common
from . import pickle_reader
from . import raw_reader
from . import slices_reader

# Config name -> reader module. A new layout is one reader module and one entry here.
READERS = {
    "slices": slices_reader,
    "deepmind": deepmind_reader,
    "pickle": pickle_reader,
    "raw": raw_reader,  # An Apache Beam pipeline (one element per CT series).
}


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for lidc (manual download)."""

  name = "lidc"  # Explicit, so the module can be loaded under any module name.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs slices, deepmind, pickle."}
  BUILDER_CONFIGS = [
      raw_reader.RawConfig(name=name, description=reader.DESCRIPTION) if reader is raw_reader
      else tfds.core.BuilderConfig(name=name, description=reader.DESCRIPTION)
      for name, reader in READERS.items()]
  DEFAULT_CONFIG_NAME = "slices"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the files of one layout in the manual dir (`--manual_dir`, default "
      "<data_dir>/downloads/manual) and build the matching config:\n\n" +
      "\n\n".join(reader.MANUAL_INSTRUCTIONS for reader in READERS.values()))
  # README.md and CITATIONS.bib sit next to this file (found whatever the module's name).
  pkg_dir_path = tfds.core.Path(__file__).parent

  def _info(self) -> tfds.core.DatasetInfo:
    size, readers = lidc_common.IMAGE_SIZE, lidc_common.NUM_READERS
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
    if isinstance(self.builder_config, raw_reader.RawConfig):  # Any raw config, named or not.
      return raw_reader.split_generators(str(dl_manager.manual_dir), counts_dir=self.data_dir,
                                         options=self.builder_config.options)
    return READERS[self.builder_config.name].split_generators(str(dl_manager.manual_dir))

  def _generate_examples(self):
    raise NotImplementedError("The readers' split_generators yield the examples.")
