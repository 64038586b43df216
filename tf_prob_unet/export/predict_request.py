r"""Writes a TF Serving REST `:predict` request body for images: the example of docs/export.md.

`python -m tf_prob_unet.export predict_request --image=a.png [--image=b.png] [--num_samples=16]
[--signature=sample] [--channels=1] > request.json`, then
`curl -d @request.json http://localhost:8501/v1/models/prob_unet:predict`.
Images are read as the sample binary reads them (`sample_lib.load_image`: the model's channels,
`.npy` files of raw CT values windowed likewise); another channel count stops with one line.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_prob_unet import runtime  # noqa: E402  (imports no TensorFlow)

if __name__ == "__main__":
  runtime.import_tensorflow_quietly()  # without its start-up notices

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from tf_prob_unet import cli  # noqa: E402
from tf_prob_unet import export_lib  # noqa: E402
from tf_prob_unet import sample_lib  # noqa: E402

flags.DEFINE_list("image", [], "Image files (same size): PNG, or .npy of raw CT values.")
flags.DEFINE_integer("num_samples", 16, "Samples per image (sample / uncertainty signatures).")
flags.DEFINE_enum("signature", "sample", ["sample", "uncertainty", "predict_mean"],
                  "Signature to call.")
flags.DEFINE_integer("channels", 1, "The model's input channels.")
FLAGS = flags.FLAGS


def _request():
  if not FLAGS.image:
    raise ValueError("--image: expected at least one image file, found none.")
  inputs = {"images": np.stack([sample_lib.load_image(p, FLAGS.channels) for p in FLAGS.image])}
  if FLAGS.signature != "predict_mean":
    inputs["num_samples"] = FLAGS.num_samples
  json.dump(export_lib.predict_request(FLAGS.signature, **inputs), sys.stdout)


def main():
  app.run(cli.main_with_errors(_request))


if __name__ == "__main__":
  main()
