"""Datasets by name -> tf.data pipelines for training and evaluation.

Two kinds of ambiguous dataset are supported, recognised from their features:
- *grader* datasets (`masks` `[R, H, W]`, e.g. LIDC and the synthetic `lidc_like` config): training
  draws one grader's mask per example per step; evaluation keeps every grader and, where the
  dataset has them, the exact `modes` with `mode_probs`.
- *flip* datasets (`label` `[H, W]` plus `flips` metadata, e.g. Cityscapes and `cityscapes_like`):
  training flips each switchable class independently per example per step; evaluation builds the
  2^F mode label maps with their exact probabilities. A `cue` feature (a black-box label map) is
  one-hot encoded and concatenated to the image channels.

Builders in this repository's `datasets/<name>/` folder are imported by file path (never as a
top-level module called `datasets`); any other name goes to the TFDS registry.
"""

import contextlib
import dataclasses
import importlib.machinery
import importlib.util
import itertools
import os
import re
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_prob_unet import augment as augmentation

REPO_DATASETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "datasets")
DATASETS_DIR_ENV = "TF_PROB_UNET_DATASETS_DIR"
VOID = 255


def _ensure_package(name, path):
  """Registers `path` (a folder without `__init__.py`) as the namespace package `name`."""
  if name not in sys.modules:
    parent, folder = os.path.split(os.path.abspath(path))
    spec = importlib.machinery.PathFinder.find_spec(folder, [parent])
    if spec is None:
      raise ValueError(f"--dataset: expected a builder folder at {path!r}, found none.")
    spec.name = name
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
  return sys.modules[name]


def _local_builder_module(name):
  """Imports `datasets/<name>/<name>_dataset_builder.py`, or returns None if there is none.

  The module is loaded as `tf_prob_unet_datasets.<name>.<name>_dataset_builder` (a package name
  of our own, so TFDS can find the builder's resources and nothing shadows the Hugging Face
  `datasets` package).
  """
  root = os.environ.get(DATASETS_DIR_ENV, REPO_DATASETS_DIR)
  folder = os.path.join(root, name)
  path = os.path.join(folder, f"{name}_dataset_builder.py")
  if not os.path.exists(path):
    return None
  package = f"tf_prob_unet_datasets.{name}"
  module_name = f"{package}.{name}_dataset_builder"
  if module_name in sys.modules:
    return sys.modules[module_name]
  try:  # Already imported under another name (e.g. by its own test): TFDS registers a name once.
    return sys.modules[tfds.builder_cls(name).__module__]
  except (tfds.core.registered.DatasetNotFoundError, KeyError):
    pass
  _ensure_package("tf_prob_unet_datasets", root)
  _ensure_package(package, folder)
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


