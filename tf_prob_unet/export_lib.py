"""Export, flag-free: a SavedModel for TF Serving and TFLite models for devices.

`export_saved_model` writes a trained Probabilistic U-Net in the TF Serving layout
`<export_base>/<model_name>/<version>/` with `keras.export.ExportArchive`. Every signature takes
raw uint8 images `[B, H, W, C]` (C = the model's channels) and does the model's preprocessing
(`/ 255` to [0, 1]) in the graph; rank and channel count are checked at run time.

Signatures (inputs -> outputs; B batch, M samples, H x W pixels, K classes, N latent size,
F f_comb channels):

- `sample` (also `serving_default`): `images` uint8 `[B, H, W, C]`, `num_samples` int32 `[]`
  -> `labels` int32 `[B, M, H, W]`, `probabilities` float32 `[B, M, H, W, K]` (softmax per
  sample), `noise` float32 `[B, M, N]` (the standard-normal draws; replay them through
  `sample_with_noise`).
- `sample_with_noise`: `images`, `noise` float32 `[B, M, N]` -> `labels`, `logits`
  `[B, M, H, W, K]`, `probabilities`. Deterministic: z = prior mean + prior scale * noise.
- `predict_mean`: `images` -> `labels` `[B, H, W]`, `logits` and `probabilities`
  `[B, H, W, K]` for z = the prior mean.
- `uncertainty`: `images`, `num_samples` -> `frequencies` `[B, H, W, K]` (fraction of the
  samples giving each class), `entropy` `[B, H, W]` (of those frequencies, in nats),
  `variance` `[B, H, W, K]` (of the class probabilities over the samples), `noise`.
- `encoder`: `images` -> `features` float32 `[B, H, W, F]` (the U-Net features through the
  feature half of f_comb's first 1x1 conv), `prior_mean`, `prior_scale` `[B, N]`.
- `combiner`: `features` `[B, H, W, F]`, `z` `[B, N]` -> `labels` `[B, H, W]`, `logits`,
  `probabilities` `[B, H, W, K]`. `encoder` once and `combiner` per sample equals `sample`.

`convert_tflite` turns a SavedModel written here into TFLite models with built-in ops only
(no Flex): the split pair `encoder` / `combiner` and `sample_with_noise` (one model, noise as an
input, no random ops), each in float32 and optionally float16 and dynamic-range quantised.
"""

import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_prob_unet import run_dir
from tf_prob_unet.models import ProbUNet

INFO_FILE = os.path.join("assets.extra", "tf_prob_unet.json")
TFLITE_INFO_FILE = "tflite_info.json"
SIGNATURES = ("sample", "sample_with_noise", "predict_mean", "uncertainty", "encoder",
              "combiner")
TFLITE_MODELS = ("sample_with_noise", "encoder", "combiner")
QUANTIZATIONS = ("float32", "float16", "dynamic_range")


# --- the graph pieces ---------------------------------------------------------------------------

def preprocess(images, channels):
  """Raw images -> the model input, with run-time checks (works inside any graph).

  Args:
    images: uint8 `[B, H, W, channels]` (0..255).
    channels: the model's input channels.

  Returns:
    float32 `[B, H, W, channels]` in [0, 1].

  Raises:
    InvalidArgumentError (at run time) / ValueError (when the shape is known while tracing):
      `images` is not of rank 4 or has another channel count.
  """
  images = tf.convert_to_tensor(images)
  if images.dtype != tf.uint8:
    raise ValueError(f"images: expected uint8 pixel values, found {images.dtype.name}.")
  expected = f"uint8 images [batch, height, width, {channels}]"
  rank_ok = tf.debugging.assert_rank(images, 4,
                                     message=f"images: expected {expected}, found another rank")
  with tf.control_dependencies([rank_ok]):
    channels_ok = tf.debugging.assert_equal(
        tf.shape(images)[-1], channels,
        message=f"images: expected {expected}, found another channel count (below: found, "
                f"expected)")
  with tf.control_dependencies([channels_ok]):
    # A reshape to the checked run-time shape gives the static rank and channels to what follows
    # (`tf.ensure_shape` can fail before the assertions run, with a less clear message).
    dims = tf.shape(images)
    images = tf.reshape(images, tf.stack([dims[0], dims[1], dims[2], channels]))
  return tf.cast(images, tf.float32) / 255.0


