"""Cityscapes end to end on fake downloads: the flagfiles, the train and evaluate binaries."""

import dataclasses
import importlib
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.helpers import REPO, run_binary
from tf_prob_unet import input_pipeline, make_cues_lib, run_dir, train_lib

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


def _build(config, manual, data_dir):
  return fake.build(cs.Builder, config, manual, data_dir)


def _built_rgb(tmp_path):
  """`rgb` built from fake downloads (small frames: the builder tests check the resizing)."""
  fake.write_cityscapes(str(tmp_path / "manual"), size=(256, 512))
  return _build("rgb", tmp_path / "manual", tmp_path / "data")


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
  _built_rgb(tmp_path)
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


def test_fold_synonyms_adds_each_synonym_to_its_class():
  flips = ((1, 3, 0.5), (0, 4, 0.5))  # classes 0-2, synonyms 3 (of 1) and 4 (of 0)
  probs = np.array([[0.1, 0.3, 0.35, 0.2, 0.05],  # 1 + 3 = 0.5 beats 2
                    [0.3, 0.1, 0.35, 0.0, 0.25],  # 0 + 4 = 0.55 beats 2
                    [0.2, 0.1, 0.6, 0.05, 0.05]])  # 2 stays
  labels = make_cues_lib.fold_synonyms(tf.math.log(probs), flips, 3).numpy()
  np.testing.assert_array_equal(labels, [1, 0, 2])


@pytest.mark.slow
def test_cue_route_unet_make_cues_build_and_train(tmp_path):
  """The documented route: cue network, make_cues binary, cue build, Probabilistic U-Net."""
  _built_rgb(tmp_path)
  tiny = dict(data_dir=str(tmp_path / "data"), train_steps=1, batch_size=2, channels=(4, 8),
              convs_per_block=1, lr_values=(1e-4,), lr_boundaries=(), checkpoint_every=1,
              eval_every=100, eval_batches=1, shuffle_buffer=8)
  train_lib.run(train_lib.TrainConfig(model="unet", dataset="cityscapes_ambiguous/rgb",
                                      model_dir=str(tmp_path / "cue_net"), **tiny),
                log=lambda *_: None)
  cues = tmp_path / "manual" / "cues"
  proc = run_binary("tf_prob_unet.make_cues", f"--model_dir={tmp_path / 'cue_net'}",
                    f"--output_dir={cues}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Wrote 9 cues (train 3, validation 3, test 3)" in proc.stdout
  written = sorted(p.relative_to(cues).as_posix() for p in cues.rglob("*.png"))
  assert written[0] == "test/frankfurt/frankfurt_000000_000294_cue_trainIds.png"
  assert len(written) == 9 and not list(cues.rglob(".tmp-*"))
  builder = _build("cue", tmp_path / "manual", tmp_path / "data")
  for ex in tfds.as_numpy(builder.as_dataset(split="validation")):
    fid = ex["id"].decode()
    png = np.asarray(Image.open(cues / "validation" / fid.split("_")[0] /
                                f"{fid}_cue_trainIds.png"))
    np.testing.assert_array_equal(ex["cue"], png)
    assert ex["cue"].max() <= 18
  config = train_lib.TrainConfig(dataset="cityscapes_ambiguous/cue",
                                 model_dir=str(tmp_path / "run"), **tiny)
  result = train_lib.run(config, log=lambda *_: None)
  assert result["step"] == 1 and np.isfinite(result["logs"]["loss"])
  model, info = run_dir.load_model(config.model_dir)
  assert tuple(info["input_shape"]) == (256, 512, 3 + 19)  # image + one-hot cue
  spec = input_pipeline.dataset_spec(builder)
  batch = next(iter(input_pipeline.eval_dataset(builder, spec, 2, split="test")))
  assert batch["image"].shape == (2, 256, 512, 22) and batch["modes"].shape[1] == 32
  samples = model.sample(batch["image"], 2, seed=0).numpy()
  assert samples.shape == (2, 2, 256, 512) and samples.min() >= 0 and samples.max() < 24
  # make_cues refuses a run that already takes a cue.
  with pytest.raises(ValueError, match="--model_dir: expected a run trained on a flip dataset "
                     "without a cue .*found one trained on cityscapes_ambiguous/cue"):
    make_cues_lib.run(make_cues_lib.MakeCuesConfig(model_dir=config.model_dir,
                                                   output_dir=str(tmp_path / "x")))