def get_builder(dataset, data_dir=None, prepare=True):
  """The TFDS builder for `dataset` (`NAME/CONFIG`), prepared if it can be built here.

  Args:
    dataset: `NAME` or `NAME/CONFIG` (e.g. `synthetic_ambiguous/lidc_like`).
    data_dir: TFDS data directory (None: TFDS's default).
    prepare: build the dataset if it is not there yet (generated datasets need nothing else;
      manual-download datasets need their files in `data_dir/downloads/manual`).

  Raises:
    ValueError: the name is unknown, with the names that exist.
  """
  name = dataset.split("/")[0]
  module = _local_builder_module(name)
  # A dataset prepared without code of its own (e.g. by `import_data`) is read from its files.
  imported = os.path.isdir(os.path.join(os.path.expanduser(
      data_dir or tfds.core.constants.DATA_DIR), name))
  if module is None and not imported and name not in tfds.list_builders():
    local = sorted(d for d in os.listdir(REPO_DATASETS_DIR)
                   if os.path.isdir(os.path.join(REPO_DATASETS_DIR, d)))
    raise ValueError(f"--dataset: no builder named {name!r} and no prepared dataset "
                     f"{name!r} in {data_dir or tfds.core.constants.DATA_DIR}; this repository "
                     f"has {local} (or any TFDS dataset name, or a name imported with "
                     f"import_data).")
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    raise ValueError(f"--dataset: {dataset!r} is not a known NAME/CONFIG: {e}") from None
  if prepare:
    builder.download_and_prepare()
  return builder


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the model and the evaluation need to know about a dataset.

  Attributes:
    kind: `"graders"` or `"flips"`.
    num_classes: classes of the model's output (flip datasets count the synonym classes).
    image_shape: `(H, W, C)` of the model input (cue channels included).
    has_modes: whether exact modes and probabilities are available for evaluation.
    flips: `((class, flipped_class, probability), ...)` for flip datasets.
    num_base_classes: classes of the unflipped labels and the cue (flip datasets).
    has_cue: whether a cue channel is concatenated to the image.
    class_ids: classes evaluated by the multi-class IoU (None: the binary convention).
    mode_names: names of the modes, where known.
  """
  kind: str
  num_classes: int
  image_shape: tuple
  has_modes: bool
  flips: tuple = ()
  num_base_classes: int = 0
  has_cue: bool = False
  class_ids: tuple = None
  mode_names: tuple = ()


def dataset_spec(builder):
  """Reads a `DatasetSpec` from a builder's features and metadata."""
  features = builder.info.features
  meta = builder.info.metadata or {}
  check_features(builder)
  image_shape = tuple(features["image"].shape)
  if "masks" in features:
    num_classes = int(meta.get("num_classes", 2))
    return DatasetSpec(kind="graders", num_classes=num_classes, image_shape=image_shape,
                       has_modes="modes" in features, mode_names=tuple(meta.get("mode_names", ())),
                       class_ids=None if num_classes == 2 else tuple(range(num_classes)))
  if "label" in features and "flips" in meta:
    flips = tuple((int(a), int(b), float(p)) for a, b, p in meta["flips"])
    base = int(meta["num_base_classes"])
    has_cue = "cue" in features
    channels = image_shape[-1] + (base if has_cue else 0)
    num_classes = int(meta["num_classes"])
    evaluated = sorted({c for f in flips for c in f[:2]})
    return DatasetSpec(kind="flips", num_classes=num_classes,
                       image_shape=image_shape[:2] + (channels,), has_modes=True, flips=flips,
                       num_base_classes=base, has_cue=has_cue, class_ids=tuple(evaluated),
                       mode_names=tuple(_mode_name(bits, meta) for bits in _mode_bits(len(flips))))
  raise ValueError(f"--dataset: {builder.info.full_name} has neither `masks` (graders) nor "
                   f"`label` with `flips` metadata; found features {sorted(features.keys())}.")


def _feature_error(builder, key, expected, feature):
  return ValueError(f"--dataset: {builder.info.full_name} feature {key!r}: expected {expected}, "
                    f"found {tf.as_dtype(feature.dtype).name} of shape {tuple(feature.shape)}.")


def check_features(builder):
  """Checks the declared features: what the pipeline reads must have the rank and dtype it needs.

  `image` must be uint8 `[H, W, C]` with C >= 1; grader `masks` integer `[R, H, W]`; flip `label`
  and `cue` integer `[H, W]`; all of the same H, W (None is allowed for any dimension).

  Raises:
    ValueError: one line naming the dataset, the feature, what was expected and what was found.
  """
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"--dataset: {builder.info.full_name} has no `image` feature; found "
                     f"{sorted(features.keys())}.")
  image = features["image"]
  if len(image.shape) != 3 or tf.as_dtype(image.dtype) != tf.uint8 or image.shape[-1] == 0:
    raise _feature_error(builder, "image", "uint8 [H, W, C]", image)
  expected = {"masks": 3, "modes": 3, "label": 2, "cue": 2}
  for key, rank in expected.items():
    if key not in features:
      continue
    feature = features[key]
    shape = tuple(feature.shape)
    dims = "[R, H, W]" if rank == 3 else "[H, W]"
    if (len(shape) != rank or not tf.as_dtype(feature.dtype).is_integer
        or any(a is not None and b is not None and a != b
               for a, b in zip(shape[-2:], image.shape[:2]))):
      raise _feature_error(builder, key, f"integer {dims} matching image {tuple(image.shape)}",
                           feature)


_INPUT_ERROR = "tf_prob_unet input error"


