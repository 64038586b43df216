"""The packaged flagfiles (`synthetic.flags`, `lidc.flags`, ...), usable from any directory.

`python -m tf_prob_unet.flagfiles` prints the path of every packaged flagfile, one per line;
`python -m tf_prob_unet.flagfiles NAME` prints the path of `NAME.flags`, so that

    python -m tf_prob_unet.train --flagfile=$(python -m tf_prob_unet.flagfiles synthetic)

works wherever the package is installed. A built package holds copies of the repository root's
`*.flags` in this folder (setup.py copies every one); a source checkout or an editable install
reads them at the root of the checkout.
"""

import importlib.resources
import os

SUFFIX = ".flags"


def directory():
  """The folder that holds the flagfiles: this package's (a built install) or the checkout's root."""
  packaged = os.fspath(importlib.resources.files(__name__))
  if any(f.endswith(SUFFIX) for f in os.listdir(packaged)):
    return packaged
  # A source checkout (or an editable install of one): the flagfiles live at its root.
  return os.path.dirname(os.path.dirname(packaged))


def names():
  """The flagfiles' names without `.flags`, sorted."""
  return sorted(f[:-len(SUFFIX)] for f in os.listdir(directory()) if f.endswith(SUFFIX))


def path(name):
  """The absolute path of the flagfile `NAME.flags` (`name` may carry the suffix).

  Raises:
    ValueError: there is no such flagfile (the existing names are listed).
  """
  name = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
  if name not in names():
    raise ValueError(f"flagfile: expected one of {', '.join(names())}, found {name!r}.")
  return os.path.join(directory(), name + SUFFIX)
