"""Test helpers: layer config round trips, weight-preserving rebuilds, running the binaries."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from tf_prob_unet import models, run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loss_gradients(model, images, labels):
  """`(trainable variables, their gradients)` of `model.loss_terms(...)["loss"]` on a batch."""
  with tf.GradientTape() as tape:
    loss = model.loss_terms(images, labels, tf.range(len(images)))["loss"]
  return model.trainable_variables, tape.gradient(loss, model.trainable_variables)


def assert_config_round_trip(layer):
  """get_config -> from_config gives the same config, and Keras (de)serialisation works."""
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
  assert type(restored) is type(layer)
  assert restored.get_config() == config
  return clone


def assert_keras_file_round_trip(model, path):
  """Saves `model` to the `.keras` file `path` and loads it back: same class and config.

  Returns:
    The loaded model.
  """
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
  return loaded


def assert_allclose(a, b, **kw):
  kw.setdefault("rtol", 1e-6)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


def run_binary(module, *args, timeout=600):
  """Runs `python -m module args...` from the repository root; returns the CompletedProcess."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)

def write_model_dir(path, model_name="prob_unet", input_shape=(32, 32, 1), step=3, **kwargs):
  """A training-run directory as `train_lib.run` leaves it, without a dataset or training.

  Builds `model_name` with `kwargs` (initial weights) and writes `model_config.json` and a
  checkpoint in `run_dir`'s format (variables keyed by path, plus the step), so that
  `run_dir.load_model(path)` restores it.

  Returns:
    `(model_dir, model)`.
  """
  model = models.get_model_class(model_name)(**kwargs)
  model.build((None,) + tuple(input_shape))
  os.makedirs(path, exist_ok=True)
  config = {"model": model_name, "kwargs": kwargs, "input_shape": list(input_shape),
            "dataset": "none", "data_dir": ""}
  run_dir.atomic_write(os.path.join(path, run_dir.MODEL_CONFIG_FILE), json.dumps(config))
  checkpoint = tf.train.Checkpoint(weights=run_dir.model_weights(model),
                                   step=tf.Variable(step, dtype=tf.int64))
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(path, run_dir.CHECKPOINT_DIR), max_to_keep=1)
  manager.save(checkpoint_number=step)
  return str(path), model
