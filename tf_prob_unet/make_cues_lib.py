"""Cues without an external network, flag-free: `run(MakeCuesConfig)`.

A run trained by this package on a flip dataset without a cue (e.g. `--model=unet` on
`cityscapes_ambiguous/rgb`) labels every image of the chosen splits; each label map is written as
`<output_dir>/<split>/<city>/<id>_cue_trainIds.png`, the PNG layout the `cue` config of
`datasets/cityscapes_ambiguous` reads from `<manual_dir>/cues/`.

The training labels are flipped (the input pipeline flips them per step), so the network splits
each switchable class between the class and its synonym; the cue folds them back: the softmax
probability of each synonym class is added to its class before the arg-max over the base classes.
At the optimum of the cross-entropy this is the prediction of a network trained on the unflipped
labels.
"""

import dataclasses
import io
import os
import sys
import time

import numpy as np
from PIL import Image
import tensorflow as tf

from tf_prob_unet import input_pipeline
from tf_prob_unet import run_dir

CUE_SUFFIX = "_cue_trainIds.png"


@dataclasses.dataclass
class MakeCuesConfig:
  """Settings. Field names are the make_cues binary's flag names."""
  model_dir: str = ""
  output_dir: str = ""
  data_dir: str = ""
  splits: tuple = ("train", "validation", "test")
  batch_size: int = 8

  def validate(self):
    if not self.model_dir:
      raise ValueError("--model_dir: expected a training run directory, found an empty string.")
    if not self.output_dir:
      raise ValueError("--output_dir: expected a directory (e.g. MANUAL_DIR/cues), found an "
                       "empty string.")
    if self.batch_size <= 0:
      raise ValueError(f"--batch_size: expected a positive integer, found {self.batch_size}.")


def fold_synonyms(logits, flips, num_base_classes):
  """The base-class arg-max of the softmax with every synonym's probability added to its class.

  Args:
    logits: `[..., K]` logits over the base classes and the synonym classes.
    flips: `((class, synonym, p), ...)`.
    num_base_classes: the first classes of the K, the ones a cue may hold.

  Returns:
    `[...]` int32 labels in `[0, num_base_classes)`.
  """
  probs = tf.nn.softmax(logits, axis=-1)
  folded = probs[..., :num_base_classes]
  for source, synonym, _ in flips:
    folded += tf.one_hot(source, num_base_classes, dtype=probs.dtype) * probs[..., synonym:
                                                                              synonym + 1]
  return tf.argmax(folded, axis=-1, output_type=tf.int32)


def _png(label):
  buffer = io.BytesIO()
  Image.fromarray(label).save(buffer, "PNG")
  return buffer.getvalue()


def run(config, log=print):
  """Writes one cue PNG per image of `config.splits`; returns `{split: images written}`."""
  config.validate()
  model, info = run_dir.load_model(config.model_dir)
  builder = input_pipeline.get_builder(info["dataset"], config.data_dir or info.get("data_dir")
                                       or None)
  spec = input_pipeline.dataset_spec(builder)
  if spec.kind != "flips" or spec.has_cue:
    raise ValueError(f"--model_dir: expected a run trained on a flip dataset without a cue (e.g. "
                     f"cityscapes_ambiguous/rgb), found one trained on {info['dataset']}.")
  for split in config.splits:
    if split not in builder.info.splits:
      raise ValueError(f"--splits: expected splits of {info['dataset']} "
                       f"({sorted(builder.info.splits)}), found {split!r}.")
  predict = tf.function(lambda x: fold_synonyms(model(x, training=False), spec.flips,
                                                spec.num_base_classes))
  written = {}
  for split in config.splits:
    ds = builder.as_dataset(split=split, shuffle_files=False).map(
        lambda ex: (input_pipeline.model_inputs(ex, spec), ex["id"]))
    total, count, start = builder.info.splits[split].num_examples, 0, time.time()
    for images, ids in ds.batch(config.batch_size).prefetch(1):
      for label, frame_id in zip(predict(images).numpy().astype(np.uint8), ids.numpy()):
        frame_id = frame_id.decode()
        city = frame_id.split("_")[0]
        run_dir.atomic_write(
            os.path.join(config.output_dir, split, city, frame_id + CUE_SUFFIX), _png(label))
        count += 1
      sys.stderr.write(f"\r  {split}: {count}/{total} images, {time.time() - start:.0f}s")
    sys.stderr.write("\n")
    written[split] = count
  log(f"Wrote {sum(written.values())} cues ({', '.join(f'{k} {v}' for k, v in written.items())}) "
      f"to {config.output_dir}")
  return written
