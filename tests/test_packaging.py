"""The package as installed: flagfiles, builders found by import, the export entry point."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tf_prob_unet import flagfiles
from tf_prob_unet import input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flagfiles_lists_every_root_flagfile():
  root = sorted(os.path.basename(p)[:-len(".flags")] for p in glob.glob(f"{REPO}/*.flags"))
  assert flagfiles.names() == root
  path = flagfiles.path("synthetic")
  assert os.path.isabs(path) and open(path).read() == open(f"{REPO}/synthetic.flags").read()
  assert flagfiles.path("synthetic.flags") == path
  with pytest.raises(ValueError, match=r"expected one of .*synthetic.*found 'nope'"):
    flagfiles.path("nope")


def test_flagfiles_binary_from_another_directory(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, "-m", "tf_prob_unet.flagfiles", "lidc"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == flagfiles.path("lidc")
  listing = subprocess.run([sys.executable, "-m", "tf_prob_unet.flagfiles"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
  assert listing.stdout.split() == [flagfiles.path(n) for n in flagfiles.names()]
  bad = subprocess.run([sys.executable, "-m", "tf_prob_unet.flagfiles", "nope"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and bad.stderr.startswith("error: flagfile: expected one of")


def test_builders_are_found_by_import():
  spec = importlib.util.find_spec(
      "tf_prob_unet_datasets.synthetic_ambiguous.synthetic_ambiguous_dataset_builder")
  module = input_pipeline._local_builder_module(  # pylint: disable=protected-access
      "synthetic_ambiguous")
  # (A builder test may have loaded the same file under another name first: TFDS registers once.)
  assert os.path.realpath(module.__file__) == os.path.realpath(spec.origin)
  assert input_pipeline._local_builder_module("mnist") is None  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r"no builder named 'nope'.*'synthetic_ambiguous'"):
    input_pipeline.get_builder("nope/x")


def test_export_entry_point_names_its_commands(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, "-m", "tf_prob_unet.export"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 2
  assert "saved_model,tflite,predict_request" in run.stderr and "found none" in run.stderr
  missing = subprocess.run([sys.executable, "-m", "tf_prob_unet.export", "saved_model"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1] == (
      "error: --model_dir: expected a training run directory, found an empty string.")


def test_missing_extra_is_one_line_naming_the_pip_install(monkeypatch, capsys):
  from tf_prob_unet import cli, extras  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if not installed
  monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
  with pytest.raises(extras.MissingExtraError, match=(
      r"running \.tflite models needs ai_edge_litert, which is not installed: "
      r"pip install 'tf_prob_unet\[tflite\]'")):
    extras.require("ai_edge_litert.interpreter", "tflite", "running .tflite models")

  def body():
    extras.require("ai_edge_litert.interpreter", "tflite", "running .tflite models")
  with pytest.raises(SystemExit) as exit_info:
    cli.main_with_errors(body)(["binary"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: running .tflite models needs ai_edge_litert, which is not installed: "
                 "pip install 'tf_prob_unet[tflite]'"]


# --- The built wheel, installed alone into a fresh virtual environment ---------------------------

def _copy_source(destination):
  """The checkout's source tree (no .git, runs, build outputs) copied to `destination`."""
  skip = shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__",
                                ".pytest_cache")
  shutil.copytree(REPO, destination, symlinks=True, ignore=skip)