def _check_noise(noise, images, latent_dim):
  """`noise` as `[B, M, N]` float32, checked against the images' batch at run time."""
  rank_ok = tf.debugging.assert_rank(
      noise, 3, message=f"noise: expected float32 [batch, num_samples, {latent_dim}]")
  with tf.control_dependencies([rank_ok]):
    dims_ok = tf.debugging.assert_equal(
        tf.shape(noise)[::2], tf.stack([tf.shape(images)[0], latent_dim]),
        message=f"noise: expected [batch of images, num_samples, {latent_dim}], found "
                f"(below) another [batch, latent size]")
  with tf.control_dependencies([dims_ok]):
    dims = tf.shape(noise)
    return tf.reshape(noise, tf.stack([dims[0], dims[1], latent_dim]))


def _check_num_samples(num_samples):
  num_samples = tf.convert_to_tensor(num_samples, tf.int32)
  ok = tf.debugging.assert_positive(num_samples, message="num_samples: expected >= 1")
  with tf.control_dependencies([ok]):
    return tf.identity(num_samples)


def _fresh_noise(batch, num_samples, latent_dim):
  # The raw op with seed = seed2 = 0 draws fresh noise in every process, whatever global seed
  # was set while exporting (tf.random.normal would bake that seed into the graph).
  shape = tf.stack([batch, num_samples, latent_dim])
  return tf.raw_ops.RandomStandardNormal(shape=shape, dtype=tf.float32, seed=0, seed2=0)


def class_outputs(logits):
  """`{"labels": arg-max int32, "logits", "probabilities": softmax}` over the last axis."""
  return {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32), "logits": logits,
          "probabilities": tf.nn.softmax(logits, axis=-1)}


def uncertainty(labels, probabilities):
  """Per-pixel uncertainty over M samples.

  Args:
    labels: `[B, M, H, W]` int labels.
    probabilities: `[B, M, H, W, K]` class probabilities of the same samples.

  Returns:
    A dict: `frequencies` `[B, H, W, K]` (fraction of samples labelling each class), `entropy`
    `[B, H, W]` (entropy of those frequencies in nats: 0 where all samples agree, at most
    log K), `variance` `[B, H, W, K]` (population variance of the probabilities over samples).
  """
  probabilities = tf.convert_to_tensor(probabilities)
  num_classes = probabilities.shape[-1]
  frequencies = tf.reduce_mean(tf.one_hot(labels, num_classes, dtype=probabilities.dtype),
                               axis=1)
  entropy = -tf.reduce_sum(tf.math.xlogy(frequencies, frequencies), axis=-1)
  return {"frequencies": frequencies, "entropy": entropy,
          "variance": tf.math.reduce_variance(probabilities, axis=1)}


def encoder_outputs(model, images):
  """The once-per-image half of sampling: `features` `[B, H, W, F]`, `prior_mean`,
  `prior_scale` `[B, N]` for float images."""
  features = model.fcomb.project_features(model.unet(images, training=False))
  mu, log_sigma = model.prior_net.params(images, training=False)
  return {"features": features, "prior_mean": mu, "prior_scale": tf.exp(log_sigma)}


def combiner_logits(model, features, z):
  """The per-sample half: logits `[B, H, W, K]` from `encoder_outputs` features and z `[B, N]`."""
  return model.fcomb.combine(features, z[:, tf.newaxis], native=False)[:, 0]


def check_exportable(model, name="model"):
  """Raises a one-line ValueError unless `model` has a latent prior to sample from."""
  if not isinstance(model, ProbUNet):
    raise ValueError(f"--model_dir: expected a prob_unet run (the export signatures feed "
                     f"latent noise through the prior net and f_comb), found model {name!r}.")


