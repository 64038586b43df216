"""docs/your_own_data.md: its commands run as written, on small data made here (end to end)."""

import json
import os
import pickle
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import helpers

DOC = os.path.join(helpers.REPO, "docs", "your_own_data.md")
# Appended to the documented commands (absl: the last value of a flag wins) to keep them tiny.
TINY = {
    "tf_prob_unet.train": ("--train_steps=4 --batch_size=4 --channels=4,8 --convs_per_block=1 "
                           "--checkpoint_every=4 --eval_every=4 --eval_batches=1 "
                           "--summary_every=2 --log_every=2 --shuffle_buffer=16"),
    "tf_prob_unet.evaluate": "--num_samples=1,4 --batch_size=4",
}


def doc_blocks():
  """{name: [command]} of the ```sh blocks marked `<!-- doc-test: name -->`."""
  text = open(DOC).read()
  blocks = {}
  for name, body in re.findall(r"<!-- doc-test: (\w+) -->\s*```sh\n(.*?)```", text, re.S):
    commands = body.replace("\\\n", " ").strip().splitlines()
    blocks[name] = [" ".join(c.split()) for c in commands]
  return blocks


def write_pickle(path, rng):
  data = {}
  for p in range(12):
    for s in range(2):
      image = rng.random((16, 16)).astype(np.float32)
      masks = [(rng.random((16, 16)) < 0.3).astype(np.uint8) for _ in range(7)]
      data[f"patient{p:04d}_slice{s:03d}"] = {"image": image, "masks": masks, "series": "x"}
  with open(path, "wb") as f:
    pickle.dump(data, f)


def write_lesions(root, rng):
  yy, xx = np.mgrid[:28, :30]
  cases = [("training", f"case_{i:03d}") for i in range(1, 13)] + [
      ("testing", f"case_{i:03d}") for i in range(101, 105)]
  for split, case in cases:
    folder = os.path.join(root, split, case)
    os.makedirs(folder)
    cy, cx = rng.integers(8, 20, 2)
    image = np.clip(rng.normal(60, 20, (28, 30)) + 120 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 30),
                    0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(folder, "image.png"))
    for rater, radius in zip("abc", (3, 5, 6)):
      mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2).astype(np.uint8) * 255
      Image.fromarray(mask).save(os.path.join(folder, f"label_{rater}.jpg"), quality=80)


def write_ct(root, rng):
  nib = pytest.importorskip("nibabel")
  for p in range(1, 4):
    folder = os.path.join(root, f"patient_{p:02d}")
    os.makedirs(folder)
    nib.save(nib.Nifti1Image(rng.normal(-600, 300, (40, 36, 5)).astype(np.int16), np.eye(4)),
             os.path.join(folder, "ct.nii.gz"))
    for r in range(1, 5):
      mask = np.zeros((40, 36, 5), np.uint8)
      mask[10:20 + r, 8:16, 1:3] = 1
      nib.save(nib.Nifti1Image(mask, np.eye(4)), os.path.join(folder, f"rater_{r}.nii.gz"))


def run_block(commands, cwd, home):
  """Runs each command with bash in `cwd` (`python` = this interpreter, HOME = `home`)."""
  bin_dir = os.path.join(home, "bin")
  os.makedirs(bin_dir, exist_ok=True)
  wrapper = os.path.join(bin_dir, "python")  # A script, not a symlink: keeps the virtualenv.
  with open(wrapper, "w") as f:
    f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  os.chmod(wrapper, 0o755)
  env = dict(os.environ, HOME=home, PATH=bin_dir + os.pathsep + os.environ["PATH"],
             PYTHONPATH=helpers.REPO, TF_CPP_MIN_LOG_LEVEL="3")
  for command in commands:
    module = command.split()[2]
    full = f"{command} {TINY.get(module, '')}"
    result = subprocess.run(["bash", "-c", full], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (full, result.stderr[-3000:])


def run_import_in_process(command, cwd, home, monkeypatch):
  """Runs a documented `python -m tf_prob_unet.import_data ...` command in this process."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tf_prob_unet import import_data, import_lib  # pylint: disable=g-import-not-at-top
  argv = shlex.split(command.replace("$HOME", home))
  assert argv[:3] == ["python", "-m", "tf_prob_unet.import_data"], command
  fv = flags.FlagValues()
  import_data.define_flags(fv)
  fv(["import_data"] + argv[3:])
  monkeypatch.chdir(cwd)
  return import_lib.run(import_data.config_from_flags(fv), log=lambda *_: None)


def test_doc_pickle_and_nifti_commands_run_as_written(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  home, cwd = str(tmp_path / "home"), str(tmp_path / "work")
  os.makedirs(cwd)
  write_pickle(os.path.join(cwd, "my_raters.pickle"), rng)
  write_ct(os.path.join(cwd, "my_ct"), rng)
  blocks = doc_blocks()
  for name, raters, shape in (("pickle", 7, (16, 16, 1)), ("nifti", 4, (64, 64, 1))):
    (command,) = blocks[name]
    builder = run_import_in_process(command, cwd, home, monkeypatch)
    assert builder.data_dir.startswith(os.path.join(home, "tensorflow_datasets"))
    assert builder.info.metadata["num_raters"] == raters
    assert builder.info.features["image"].shape == shape
  counts = {s: v.num_examples for s, v in builder.info.splits.items()}
  assert sum(counts.values()) == 3 * 2  # Two annotated slices of each of three volumes.


def test_doc_has_the_three_examples():
  blocks = doc_blocks()
  assert set(blocks) == {"pickle", "folder", "nifti"}
  modules = [c.split()[2] for c in blocks["folder"]]
  assert modules == ["tf_prob_unet.import_data", "tf_prob_unet.train", "tf_prob_unet.evaluate",
                     "tf_prob_unet.sample"]
  assert all(c.startswith("python -m tf_prob_unet.") for b in blocks.values() for c in b)


@pytest.mark.slow
def test_doc_commands_run_as_written_import_train_evaluate_sample(tmp_path):
  rng = np.random.default_rng(0)
  home, cwd = str(tmp_path / "home"), str(tmp_path / "work")
  os.makedirs(home)
  os.makedirs(cwd)
  write_lesions(os.path.join(cwd, "my_lesions"), rng)
  Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
      os.path.join(cwd, "new_case.png"))
  blocks = doc_blocks()
  tfds_dir = os.path.join(home, "tensorflow_datasets")
  run_block(blocks["folder"], cwd, home)  # The pickle and NIfTI blocks: the test above.
  info = json.load(open(os.path.join(tfds_dir, "my_lesions", "1.0.0", "metadata.json")))
  assert info["num_raters"] == 3
  metrics = json.load(open(os.path.join(cwd, "runs/my_lesions/eval/metrics.json")))
  for key in ("ged", "hm_iou", "ncc", "qubiq_dice"):
    assert key in metrics and all(np.isfinite(v) for v in metrics[key].values()), key
  assert metrics["num_raters"] == 3
  assert 0 <= metrics["qubiq_dice"]["4"] <= 1
  samples = os.path.join(cwd, "runs/my_lesions/samples/new_case")
  masks = [np.asarray(Image.open(os.path.join(samples, f"sample_{j:02d}.png"))) for j in range(8)]
  assert all(m.shape == (32, 32) for m in masks)
