"""Training at scale: sharded index-based input, data-free checkpoints, pre-emption, disk failure.

Runs of the train binary (SIGTERM, two workers) start subprocesses; see test_distributed.py for
the helpers they share.
"""

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import test_distributed as td
from tf_prob_unet import (checkpointing, errors, export_lib, input_pipeline, run_dir,
                          train_lib)

TINY = td.TINY


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  builder = input_pipeline.get_builder(TINY, data_dir)
  return builder, input_pipeline.dataset_spec(builder), data_dir


def _rows(ds, steps):
  """`[steps]` lists of the dict fields of each element (numpy)."""
  return [{k: v.numpy() for k, v in batch.items()} for batch in ds.take(steps)]


# --- the index-based, sharded stream ----------------------------------------------------------


def test_two_workers_read_disjoint_halves_of_every_global_batch(tiny):
  builder, spec, data_dir = tiny
  config = train_lib.TrainConfig(dataset=TINY, data_dir=data_dir, batch_size=8, seed=3)
  steps = 12  # 96 positions: more than two epochs of the 40 examples
  single = _rows(train_lib.worker_train_dataset(
      builder, spec, config, 0, tf.distribute.InputContext(1, 0, 1), with_ids=True), steps)
  workers = [_rows(train_lib.worker_train_dataset(
      builder, spec, config, 0, tf.distribute.InputContext(2, w, 2), with_ids=True), steps)
      for w in range(2)]
  for s in range(steps):
    a, b, whole = workers[0][s], workers[1][s], single[s]
    assert len(a["id"]) == len(b["id"]) == 4
    # Disjoint positions, together exactly the global batch, each worker its replica's half.
    assert not set(a["position"]) & set(b["position"])
    np.testing.assert_array_equal(np.concatenate([a["id"], b["id"]]), whole["id"])
    np.testing.assert_array_equal(a["position"], np.arange(s * 8, s * 8 + 4))
    # The same examples with the same grader draws as one process reads.
    np.testing.assert_array_equal(np.concatenate([a["label"], b["label"]]), whole["label"])
    np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), whole["image"])
  # Each epoch is a permutation: every example once, and epochs are ordered differently.
  ids = np.concatenate([r["id"] for r in single])
  epochs = np.concatenate([r["epoch"] for r in single])
  for e in (0, 1):
    assert sorted(ids[epochs == e]) == sorted(ex["id"].numpy() for ex in
                                              builder.as_dataset(split="train"))
  assert list(ids[:40]) != list(ids[40:80])
  # Each example keeps its index (its place in the split) in every epoch: a stable key.
  indices = np.concatenate([r["index"] for r in single])
  pairs = set(zip(indices.tolist(), ids.tolist()))
  assert len(pairs) == len({i for i, _ in pairs}) == len({d for _, d in pairs}) == 40


def test_a_resumed_stream_reads_the_batches_of_an_uninterrupted_one(tiny):
  builder, spec, _ = tiny
  full = list(input_pipeline.train_dataset(builder, spec, 4, seed=1).take(14))
  resumed = list(input_pipeline.train_dataset(builder, spec, 4, seed=1, start=9 * 4).take(5))
  for (x, y), (xr, yr) in zip(full[9:], resumed):
    np.testing.assert_array_equal(x.numpy(), xr.numpy())
    np.testing.assert_array_equal(y.numpy(), yr.numpy())
  other = next(iter(input_pipeline.train_dataset(builder, spec, 4, seed=2)))
  assert not np.array_equal(other[0].numpy(), full[0][0].numpy())


# --- checkpoints ---------------------------------------------------------------------------------


def _state(n=3):
  v = tf.Variable(np.arange(n, dtype=np.float32))
  position = checkpointing.InputPosition(40)
  return v, position, tf.train.Checkpoint(v=v, input=position.trackable)


