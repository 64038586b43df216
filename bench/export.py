"""Cost of sampling after export: Keras model vs reloaded SavedModel vs TFLite split pair.

Prints one JSON line. Configuration: batch 8, 128x128x1 uint8 images, channels
(32, 64, 128, 192), latent 6, 2 classes (LIDC size), m = 16 samples, untrained weights (the
cost does not depend on them). Per image:
- Keras: `model.sample(x, 16, return_probs=True)` in a `tf.function` (labels and per-sample
  probabilities, what the `sample` signature returns), batch 8, traced twice: with f_comb's
  TensorFlow ops, the computation the SavedModel holds (`saved_model_over_keras`, the export's
  own cost), and with the native f_comb kernel that in-process sampling uses on CPU
  (`saved_model_over_keras_native_fcomb`);
- SavedModel: the reloaded export's `sample` signature (uint8 in, preprocessing included),
  batch 8;
- TFLite: the split pair through the ai-edge-litert interpreter, batch 1 as on a device: the
  encoder once and the combiner 16 times.
Also: sizes on disk, and the quantised split pairs' agreement with the Keras model (foreground
IoU of the 16 sampled masks on one random image; untrained weights, so only indicative).
Times are the best of several runs (Keras and SavedModel in turn per round); on a shared machine
they are noisy.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import emit, machine, timeit, timeit_interleaved  # noqa: E402
from tf_prob_unet import export_lib  # noqa: E402
from tf_prob_unet.models import ProbUNet  # noqa: E402

BATCH, SIZE, CHANNELS, M = 8, 128, (32, 64, 128, 192), 16


def _size(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _iou(a, b):
  a, b = a.astype(bool), b.astype(bool)
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main():
  kwargs = dict(num_classes=2, channels=CHANNELS)
  model = ProbUNet(**kwargs)
  model.build((None, SIZE, SIZE, 1))
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 256, (BATCH, SIZE, SIZE, 1)).astype(np.uint8)
  images = tf.constant(raw.astype(np.float32) / 255.0)
  work = tempfile.mkdtemp(prefix="bench-export-")
  info = {"model": "prob_unet", "kwargs": kwargs, "input_shape": [SIZE, SIZE, 1]}
  saved = export_lib.write_saved_model(model, info, os.path.join(work, "prob_unet", "1"))
  tflite_dir = os.path.join(work, "tflite")
  export_lib.convert_tflite(saved, tflite_dir, batch_size=1, num_samples=M)

  keras_fn = tf.function(lambda x: model.sample(x, M, return_probs=True))
  # The same sampling traced with f_comb's TensorFlow ops, the computation the SavedModel holds
  # (TF Serving cannot load the native kernel): the ratio to it is the export's own cost.
  keras_ops_fn = tf.function(lambda x: model.sample(x, M, return_probs=True))
  saved_env = os.environ.get("TF_PROB_UNET_NATIVE")
  os.environ["TF_PROB_UNET_NATIVE"] = "0"
  try:
    keras_ops_fn.get_concrete_function(images)
  finally:
    if saved_env is None:
      del os.environ["TF_PROB_UNET_NATIVE"]
    else:
      os.environ["TF_PROB_UNET_NATIVE"] = saved_env
  signature = tf.saved_model.load(saved).signatures["sample"]
  raw_t, m_t = tf.constant(raw), tf.constant(M)
  times = timeit_interleaved({
      "keras": lambda: [t.numpy() for t in keras_fn(images)],
      "keras_ops": lambda: [t.numpy() for t in keras_ops_fn(images)],
      "saved": lambda: [t.numpy() for t in signature(images=raw_t, num_samples=m_t).values()]},
      repeats=5, warmup=1, best=True)
  t_keras, t_keras_ops, t_saved = times["keras"], times["keras_ops"], times["saved"]

  def runners(quantization):
    return [export_lib.TFLiteRunner(
        os.path.join(tflite_dir, export_lib.tflite_filename(name, quantization)),
        num_threads=os.cpu_count()) for name in ("encoder", "combiner")]
  encoder, combiner = runners("float32")
  noise = rng.standard_normal((1, M, 6)).astype(np.float32)
  one = raw[:1]
  t_tflite = timeit(lambda: export_lib.sample_split_pair(encoder, combiner, one, noise),
                    repeats=5, best=True)
  t_encoder = timeit(lambda: encoder(images=one), repeats=5, best=True)

  ref = model.sample_from_noise(images[:1], noise)
  ref_labels = tf.argmax(ref, -1).numpy()
  agreement = {}
  for quantization in export_lib.QUANTIZATIONS:
    out = export_lib.sample_split_pair(*runners(quantization), one, noise)
    agreement[quantization] = {"foreground_iou": _iou(out["labels"], ref_labels),
                               "max_abs_logits": float(np.abs(out["logits"] - ref).max())}

  files = sorted(f for f in os.listdir(tflite_dir) if f.endswith(".tflite"))
  record = {
      "config": {"batch": BATCH, "size": SIZE, "channels": list(CHANNELS), "latent_dim": 6,
                 "num_classes": 2, "num_samples": M, "tflite_batch": 1},
      **machine(),
      "keras_sample16_s_per_image": t_keras / BATCH,
      "keras_tensorflow_ops_sample16_s_per_image": t_keras_ops / BATCH,
      "saved_model_sample16_s_per_image": t_saved / BATCH,
      "tflite_split_pair_sample16_s_per_image": t_tflite,
      "tflite_encoder_s_per_image": t_encoder,
      "saved_model_over_keras": t_saved / t_keras_ops,
      "saved_model_over_keras_native_fcomb": t_saved / t_keras,
      "size_bytes": {"saved_model": _size(saved), **{f: _size(os.path.join(tflite_dir, f))
                                                     for f in files}},
      "tflite_vs_keras": agreement,
      "targets": {"saved_model_over_keras": "<= 1.1"},
      "note": "shared 2-core machine: timings noisy (best of 5)",
  }
  emit(record)
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
