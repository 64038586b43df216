"""A TFDS builder for a user's own 2-D multi-rater data, made for one import (see user_data_lib).

`make_builder(name, scan, data_dir)` returns a builder named `name` whose features follow what
`user_data_lib.scan` found (R raters, K classes, H x W x C images). Once prepared, the dataset is
read back by name from its `data_dir` without this module (TFDS reads the stored features and
metadata), so `--dataset=NAME --data_dir=DIR` works in every binary.

Features: `image` uint8 `[H, W, C]`, `masks` uint8 `[R, H, W]` in `[0, K)`, `id` (the case key),
`group` (the group id that chose the split). Metadata: `num_classes`, `num_raters`,
`class_values`, `mask_rule`, `source_format`, `channels`.
"""

import types

import numpy as np
import tensorflow_datasets as tfds

from . import user_data_lib

VERSION = "1.0.0"


class UserDataBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The generic builder; `make_builder` makes a subclass per imported dataset."""

  name = "user_data"
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Imported with tf_prob_unet.import_data."}
  pkg_dir_path = tfds.core.Path(__file__).parent
  SCAN = None  # A user_data_lib.Scan, set by make_builder.

  def _info(self) -> tfds.core.DatasetInfo:
    scan = self.SCAN
    shape = (scan.height, scan.width)
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"A user's multi-rater data imported from {scan.options.format} "
                     f"{scan.options.source}: {scan.summary()}"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape + (scan.channels,), dtype=np.uint8),
            "masks": tfds.features.Tensor(shape=(scan.num_raters,) + shape, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "id": tfds.features.Text(),
            "group": tfds.features.Text(),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(
            num_classes=scan.num_classes, num_raters=scan.num_raters,
            class_values=list(scan.mask_rule.class_values) or None,
            mask_rule=scan.mask_rule.describe(), source_format=scan.options.format,
            channels=scan.channels),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: user_data_lib.examples(self.SCAN, cases)
            for split, cases in self.SCAN.splits.items()}

  def _generate_examples(self):
    raise NotImplementedError("_split_generators yields the examples.")


def make_builder(name, scan, data_dir):
  """A builder named `name` for the cases of `scan` (an unregistered subclass)."""
  cls = types.new_class(f"UserData_{name}", (UserDataBuilder,), {"skip_registration": True},
                        lambda ns: ns.update(name=name, SCAN=scan, __module__=__name__))
  return cls(data_dir=data_dir)
