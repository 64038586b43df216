"""`python export/tflite.py [--flags]` in a checkout: the same as
`python -m tf_prob_unet.export tflite [--flags]` (see `tf_prob_unet/export/tflite.py`).
"""

import os
import runpy
import sys

if __name__ == "__main__":
  # Run as a script from a checkout: its root, not export/, goes first on the path.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runpy.run_module("tf_prob_unet.export.tflite", run_name="__main__", alter_sys=True)
