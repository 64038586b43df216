r"""Exports a training run for TF Serving.

`python -m tf_prob_unet.export saved_model --model_dir=MODEL --export_dir=BASE
[--model_name=prob_unet] [--version=N] [--overwrite]` writes `BASE/NAME/N/` (SavedModel with the
signatures documented in `tf_prob_unet/export_lib.py`). A thin absl main over
`export_lib.export_saved_model`.
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

flags.DEFINE_string("model_dir", "", "Training run directory (its latest checkpoint is exported).")
flags.DEFINE_string("export_dir", "", "Export base directory: the model goes to BASE/NAME/N.")
flags.DEFINE_string("model_name", "prob_unet", "TF Serving model name (NAME).")
flags.DEFINE_integer("version", None, "Version N (default: the highest existing one + 1).")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty version directory.")
FLAGS = flags.FLAGS


def _export():
  if not FLAGS.model_dir:
    raise ValueError("--model_dir: expected a training run directory, found an empty string.")
  path = export_lib.export_saved_model(FLAGS.model_dir, FLAGS.export_dir, FLAGS.model_name,
                                       FLAGS.version, FLAGS.overwrite)
  print(f"Exported {FLAGS.model_dir} to {path} (signatures: "
        f"{', '.join(export_lib.read_info(path)['signatures'])}, serving_default = sample).")


def main():
  app.run(cli.main_with_errors(_export))


if __name__ == "__main__":
  main()