def test_save_publishes_keeps_and_restores_the_input_position(tmp_path):
  v, position, checkpoint = _state()
  directory = str(tmp_path / "ckpt")
  for step in (2, 4, 6):
    v.assign_add(tf.ones(3))
    position.set(step * 4 + 100)  # 100 + 24 = 124: epoch 3, index 4 of 40
    checkpointing.save(checkpoint, directory, step, keep=2)
  assert tf.train.latest_checkpoint(directory).endswith("ckpt-6")
  assert sorted(f for f in os.listdir(directory) if f.endswith(".index")) == [
      "ckpt-4.index", "ckpt-6.index"]
  assert checkpointing.read_position(tf.train.latest_checkpoint(directory), 40) == 124
  v2, position2, restore = _state()
  restore.read(tf.train.latest_checkpoint(directory)).assert_existing_objects_matched()
  assert (int(position2.epoch.numpy()), int(position2.index.numpy())) == (3, 4)
  np.testing.assert_array_equal(v2.numpy(), v.numpy())
  # Files written but never published (a process killed mid-write) are not the latest and go.
  checkpoint.write(os.path.join(directory, "ckpt-8"))
  assert tf.train.latest_checkpoint(directory).endswith("ckpt-6")
  assert checkpointing.remove_unpublished(directory) == ["ckpt-8"]
  assert not [f for f in os.listdir(directory) if f.startswith("ckpt-8")]


def _no_space(real_write, fail_from):
  """A `tf.train.Checkpoint.write` that fails like a full disk from the `fail_from`-th call on:
  part of the data is on disk when the error comes."""
  calls = []

  def write(self, file_prefix, options=None):
    calls.append(file_prefix)
    if len(calls) >= fail_from:
      with open(file_prefix + ".data-00000-of-00001", "wb") as f:
        f.write(b"\0" * 100)
      raise tf.errors.ResourceExhaustedError(
          None, None, f"{file_prefix}.data-00000-of-00001; No space left on device")
    return real_write(self, file_prefix, options=options)
  return write


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_names_the_path(tmp_path,
                                                                           monkeypatch):
  config = td._config(tmp_path, train_steps=6, checkpoint_every=2)  # pylint: disable=protected-access
  monkeypatch.setattr(tf.train.Checkpoint, "write", _no_space(tf.train.Checkpoint.write, 2))
  with pytest.raises(errors.WriteError) as e:
    train_lib.run(config, log=lambda *_: None)
  message = str(e.value)
  prefix = os.path.join(config.model_dir, "checkpoints", "ckpt-4")
  assert message.startswith(f"could not write checkpoint {prefix}: ") and "\n" not in message
  assert "No space left on device" in message and "ckpt-2 is intact" in message
  monkeypatch.undo()
  checkpoints = os.path.join(config.model_dir, "checkpoints")
  assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-2")
  assert not [f for f in os.listdir(checkpoints) if f.startswith("ckpt-4")]
  model, info = run_dir.load_model(config.model_dir)
  assert info["step"] == 2 and all(np.isfinite(v.numpy()).all() for v in model.variables)
  # The same command continues from step 2 once there is space again.
  result = train_lib.run(config, log=lambda *_: None)
  assert result["step"] == 6


def test_a_failed_export_write_leaves_the_previous_export_and_names_the_path(tmp_path,
                                                                           monkeypatch):
  from tests.conftest import EXPORT_MODEL_KWARGS  # pylint: disable=g-import-not-at-top
  from tests.helpers import write_model_dir  # pylint: disable=g-import-not-at-top
  model_dir, _ = write_model_dir(tmp_path / "run", **EXPORT_MODEL_KWARGS)
  base = str(tmp_path / "export")
  first = export_lib.export_saved_model(model_dir, base, version=1)
  before = sorted(os.listdir(first))

  def full_disk(self, path, **kwargs):
    del self, kwargs
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
      f.write(b"\0" * 10)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  # `ExportArchive()` builds the backend's archive class; its `write_out` writes the SavedModel.
  monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", full_disk)
  with pytest.raises(errors.WriteError) as e:
    export_lib.export_saved_model(model_dir, base, version=1, overwrite=True)
  message = str(e.value)
  assert message.startswith(f"could not write export {first}: No space left on device")
  assert "\n" not in message
  assert sorted(os.listdir(first)) == before  # the previous export is untouched
  assert sorted(os.listdir(os.path.dirname(first))) == ["1"]  # no temporary directory left
  monkeypatch.undo()
  tf.saved_model.load(first)


