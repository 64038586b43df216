"""HPU-Net export: SavedModel signatures and the TFLite model equal the Keras model."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import uint8_images
from tests.helpers import write_model_dir
from tests.test_export import (SAVED_MODEL_TOL, TFLITE_TOL, _assert_same_labels,
                               _keras_noise_outputs)
from tests.test_hprob_unet import TINY
from tf_prob_unet import export_lib, run_dir, sample_lib

KWARGS = dict(num_classes=2, **{k: list(v) if isinstance(v, tuple) else v
                                for k, v in TINY.items()})
NOISE_DIM = 4 + 32 + 64  # 2x2x1 + 4x4x2 + 8x8x1 at 32x32


@pytest.fixture(scope="module")
def hpu_export(tmp_path_factory):
  keras.utils.set_random_seed(11)
  root = tmp_path_factory.mktemp("hpu_export")
  model_dir, _ = write_model_dir(root / "run", model_name="hprob_unet", input_shape=(32, 32, 1),
                                 **KWARGS)
  saved_model = export_lib.export_saved_model(model_dir, str(root / "export"), "hpu")
  model, _ = run_dir.load_model(model_dir)
  return {"model_dir": model_dir, "model": model, "saved_model": saved_model, "root": root}


@pytest.mark.slow
def test_signatures_and_info(hpu_export):
  loaded = tf.saved_model.load(hpu_export["saved_model"])
  assert set(loaded.signatures) == set(export_lib.HPU_SIGNATURES) | {"serving_default"}
  info = export_lib.read_info(hpu_export["saved_model"])
  assert info["model"] == "hprob_unet" and info["latent_dim"] == NOISE_DIM
  assert info["latent_shapes"] == [[2, 2, 1], [4, 4, 2], [8, 8, 1]]
  assert info["signatures"] == list(export_lib.HPU_SIGNATURES)
  assert export_lib.noise_size(info, 64, 32) == 2 * NOISE_DIM


@pytest.mark.slow
def test_every_signature_equals_the_keras_model(hpu_export):
  model = hpu_export["model"]
  loaded = tf.saved_model.load(hpu_export["saved_model"])
  raw, x = uint8_images(batch=2)
  noise = np.random.default_rng(5).standard_normal((2, 3, NOISE_DIM)).astype(np.float32)
  ref = _keras_noise_outputs(model, x, noise)
  out = loaded.signatures["sample_with_noise"](images=raw, noise=noise)
  assert np.abs(out["logits"].numpy() - ref["logits"]).max() <= SAVED_MODEL_TOL
  _assert_same_labels(out["labels"], ref["labels"], ref["logits"])
  # Fresh noise of every scale, replayed through the Keras model.
  for name in ("sample", "serving_default"):
    out = loaded.signatures[name](images=raw, num_samples=tf.constant(4))
    drawn = out["noise"].numpy()
    assert drawn.shape == (2, 4, NOISE_DIM)
    ref_drawn = _keras_noise_outputs(model, x, drawn)
    np.testing.assert_allclose(out["probabilities"], ref_drawn["probabilities"],
                               atol=SAVED_MODEL_TOL)
  out = loaded.signatures["predict_mean"](images=raw)
  ref_mean = model(tf.constant(x)).numpy()
  assert np.abs(out["logits"].numpy() - ref_mean).max() <= SAVED_MODEL_TOL
  out = loaded.signatures["uncertainty"](images=raw, num_samples=tf.constant(5))
  ref_u = _keras_noise_outputs(model, x, out["noise"].numpy())
  expected = export_lib.uncertainty(ref_u["labels"], ref_u["probabilities"])
  for key in ("frequencies", "entropy", "variance"):
    np.testing.assert_allclose(out[key], expected[key], atol=SAVED_MODEL_TOL)
  # Other sizes (multiples of 16) take their own noise size.
  big, xb = uint8_images(batch=1, size=48)
  noise48 = np.random.default_rng(6).standard_normal((1, 2, model.noise_dim(48, 48)))
  out = loaded.signatures["sample_with_noise"](images=big, noise=noise48.astype(np.float32))
  ref48 = _keras_noise_outputs(model, xb, noise48.astype(np.float32))
  assert np.abs(out["logits"].numpy() - ref48["logits"]).max() <= SAVED_MODEL_TOL
  # Bad inputs: one line naming them.
  with pytest.raises(tf.errors.InvalidArgumentError, match="noise: expected"):
    loaded.signatures["sample_with_noise"](images=raw, noise=noise[..., :10])
  with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 16"):
    loaded.signatures["predict_mean"](images=uint8_images(batch=1, size=24)[0])


@pytest.mark.slow
def test_sample_binary_keras_and_export_draw_the_same_masks(hpu_export, tmp_path):
  raw, _ = uint8_images(batch=1)
  from PIL import Image
  png = str(tmp_path / "a.png")
  Image.fromarray(raw[0, ..., 0]).save(png)
  outs = {}
  for key, source in (("keras", dict(model_dir=hpu_export["model_dir"])),
                      ("export", dict(saved_model=hpu_export["saved_model"]))):
    config = sample_lib.SampleConfig(image=(png,), num_samples=3,
                                     output_dir=str(tmp_path / key), seed=4, **source)
    outs[key] = sample_lib.run(config, log=lambda *_: None)[0]
  for a, b in zip(outs["keras"]["masks"], outs["export"]["masks"]):
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.slow
def test_tflite_float32_is_builtin_only_and_equals_the_keras_model(hpu_export):
  out_dir = str(hpu_export["root"] / "tflite")
  record = export_lib.convert_tflite(hpu_export["saved_model"], out_dir, batch_size=2,
                                     num_samples=3, quantizations=("float32",))
  assert set(record["files"]) == set(export_lib.HPU_TFLITE_MODELS)
  with open(os.path.join(out_dir, export_lib.TFLITE_INFO_FILE)) as f:
    assert json.load(f)["signatures"]["sample_with_noise"]["inputs"]["noise"][0] == [
        2, 3, NOISE_DIM]
  runner = export_lib.TFLiteRunner(os.path.join(out_dir, record["files"]["sample_with_noise"][
      "float32"]))
  assert not [op for op in runner.op_names() if op.startswith("Flex")]
  raw, x = uint8_images(batch=2, seed=3)
  noise = np.random.default_rng(4).standard_normal((2, 3, NOISE_DIM)).astype(np.float32)
  ref = _keras_noise_outputs(hpu_export["model"], x, noise)
  out = runner(images=raw, noise=noise)
  assert np.abs(out["logits"] - ref["logits"]).max() <= TFLITE_TOL
  _assert_same_labels(out["labels"], ref["labels"], ref["logits"])
