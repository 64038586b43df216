"""Distributed training, fault tolerance, the NaN/Inf guard and input validation.

Multi-device runs need a fresh process (logical devices are fixed at start-up, a
MultiWorkerMirroredStrategy needs its TF_CONFIG), so those tests start this file as a script
(`python tests/test_distributed.py mirrored ...`) or the train binary in subprocesses.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # when run as a script
  sys.path.insert(0, REPO)

from tf_prob_unet import input_pipeline, run_dir, train_lib  # noqa: E402
from tf_prob_unet.models import common  # noqa: E402

TINY = "synthetic_ambiguous/lidc_like_tiny"
STEP_LINE = re.compile(r"^step (\d+)/\d+ .* \| loss (\S+) ")


def _config(root, name="run", **kw):
  """A tiny run `root/name` on the tiny synthetic data in `root/data`."""
  base = dict(dataset=TINY, data_dir=os.path.join(root, "data"), model_dir=os.path.join(root, name),
              train_steps=4, batch_size=4, channels=(4, 8), convs_per_block=1,
              lr_values=(1e-3,), lr_boundaries=(), checkpoint_every=2, summary_every=1,
              log_every=1, eval_every=100, eval_batches=1, shuffle_buffer=16)
  base.update(kw)
  return train_lib.TrainConfig(**base)


def _flags(config, **overrides):
  """The train binary's command line for `config`."""
  lines = train_lib.config_to_flags(config).splitlines()
  lines += [f"--{k}={v}" for k, v in overrides.items()]
  return [sys.executable, "-u", "-m", "tf_prob_unet.train"] + lines


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  env.update(extra)
  return env


def _losses(stdout):
  """`{step: loss}` of the progress lines (one per step with `log_every=1`)."""
  out = {}
  for line in stdout.splitlines():
    m = STEP_LINE.match(line)
    if m:
      out[int(m.group(1))] = float(m.group(2))
  return out


def _weights(model_dir):
  model, info = run_dir.load_model(model_dir)
  return {k: v.numpy() for k, v in run_dir.model_weights(model).items()}, info["step"]


def _assert_same_weights(a, b, atol):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


def _max_change(a, b):
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# --- seeds ------------------------------------------------------------------------------------


def test_per_example_seeds_give_the_same_noise_in_any_split():
  seeds = tf.constant([[7, i] for i in range(6)], tf.int64)
  full = common.normal_noise(tf.constant([6, 3]), seeds).numpy()
  halves = [common.normal_noise([3, 3], seeds[:3]).numpy(),
            common.normal_noise([3, 3], seeds[3:]).numpy()]
  np.testing.assert_array_equal(np.concatenate(halves), full)
  # Each row is its own draw (not one row repeated) and depends on its seed only.
  assert len({tuple(r) for r in full.round(6)}) == 6
  np.testing.assert_array_equal(
      full[4], tf.random.stateless_normal([3], seed=seeds[4]).numpy())


def test_check_finite_names_the_step_and_terms(tmp_path):
  train_lib.check_finite({"loss": 1.0, "kl": 0.5, "grad_norm": 3.0}, 3, str(tmp_path))
  with pytest.raises(FloatingPointError) as e:
    train_lib.check_finite({"loss": float("nan"), "kl": 0.5, "grad_norm": float("inf")}, 7,
                           str(tmp_path))
  message = str(e.value)
  assert "step 7" in message and "'loss' = nan" in message and "gradient norm = inf" in message
  assert "'kl'" not in message and "\n" not in message


# --- the NaN/Inf guard -----------------------------------------------------------------------


def test_injected_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _config(tmp_path, train_steps=8, checkpoint_every=2, debug_nan_step=5)
  with pytest.raises(FloatingPointError) as e:
    train_lib.run(config, log=lambda *_: None)
  message = str(e.value)
  # NaN images reach the loss terms or only the gradients (CPU ReLU kernels may turn NaN into
  # 0); either way the step and the non-finite quantities are named.
  assert re.match(r"Training stopped at step 5: non-finite (loss term '\w+'|gradient norm) = "
                  r"nan", message), message
  assert "ckpt-4 is intact" in message and "\n" not in message
  checkpoints = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
  assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-4")
  assert not [f for f in os.listdir(checkpoints) if f.startswith("ckpt-5")]
  weights, step = _weights(config.model_dir)
  assert step == 4
  assert all(np.isfinite(w).all() for w in weights.values())


# --- one device vs two (MirroredStrategy) ------------------------------------------------------


