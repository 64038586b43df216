"""A fault soak: training killed and pre-empted at random moments ends where an uninterrupted run ends.

Prints one JSON line. The train binary trains a tiny Probabilistic U-Net on the tiny synthetic
LIDC-like data for `--steps` steps (a checkpoint every `--checkpoint_every`) while this driver
SIGKILLs it `--kills` times at random steps (one of them while a checkpoint is being written:
its files are on disk, the state file does not name it yet) and sends SIGTERM `--sigterms`
times, restarting it each time with the same command until it finishes. The final weights are
compared with those of one uninterrupted run of the same command.

Figures: `soak_kills` (SIGKILLs sent), `soak_sigterms`, `soak_steps`,
`soak_max_abs_weight_diff` (final weights, interrupted vs uninterrupted), `soak_lost_steps_total`
(steps done again after the kills: the last step each killed process reached minus the step it
restarted from), `soak_lost_steps_sigterm` (the same after the SIGTERMs; the binary checkpoints
the step it is in, so 0), `soak_max_lost_per_kill`, `checkpoint_mb` and
`checkpoint_over_variables` (bytes of the final checkpoint over the bytes of the model's and the
optimizer's variables: the input position adds a few integers, no examples).

Usage: python bench/soak.py [--steps 300] [--checkpoint_every 20] [--kills 5] [--sigterms 2]
       [--seed 0] [--workdir runs/soak] [--data_dir runs/data]
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import emit, machine  # noqa: E402
from tf_prob_unet import checkpointing, input_pipeline, run_dir, train_lib  # noqa: E402

DATASET = "synthetic_ambiguous/lidc_like_tiny"
STEP = re.compile(r"^step (\d+)/")
START = re.compile(r"^Training .* starting at step (\d+);")
PAUSE = 0.5  # seconds a checkpoint stays written but unpublished (the mid-write window)
# Wide enough that the checkpoint is mostly weights (its fixed index and object graph are ~20 kB).
CHANNELS = (16, 32, 64)


def soak_config(model_dir, data_dir, steps, checkpoint_every, seed=0):
  """The tiny run the soak trains (one step per log line)."""
  return train_lib.TrainConfig(
      dataset=DATASET, data_dir=data_dir, model_dir=model_dir, train_steps=steps, batch_size=4,
      channels=CHANNELS, convs_per_block=1, latent_dim=3, lr_values=(1e-3,), lr_boundaries=(),
      checkpoint_every=checkpoint_every, keep_checkpoints=3, summary_every=10 ** 6, log_every=1,
      eval_every=10 ** 6, eval_batches=1, seed=seed, debug_checkpoint_pause=PAUSE)


def command(config):
  return [sys.executable, "-u", "-m", "tf_prob_unet.train"] + \
      train_lib.config_to_flags(config).splitlines()


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def _scan(log_path):
  """`(last step logged, step it started from)` of a process's log so far (None: not yet)."""
  reached, started = None, None
  with open(log_path) as f:
    for line in f:
      m = STEP.match(line)
      if m:
        reached = int(m.group(1))
      m = START.match(line)
      if m:
        started = int(m.group(1))
  return reached, started


def _published(checkpoint_dir):
  state = tf.train.get_checkpoint_state(checkpoint_dir)
  return {os.path.basename(p) for p in state.all_model_checkpoint_paths} if state else set()


def _unpublished(checkpoint_dir):
  """Whether a checkpoint's files are written but not (yet) named by the state file."""
  if not os.path.isdir(checkpoint_dir):
    return False
  before = _published(checkpoint_dir)
  names = {f.rsplit(".", 1)[0] for f in os.listdir(checkpoint_dir) if f.endswith(".index")}
  return bool(names - before - _published(checkpoint_dir))


def weights(model_dir):
  model, info = run_dir.load_model(model_dir)
  return {k: v.numpy() for k, v in run_dir.model_weights(model).items()}, info