def _requirements(metadata_lines):
  """The `Requires-Dist` entries of a METADATA text that apply without extras here."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  found = []
  for line in metadata_lines:
    if line.startswith("Requires-Dist:"):
      requirement = Requirement(line.split(":", 1)[1].strip())
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        found.append(requirement)
  return found


def _core_closure(wheel):
  """The installed distributions (of the running environment) that the wheel's core needs:
  its `Requires-Dist` without extras, followed recursively."""
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(wheel) as archive:
    (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    pending = _requirements(archive.read(name).decode().splitlines())
  closure = {}
  while pending:
    requirement = pending.pop()
    key = requirement.name.lower().replace("_", "-")
    if key in closure:
      continue
    distribution = metadata.distribution(requirement.name)
    assert distribution.version in requirement.specifier, (requirement, distribution.version)
    closure[key] = distribution
    pending.extend(_requirements(f"Requires-Dist: {r}" for r in distribution.requires or []))
  return closure


def _core_venv(wheel, root):
  """A fresh virtual environment (no system site-packages) holding `wheel` and exactly the
  distributions its core requires (no extras).

  Downloading the TensorFlow stack again would take many minutes, so the dependencies' files
  are linked (or copied) from the running environment's installed distributions, each file its
  RECORD lists; pip then installs the wheel without an index, and `pip check` confirms that
  every requirement of what is installed is met. A dependency that the code needs but the core
  does not declare is absent here, and the run below fails at import.
  """
  venv = os.path.join(root, "venv")
  subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
  python = os.path.join(venv, "bin", "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  for distribution in _core_closure(wheel).values():
    base = distribution.locate_file("")
    for file in distribution.files or []:
      source = os.path.normpath(os.path.join(base, file))
      target = os.path.normpath(os.path.join(site, file))
      if not target.startswith(site + os.sep) or not os.path.isfile(source):
        continue  # scripts and data outside site-packages, and __pycache__ not written
      os.makedirs(os.path.dirname(target), exist_ok=True)
      try:
        os.link(source, target)
      except OSError:
        shutil.copy2(source, target)
  installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                              wheel], capture_output=True, text=True, timeout=600)
  assert installed.returncode == 0, installed.stderr[-3000:]
  check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True,
                         timeout=300)
  assert check.returncode == 0, check.stdout[-3000:]
  return venv


WHEEL_TEST_MODEL = "wheel_test_tiny"


def _add_tiny_shipped_model(source, scratch):
  """Packs an untrained tiny Probabilistic U-Net (32x32x1) into the copied source's
  `tf_prob_unet/pretrained/`, beside the models the checkout ships."""
  from tests.helpers import write_model_dir  # pylint: disable=g-import-not-at-top
  from tf_prob_unet.pretrained import pack  # pylint: disable=g-import-not-at-top
  run, _ = write_model_dir(scratch, input_shape=(32, 32, 1), num_classes=2, channels=(4, 8),
                           convs_per_block=1, latent_dim=3)
  with open(os.path.join(run, "flags.cfg"), "w") as f:
    f.write(f"--model=prob_unet\n--model_dir={run}\n--data_dir={scratch}\n")
  return pack.pack(run, WHEEL_TEST_MODEL, str(source / "tf_prob_unet" / "pretrained"),
                   log=lambda *_: None)


@pytest.mark.slow
def test_wheel_trains_evaluates_and_exports_outside_the_checkout(tmp_path):
  """Builds the wheel, installs its core (no extras) into a virtual environment of its own, and
  from a directory outside the checkout trains the synthetic demo a few steps with a packaged
  flagfile, evaluates it and exports a SavedModel; lists the shipped models and samples a PNG
  with them (`--model_dir=pretrained:NAME`)."""
  from tf_prob_unet import pretrained  # pylint: disable=g-import-not-at-top
  source, wheels = tmp_path / "source", tmp_path / "wheels"
  _copy_source(source)
  _add_tiny_shipped_model(source, tmp_path / "tiny_run")
  shipped = pretrained.names() + [WHEEL_TEST_MODEL]
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(wheels), str(source)],
                         capture_output=True, text=True, timeout=600)
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = glob.glob(str(wheels / "tf_prob_unet-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  for flagfile in glob.glob(f"{REPO}/*.flags"):
    assert f"tf_prob_unet/flagfiles/{os.path.basename(flagfile)}" in names
  assert ("tf_prob_unet_datasets/synthetic_ambiguous/synthetic_ambiguous_dataset_builder.py"
          in names and "tf_prob_unet/export/saved_model.py" in names)
  assert not any(n.startswith(("datasets/", "export/", "tests/", "bench/")) for n in names)
  for name in shipped:  # every file of every shipped model's folder
    folder = source / "tf_prob_unet" / "pretrained" / name
    for file in (p for p in folder.rglob("*") if p.is_file()):
      assert f"tf_prob_unet/pretrained/{name}/{file.relative_to(folder).as_posix()}" in names

  venv = _core_venv(wheel, str(tmp_path))
  python = os.path.join(venv, "bin", "python")

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env.update(TF_CPP_MIN_LOG_LEVEL="2")  # (the native kernels: the user's usual build cache)

  def run(*args):
    proc = subprocess.run([python, *args], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc

  flagfile = run("-m", "tf_prob_unet.flagfiles", "synthetic").stdout.strip()
  assert flagfile.startswith(venv) and flagfile.endswith("synthetic.flags")
  assert not (elsewhere / "synthetic.flags").exists()
  train = run("-m", "tf_prob_unet.train", f"--flagfile={flagfile}",
              "--dataset=synthetic_ambiguous/lidc_like_tiny", "--channels=4,8",
              "--convs_per_block=1", "--batch_size=4", "--train_steps=3", "--log_every=3",
              "--eval_every=3", "--eval_batches=1", "--checkpoint_every=3",
              "--summary_every=3", "--shuffle_buffer=16")
  assert "step 3/3" in train.stdout
  assert (elsewhere / "runs" / "demo" / "model" / "model_config.json").exists()
  run("-m", "tf_prob_unet.evaluate", "--model_dir=runs/demo/model",
      "--output_dir=runs/demo/eval", "--num_samples=1,2", "--limit=4", "--batch_size=4")
  assert json.loads((elsewhere / "runs" / "demo" / "eval" / "metrics.json").read_text())
  run("-m", "tf_prob_unet.export", "saved_model", "--model_dir=runs/demo/model",
      "--export_dir=runs/export")
  assert (elsewhere / "runs" / "export" / "prob_unet" / "1" / "saved_model.pb").exists()

  listing = run("-m", "tf_prob_unet.pretrained").stdout.splitlines()
  assert [line.split("\t")[0] for line in listing] == sorted(shipped)
  for line in listing:
    name, path, summary = line.split("\t")
    assert path.startswith(venv) and summary
    assert run("-m", "tf_prob_unet.pretrained", name).stdout.strip() == path
    run("-m", "tf_prob_unet.pretrained", "verify", name)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for name in sorted({WHEEL_TEST_MODEL, *shipped[:1]}):
    config = json.loads(open(os.path.join(run("-m", "tf_prob_unet.pretrained", name).stdout
                                          .strip(), "model_config.json")).read())
    height, width, channels = config["input_shape"]
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(elsewhere / "crop.png")
    run("-m", "tf_prob_unet.sample", f"--model_dir=pretrained:{name}", "--image=crop.png",
        f"--output_dir=runs/samples_{name}", "--num_samples=4")
    out = elsewhere / "runs" / f"samples_{name}" / "crop"
    assert {"sample_03.png", "grid.png", "uncertainty.png", "uncertainty.npy"} <= set(
        os.listdir(out))
    assert np.asarray(Image.open(out / "sample_00.png")).shape == (height, width)