# --- pre-emption -------------------------------------------------------------------------------


def _wait_for_step(log_path, step, proc, timeout=600):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    losses = td._losses(open(log_path).read())  # pylint: disable=protected-access
    if losses and max(losses) >= step:
      return max(losses)
    time.sleep(0.05)
  raise AssertionError(f"the run did not reach step {step}: {open(log_path).read()[-2000:]}")


def _assert_same_as_uninterrupted(tmp_path, model_dir, total, atol):
  """The run in `model_dir` ended at `total` with the weights of one uninterrupted process."""
  straight = td._config(tmp_path, name="straight", train_steps=total, checkpoint_every=total)  # pylint: disable=protected-access
  train_lib.run(straight, log=lambda *_: None)
  resumed, step = td._weights(model_dir)  # pylint: disable=protected-access
  reference, _ = td._weights(straight.model_dir)  # pylint: disable=protected-access
  assert step == total
  td._assert_same_weights(resumed, reference, atol=atol)  # pylint: disable=protected-access


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_a_restart_ends_like_an_uninterrupted_run(tmp_path):
  total = 30
  # No regular checkpoint before the end: what the restart finds is the SIGTERM's.
  config = td._config(tmp_path, name="stopped", train_steps=total, checkpoint_every=total)  # pylint: disable=protected-access
  command = td._flags(config)  # pylint: disable=protected-access
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(command, cwd=td.REPO, env=td._env(), stdout=log,  # pylint: disable=protected-access
                            stderr=subprocess.STDOUT)
    _wait_for_step(log_path, 8, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == errors.EXIT_PREEMPTED
  text = log_path.read_text()
  reached = max(td._losses(text))  # pylint: disable=protected-access
  assert 8 <= reached < total
  assert f"Stop requested (SIGTERM): saved step {reached}" in text
  checkpoints = str(tmp_path / "stopped" / "checkpoints")
  assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{reached}")  # nothing lost
  again = subprocess.run(command, cwd=td.REPO, env=td._env(), capture_output=True, text=True,  # pylint: disable=protected-access
                         timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"starting at step {reached};" in again.stdout
  assert min(td._losses(again.stdout)) == reached + 1  # pylint: disable=protected-access
  _assert_same_as_uninterrupted(tmp_path, config.model_dir, total, atol=1e-5)


@pytest.mark.slow
def test_two_workers_stop_together_on_sigterm_and_resume_to_a_single_process_result(tmp_path):
  total = 12
  config = td._config(tmp_path, name="cluster", strategy="multi_worker_mirrored",  # pylint: disable=protected-access
                      train_steps=total, checkpoint_every=total)
  input_pipeline.get_builder(TINY, config.data_dir)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in td._free_ports(2)]}  # pylint: disable=protected-access

  def start(round_):
    procs, logs = [], []
    for index in range(2):
      scratch = tmp_path / f"scratch{round_}{index}"
      scratch.mkdir()
      tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
      logs.append(tmp_path / f"worker{round_}{index}.log")
      with open(logs[-1], "w") as log:
        procs.append(subprocess.Popen(
            td._flags(config), cwd=td.REPO,  # pylint: disable=protected-access
            env=td._env(TF_CONFIG=tf_config, TMPDIR=str(scratch)),  # pylint: disable=protected-access
            stdout=log, stderr=subprocess.STDOUT))
    return procs, logs

  procs, logs = start(0)
  # The non-chief worker is pre-empted once it is set up, while its first step is being built.
  deadline = time.time() + 600
  while "Worker 1 of 2 reads" not in logs[1].read_text() and time.time() < deadline:
    assert procs[1].poll() is None, logs[1].read_text()[-2000:]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=600) for p in procs]
  texts = [p.read_text() for p in logs]
  assert codes == [errors.EXIT_PREEMPTED] * 2, texts[0][-2000:] + texts[1][-2000:]
  stops = [max(td._losses(t)) for t in texts]  # pylint: disable=protected-access
  assert stops[0] == stops[1] < total  # both stopped after the same step
  assert "Worker 0 of 2 reads 2 of every 4 examples" in texts[0]
  assert "Worker 1 of 2 reads 2 of every 4 examples" in texts[1]
  assert "Stop requested (by another worker)" in texts[0]
  assert "Stop requested (SIGTERM)" in texts[1]
  checkpoints = os.path.join(config.model_dir, "checkpoints")
  assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{stops[0]}")
  procs, logs = start(1)
  codes = [p.wait(timeout=900) for p in procs]
  assert codes == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
  assert f"starting at step {stops[0]};" in logs[0].read_text()
  # The tolerance of the two-worker test in test_distributed.py.
  _assert_same_as_uninterrupted(tmp_path, config.model_dir, total, atol=2e-5)


