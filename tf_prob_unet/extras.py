"""Optional dependencies (setup.cfg extras): a missing one is a one-line error naming the fix.

`require("ai_edge_litert", "tflite", "running .tflite models")` returns the module, or raises
`MissingExtraError("running .tflite models needs ai_edge_litert: pip install
'tf_prob_unet[tflite]'")`, which the binaries print as one line (`cli.main_with_errors`).
"""

import importlib


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names the `pip install`."""


def require(module, extra, purpose):
  """Imports and returns `module`, or raises `MissingExtraError` naming `extra`.

  Args:
    module: the module to import (e.g. `"pydicom"`).
    extra: the setup.cfg extra that installs it (e.g. `"dicom"`).
    purpose: what needs it, for the message (e.g. `"the lidc/raw config"`).
  """
  try:
    return importlib.import_module(module)
  except ImportError:
    raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                            f"pip install 'tf_prob_unet[{extra}]'") from None
