"""Shared test setup: quiet TensorFlow, deterministic seeds, tiny models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the kernels the binaries use (runtime.py)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import shutil  # noqa: E402

from tf_prob_unet import native  # noqa: E402

TINY_CHANNELS = (4, 8, 16)

# Tests that need the native kernels skip, saying why, only where they cannot exist (a CPU without
# AVX2/FMA, or no C++ compiler); on a supported CPU with a compiler a failed build fails them.
requires_native = pytest.mark.skipif(
    not native.cpu_supported() or shutil.which(native._compiler()) is None,
    reason="native kernels need an x86-64 CPU with AVX2/FMA and a C++ compiler ($CXX)")


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


EXPORT_MODEL_KWARGS = dict(num_classes=2, channels=TINY_CHANNELS, convs_per_block=1,
                           latent_dim=3)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
  """A tiny Probabilistic U-Net run (32x32x1, 2 classes) and its SavedModel export.

  Returns a dict: `model_dir`, `model` (the Keras model as restored by `run_dir.load_model`),
  `saved_model` (the version directory) and `export_base`.
  """
  from tests.helpers import write_model_dir
  from tf_prob_unet import export_lib, run_dir

  keras.utils.set_random_seed(7)
  root = tmp_path_factory.mktemp("tiny_export")
  model_dir, _ = write_model_dir(root / "run", input_shape=(32, 32, 1), **EXPORT_MODEL_KWARGS)
  base = str(root / "export")
  saved_model = export_lib.export_saved_model(model_dir, base)
  model, _ = run_dir.load_model(model_dir)
  return {"model_dir": model_dir, "model": model, "saved_model": saved_model,
          "export_base": base}


def uint8_images(batch=2, size=32, channels=1, seed=0):
  """Fixed uint8 images `[B, S, S, C]` and their model input (`/ 255`, float32)."""
  images, _ = tiny_batch(batch, size, channels, seed=seed)
  raw = np.round(images * 255).astype(np.uint8)
  return raw, raw.astype(np.float32) / 255.0
