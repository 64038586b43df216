"""What setup.cfg cannot say: the dataset builders under their own package name, and every
flagfile at the repository root shipped inside the package.

- `datasets/` installs as `tf_prob_unet_datasets` (never as a module called `datasets`, which is
  Hugging Face's); its folders have no `__init__.py`, so they are listed as namespace packages.
- Every `*.flags` at the root is copied into `tf_prob_unet/flagfiles/` of the built package
  (`python -m tf_prob_unet.flagfiles` lists them); a new flagfile needs no change here.
- Every shipped model folder `tf_prob_unet/pretrained/NAME/` (its `model_config.json`,
  `flags.cfg`, `MODEL_CARD.md` and `checkpoints/`) is package data; a new one needs no change.
"""

import glob
import os

import setuptools
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = "tf_prob_unet_datasets"


def _packages():
  core = setuptools.find_packages(HERE, include=["tf_prob_unet", "tf_prob_unet.*"])
  builders = setuptools.find_namespace_packages(os.path.join(HERE, "datasets"),
                                                exclude=["*__pycache__*"])
  return core + [DATASETS] + [f"{DATASETS}.{p}" for p in builders]


class BuildPyWithFlagfiles(build_py):
  """`build_py` that also copies the root's `*.flags` into `tf_prob_unet/flagfiles/`."""

  def run(self):
    super().run()
    if getattr(self, "editable_mode", False):
      return  # an editable install reads them from the checkout (tf_prob_unet.flagfiles)
    target = os.path.join(self.build_lib, "tf_prob_unet", "flagfiles")
    self.mkpath(target)
    for path in sorted(glob.glob(os.path.join(HERE, "*.flags"))):
      self.copy_file(path, os.path.join(target, os.path.basename(path)))


setuptools.setup(
    packages=_packages(),
    package_dir={DATASETS: "datasets"},
    package_data={"tf_prob_unet.native": ["*.cc", "*.h"],
                  "tf_prob_unet.pretrained": ["*/model_config.json", "*/flags.cfg",
                                              "*/MODEL_CARD.md", "*/checkpoints/*"],
                  **{p: ["*.md", "*.bib", "*.txt", "*.tsv", "*.json"]
                     for p in _packages() if p.startswith(DATASETS)}},
    cmdclass={"build_py": BuildPyWithFlagfiles},
)
