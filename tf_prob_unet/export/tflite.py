r"""Converts an export to TFLite (built-in ops only).

`python -m tf_prob_unet.export tflite --saved_model=BASE/NAME/N --output_dir=OUT [--batch_size=1]
[--num_samples=16] [--image_size=H,W] [--quantize=float32,float16,dynamic_range] [--overwrite]`
writes the split pair `encoder.tflite` + `combiner.tflite`, the single `sample_with_noise.tflite`
(noise as an input), their float16 / dynamic-range variants and `tflite_info.json`. A thin absl
main over `export_lib.convert_tflite`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_prob_unet import runtime  # noqa: E402  (imports no TensorFlow)

if __name__ == "__main__":
  runtime.import_tensorflow_quietly()  # without its start-up notices

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tf_prob_unet import cli  # noqa: E402
from tf_prob_unet import export_lib  # noqa: E402

flags.DEFINE_string("saved_model", "", "Export version directory BASE/NAME/N.")
flags.DEFINE_string("output_dir", "", "Directory for the .tflite files (new or empty).")
flags.DEFINE_integer("batch_size", 1, "Images per call (static).")
flags.DEFINE_integer("num_samples", 16, "Samples of the single sample_with_noise model (static).")
flags.DEFINE_list("image_size", [], "H,W (default: the training image size).")
flags.DEFINE_list("quantize", list(export_lib.QUANTIZATIONS),
                  "Variants to write: float32 (always) and any of float16, dynamic_range.")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir.")
FLAGS = flags.FLAGS


def _convert():
  if not FLAGS.saved_model or not FLAGS.output_dir:
    raise ValueError("--saved_model / --output_dir: expected both, found "
                     f"{FLAGS.saved_model!r} / {FLAGS.output_dir!r}.")
  size = None
  if FLAGS.image_size:
    try:
      size = tuple(int(v) for v in FLAGS.image_size)
    except ValueError:
      size = ()
    if len(size) != 2 or min(size) < 1:
      raise ValueError(f"--image_size: expected two positive integers H,W, found "
                       f"{','.join(FLAGS.image_size)!r}.")
  record = export_lib.convert_tflite(
      FLAGS.saved_model, FLAGS.output_dir, FLAGS.batch_size, FLAGS.num_samples, size,
      tuple(FLAGS.quantize), FLAGS.overwrite)
  files = sorted(f for variants in record["files"].values() for f in variants.values())
  print(f"Wrote {len(files)} TFLite models to {FLAGS.output_dir}: {', '.join(files)}.")


def main():
  app.run(cli.main_with_errors(_convert))


if __name__ == "__main__":
  main()