def check_label_values(labels, num_classes, field, example_id, ignore=VOID):
  """`labels` (any shape, int) with an assertion that every value is in [0, K) or `ignore`.

  A failing check stops the pipeline with an error that `input_errors` turns into one line
  naming the example, the field and the value found.
  """
  labels = tf.cast(labels, tf.int32)
  bad = tf.logical_and(tf.logical_or(labels < 0, labels >= num_classes), labels != ignore)
  found = tf.reduce_max(tf.where(bad, labels, tf.int32.min))
  example_id = tf.convert_to_tensor(example_id)
  if example_id.dtype != tf.string:
    example_id = tf.strings.as_string(example_id)
  check = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(bad)),
      [_INPUT_ERROR, example_id, field, found, num_classes])
  with tf.control_dependencies([check]):
    return tf.identity(labels)


def _check_example(ex, spec, position):
  """Asserts the label values of one decoded example (graders, modes, flip label, cue)."""
  example_id = ex["id"] if "id" in ex else position
  out = dict(ex)
  for key in ("masks", "modes", "label"):
    if key in ex:
      out[key] = check_label_values(ex[key], spec.num_base_classes or spec.num_classes, key,
                                    example_id)
  if "cue" in ex:
    out["cue"] = check_label_values(ex["cue"], spec.num_base_classes, "cue", example_id)
  return out


def find_bad_record(builder, splits):
  """`(file name, record index, reason)` of the first unreadable record of a prepared dataset.

  Reads every TFRecord file of the builder's `splits` in order (only called after a read
  failed), or returns None if all of them read cleanly.
  """
  paths = [p for split in splits for p in sorted(tf.io.gfile.glob(
      os.path.join(builder.data_dir, f"*-{split}.tfrecord*")))]
  for path in paths:
    index = 0
    try:
      for _ in tf.data.TFRecordDataset(path):
        index += 1
    except tf.errors.DataLossError as e:
      reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", str(e.message)).strip().splitlines()[0]
      return os.path.basename(path), index, reason
  return None


@contextlib.contextmanager
def input_errors(builder, splits):
  """Turns a corrupt or truncated record, or a failed label check, into a one-line ValueError.

  Args:
    builder: the TFDS builder being read (named in the message).
    splits: the splits being read (their files are scanned for the bad record).
  """
  name = builder.info.full_name
  try:
    yield
  except tf.errors.DataLossError:
    bad = find_bad_record(builder, splits)
    where = (f"record {bad[1]} of {bad[0]} is corrupt or truncated ({bad[2]})" if bad else
             "a record is corrupt or truncated")
    raise ValueError(f"--dataset: {name}: {where}; rebuild the dataset (delete "
                     f"{builder.data_dir} and run again).") from None
  except tf.errors.InvalidArgumentError as e:
    message = str(e.message)
    if _INPUT_ERROR not in message:
      raise
    parts = re.findall(r"\[([^\[\]]*)\]", message.split(_INPUT_ERROR, 1)[1])
    example_id, field, found, num_classes = (parts + ["?"] * 4)[:4]
    raise ValueError(f"--dataset: {name} example {example_id}: `{field}` has label value "
                     f"{found}; expected values in [0, {num_classes}) or {VOID} (ignore)."
                     ) from None


def _mode_bits(num_flips):
  """All flip patterns, mode index m = bits read most significant first."""
  return list(itertools.product((0, 1), repeat=num_flips))


def _mode_name(bits, meta):
  names = meta.get("mode_bit_order", [str(i) for i in range(len(bits))])
  flipped = [n for n, b in zip(names, bits) if b]
  return "+".join(flipped) if flipped else "none"


def model_inputs(example, spec):
  """The normalised model input `[H, W, C]` float32 of one decoded example (image in [0, 1])."""
  image = tf.cast(example["image"], tf.float32) / 255.0
  if spec.has_cue:
    cue = tf.one_hot(tf.cast(example["cue"], tf.int32), spec.num_base_classes)
    image = tf.concat([image, cue], axis=-1)
  return image


def _apply_flips(label, flip_bits, flips):
  """Relabels every pixel of each class whose bit is set to its synonym class."""
  label = tf.cast(label, tf.int32)
  out = label
  for (source, target, _), bit in zip(flips, tf.unstack(flip_bits)):
    out = tf.where(tf.logical_and(label == source, bit > 0), target, out)
  return out


