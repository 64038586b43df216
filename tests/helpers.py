"""Test helpers: layer config round trips, weight-preserving rebuilds, running the binaries."""

import os
import subprocess
import sys

import keras
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_config_round_trip(layer):
  """get_config -> from_config gives the same config, and Keras (de)serialisation works."""
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
  assert type(restored) is type(layer)
  assert restored.get_config() == config
  return clone


def assert_allclose(a, b, **kw):
  kw.setdefault("rtol", 1e-6)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


def run_binary(module, *args, timeout=600):
  """Runs `python -m module args...` from the repository root; returns the CompletedProcess."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