def serving_functions(model, channels):
  """The signature functions of a SavedModel export, keyed by signature name.

  They use f_comb's TensorFlow ops (`native=False`): TF Serving and the TFLite converter cannot
  load this package's native kernel library.

  Args:
    model: a built `ProbUNet`.
    channels: input channels C.

  Returns:
    A dict name -> `(fn, input_signature)`; `sample` first (it becomes `serving_default`).
  """
  k, n = model.num_classes, model.latent_dim
  f = model.fcomb.channels
  images_spec = tf.TensorSpec(None, tf.uint8, name="images")
  count_spec = tf.TensorSpec([], tf.int32, name="num_samples")

  def drawn(images, num_samples):
    x = preprocess(images, channels)
    noise = _fresh_noise(tf.shape(x)[0], _check_num_samples(num_samples), n)
    return class_outputs(model.sample_from_noise(x, noise, native=False)), noise

  def sample(images, num_samples):
    out, noise = drawn(images, num_samples)
    return {"labels": out["labels"], "probabilities": out["probabilities"], "noise": noise}

  def sample_with_noise(images, noise):
    x = preprocess(images, channels)
    return class_outputs(model.sample_from_noise(x, _check_noise(noise, x, n), native=False))

  def predict_mean(images):
    return class_outputs(model.predict_prior_mean(preprocess(images, channels)))

  def uncertainty_fn(images, num_samples):
    out, noise = drawn(images, num_samples)
    return {**uncertainty(out["labels"], out["probabilities"]), "noise": noise}

  def encoder(images):
    return encoder_outputs(model, preprocess(images, channels))

  def combiner(features, z):
    return class_outputs(combiner_logits(model, features, z))

  return {
      "sample": (sample, [images_spec, count_spec]),
      "sample_with_noise": (sample_with_noise, [
          images_spec, tf.TensorSpec(None, tf.float32, name="noise")]),
      "predict_mean": (predict_mean, [images_spec]),
      "uncertainty": (uncertainty_fn, [images_spec, count_spec]),
      "encoder": (encoder, [images_spec]),
      "combiner": (combiner, [tf.TensorSpec([None, None, None, f], tf.float32, name="features"),
                              tf.TensorSpec([None, n], tf.float32, name="z")]),
  }


# --- SavedModel -------------------------------------------------------------------------------

def _versions(model_base):
  if not os.path.isdir(model_base):
    return []
  return sorted(int(d) for d in os.listdir(model_base) if re.fullmatch(r"\d+", d))


def _replace_dir(tmp, target):
  """Moves the finished directory `tmp` to `target`, replacing `target` if it exists."""
  if os.path.exists(target):
    old = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".old-")
    os.replace(target, os.path.join(old, "dir"))
    os.replace(tmp, target)
    shutil.rmtree(old)
  else:
    os.replace(tmp, target)


def _check_target(path, flag, overwrite):
  if os.path.isfile(path):
    raise ValueError(f"{flag}: expected a directory, found a file at {path!r}.")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise ValueError(f"{flag}: expected a new or empty directory, found a non-empty {path!r} "
                     f"(pass --overwrite to replace it).")


def export_saved_model(model_dir, export_base, model_name="prob_unet", version=None,
                       overwrite=False):
  """Exports the latest checkpoint of a training run for TF Serving.

  Args:
    model_dir: training run directory (`model_config.json` and checkpoints).
    export_base: base directory; the export goes to `<export_base>/<model_name>/<version>`.
    model_name: the TF Serving model name.
    version: positive integer version; None: one more than the highest existing version (1).
    overwrite: replace a non-empty version directory instead of refusing.

  Returns:
    The version directory written.

  Raises:
    ValueError: no run or checkpoint in `model_dir`, a model that cannot be exported, a bad
      name or version, or an existing non-empty version directory without `overwrite`.
  """
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name or ""):
    raise ValueError(f"--model_name: expected letters, digits, '_', '-' or '.', found "
                     f"{model_name!r}.")
  if not export_base:
    raise ValueError("--export_dir: expected a base directory, found an empty string.")
  model_base = os.path.join(export_base, model_name)
  if version is None:
    version = (_versions(model_base) or [0])[-1] + 1
  if int(version) < 1:
    raise ValueError(f"--version: expected a positive integer, found {version}.")
  target = os.path.join(model_base, str(int(version)))
  _check_target(target, "--version", overwrite)
  model, info = run_dir.load_model(model_dir)
  check_exportable(model, info["model"])
  return write_saved_model(model, info, target)