def soak(steps=300, checkpoint_every=20, kills=5, sigterms=2, seed=0, workdir="runs/soak",
         data_dir="runs/data", timeout=1800, log=print):
  """Runs the soak; returns its record (the figures of the module docstring)."""
  if kills < 1:
    raise ValueError(f"--kills: expected at least 1 (one lands mid-write), found {kills}.")
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  input_pipeline.get_builder(DATASET, data_dir)  # prepared once, before any process is killed
  rng = random.Random(seed)
  config = soak_config(os.path.join(workdir, "soaked"), data_dir, steps, checkpoint_every)
  checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
  events = ["kill_mid_write"] + ["kill"] * (kills - 1) + ["sigterm"] * sigterms
  rng.shuffle(events)
  # Fault i lands near step (i + 1) * steps / (faults + 1), jittered by half an interval.
  spacing = steps / (len(events) + 1)
  targets = [int((i + 1) * spacing + rng.uniform(-0.4, 0.4) * spacing)
             for i in range(len(events))]
  deadline = time.time() + timeout
  lost_kill, lost_term, per_kill = 0, 0, []
  pending = None  # (kind, last step reached) of the previous process
  starts = 0
  while True:
    log_path = os.path.join(workdir, f"run{starts}.log")
    starts += 1
    with open(log_path, "w") as out:
      proc = subprocess.Popen(command(config), cwd=REPO, env=_env(), stdout=out,
                              stderr=subprocess.STDOUT)
    event = events.pop(0) if events else None
    target = targets.pop(0) if event else None
    if event == "kill_mid_write":  # the first checkpoint written after the target step
      target = max(target, 1)
    acted = False
    while proc.poll() is None:
      if time.time() > deadline:
        proc.kill()
        raise RuntimeError(f"soak: no progress within {timeout} s; see {log_path}")
      reached, restored = _scan(log_path)
      if pending and restored is not None:
        kind, before = pending
        lost = before - restored
        if kind == "sigterm":
          lost_term += lost
        else:
          lost_kill += lost
          per_kill.append(lost)
        log(f"restart {starts - 1}: {kind} at step {before}, restored {restored}, lost {lost}")
        pending = None
      if event and not acted and reached is not None and reached >= target:
        if event == "kill":
          time.sleep(rng.uniform(0.0, 0.2))
          proc.send_signal(signal.SIGKILL)
          acted = True
        elif event == "sigterm":
          proc.send_signal(signal.SIGTERM)
          acted = True
        elif _unpublished(checkpoint_dir):
          proc.send_signal(signal.SIGKILL)
          acted = True
      time.sleep(0.01)
    code = proc.wait()
    reached, restored = _scan(log_path)
    if event and not acted:
      raise RuntimeError(f"soak: the run ended (exit {code}) before its {event} at step "
                         f"{target}; see {log_path}")
    if event is None:
      if code != 0:
        raise RuntimeError(f"soak: the last run failed (exit {code}); see {log_path}")
      break
    expected = -signal.SIGKILL if event.startswith("kill") else checkpointing.EXIT_PREEMPTED
    if code != expected:
      raise RuntimeError(f"soak: after {event} expected exit {expected}, found {code}; see "
                         f"{log_path}")
    pending = (event, reached)
  straight = soak_config(os.path.join(workdir, "straight"), data_dir, steps, checkpoint_every)
  subprocess.run(command(straight), cwd=REPO, env=_env(), check=True, capture_output=True)
  soaked, info = weights(config.model_dir)
  reference, _ = weights(straight.model_dir)
  diff = max(float(np.abs(soaked[k] - reference[k]).max()) for k in reference)
  model, _ = run_dir.load_model(config.model_dir)
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(model.trainable_variables)
  variable_bytes = (checkpointing.variables_bytes(model.variables)
                    + checkpointing.variables_bytes(optimizer.variables))
  checkpoint_bytes = checkpointing.size_bytes(info["checkpoint"])
  return {"soak_kills": kills, "soak_sigterms": sigterms, "soak_steps": info["step"],
          "soak_restarts": starts - 1, "soak_max_abs_weight_diff": diff,
          "soak_lost_steps_total": lost_kill, "soak_lost_steps_sigterm": lost_term,
          "soak_max_lost_per_kill": max(per_kill) if per_kill else 0,
          "checkpoint_mb": checkpoint_bytes / 1e6,
          "checkpoint_over_variables": checkpoint_bytes / variable_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--checkpoint_every", type=int, default=20)
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--sigterms", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="runs/soak")
  parser.add_argument("--data_dir", default="runs/data")
  args = parser.parse_args()
  t0 = time.time()
  record = soak(args.steps, args.checkpoint_every, args.kills, args.sigterms, args.seed,
                args.workdir, args.data_dir, log=lambda m: print(m, file=sys.stderr))
  interval = args.checkpoint_every
  emit({"config": {"dataset": DATASET, "steps": args.steps, "checkpoint_every": interval,
                   "kills": args.kills, "sigterms": args.sigterms, "seed": args.seed,
                   "batch": 4, "channels": list(CHANNELS)},
        **machine(), **record, "soak_seconds": time.time() - t0,
        "targets": {"soak_max_abs_weight_diff": "<= 1e-5",
                    "soak_lost_steps_total": f"<= {interval * args.kills}",
                    "soak_max_lost_per_kill": f"<= {interval}",
                    "soak_lost_steps_sigterm": "<= 0",
                    "checkpoint_over_variables": "<= 1.05"}})


if __name__ == "__main__":
  main()
