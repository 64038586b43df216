"""Export: SavedModel signatures for TF Serving and TFLite models, parity with the Keras model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import EXPORT_MODEL_KWARGS, TINY_CHANNELS, uint8_images
from tests.helpers import write_model_dir
from tf_prob_unet import export_lib
from tf_prob_unet.models import ProbUNet, SegmentationModel, common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODEL_TOL = 1e-4
TFLITE_TOL = 1e-3


def _keras_noise_outputs(model, x, noise):
  logits = model.sample_from_noise(tf.constant(x), tf.constant(noise))
  return {k: v.numpy() for k, v in export_lib.class_outputs(logits).items()}


def _assert_same_labels(labels, ref_labels, logits):
  # Labels must agree wherever the two largest logits are not within the tolerance (a tie can
  # flip either way).
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = (top2[..., 1] - top2[..., 0]) > 1e-3
  np.testing.assert_array_equal(np.asarray(labels)[clear], np.asarray(ref_labels)[clear])
  assert clear.mean() > 0.9


def _iou(a, b):
  a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# --- the graph pieces, without exporting ----------------------------------------------------

def test_sample_from_noise_is_the_core_of_seeded_sample():
  model = ProbUNet(num_classes=3, channels=TINY_CHANNELS, convs_per_block=1)
  model.build((None, 32, 32, 2))
  _, x = uint8_images(channels=2)
  seed = tf.constant([3, 4], tf.int64)
  labels, logits = model.sample(x, 5, seed=seed, return_logits=True)
  noise = common.normal_noise([2, 5, model.latent_dim], seed)
  np.testing.assert_allclose(model.sample_from_noise(x, noise).numpy(), logits.numpy(),
                             atol=1e-6)
  np.testing.assert_array_equal(model.sample_from_noise(x, noise, labels_only=True), labels)


def test_encoder_then_combiner_equals_sample_from_noise():
  model = ProbUNet(num_classes=2, channels=TINY_CHANNELS, convs_per_block=1)
  model.build((None, 32, 32, 1))
  _, x = uint8_images()
  noise = np.random.default_rng(1).standard_normal((2, 3, model.latent_dim)).astype(np.float32)
  enc = export_lib.encoder_outputs(model, x)
  per_sample = [export_lib.combiner_logits(
      model, enc["features"], enc["prior_mean"] + enc["prior_scale"] * noise[:, j])
      for j in range(3)]
  np.testing.assert_allclose(np.stack(per_sample, axis=1),
                             model.sample_from_noise(x, noise).numpy(), atol=1e-5)


def test_uncertainty_frequencies_entropy_variance():
  # 4 samples of a 1x2 image, 2 classes: pixel 0 always class 1, pixel 1 split 2 / 2.
  labels = np.array([[[[1, 0]], [[1, 1]], [[1, 0]], [[1, 1]]]])            # [1, 4, 1, 2]
  p1 = np.array([[[[0.9, 0.2]], [[0.7, 0.8]], [[0.9, 0.4]], [[0.7, 0.6]]]])
  probs = np.stack([1 - p1, p1], axis=-1).astype(np.float32)               # [1, 4, 1, 2, 2]
  out = export_lib.uncertainty(labels, probs)
  np.testing.assert_allclose(out["frequencies"][0, 0], [[0, 1], [0.5, 0.5]])
  np.testing.assert_allclose(out["entropy"][0, 0], [0.0, np.log(2)], atol=1e-6)
  np.testing.assert_allclose(out["variance"][0, 0, :, 1], [0.01, 0.05], atol=1e-6)
  np.testing.assert_allclose(out["variance"][0, 0, :, 0], out["variance"][0, 0, :, 1], atol=1e-6)


def test_preprocess_scales_and_refuses_wrong_rank_and_channels():
  fn = tf.function(lambda x: export_lib.preprocess(x, 1),
                   input_signature=[tf.TensorSpec(None, tf.uint8)])
  raw, x = uint8_images()
  np.testing.assert_allclose(fn(raw).numpy(), x)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"images: expected uint8 images "
                     r"\[batch, height, width, 1\], found another channel count"):
    fn(np.zeros((1, 32, 32, 3), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"images: expected uint8 images "
                     r"\[batch, height, width, 1\], found another rank"):
    fn(np.zeros((32, 32, 1), np.uint8))
  with pytest.raises(ValueError, match="images: expected uint8 pixel values, found float32"):
    export_lib.preprocess(x, 1)


def test_export_refuses_a_run_without_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="--model_dir: expected a training run with "
                     "model_config.json"):
    export_lib.export_saved_model(str(tmp_path / "empty"), str(tmp_path / "export"))
  model_dir, _ = write_model_dir(tmp_path / "run", **EXPORT_MODEL_KWARGS)
  for name in os.listdir(os.path.join(model_dir, "checkpoints")):
    os.remove(os.path.join(model_dir, "checkpoints", name))
  with pytest.raises(ValueError, match="--model_dir: expected a checkpoint under"):
    export_lib.export_saved_model(model_dir, str(tmp_path / "export"))
  assert not (tmp_path / "export").exists()  # nothing half-written


def test_export_refuses_an_existing_version_and_bad_names(tmp_path):
  version = tmp_path / "export" / "prob_unet" / "3"
  version.mkdir(parents=True)
  (version / "saved_model.pb").write_text("keep me")
  with pytest.raises(ValueError, match=r"--version: expected a new or empty directory, found a "
                     r"non-empty .*3.* \(pass --overwrite"):
    export_lib.export_saved_model(str(tmp_path / "run"), str(tmp_path / "export"), version=3)
  assert (version / "saved_model.pb").read_text() == "keep me"
  with pytest.raises(ValueError, match="--model_name: expected"):
    export_lib.export_saved_model(str(tmp_path / "run"), str(tmp_path / "export"), "a/b")
  with pytest.raises(ValueError, match="--version: expected a positive integer, found 0"):
    export_lib.export_saved_model(str(tmp_path / "run"), str(tmp_path / "export"), version=0)


def test_export_refuses_models_without_a_latent_prior(tmp_path):
  class Deterministic(SegmentationModel):
    pass
  with pytest.raises(ValueError,
                     match="expected a prob_unet or hprob_unet run .* found model 'other'"):
    export_lib.check_exportable(Deterministic(), "other")
  model_dir, _ = write_model_dir(tmp_path / "unet", "unet", num_classes=2,
                                 channels=TINY_CHANNELS, convs_per_block=1)
  with pytest.raises(ValueError, match="--model_dir: expected a prob_unet or hprob_unet run .* "
                     "found model 'unet'"):
    export_lib.export_saved_model(model_dir, str(tmp_path / "export"))
  assert not os.path.exists(tmp_path / "export" / "prob_unet" / "1")


def test_tflite_refuses_what_is_not_an_export(tmp_path):
  with pytest.raises(ValueError, match="--saved_model: expected a SavedModel version directory"):
    export_lib.convert_tflite(str(tmp_path), str(tmp_path / "out"))
  (tmp_path / "saved_model.pb").write_bytes(b"")
  with pytest.raises(ValueError, match="--saved_model: expected an export of this package"):
    export_lib.convert_tflite(str(tmp_path), str(tmp_path / "out"))


# --- the SavedModel ----------------------------------------------------------------------------

@pytest.mark.slow
def test_saved_model_layout_signatures_and_info(tiny_export):
  path = tiny_export["saved_model"]
  assert path == os.path.join(tiny_export["export_base"], "prob_unet", "1")
  entries = os.listdir(os.path.dirname(path))
  assert "1" in entries and not [e for e in entries if e.startswith(".")]  # no temporary left
  loaded = tf.saved_model.load(path)
  assert set(loaded.signatures) == set(export_lib.SIGNATURES) | {"serving_default"}
  n, k = EXPORT_MODEL_KWARGS["latent_dim"], EXPORT_MODEL_KWARGS["num_classes"]
  inputs = {name: {key: (spec.dtype.name, spec.shape.rank and spec.shape.as_list())
                   for key, spec in fn.structured_input_signature[1].items()}
            for name, fn in loaded.signatures.items()}
  assert inputs["sample"] == {"images": ("uint8", None), "num_samples": ("int32", 0)}
  assert inputs["serving_default"] == inputs["sample"] == inputs["uncertainty"]
  assert inputs["sample_with_noise"] == {"images": ("uint8", None), "noise": ("float32", None)}
  assert inputs["predict_mean"] == inputs["encoder"] == {"images": ("uint8", None)}
  assert inputs["combiner"] == {"features": ("float32", [None, None, None, TINY_CHANNELS[0]]),
                                "z": ("float32", [None, n])}
  outputs = {name: {key: (spec.dtype.name, spec.shape.as_list())
                    for key, spec in fn.structured_outputs.items()}
             for name, fn in loaded.signatures.items()}
  assert outputs["sample"] == {"labels": ("int32", [None, None, None, None]),
                               "probabilities": ("float32", [None, None, None, None, k]),
                               "noise": ("float32", [None, None, n])}
  assert set(outputs["sample_with_noise"]) == {"labels", "logits", "probabilities"}
  assert outputs["predict_mean"]["logits"] == ("float32", [None, None, None, k])
  assert set(outputs["uncertainty"]) == {"frequencies", "entropy", "variance", "noise"}
  assert outputs["encoder"]["features"] == ("float32", [None, None, None, TINY_CHANNELS[0]])
  # TensorFlow ops only: TF Serving cannot load this package's native kernel library.
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    graph_bytes = f.read()
  assert b"StatefulPartitionedCall" in graph_bytes and b"ProbUnetFcombSample" not in graph_bytes
  info = export_lib.read_info(path)
  assert info["model"] == "prob_unet" and info["step"] == 3
  assert info["input_shape"] == [32, 32, 1] and info["latent_dim"] == n


@pytest.mark.slow
def test_every_signature_equals_the_keras_model(tiny_export):
  model = tiny_export["model"]
  loaded = tf.saved_model.load(tiny_export["saved_model"])
  raw, x = uint8_images(batch=2)
  n = model.latent_dim
  noise = np.random.default_rng(5).standard_normal((2, 4, n)).astype(np.float32)
  ref = _keras_noise_outputs(model, x, noise)

  out = loaded.signatures["sample_with_noise"](images=raw, noise=noise)
  assert np.abs(out["logits"].numpy() - ref["logits"]).max() <= SAVED_MODEL_TOL
  np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=SAVED_MODEL_TOL)
  _assert_same_labels(out["labels"], ref["labels"], ref["logits"])

  for name in ("sample", "serving_default"):
    out = loaded.signatures[name](images=raw, num_samples=tf.constant(5))
    drawn = out["noise"].numpy()
    assert drawn.shape == (2, 5, n) and np.abs(drawn).max() > 0
    ref_drawn = _keras_noise_outputs(model, x, drawn)
    np.testing.assert_allclose(out["probabilities"], ref_drawn["probabilities"],
                               atol=SAVED_MODEL_TOL)
    _assert_same_labels(out["labels"], ref_drawn["labels"], ref_drawn["logits"])
  again = loaded.signatures["sample"](images=raw, num_samples=tf.constant(5))["noise"].numpy()
  assert not np.allclose(again, drawn)  # fresh noise on every call

  out = loaded.signatures["predict_mean"](images=raw)
  ref_mean = model(tf.constant(x)).numpy()
  assert np.abs(out["logits"].numpy() - ref_mean).max() <= SAVED_MODEL_TOL
  _assert_same_labels(out["labels"], ref_mean.argmax(-1), ref_mean)

  out = loaded.signatures["uncertainty"](images=raw, num_samples=tf.constant(6))
  ref_u = _keras_noise_outputs(model, x, out["noise"].numpy())
  expected = export_lib.uncertainty(ref_u["labels"], ref_u["probabilities"])
  for key in ("frequencies", "entropy", "variance"):
    np.testing.assert_allclose(out[key], expected[key], atol=SAVED_MODEL_TOL)

  enc = loaded.signatures["encoder"](images=raw)
  ref_enc = export_lib.encoder_outputs(model, tf.constant(x))
  for key in ("features", "prior_mean", "prior_scale"):
    assert np.abs(enc[key].numpy() - ref_enc[key].numpy()).max() <= SAVED_MODEL_TOL
  z = (enc["prior_mean"] + enc["prior_scale"] * noise[:, 0]).numpy()
  out = loaded.signatures["combiner"](features=enc["features"], z=z)
  assert np.abs(out["logits"].numpy() - ref["logits"][:, 0]).max() <= SAVED_MODEL_TOL


@pytest.mark.slow
def test_saved_model_refuses_bad_inputs_at_serving_time(tiny_export):
  loaded = tf.saved_model.load(tiny_export["saved_model"])
  raw, _ = uint8_images(batch=1)
  n = EXPORT_MODEL_KWARGS["latent_dim"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"images: expected uint8 images \[batch, height, width, 1\], found "
                           r"another channel count"):
    loaded.signatures["sample"](images=np.repeat(raw, 3, axis=-1), num_samples=tf.constant(2))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"images: expected uint8 images \[batch, height, width, 1\], found "
                           r"another rank"):
    loaded.signatures["predict_mean"](images=raw[0])
  with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
    loaded.signatures["predict_mean"](images=tf.constant(raw, tf.float32))
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples: expected >= 1"):
    loaded.signatures["sample"](images=raw, num_samples=tf.constant(0))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=rf"noise: expected \[batch of images, num_samples, {n}\]"):
    loaded.signatures["sample_with_noise"](images=raw, noise=np.zeros((2, 4, n), np.float32))


@pytest.mark.slow
def test_rest_predict_request_and_saved_model_cli(tiny_export, tmp_path):
  path = tiny_export["saved_model"]
  model = tiny_export["model"]
  raw, x = uint8_images(batch=1)
  noise = np.random.default_rng(2).standard_normal((1, 3, model.latent_dim)).astype(np.float32)
  ref = _keras_noise_outputs(model, x, noise)
  # The REST body of docs/export.md (columnar "inputs") and its row-format twin.
  request = export_lib.predict_request("sample_with_noise", images=raw, noise=noise)
  rows = {"signature_name": "sample_with_noise",
          "instances": [{"images": raw[0].tolist(), "noise": noise[0].tolist()}]}
  loaded = tf.saved_model.load(path)
  for body in (request, rows):
    response = export_lib.serve_predict(loaded, json.loads(json.dumps(body)))
    assert np.abs(np.array(response["outputs"]["logits"]) - ref["logits"]).max() <= 1e-4

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  show = subprocess.run([cli, "show", "--all", "--dir", path], env=env,
                        capture_output=True, text=True, timeout=300)
  assert show.returncode == 0, show.stderr[-2000:]
  for name in export_lib.SIGNATURES + ("serving_default",):
    assert f"signature_def['{name}']:" in show.stdout
  assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n        shape: unknown_rank" \
      in show.stdout
  assert "inputs['num_samples'] tensor_info:\n        dtype: DT_INT32\n        shape: ()" \
      in show.stdout
  assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n        shape: " \
      "(-1, -1, -1, -1, 2)" in show.stdout

  # `saved_model_cli run` on the same JSON request (its literals are Python literals).
  exprs = ";".join(f"{k}={json.dumps(v)}" for k, v in request["inputs"].items())
  run = subprocess.run([cli, "run", "--dir", path, "--tag_set", "serve",
                        "--signature_def", request["signature_name"], "--input_exprs", exprs,
                        "--outdir", str(tmp_path / "cli")], env=env, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  logits = np.load(tmp_path / "cli" / "logits.npy")
  assert np.abs(logits - ref["logits"]).max() <= 1e-4


@pytest.mark.slow
def test_export_binary_next_version_and_refusal(tiny_export):
  def export(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "export/saved_model.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  base = tiny_export["export_base"]
  # Version 1 exists (the fixture's export): without --version the next one is 2.
  first = export(f"--model_dir={tiny_export['model_dir']}", f"--export_dir={base}")
  assert first.returncode == 0, first.stderr[-2000:]
  assert os.path.exists(os.path.join(base, "prob_unet", "2", "saved_model.pb"))
  again = export(f"--model_dir={tiny_export['model_dir']}", f"--export_dir={base}",
                 "--version=2")
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1].startswith(
      "error: --version: expected a new or empty directory, found a non-empty")


# --- TFLite --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tflite_dir(tiny_export, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tflite") / "models")
  export_lib.convert_tflite(tiny_export["saved_model"], out, batch_size=2, num_samples=4)
  return out


@pytest.mark.slow
def test_tflite_models_are_builtin_only_and_equal_the_keras_model(tiny_export, tflite_dir):
  model = tiny_export["model"]
  with open(os.path.join(tflite_dir, export_lib.TFLITE_INFO_FILE)) as f:
    info = json.load(f)
  raw, x = uint8_images(batch=2, seed=3)
  noise = np.random.default_rng(4).standard_normal((2, 4, model.latent_dim)).astype(np.float32)
  ref = _keras_noise_outputs(model, x, noise)
  runners = {}
  for name, variants in info["files"].items():
    for quantization, filename in variants.items():
      runner = export_lib.TFLiteRunner(os.path.join(tflite_dir, filename))
      assert not [op for op in runner.op_names() if op.startswith("Flex")]
      runners[name, quantization] = runner
  assert {q for _, q in runners} == set(export_lib.QUANTIZATIONS)

  single = runners["sample_with_noise", "float32"](images=raw, noise=noise)
  assert np.abs(single["logits"] - ref["logits"]).max() <= TFLITE_TOL
  _assert_same_labels(single["labels"], ref["labels"], ref["logits"])

  split = export_lib.sample_split_pair(runners["encoder", "float32"],
                                       runners["combiner", "float32"], raw, noise)
  assert np.abs(split["logits"] - single["logits"]).max() <= 1e-5
  np.testing.assert_array_equal(split["labels"], single["labels"])
  assert np.abs(split["logits"] - ref["logits"]).max() <= TFLITE_TOL

  report = {}
  for quantization in ("float16", "dynamic_range"):
    out = runners["sample_with_noise", quantization](images=raw, noise=noise)
    pair = export_lib.sample_split_pair(runners["encoder", quantization],
                                        runners["combiner", quantization], raw, noise)
    report[quantization] = {
        "iou_single": _iou(out["labels"], ref["labels"]),
        "iou_split_pair": _iou(pair["labels"], ref["labels"]),
        "max_abs_logits": float(np.abs(out["logits"] - ref["logits"]).max())}
  print("quantised TFLite vs Keras (foreground IoU of the sampled masks):", json.dumps(report))
  assert report["float16"]["iou_single"] >= 0.95 and report["float16"]["iou_split_pair"] >= 0.95
  assert report["dynamic_range"]["iou_single"] >= 0.5