def _child_mirrored(root, **kw):
  """Runs in a fresh process: two logical CPUs, the default and the mirrored strategy."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  out = {}
  for strategy in ("default", "mirrored"):
    lines = []
    result = train_lib.run(_config(root, name=strategy, strategy=strategy, **kw),
                           log=lines.append)
    replicas = re.search(r"on (\d+) replica", lines[0]).group(1)
    out[strategy] = {"losses": _losses("\n".join(lines)), "replicas": int(replicas),
                     "step": result["step"]}
  print(json.dumps(out))


def _mirrored_matches_one_device(tmp_path, mode):
  """Runs `_child_mirrored` (`mode`: the script's argument), checks that one device and two
  replicas logged the same losses and saved the same weights; returns the one-device weights."""
  proc = subprocess.run([sys.executable, __file__, mode, str(tmp_path)], env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["default"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
  assert out["mirrored"]["step"] == 4
  one, two = out["default"]["losses"], out["mirrored"]["losses"]
  assert sorted(one) == ["1", "2", "3", "4"] and one.keys() == two.keys()
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5), step
  single, _ = _weights(str(tmp_path / "default"))
  mirrored, _ = _weights(str(tmp_path / "mirrored"))
  _assert_same_weights(mirrored, single, atol=2e-5)
  return single, mirrored


@pytest.mark.slow
def test_mirrored_on_two_devices_matches_one_device(tmp_path):
  single, _ = _mirrored_matches_one_device(tmp_path, "mirrored")
  # The tolerance is meaningful: two steps of training move the weights far more than that.
  earlier, _ = run_dir.load_model(str(tmp_path / "default"), checkpoint=str(
      tmp_path / "default" / "checkpoints" / "ckpt-2"))
  assert _max_change(single, {k: v.numpy() for k, v in
                              run_dir.model_weights(earlier).items()}) > 1e-3


@pytest.mark.slow
def test_geco_on_two_devices_matches_one_device(tmp_path):
  """GECO's top-k is taken over the global batch: the replicas gather their scores, take the
  global top k and keep their own rows, so two replicas select the pixels one device selects
  (each example's Gumbel noise comes from its own seed); the EMA and the selected count are of
  the global batch, so lambda, C and the EMA agree too."""
  proc = subprocess.run([sys.executable, __file__, "top_k"], env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  selected = json.loads(proc.stdout.strip().splitlines()[-1])
  # Both replicas hold selected pixels, in unequal numbers (a per-replica top-k would give each
  # exactly k / 2), and together exactly the one-device selection.
  assert selected["same"] and selected["k"] == sum(selected["per_replica"])
  assert min(selected["per_replica"]) > 0 and len(set(selected["per_replica"])) == 2
  single, mirrored = _mirrored_matches_one_device(tmp_path, "mirrored_geco")
  assert {"geco/multiplier_v", "geco/rec_ema", "geco/ema_initialized"} <= single.keys()
  np.testing.assert_allclose(mirrored["geco/rec_ema"], single["geco/rec_ema"], rtol=1e-5)
  # lambda moved (so agreeing is not trivial) and the EMA holds a real reconstruction value.
  assert abs(float(single["geco/multiplier_v"]) - float(np.log(np.e - 1))) > 1e-3
  assert float(single["geco/rec_ema"]) > 0


# --- two workers (MultiWorkerMirroredStrategy) --------------------------------------------------


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.slow
def test_two_workers_match_a_single_process(tmp_path):
  config = _config(tmp_path, name="cluster", strategy="multi_worker_mirrored", train_steps=3,
                   checkpoint_every=3)
  input_pipeline.get_builder(TINY, config.data_dir)  # prepared once, not by both workers at once
  cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
  procs = []
  for index in range(2):
    scratch = tmp_path / f"scratch{index}"
    scratch.mkdir()
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    procs.append(subprocess.Popen(
        _flags(config), cwd=REPO, env=_env(TF_CONFIG=tf_config, TMPDIR=str(scratch)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    outputs.append(stdout)
  assert all("on 2 replica(s)" in out for out in outputs)
  single_config = _config(tmp_path, name="single", train_steps=3, checkpoint_every=3)
  lines = []
  train_lib.run(single_config, log=lines.append)
  single_losses = _losses("\n".join(lines))
  for out in outputs:
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3]
    for step, loss in single_losses.items():
      assert losses[step] == pytest.approx(loss, rel=1e-5), step
  chief, step = _weights(config.model_dir)
  single, _ = _weights(single_config.model_dir)
  assert step == 3
  _assert_same_weights(chief, single, atol=2e-5)
  # Only the chief wrote into the run; the other worker's scratch directory is gone.
  events = os.listdir(os.path.join(config.model_dir, "summaries", "train"))
  assert len(events) == 1, events
  assert "validation" in outputs[0] and "validation" not in outputs[1]
  assert not os.listdir(tmp_path / "scratch1")


# --- SIGKILL and restart -------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_restart_finishes_like_an_uninterrupted_run(
    tmp_path):
  every, total = 4, 40
  config = _config(tmp_path, name="killed", train_steps=total, checkpoint_every=every,
                   keep_checkpoints=100)
  command = _flags(config)
  checkpoints = str(tmp_path / "killed" / "checkpoints")
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # Killed as soon as the first checkpoint is complete (its state file names it).
    while (not tf.train.latest_checkpoint(checkpoints) and proc.poll() is None
           and time.time() < deadline):
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  reached = max(_losses(log_path.read_text()))
  assert reached < total
  saved = int(tf.train.latest_checkpoint(checkpoints).rsplit("-", 1)[1])
  again = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  restored = int(re.search(r"Restored \S+ at step (\d+)", again.stdout).group(1))
  assert restored == saved >= every
  assert reached - restored <= every  # at most one checkpoint interval of work was lost
  assert min(_losses(again.stdout)) == restored + 1 and max(_losses(again.stdout)) == total
  assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{total}")
  # Model, optimizer, step and input position were all restored: the result is the same as a
  # run that was never interrupted.
  train_lib.run(_config(tmp_path, name="straight", train_steps=total, checkpoint_every=total),
                log=lambda *_: None)
  resumed, step = _weights(config.model_dir)
  straight, _ = _weights(str(tmp_path / "straight"))
  assert step == total
  _assert_same_weights(resumed, straight, atol=1e-5)


# --- bad inputs -----------------------------------------------------------------------------------


def _bad_inputs_dir(tmp_path):
  folder = tmp_path / "builders" / "bad_inputs"
  folder.mkdir(parents=True)
  shutil.copy(os.path.join(REPO, "tests", "bad_inputs_builder.py"),
              folder / "bad_inputs_dataset_builder.py")
  return str(tmp_path / "builders")


def test_bad_features_and_label_values_are_named(tmp_path, monkeypatch):
  monkeypatch.setenv(input_pipeline.DATASETS_DIR_ENV, _bad_inputs_dir(tmp_path))
  data_dir = str(tmp_path / "data")
  for config, expected in (("image_rank", r"'image': expected uint8 \[H, W, C\], found uint8 of "
                                          r"shape \(32, 32\)"),
                           ("image_dtype", r"'image': expected uint8 \[H, W, C\], found float32")):
    builder = input_pipeline.get_builder(f"bad_inputs/{config}", data_dir)
    with pytest.raises(ValueError, match=expected):
      input_pipeline.dataset_spec(builder)
  builder = input_pipeline.get_builder("bad_inputs/labels", data_dir)
  spec = input_pipeline.dataset_spec(builder)
  with pytest.raises(ValueError, match=r"example train_3: `masks` has label value 7; expected "
                                       r"values in \[0, 2\) or 255"):
    with input_pipeline.input_errors(builder, ("train",)):
      next(iter(input_pipeline.train_dataset(builder, spec, 4, shuffle_buffer=16)))
  with pytest.raises(ValueError, match="example test_3: `masks` has label value 7"):
    with input_pipeline.input_errors(builder, ("test",)):
      list(input_pipeline.eval_dataset(builder, spec, 4))


def test_ignore_label_passes_the_check():
  labels = tf.constant([[0, 1], [255, 1]])
  out = input_pipeline.check_label_values(labels, 2, "label", "x")
  np.testing.assert_array_equal(out.numpy(), labels.numpy())
  with pytest.raises(tf.errors.InvalidArgumentError):
    input_pipeline.check_label_values(tf.constant([[0, 2]]), 2, "label", "x")


def _record_file(data_dir, split):
  folder = os.path.join(data_dir, "synthetic_ambiguous", "lidc_like_tiny", "1.0.0")
  return os.path.join(folder, f"synthetic_ambiguous-{split}.tfrecord-00000-of-00001")


def _tree(path):
  """`{relative path: bytes}` of every file under `path` (empty if it does not exist)."""
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      full = os.path.join(root, f)
      with open(full, "rb") as fh:
        out[os.path.relpath(full, path)] = fh.read()
  return out


@pytest.mark.slow
def test_bad_inputs_through_the_binaries_fail_in_one_line_and_write_nothing(tmp_path):
  builders = _bad_inputs_dir(tmp_path)
  # A trained run, to resume with an incompatible dataset and to evaluate on damaged records.
  trained = _config(tmp_path, name="trained", train_steps=2)
  train_lib.run(trained, log=lambda *_: None)
  before = _tree(trained.model_dir)
  damaged = {}
  for kind in ("truncated", "corrupted"):
    data_dir = str(tmp_path / f"data_{kind}")
    shutil.copytree(trained.data_dir, data_dir)
    for split in ("train", "test"):
      path = _record_file(data_dir, split)
      size = os.path.getsize(path)
      if kind == "truncated":
        os.truncate(path, size // 3)
      else:
        with open(path, "r+b") as f:
          f.seek(size // 3)
          f.write(b"\xff\xfe\xfd\xfc")
    damaged[kind] = data_dir

  fresh = lambda name, **kw: _flags(_config(tmp_path, name=name, **kw))  # noqa: E731
  cases = [
      ("rank", fresh("rank", dataset="bad_inputs/image_rank", data_dir=str(tmp_path / "bad")),
       r"--dataset: bad_inputs/image_rank/1.0.0 feature 'image': expected uint8 \[H, W, C\], "
       r"found uint8 of shape \(32, 32\)"),
      ("dtype", fresh("dtype", dataset="bad_inputs/image_dtype", data_dir=str(tmp_path / "bad")),
       r"--dataset: .* feature 'image': expected uint8 \[H, W, C\], found float32"),
      ("labels", fresh("labels", dataset="bad_inputs/labels", data_dir=str(tmp_path / "bad")),
       r"--dataset: bad_inputs/labels/1.0.0 example train_3: `masks` has label value 7"),
      ("truncated", fresh("truncated", data_dir=damaged["truncated"]),
       r"--dataset: .*: record \d+ of synthetic_ambiguous-train.tfrecord-00000-of-00001 is "
       r"corrupt or truncated \(truncated record"),
      ("corrupted", fresh("corrupted", data_dir=damaged["corrupted"]),
       r"--dataset: .*: record \d+ of synthetic_ambiguous-train.tfrecord-00000-of-00001 is "
       r"corrupt or truncated \(corrupted record"),
      ("channels", _flags(trained, dataset="synthetic_ambiguous/cityscapes_like_tiny"),
       r"--model_dir: .* cannot resume with this command: input_shape, kwargs.num_classes "
       r"differ \(input_shape: run has \[32, 32, 1\], this command gives \[32, 32, 9\]"),
      ("evaluate", [sys.executable, "-m", "tf_prob_unet.evaluate",
                    f"--model_dir={trained.model_dir}", f"--data_dir={damaged['truncated']}",
                    f"--output_dir={tmp_path / 'evaluate'}", "--num_samples=1"],
       r"--dataset: .*: record \d+ of synthetic_ambiguous-test.tfrecord-00000-of-00001 is "
       r"corrupt or truncated"),
  ]
  for name, command, expected in cases:
    proc = subprocess.run(command, cwd=REPO, env=_env(TF_PROB_UNET_DATASETS_DIR=builders)
                          if name in ("rank", "dtype", "labels") else _env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, (name, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match("error: " + expected, last), (name, last)
    assert "Traceback" not in proc.stderr, name
    assert not os.path.exists(tmp_path / name), name  # a fresh run or report: nothing at all
  assert _tree(trained.model_dir) == before  # the existing run: not a byte changed


def _child_top_k():
  """Runs in a fresh process: GECO's top-k on one device and split over two replicas."""
  from tf_prob_unet import objectives  # pylint: disable=import-outside-toplevel
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  rng = np.random.default_rng(0)
  ce = tf.constant(rng.exponential(size=(4, 8, 8)) * np.array([1, 1, 3, 3])[:, None, None],
                   tf.float32)
  valid = tf.constant(rng.random((4, 8, 8)) > 0.1, tf.float32)
  seeds = tf.constant([[5, i] for i in range(4)], tf.int64)
  args = (ce, valid, seeds)
  one = objectives.top_k_mask(ce, valid, 0.1, "stochastic", seeds).numpy()
  strategy = tf.distribute.MirroredStrategy()
  parts = strategy.run(
      tf.function(lambda c, v, s: objectives.top_k_mask(c, v, 0.1, "stochastic", s)),
      args=train_lib.distribute_batch(strategy, args))
  two = np.concatenate([p.numpy() for p in strategy.experimental_local_results(parts)])
  print(json.dumps({"same": bool((one == two).all()), "k": int(one.sum()),
                    "per_replica": [int(two[:2].sum()), int(two[2:].sum())]}))


if __name__ == "__main__":
  if sys.argv[1] == "mirrored":
    _child_mirrored(sys.argv[2])
  elif sys.argv[1] == "top_k":
    _child_top_k()
  elif sys.argv[1] == "mirrored_geco":
    # 5% of a 4-image 32x32 batch: 204 pixels, split unevenly between the replicas.
    _child_mirrored(sys.argv[2], objective="geco", top_k_percentage=0.05)
