"""What a run directory holds and how to load it, for training, evaluation, export and sampling.

A training run (`train_lib.run`) leaves in its `model_dir`:

- `flags.cfg` (`FLAGS_FILE`): the resolved flags; `--flagfile=model_dir/flags.cfg` replays the run.
- `model_config.json` (`MODEL_CONFIG_FILE`): the model's name, constructor arguments, input
  shape and dataset.
- `checkpoints/` (`CHECKPOINT_DIR`): `tf.train.Checkpoint`s of the model's variables keyed by
  their path below the model (`model_weights`), the step and the optimizer/iterator state.

Files are written atomically (`atomic_write`): a failure never leaves one half-written.
"""

import json
import os
import tempfile

import tensorflow as tf

from tf_prob_unet import models

MODEL_CONFIG_FILE = "model_config.json"
FLAGS_FILE = "flags.cfg"
CHECKPOINT_DIR = "checkpoints"


def atomic_write(path, text):
  """Writes `text` (str or bytes) to `path` through a temporary file and a rename (never
  half-written)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
    f.write(text)
  os.replace(tmp, path)


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


def load_model(model_dir, checkpoint=None):
  """Rebuilds the model of a run and restores its latest (or the given) checkpoint.

  Returns:
    `(model, info)` where `info` is the saved `model_config.json` (model name, constructor
    arguments, input shape, dataset, training step of the checkpoint under `step`).

  Raises:
    ValueError: `model_dir` has no model configuration or no checkpoint.
  """
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
