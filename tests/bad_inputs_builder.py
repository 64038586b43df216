"""A tiny TFDS builder whose configs break one input rule each (used by test_distributed.py).

Copied by the tests to `<tmp>/bad_inputs/bad_inputs_dataset_builder.py` and found through the
`TF_PROB_UNET_DATASETS_DIR` variable; it is never imported from here.
"""

import numpy as np
import tensorflow_datasets as tfds

SIZE = 32
BAD_LABEL = 7
BAD_EXAMPLE = 3


class BadInputsConfig(tfds.core.BuilderConfig):
  """`image_rank`: [H, W] images; `image_dtype`: float32 images; `labels`: a mask value of 7."""


class Builder(tfds.core.GeneratorBasedBuilder):
  """Eight training and four validation/test images of a binary grader dataset."""

  name = "bad_inputs"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [BadInputsConfig(name=n) for n in ("image_rank", "image_dtype", "labels")]
  pkg_dir_path = tfds.core.Path(__file__).parent

  def _info(self):
    name = self.builder_config.name
    if name == "image_rank":
      image = tfds.features.Tensor(shape=(SIZE, SIZE), dtype=np.uint8)
    elif name == "image_dtype":
      image = tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.float32)
    else:
      image = tfds.features.Image(shape=(SIZE, SIZE, 1), dtype=np.uint8)
    features = tfds.features.FeaturesDict({
        "image": image,
        "masks": tfds.features.Tensor(shape=(4, SIZE, SIZE), dtype=np.uint8),
        "id": tfds.features.Text(),
    })
    return self.dataset_info_from_configs(features=features,
                                          metadata=tfds.core.MetadataDict(num_classes=2))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in (("train", 8), ("validation", 4), ("test", 4))}

  def _generate_examples(self, split, num):
    name = self.builder_config.name
    for i in range(num):
      rng = np.random.default_rng(i)
      masks = (rng.random((4, SIZE, SIZE)) > 0.5).astype(np.uint8)
      if name == "labels" and i == BAD_EXAMPLE:
        masks[1, 5, 5] = BAD_LABEL
      image = rng.integers(0, 255, (SIZE, SIZE, 1)).astype(np.uint8)
      if name == "image_rank":
        image = image[..., 0]
      elif name == "image_dtype":
        image = image.astype(np.float32)
      yield f"{split}_{i}", {"image": image, "masks": masks, "id": f"{split}_{i}"}