def write_saved_model(model, info, target):
  """Writes the signatures of `model` as a SavedModel to `target` (replaced if it exists).

  Written to a temporary directory beside `target` and renamed at the end (TF Serving ignores
  directories whose names are not numbers).

  Args:
    model: a built `ProbUNet`.
    info: the run's `model_config.json` record (`model`, `kwargs`, `input_shape`; `step`,
      `checkpoint` and `dataset` are copied when present) as `run_dir.load_model` returns it.
    target: the version directory.

  Returns:
    `target`.
  """
  check_exportable(model, info.get("model", type(model).__name__))
  archive = keras.export.ExportArchive()
  archive.track(model)
  for name, (fn, signature) in serving_functions(model, int(info["input_shape"][-1])).items():
    archive.add_endpoint(name, fn, input_signature=signature)
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(target)}-")
  try:
    archive.write_out(tmp, verbose=False)
    record = {
        "model": info["model"], "kwargs": info["kwargs"], "input_shape": info["input_shape"],
        "dataset": info.get("dataset"), "step": info.get("step"),
        "checkpoint": info.get("checkpoint"), "num_classes": model.num_classes,
        "latent_dim": model.latent_dim, "feature_channels": model.fcomb.channels,
        "signatures": list(SIGNATURES), "preprocessing": "uint8 images / 255 (inside the graph)"}
    run_dir.atomic_write(os.path.join(tmp, INFO_FILE), json.dumps(record, indent=2))
    _replace_dir(tmp, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def read_info(saved_model_dir, flag="--saved_model"):
  """The `assets.extra/tf_prob_unet.json` record of an export (raises ValueError if absent)."""
  path = os.path.join(saved_model_dir, INFO_FILE)
  if not os.path.exists(os.path.join(saved_model_dir, "saved_model.pb")):
    raise ValueError(f"{flag}: expected a SavedModel version directory (with saved_model.pb), "
                     f"found none at {saved_model_dir!r}.")
  if not os.path.exists(path):
    raise ValueError(f"{flag}: expected an export of this package (with {INFO_FILE}), found "
                     f"none in {saved_model_dir!r}.")
  with open(path) as f:
    return json.load(f)


def predict_request(signature_name, **inputs):
  """A TF Serving REST `:predict` body in the columnar format (`inputs`), e.g.
  `predict_request("sample", images=uint8_array, num_samples=16)`."""
  return {"signature_name": signature_name,
          "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}


def serve_predict(loaded, request):
  """Answers a TF Serving REST `:predict` request body with a loaded SavedModel.

  Follows the REST API's JSON conventions: `signature_name` (default `serving_default`) and
  either the columnar `inputs` (a dict of named inputs, or one value for a single input) or the
  row format `instances` (a list of per-example dicts, batched along axis 0). Scalar inputs
  (`num_samples`) are taken from the first row here; TF Serving itself wants every input batched
  in the row format, so send `sample` and `uncertainty` requests in the columnar format. Returns
  the columnar response `{"outputs": {...}}` (lists). For tests and for checking a request
  without a server.

  Args:
    loaded: `tf.saved_model.load(...)` of an export.
    request: the request body as a dict.
  """
  name = request.get("signature_name", "serving_default")
  if name not in loaded.signatures:
    raise ValueError(f"signature_name: expected one of {sorted(loaded.signatures)}, found "
                     f"{name!r}.")
  fn = loaded.signatures[name]
  specs = fn.structured_input_signature[1]
  if "inputs" in request:
    inputs = request["inputs"]
    if not isinstance(inputs, dict):
      inputs = {next(iter(specs)): inputs}
  elif "instances" in request:
    rows = request["instances"]
    inputs = {}
    for key, spec in specs.items():
      if spec.shape.rank == 0:
        inputs[key] = rows[0][key]
      else:
        inputs[key] = [row[key] if isinstance(row, dict) else row for row in rows]
  else:
    raise ValueError("request: expected an `inputs` or `instances` field, found neither.")
  missing = sorted(set(specs) - set(inputs))
  if missing:
    raise ValueError(f"request: signature {name!r} expects inputs {sorted(specs)}, missing "
                     f"{missing}.")
  tensors = {k: tf.constant(np.asarray(inputs[k]), dtype=specs[k].dtype) for k in specs}
  return {"outputs": {k: v.numpy().tolist() for k, v in fn(**tensors).items()}}


# --- TFLite -----------------------------------------------------------------------------------

def tflite_functions(loaded, info, batch_size=1, num_samples=16, image_size=None):
  """Static-shape wrappers of an export's split pair, for conversion to TFLite.

  Args:
    loaded: `tf.saved_model.load(...)` of an export written by `export_saved_model`.
    info: its `read_info` record.
    batch_size: images per call.
    num_samples: M of the single `sample_with_noise` model.
    image_size: `(H, W)`; None: the training image size.

  Returns:
    A dict name -> concrete function: `encoder`, `combiner` and `sample_with_noise` (the
    encoder, then the combiner over the B * M (image, z) pairs: no loop, no random op).
  """
  height, width = image_size or info["input_shape"][:2]
  channels = info["input_shape"][-1]
  n, f = info["latent_dim"], info["feature_channels"]
  b, m = int(batch_size), int(num_samples)
  encoder = loaded.signatures["encoder"]
  combiner = loaded.signatures["combiner"]
  images_spec = tf.TensorSpec([b, height, width, channels], tf.uint8, name="images")

  @tf.function(input_signature=[images_spec], autograph=False)
  def encode(images):
    return encoder(images=images)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([b, height, width, f], tf.float32, name="features"),
      tf.TensorSpec([b, n], tf.float32, name="z")])
  def combine(features, z):
    return combiner(features=features, z=z)

  @tf.function(autograph=False, input_signature=[
      images_spec, tf.TensorSpec([b, m, n], tf.float32, name="noise")])
  def sample_with_noise(images, noise):
    enc = encoder(images=images)
    z = enc["prior_mean"][:, tf.newaxis] + enc["prior_scale"][:, tf.newaxis] * noise
    features = tf.broadcast_to(enc["features"][:, tf.newaxis], [b, m, height, width, f])
    out = combiner(features=tf.reshape(features, [b * m, height, width, f]),
                   z=tf.reshape(z, [b * m, n]))
    return {k: tf.reshape(v, [b, m] + v.shape[1:].as_list()) for k, v in out.items()}

  return {"sample_with_noise": sample_with_noise.get_concrete_function(),
          "encoder": encode.get_concrete_function(),
          "combiner": combine.get_concrete_function()}


