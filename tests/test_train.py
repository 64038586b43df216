"""The train and evaluate binaries end to end on the tiny synthetic config."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_binary as _binary
from tf_prob_unet import evaluate_lib, input_pipeline, run_dir, train_lib

TINY = "synthetic_ambiguous/lidc_like_tiny"


def _config(tmp_path, **kw):
  base = dict(dataset=TINY, data_dir=str(tmp_path / "data"), model_dir=str(tmp_path / "run"),
              train_steps=6, batch_size=4, channels=(4, 8), convs_per_block=1,
              lr_values=(1e-3,), lr_boundaries=(), checkpoint_every=3, summary_every=2,
              log_every=3, eval_every=3, eval_batches=1, shuffle_buffer=16)
  base.update(kw)
  return train_lib.TrainConfig(**base)


@pytest.mark.slow
def test_train_binary_end_to_end_and_resume(tmp_path):
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text("\n".join(train_lib.config_to_flags(_config(tmp_path)).splitlines()) + "\n")
  first = _binary("tf_prob_unet.train", f"--flagfile={flagfile}")
  assert first.returncode == 0, first.stderr[-2000:]
  run = tmp_path / "run"
  assert "step 6/6" in first.stdout
  assert (run / "flags.cfg").read_text() == flagfile.read_text()
  assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-6")
  events = list((run / "summaries" / "train").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
  assert list((run / "summaries" / "validation").glob("events.out.tfevents.*"))
  # Same command with more steps resumes at step 6 instead of starting over.
  second = _binary("tf_prob_unet.train", f"--flagfile={flagfile}", "--train_steps=9")
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Restored" in second.stdout and "starting at step 6" in second.stdout
  assert "step 9/9" in second.stdout and "step 3/" not in second.stdout
  assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-9")


def test_checkpoint_restores_the_trained_model_exactly(tmp_path):
  config = _config(tmp_path, eval_every=100)
  result = train_lib.run(config, log=lambda *_: None)
  assert result["step"] == 6
  model, info = run_dir.load_model(config.model_dir)
  assert info["step"] == 6
  builder = input_pipeline.get_builder(TINY, config.data_dir)
  spec = input_pipeline.dataset_spec(builder)
  images, labels = next(iter(input_pipeline.train_dataset(builder, spec, 4, seed=1)))
  seed = tf.constant([0, 0])
  restored = model.loss_terms(images, labels, seed, training=False)
  trained = result["model"].loss_terms(images, labels, seed, training=False)
  for key in ("rec_loss", "kl", "weight_decay_loss"):
    assert float(restored[key]) == pytest.approx(float(trained[key]), rel=1e-6)


def test_bad_flags_stop_with_one_clear_line(tmp_path):
  cases = [
      (["--dataset=nope/x"], "--dataset"),
      ([f"--dataset={TINY}", "--batch_size=0"], "--batch_size"),
      (["--strategy=tpu"], "--strategy"),
      (["--lr_values=1e-3,1e-4", "--lr_boundaries="], "--lr_values"),
  ]
  for args, flag in cases:
    proc = _binary("tf_prob_unet.train", f"--model_dir={tmp_path / 'bad'}",
                   f"--data_dir={tmp_path / 'data'}", *args)
    assert proc.returncode == 2, (args, proc.stderr[-1000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: " + flag), (args, last)
    assert "Traceback" not in proc.stderr
  missing = _binary("tf_prob_unet.train", f"--flagfile={tmp_path / 'missing.flags'}")
  assert missing.returncode != 0
  assert "missing.flags" in missing.stderr and "Traceback" not in missing.stderr


def test_batch_must_divide_replicas(tmp_path):
  config = _config(tmp_path, batch_size=3)
  strategy = tf.distribute.get_strategy()
  assert strategy.num_replicas_in_sync == 1  # 3 divides 1 replica: runs
  with pytest.raises(ValueError, match="--batch_size"):
    train_lib.check_batch_size(3, 2)
  del config


@pytest.mark.slow
def test_evaluate_writes_metrics_report_and_figures(tmp_path):
  config = _config(tmp_path, eval_every=100)
  train_lib.run(config, log=lambda *_: None)
  out = tmp_path / "eval"
  proc = _binary("tf_prob_unet.evaluate", f"--model_dir={config.model_dir}",
                 f"--output_dir={out}", "--num_samples=1,4")
  assert proc.returncode == 0, proc.stderr[-2000:]
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("ged", "hm_iou", "mode_tv", "mode_tv_per_image", "mode_tv_per_image_floor"):
    assert set(metrics[key]) == {"1", "4"}, key
    assert all(np.isfinite(v) for v in metrics[key].values())
  assert set(metrics["diversity"]) == {"4"}
  assert set(metrics["ged_resampled"]) == {"1", "4"}
  assert metrics["conventions"]["ged_reference"].startswith("exact modes")
  ref = metrics["ged_ideal"]
  assert ref["set"]["4"] <= ref["iid"]["4"] < ref["iid"]["1"]
  assert len(metrics["mode_freq_true"]) == 4 and abs(sum(metrics["mode_freq_true"]) - 1) < 1e-5
  assert abs(sum(metrics["mode_freq_sampled"]["4"]) - 1) < 1e-6
  assert metrics["num_images"] == 8
  assert "| run |" in (out / "report.md").read_text()
  for png in ("samples.png", "ged_distribution.png", "mode_frequencies.png"):
    assert (out / png).stat().st_size > 1000
  # The same samples give the same numbers (seeded draws).
  again = evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=(config.model_dir,), output_dir=str(tmp_path / "eval2"), num_samples=(1, 4)),
      log=lambda *_: None)
  assert again["run"]["ged"]["4"] == pytest.approx(metrics["ged"]["4"], rel=1e-9)


def test_evaluate_rejects_run_without_checkpoint(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="--model_dir"):
    run_dir.load_model(str(tmp_path / "empty"))


@pytest.mark.slow
def test_flip_dataset_trains_and_two_runs_evaluate_side_by_side(tmp_path):
  runs = []
  for name in ("a", "b"):
    config = _config(tmp_path, dataset="synthetic_ambiguous/cityscapes_like_tiny",
                     model_dir=str(tmp_path / name), train_steps=2, eval_every=100, seed=len(runs))
    train_lib.run(config, log=lambda *_: None)
    runs.append(config.model_dir)
  lines = []
  results = evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=tuple(runs), output_dir=str(tmp_path / "eval"), num_samples=(1, 2)),
      log=lines.append)
  assert set(results) == {"a", "b"}
  for r in results.values():
    assert len(r["mode_freq_true"]) == 8
    assert set(r["flip_rates"]) and all(0 <= v["true"] <= 1 for v in r["flip_rates"].values())
    assert "per-class IoU" in r["conventions"]["distance"]
  combined = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert set(combined["models"]) == {"a", "b"}
  report = (tmp_path / "eval" / "report.md").read_text()
  assert "| a |" in report and "| b |" in report and "flip rates" in report
  assert any("mode frequencies" in l for l in lines)
