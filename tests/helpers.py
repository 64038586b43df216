"""Test helpers: layer config round trips and weight-preserving rebuilds."""

import keras
import numpy as np


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