def _convert(concrete_fn, loaded, quantization):
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], loaded)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantization == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == "dynamic_range":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def tflite_filename(name, quantization="float32"):
  """`encoder.tflite`, `encoder_float16.tflite`, `encoder_dynamic_range.tflite`, ..."""
  return f"{name}.tflite" if quantization == "float32" else f"{name}_{quantization}.tflite"


def convert_tflite(saved_model_dir, output_dir, batch_size=1, num_samples=16, image_size=None,
                   quantizations=QUANTIZATIONS, overwrite=False):
  """Converts an export to TFLite models with built-in ops only.

  Writes `<name>[_<quantization>].tflite` for the names of `TFLITE_MODELS` and
  `tflite_info.json` (inputs, outputs, shapes), all into a temporary directory renamed to
  `output_dir` at the end.

  Args:
    saved_model_dir: a version directory written by `export_saved_model`.
    output_dir: new or empty directory (or any with `overwrite`).
    batch_size, num_samples, image_size: static shapes (see `tflite_functions`).
    quantizations: a subset of `QUANTIZATIONS`, `"float32"` included.
    overwrite: replace a non-empty `output_dir`.

  Returns:
    The `tflite_info.json` record (a dict; `files` maps name -> quantization -> file name).
  """
  info = read_info(saved_model_dir)
  unknown = sorted(set(quantizations) - set(QUANTIZATIONS))
  if unknown or "float32" not in quantizations:
    raise ValueError(f"--quantize: expected a subset of {list(QUANTIZATIONS)} with float32, "
                     f"found {list(quantizations)}.")
  if batch_size < 1 or num_samples < 1:
    raise ValueError(f"--batch_size / --num_samples: expected >= 1, found {batch_size} / "
                     f"{num_samples}.")
  _check_target(output_dir, "--output_dir", overwrite)
  loaded = tf.saved_model.load(saved_model_dir)
  functions = tflite_functions(loaded, info, batch_size, num_samples, image_size)
  parent = os.path.dirname(os.path.abspath(output_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-tflite-")
  try:
    record = {"saved_model": os.path.abspath(saved_model_dir), "model": info["model"],
              "num_classes": info["num_classes"], "latent_dim": info["latent_dim"],
              "batch_size": batch_size, "num_samples": num_samples, "files": {},
              "signatures": {}, "preprocessing": "uint8 images / 255 (inside the models)"}
    for name in TFLITE_MODELS:
      fn = functions[name]
      record["signatures"][name] = {
          "inputs": {s.name: [s.shape.as_list(), s.dtype.name]
                     for s in fn.structured_input_signature[0]},
          "outputs": {k: [v.shape.as_list(), v.dtype.name]
                      for k, v in fn.structured_outputs.items()}}
      record["files"][name] = {}
      for quantization in quantizations:
        filename = tflite_filename(name, quantization)
        with open(os.path.join(tmp, filename), "wb") as out:
          out.write(_convert(fn, loaded, quantization))
        record["files"][name][quantization] = filename
    with open(os.path.join(tmp, TFLITE_INFO_FILE), "w") as out:
      json.dump(record, out, indent=2)
    _replace_dir(tmp, output_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return record


class TFLiteRunner:
  """Runs one TFLite model through the `ai-edge-litert` interpreter by named inputs/outputs.

  Args:
    path: a `.tflite` file written by `convert_tflite`.
    num_threads: interpreter threads (None: the interpreter's default).
  """

  def __init__(self, path, num_threads=None):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    self.path = path
    self.interpreter = litert.Interpreter(model_path=path, num_threads=num_threads)
    self.runner = self.interpreter.get_signature_runner()

  def op_names(self):
    """The model's operator names (built-in ops only: none starts with `Flex`)."""
    details = self.interpreter._get_ops_details()  # pylint: disable=protected-access
    return sorted({op["op_name"] for op in details})

  def __call__(self, **inputs):
    return self.runner(**inputs)


def sample_split_pair(encoder, combiner, images, noise):
  """Samples on a device's terms: the encoder once, the combiner once per sample.

  Args:
    encoder, combiner: `TFLiteRunner`s (or callables with the same named inputs and outputs).
    images: uint8 `[B, H, W, C]`.
    noise: float32 `[B, M, N]`.

  Returns:
    A dict of `[B, M, ...]` NumPy arrays: `labels`, `logits`, `probabilities`.
  """
  enc = encoder(images=images)
  outs = [combiner(features=enc["features"],
                   z=(enc["prior_mean"] + enc["prior_scale"] * noise[:, j]).astype(np.float32))
          for j in range(noise.shape[1])]
  return {k: np.stack([o[k] for o in outs], axis=1) for k in outs[0]}
