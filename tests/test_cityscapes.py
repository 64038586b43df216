"""Cityscapes end to end on fake downloads: the flagfiles, the train and evaluate binaries."""

import dataclasses
import importlib
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import REPO, run_binary
from tf_prob_unet import input_pipeline, train_lib

cs = input_pipeline._local_builder_module("cityscapes_ambiguous")  # pylint: disable=protected-access
fake = importlib.import_module(
    "tf_prob_unet_datasets.cityscapes_ambiguous.dummy_data.fake_cityscapes")
# The reference's model and loss, which the smoke configuration keeps.
SHARED_KEYS = ("model", "dataset", "latent_dim", "num_fcomb_hidden", "beta", "kl_estimate",
               "weight_decay", "seed")


def _read_flagfile(name):
  lines = (l.strip() for l in open(os.path.join(REPO, name)))
  pairs = (l[2:].split("=", 1) for l in lines if l.startswith("--"))
  return {k: v for k, v in pairs}


def _built(config, tmp_path, size=(256, 512)):
  """The dataset built from fake downloads (small frames: resizing is tested by the builder)."""
  manual = tmp_path / "manual"
  frames = fake.write_cityscapes(str(manual), size=size)
  if config == "cue":
    fake.write_cues(str(manual), frames, "car")
  builder = cs.Builder(config=config, data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def test_flagfiles_point_at_the_builder(tmp_path):
  fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  reference, smoke = _read_flagfile("cityscapes.flags"), _read_flagfile("cityscapes_smoke.flags")
  for flags in (reference, smoke):
    assert set(flags) <= fields, set(flags) - fields
    builder = input_pipeline.get_builder(flags["dataset"], str(tmp_path), prepare=False)
    assert isinstance(builder, cs.Builder) and builder.builder_config.name == "rgb"
  assert {k: smoke[k] for k in SHARED_KEYS} == {k: reference[k] for k in SHARED_KEYS}
  # The reference hyper-parameters (REFERENCE.md 1.2-1.7).
  assert reference["channels"] == "32,64,128,192,192,192,192"
  assert (reference["convs_per_block"], reference["latent_dim"], reference["beta"]) == (
      "3", "6", "1.0")
  assert (reference["lr_values"], reference["lr_boundaries"], reference["train_steps"]) == (
      "1e-4,5e-5,1e-5,5e-7", "80000,160000,240000", "240000")


@pytest.mark.slow
def test_smoke_flags_train_and_evaluate_binaries_on_fake_cityscapes(tmp_path):
  _built("rgb", tmp_path)
  run, out = tmp_path / "run", tmp_path / "eval"
  train = run_binary("tf_prob_unet.train", "--flagfile=cityscapes_smoke.flags",
                  f"--data_dir={tmp_path / 'data'}", f"--model_dir={run}", "--train_steps=2",
                  "--channels=4,8", "--convs_per_block=1", "--batch_size=2",
                  "--checkpoint_every=2", "--eval_every=2", "--eval_batches=1",
                  "--log_every=1", "--summary_every=1", "--shuffle_buffer=8")
  assert train.returncode == 0, train.stderr[-3000:]
  assert "cityscapes_ambiguous/rgb ((256, 512, 3), 24 classes)" in train.stdout
  assert "step 2/2" in train.stdout and "validation at step 2" in train.stdout
  evaluate = run_binary("tf_prob_unet.evaluate", f"--model_dir={run}", f"--output_dir={out}",
                     "--num_samples=1,2")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["num_images"] == 3  # frankfurt, lindau, munster
  assert len(metrics["mode_freq_true"]) == 32
  assert metrics["mode_freq_true"][0] == pytest.approx(0.1088, abs=5e-5)
  assert sum(metrics["mode_freq_sampled"]["2"]) == pytest.approx(1.0)
  true_rates = sorted(round(v["true"], 4) for v in metrics["flip_rates"].values())
  assert true_rates == sorted(round(k / 17, 4) for k in (8, 7, 6, 5, 4))
  assert all(np.isfinite(metrics["ged"][n]) for n in ("1", "2"))
  assert (out / "samples.png").stat().st_size > 1000


@pytest.mark.slow
def test_cue_config_trains_and_evaluates(tmp_path):
  _built("cue", tmp_path)
  config = train_lib.TrainConfig(
      dataset="cityscapes_ambiguous/cue", data_dir=str(tmp_path / "data"),
      model_dir=str(tmp_path / "run"), train_steps=1, batch_size=2, channels=(4, 8),
      convs_per_block=1, lr_values=(1e-4,), lr_boundaries=(), checkpoint_every=1,
      eval_every=100, eval_batches=1, shuffle_buffer=8)
  result = train_lib.run(config, log=lambda *_: None)
  assert result["step"] == 1
  assert np.isfinite(result["logs"]["loss"])
  model, info = train_lib.load_model(config.model_dir)
  assert tuple(info["input_shape"]) == (256, 512, 3 + 19)  # image + one-hot cue
  builder = input_pipeline.get_builder(config.dataset, config.data_dir)
  spec = input_pipeline.dataset_spec(builder)
  batch = next(iter(input_pipeline.eval_dataset(builder, spec, 2, split="test")))
  assert batch["image"].shape == (2, 256, 512, 22) and batch["modes"].shape[1] == 32
  samples = model.sample(batch["image"], 2, seed=0).numpy()
  assert samples.shape == (2, 2, 256, 512) and samples.min() >= 0 and samples.max() < 24
