"""The package as installed: flagfiles, builders found by import, the export entry point."""

import glob
import importlib.util
import os
import subprocess
import sys

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
  module = input_pipeline._local_builder_module("synthetic_ambiguous")  # pylint: disable=protected-access
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
  with pytest.raises(extras.MissingExtraError, match=r"running \.tflite models needs "
                     r"ai_edge_litert, which is not installed: pip install 'tf_prob_unet\[tflite\]'"):
    extras.require("ai_edge_litert.interpreter", "tflite", "running .tflite models")

  def body():
    extras.require("ai_edge_litert.interpreter", "tflite", "running .tflite models")
  with pytest.raises(SystemExit) as exit_info:
    cli.main_with_errors(body)(["binary"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: running .tflite models needs ai_edge_litert, which is not installed: "
                 "pip install 'tf_prob_unet[tflite]'"]