def flip_modes(label, flips):
  """The 2^F mode label maps `[2^F, H, W]` int32 and their probabilities `[2^F]` float32."""
  bits = np.array(_mode_bits(len(flips)), np.int32)
  probs = np.prod([np.where(bits[:, i] == 1, p, 1 - p) for i, (_, _, p) in enumerate(flips)], 0)
  modes = tf.stack([_apply_flips(label, tf.constant(b), flips) for b in bits])
  return modes, tf.constant(probs, tf.float32)


def train_dataset(builder, spec, batch_size, seed=0, split="train", shuffle_buffer=1024,
                  augment=False):
  """An endless, seeded training pipeline of `(images [B, H, W, C], labels [B, H, W] int32)`.

  Each example's random choices (which grader, which flips) come from a stateless RNG keyed by
  `(seed, position in the stream)`, so the stream is the same on every run with the same seed.
  With `augment`, image, cue and label(s) are augmented together before the grader draw and the
  flips (`augment.augment_example`), keyed by `(seed, example id, training step)`.

  Args:
    builder: a prepared TFDS builder.
    spec: its `DatasetSpec`.
    batch_size: the global batch size (the strategy splits it).
    seed: seed of the shuffling and of the per-example draws.
    split: TFDS split.
    shuffle_buffer: examples in the shuffle buffer.
    augment: False, True (the reference's Cityscapes augmentation, `augment.REFERENCE`) or an
      `augment.AugmentConfig`.
  """
  augment_config = augmentation.REFERENCE if augment is True else augment or None
  read_config = tfds.ReadConfig(shuffle_seed=seed)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
  keep = ["id", "image", "masks"] if spec.kind == "graders" else ["id", "image", "label"] + (
      ["cue"] if spec.has_cue else [])
  # Every example read is checked, before it waits in the shuffle buffer.
  ds = ds.map(lambda ex: _check_example({k: ex[k] for k in keep if k in ex}, spec, "(no id)"),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.repeat().shuffle(shuffle_buffer, seed=seed).enumerate()

  def draw(index, ex):
    key = tf.stack([tf.cast(seed, tf.int64), index])
    if augment_config is not None:  # Keyed by the example and the step it is drawn for.
      ex = augmentation.augment_example(ex, augmentation.example_key(
          seed, ex.get("id", index), index // batch_size), augment_config)
    image = model_inputs(ex, spec)
    if spec.kind == "graders":
      num = tf.shape(ex["masks"])[0]
      grader = tf.random.stateless_uniform([], key, 0, num, dtype=tf.int32)
      label = tf.cast(ex["masks"][grader], tf.int32)
    else:
      probs = tf.constant([p for _, _, p in spec.flips], tf.float32)
      bits = tf.cast(tf.random.stateless_uniform([len(spec.flips)], key) < probs, tf.int32)
      label = _apply_flips(ex["label"], bits, spec.flips)
    return image, label

  ds = ds.map(draw, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(builder, spec, batch_size, split="test", limit=None):
  """Evaluation batches: dicts with every grader and, where known, the modes.

  Keys: `image` `[B, H, W, C]` float32; `references` `[B, R, H, W]` int32 (grader masks, or the
  modes for flip datasets); `reference_weights` `[B, R]` (uniform for graders, mode probabilities
  for flips); where modes are known, `modes` `[B, M, H, W]` and `mode_probs` `[B, M]`; for flip
  datasets `label` `[B, H, W]` (unflipped); `id` `[B]` strings.
  """
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if limit:
    ds = ds.take(limit)

  def convert(position, ex):
    ex = _check_example(ex, spec, position)
    out = {"image": model_inputs(ex, spec), "id": ex["id"] if "id" in ex else
           tf.strings.as_string(position)}
    if spec.kind == "graders":
      masks = tf.cast(ex["masks"], tf.int32)
      out["references"] = masks
      out["reference_weights"] = tf.fill([tf.shape(masks)[0]], 1.0 / tf.cast(
          tf.shape(masks)[0], tf.float32))
      if spec.has_modes:
        out["modes"] = tf.cast(ex["modes"], tf.int32)
        out["mode_probs"] = tf.cast(ex["mode_probs"], tf.float32)
    else:
      modes, probs = flip_modes(ex["label"], spec.flips)
      out.update(references=modes, reference_weights=probs, modes=modes, mode_probs=probs,
                 label=tf.cast(ex["label"], tf.int32))
    return out

  ds = ds.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
