"""What a run directory holds and how to load it, for training, evaluation, export and sampling.

A training run (`train_lib.run`) leaves in its `model_dir`:

- `flags.cfg` (`FLAGS_FILE`): the resolved flags; `--flagfile=model_dir/flags.cfg` replays the run.
- `model_config.json` (`MODEL_CONFIG_FILE`): the model's name, constructor arguments, input
  shape and dataset.
- `checkpoints/` (`CHECKPOINT_DIR`): `tf.train.Checkpoint`s of the model's variables keyed by
  their path below the model (`model_weights`), the step and the optimizer/iterator state.

Files are written atomically (`atomic_write`): a failure never leaves one half-written.

Every reader of a run (`load_model`: evaluate, sample, export, make_cues) also accepts
`pretrained:NAME`, a model shipped inside the package (`tf_prob_unet.pretrained`), resolved by
`resolve_model_dir`; writers refuse a shipped model's folder (`check_writable`).
"""

import json
import os
import tempfile

import tensorflow as tf

from tf_prob_unet import models

MODEL_CONFIG_FILE = "model_config.json"
FLAGS_FILE = "flags.cfg"
CHECKPOINT_DIR = "checkpoints"
PRETRAINED_PREFIX = "pretrained:"


def atomic_write(path, text):
  """Writes `text` (str or bytes) to `path` through a temporary file and a rename (never
  half-written)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)  # a failed write (e.g. no space left) leaves no temporary file behind
    raise


def model_weights(model):
  """The model's variables keyed by their path below the model (`"unet/encoder/..."`).

  Checkpoints track the model's variables through this dict, by name. (A `tf.train.Checkpoint`
  holding the Keras 3 model object itself restored some layers' weights into the wrong
  variables here, silently; keyed by path it is exact, and a test checks it.) Keras'
  dropout RNG state is not included.
  """
  # Random-number state of Keras' own dropout layers (`seed_generator_<n>/...`) is left out: it
  # is not a weight, and its layer counter differs between processes, so its path is not stable.
  return {v.path.split("/", 1)[1]: v for v in model.variables
          if "seed_generator" not in v.path}


def resolve_model_dir(model_dir, flag="--model_dir"):
  """The directory of a run: `model_dir` itself, or for `pretrained:NAME` the shipped model's
  folder inside the package, after checking its weights against the model card's checksums.

  Raises:
    ValueError: an unknown shipped model (the available names listed) or a checksum mismatch.
  """
  if not str(model_dir).startswith(PRETRAINED_PREFIX):
    return model_dir
  from tf_prob_unet import pretrained  # pylint: disable=g-import-not-at-top
  try:
    path = pretrained.path(str(model_dir)[len(PRETRAINED_PREFIX):])
    pretrained.verify(path)
  except ValueError as e:
    raise ValueError(f"{flag}: {e}") from None
  return path


def check_writable(path, flag):
  """Refuses to write a run or outputs into a shipped model's folder (`pretrained:NAME` or a
  path inside `tf_prob_unet/pretrained/`): shipped models are read-only.

  Raises:
    ValueError: `path` names a shipped model or lies inside the package's pretrained folder.
  """
  from tf_prob_unet import pretrained  # pylint: disable=g-import-not-at-top
  if str(path).startswith(PRETRAINED_PREFIX):
    raise ValueError(f"{flag}: expected a directory to write to, found the shipped model "
                     f"{path!r} (read-only); pass a directory of your own.")
  root = os.path.realpath(pretrained.directory())
  real = os.path.realpath(path)
  if real == root or real.startswith(root + os.sep):
    raise ValueError(f"{flag}: expected a directory to write to outside the package's shipped "
                     f"models ({root}, read-only), found {path!r}.")


def load_model(model_dir, checkpoint=None):
  """Rebuilds the model of a run and restores its latest (or the given) checkpoint.

  `model_dir` is a run directory or `pretrained:NAME` (a model shipped in the package, see
  `resolve_model_dir`).

  Returns:
    `(model, info)` where `info` is the saved `model_config.json` (model name, constructor
    arguments, input shape, dataset, training step of the checkpoint under `step`).

  Raises:
    ValueError: `model_dir` has no model configuration or no checkpoint, or names an unknown
      shipped model.
  """
  model_dir = resolve_model_dir(model_dir)
  config_path = os.path.join(model_dir, MODEL_CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ValueError(f"--model_dir: expected a training run with {MODEL_CONFIG_FILE} in "
                     f"{model_dir!r}, found none.")
  with open(config_path) as f:
    info = json.load(f)
  checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
  if not checkpoint:
    raise ValueError(f"--model_dir: expected a checkpoint under "
                     f"{os.path.join(model_dir, CHECKPOINT_DIR)!r}, found none.")
  model = models.get_model_class(info["model"])(**info["kwargs"])
  model.build((None,) + tuple(info["input_shape"]))
  step = tf.Variable(0, dtype=tf.int64)
  status = tf.train.Checkpoint(weights=model_weights(model), step=step).read(checkpoint)
  status.expect_partial().assert_existing_objects_matched()
  info["step"] = int(step.numpy())
  info["checkpoint"] = checkpoint
  return model, info
