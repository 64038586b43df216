"""Shared test setup: quiet TensorFlow, deterministic seeds, tiny models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the kernels the binaries use (runtime.py)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_CHANNELS = (4, 8, 16)


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(1234)
  yield


def tiny_batch(batch=4, size=32, channels=1, num_classes=2, seed=0):
  """A fixed random `(images [B, S, S, C] float32, labels [B, S, S] int32)` batch."""
  rng = np.random.default_rng(seed)
  images = rng.random((batch, size, size, channels), dtype=np.float32)
  labels = rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)
  return images, labels