# --- checkpoint size -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cityscapes_size_checkpoint_is_its_variables(tmp_path):
  from tests import test_cityscapes  # pylint: disable=g-import-not-at-top
  test_cityscapes._built_rgb(tmp_path)  # pylint: disable=protected-access  (256x512 frames)
  run = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tf_prob_unet.train", "--flagfile=cityscapes.flags",
       f"--data_dir={tmp_path / 'data'}", f"--model_dir={run}", "--train_steps=1",
       "--batch_size=1", "--checkpoint_every=1", "--eval_every=100", "--eval_batches=1",
       "--shuffle_buffer=1024"],
      cwd=td.REPO, env=td._env(), capture_output=True, text=True, timeout=900)  # pylint: disable=protected-access
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "((256, 512, 3), 24 classes)" in proc.stdout
  model, info = run_dir.load_model(str(run))
  optimizer = keras.optimizers.Adam(1e-4)
  optimizer.build(model.trainable_variables)
  variables = (checkpointing.variables_bytes(model.variables)
               + checkpointing.variables_bytes(optimizer.variables))
  size = checkpointing.size_bytes(info["checkpoint"])
  assert variables > 10e6  # the reference architecture: millions of parameters, Adam's slots
  assert variables <= size <= 1.05 * variables, (size, variables)


@pytest.mark.slow
def test_objective_state_is_checkpointed_and_resumes_exactly(tmp_path):
  """GECO's multiplier and moving average are model variables: saved, restored, resumed."""
  resumed = td._config(tmp_path, name="resumed", train_steps=2, objective="geco",  # pylint: disable=protected-access
                       geco_kappa=0.5)
  train_lib.run(resumed, log=lambda *_: None)
  first, _ = td._weights(resumed.model_dir)  # pylint: disable=protected-access
  assert any("geco" in k for k in first)
  train_lib.run(dataclasses.replace(resumed, train_steps=5), log=lambda *_: None)
  straight = td._config(tmp_path, name="straight", train_steps=5, objective="geco",  # pylint: disable=protected-access
                        geco_kappa=0.5)
  train_lib.run(straight, log=lambda *_: None)
  a, step = td._weights(resumed.model_dir)  # pylint: disable=protected-access
  b, _ = td._weights(straight.model_dir)  # pylint: disable=protected-access
  assert step == 5
  td._assert_same_weights(a, b, atol=1e-5)  # pylint: disable=protected-access
  geco = [k for k in a if "geco" in k]
  assert any(np.any(a[k] != first[k]) for k in geco)  # the state moved after the restart


@pytest.mark.slow
def test_fault_soak_ends_where_an_uninterrupted_run_ends(tmp_path):
  """`bench/soak.py` in small: 60 steps, 5 SIGKILLs (one mid-write), 2 SIGTERMs."""
  from bench import soak  # pylint: disable=g-import-not-at-top
  every = 10
  record = soak.soak(steps=60, checkpoint_every=every, kills=5, sigterms=2,
                     workdir=str(tmp_path / "soak"), data_dir=str(tmp_path / "data"),
                     timeout=900, log=lambda *_: None)
  assert record["soak_steps"] == 60 and record["soak_restarts"] == 7
  assert record["soak_max_abs_weight_diff"] <= 1e-5
  assert record["soak_max_lost_per_kill"] <= every
  assert record["soak_lost_steps_sigterm"] == 0
  assert record["checkpoint_over_variables"] <= 1.05
