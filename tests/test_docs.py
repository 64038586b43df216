"""The documented commands run as written: the README's quick start and Python example, and
docs/training.md.

Every fenced `sh` block of those sections is split into commands; the cheap ones (the synthetic
data; no LIDC or Cityscapes download, no server, no cluster) run in a fresh directory with tiny
flags appended (absl takes the last value of a flag), in the order they are written.
"""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = ("lidc", "cityscapes", "tfds build", "tensorboard", "docker", "curl", "TF_CONFIG",
        "pip install", "make ", "multi_worker", "mirrored", "--helpfull")
TINY = {
    "tf_prob_unet.train": ["--dataset=synthetic_ambiguous/lidc_like_tiny", "--channels=4,8",
                           "--convs_per_block=1", "--batch_size=4", "--train_steps=2",
                           "--log_every=2", "--eval_every=2", "--eval_batches=1",
                           "--checkpoint_every=2", "--summary_every=2", "--shuffle_buffer=16"],
    "tf_prob_unet.evaluate": ["--num_samples=1,2", "--limit=4", "--batch_size=4"],
    "tf_prob_unet.sample": ["--num_samples=2"],
}


def shell_commands(path, section=None):
  """The commands of the fenced `sh` blocks of `path` (of its `## section` only, if given)."""
  text = open(os.path.join(REPO, path)).read()
  if section:
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    text = text[start:end if end >= 0 else None]
  commands = []
  for block in re.findall(r"```sh\n(.*?)```", text, re.S):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = line.split("  #")[0].strip()
      if line and not line.startswith("#"):
        commands.append(line)
  return commands


def _cheap(command):
  return command.startswith("python -m tf_prob_unet.") and not any(s in command for s in SKIP)


def _tiny(command):
  module = command.split()[2]
  return " ".join([command] + TINY.get(module, []))


@pytest.mark.slow
@pytest.mark.parametrize("path,section", [("README.md", "Quick start"),
                                          ("docs/training.md", None)])
def test_documented_commands_run(tmp_path, path, section):
  commands = [c for c in shell_commands(path, section) if _cheap(c)]
  assert any("tf_prob_unet.train" in c for c in commands), commands  # the test can fail
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # `python` in the commands is this interpreter (a wrapper, so that a virtualenv stays one).
  (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  (bin_dir / "python").chmod(0o755)
  work = tmp_path / "work"
  work.mkdir()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(
      work / "scan.png")
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
             PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  data_dir = f"--data_dir={tmp_path / 'data'}"
  for command in commands:
    command = _tiny(command) + (f" {data_dir}" if "tf_prob_unet.train" in command else "")
    proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
  if path == "README.md":  # the Python example, on the run the quick start trained
    text = open(os.path.join(REPO, path)).read()
    example = re.search(r"## In Python\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert "runs/mine" in example
    proc = subprocess.run([sys.executable, "-c", example + "\nassert labels.shape[1] == 16\n"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
