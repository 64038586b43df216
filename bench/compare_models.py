r"""Trains the Probabilistic U-Net and the four baselines (plus the plain U-Net) on one budget and
writes the evaluate library's side-by-side report.

Every model is trained by the train binary from the same flagfile (`synthetic.flags` by default:
the synthetic LIDC-like dataset, channels 8-64, batch 16, Adam, beta 10) with the same number of
steps and learning-rate schedule; only `--model` differs. The U-Net ensemble and M-Heads get
K = M = `--max_samples` members / heads (16), so that 16 samples exist; for n < 16 samples the
evaluation scores the first n members / heads (their documented `sample` order). Then the
evaluate binary scores every run with 1, 4, 8 and 16 samples (runs in parallel with
`--eval_jobs`), and `OUTPUT_DIR/eval/report.md` / `metrics.json` put them side by side (the
evaluate library's report, as `--model_dir=a,b,...` would write it).

    python bench/compare_models.py --output_dir=runs/compare --train_steps=1800 --jobs=2

With `--jobs=6 --threads=1` all six train at once, one thread each, and advance at similar rates
(checkpoints every 100 steps), so on a busy machine every run can be cut at the same step.

Training runs resume (the train binary restarts from a run's latest checkpoint), so an
interrupted comparison continues where it stopped. Prints one JSON line: per model GED and mode
total variation per sample count, and whether the Probabilistic U-Net is best by GED(16) and by
mode_tv(16).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODELS = ("prob_unet", "unet", "dropout_unet", "unet_ensemble", "m_heads", "image2image_vae")


def _train_command(args, model):
  cmd = [sys.executable, "-m", "tf_prob_unet.train", f"--flagfile={args.flagfile}",
         f"--model={model}", f"--model_dir={os.path.join(args.output_dir, model)}",
         f"--data_dir={args.data_dir}", f"--ensemble_size={args.max_samples}",
         f"--num_heads={args.max_samples}",
         f"--ensemble_member_batch={args.ensemble_member_batch}", f"--seed={args.seed}",
         "--checkpoint_every=100"]
  if args.train_steps:
    cmd.append(f"--train_steps={args.train_steps}")
  if args.lr_boundaries is not None:
    cmd.append(f"--lr_boundaries={args.lr_boundaries}")
  return cmd


def _train_all(args, log):
  """Runs the train binary for every model, `args.jobs` at a time; returns the wall times."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  if args.threads:
    env.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS=str(args.threads))
  pending = list(args.models)
  running = {}
  seconds = {}
  while pending or running:
    while pending and len(running) < args.jobs:
      model = pending.pop(0)
      os.makedirs(os.path.join(args.output_dir, model), exist_ok=True)
      out = open(os.path.join(args.output_dir, f"train_{model}.log"), "a")
      cmd = _train_command(args, model)
      log(f"training {model}: {' '.join(cmd[1:])}")
      running[model] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT), out, time.time())
    time.sleep(5)
    for model, (proc, out, start) in list(running.items()):
      if proc.poll() is None:
        continue
      out.close()
      del running[model]
      seconds[model] = time.time() - start
      if proc.returncode:
        raise RuntimeError(f"training {model} failed (exit {proc.returncode}); see "
                           f"{os.path.join(args.output_dir, f'train_{model}.log')}")
      log(f"trained {model} in {seconds[model]:.0f} s")
  return seconds


def _pin_checkpoints(args, log):
  """Points every run's latest checkpoint at step `args.at_step` (all models at one step)."""
  import tensorflow as tf  # noqa: E402 (only here: the trainings run in subprocesses)
  for model in args.models:
    directory = os.path.join(args.output_dir, model, "checkpoints")
    path = os.path.join(directory, f"ckpt-{args.at_step}")
    if not os.path.exists(path + ".index"):
      sys.exit(f"error: --at_step: expected a checkpoint {path}, found none")
    tf.train.update_checkpoint_state(directory, path)
  log(f"every run now evaluates its checkpoint of step {args.at_step}")


def _evaluate_all(args, counts, log):
  """The evaluate binary on every run (`args.eval_jobs` at a time), then one side-by-side report.

  Each run is evaluated into `OUTPUT_DIR/eval/<model>/`; `OUTPUT_DIR/eval/report.md` and
  `metrics.json` combine them with the evaluate library's own report function.
  """
  from tf_prob_unet import evaluate_lib, run_dir  # noqa: E402
  eval_dir = os.path.join(args.output_dir, "eval")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  pending, running = list(args.models), {}
  while pending or running:
    while pending and len(running) < args.eval_jobs:
      model = pending.pop(0)
      cmd = [sys.executable, "-m", "tf_prob_unet.evaluate",
             f"--model_dir={os.path.join(args.output_dir, model)}",
             f"--output_dir={os.path.join(eval_dir, model)}", f"--num_samples={args.num_samples}",
             f"--data_dir={args.data_dir}", f"--limit={args.eval_limit}"]
      log("evaluating: " + " ".join(cmd[1:]))
      os.makedirs(eval_dir, exist_ok=True)
      out = open(os.path.join(eval_dir, f"evaluate_{model}.log"), "a")
      running[model] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT), out)
    time.sleep(5)
    for model, (proc, out) in list(running.items()):
      if proc.poll() is None:
        continue
      out.close()
      del running[model]
      if proc.returncode:
        raise RuntimeError(f"evaluating {model} failed (exit {proc.returncode}); see "
                           f"{os.path.join(eval_dir, f'evaluate_{model}.log')}")
  results = {}
  for model in args.models:
    with open(os.path.join(eval_dir, model, "metrics.json")) as f:
      results[model] = json.load(f)
  run_dir.atomic_write(os.path.join(eval_dir, "metrics.json"),
                         json.dumps({"models": results}, indent=1))
  run_dir.atomic_write(os.path.join(eval_dir, "report.md"),
                         evaluate_lib.report_markdown(results, counts))
  for model, result in results.items():
    log(evaluate_lib.summary_table(model, result, counts))
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output_dir", default="runs/compare")
  parser.add_argument("--flagfile", default=os.path.join(REPO, "synthetic.flags"))
  parser.add_argument("--data_dir", default="runs/data")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--train_steps", type=int, default=0,
                      help="steps for every model (0: the flagfile's)")
  parser.add_argument("--lr_boundaries", default=None,
                      help="learning-rate boundaries for every model (default: the flagfile's)")
  parser.add_argument("--max_samples", type=int, default=16,
                      help="K = M of the ensemble and M-Heads, and the largest sample count")
  parser.add_argument("--ensemble_member_batch", default="shared", choices=("shared", "split"))
  parser.add_argument("--num_samples", default="1,4,8,16")
  parser.add_argument("--jobs", type=int, default=1, help="trainings run at the same time")
  parser.add_argument("--threads", type=int, default=0,
                      help="TensorFlow threads per training (0: TensorFlow's default)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--at_step", type=int, default=0,
                      help="evaluate every run at this checkpoint step (0: the latest)")
  parser.add_argument("--eval_jobs", type=int, default=1, help="evaluations run at the same time")
  parser.add_argument("--eval_limit", type=int, default=0,
                      help="test images per evaluation (0: the whole split)")
  args = parser.parse_args()
  args.models = [m for m in args.models.split(",") if m]
  unknown = sorted(set(args.models) - set(MODELS))
  if unknown:
    sys.exit(f"error: --models: expected names from {list(MODELS)}, found {unknown}")
  counts = [int(n) for n in args.num_samples.split(",")]
  if max(counts) > args.max_samples:
    sys.exit(f"error: --num_samples: expected counts <= --max_samples={args.max_samples}, "
             f"found {max(counts)}")

  def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

  sys.path.insert(0, REPO)
  from tf_prob_unet import input_pipeline  # builds the dataset once, before parallel trainings
  with open(args.flagfile) as f:
    dataset = next(l.split("=", 1)[1].strip() for l in f if l.startswith("--dataset="))
  input_pipeline.get_builder(dataset, args.data_dir)
  start = time.time()
  seconds = {} if args.skip_training else _train_all(args, log)
  if args.at_step:
    _pin_checkpoints(args, log)
  results = _evaluate_all(args, counts, log)
  n = str(max(counts))
  member_batch = args.ensemble_member_batch
  ensemble_config = os.path.join(args.output_dir, "unet_ensemble", "model_config.json")
  if os.path.exists(ensemble_config):  # what the run used (e.g. with --skip_training)
    with open(ensemble_config) as f:
      member_batch = json.load(f)["kwargs"].get("member_batch", member_batch)
  record = {"bench": "compare_models", "train_seconds": seconds,
            "total_seconds": time.time() - start, "max_samples": args.max_samples,
            "ensemble_member_batch": member_batch,
            "train_steps": {m: r["step"] for m, r in results.items()},
            "ged": {m: r["ged"] for m, r in results.items()},
            "mode_tv": {m: r.get("mode_tv") for m, r in results.items()},
            "ged_mean_prediction": {m: r["ged_mean_prediction"] for m, r in results.items()},
            "ged_resampled": {m: r.get("ged_resampled") for m, r in results.items()},
            "ged_ideal": next(iter(results.values())).get("ged_ideal")}
  if "prob_unet" in results and len(results) > 1:
    record["prob_unet_best_ged"] = min(results, key=lambda m: results[m]["ged"][n]) == "prob_unet"
    if all("mode_tv" in r for r in results.values()):
      record["prob_unet_best_mode_tv"] = min(
          results, key=lambda m: results[m]["mode_tv"][n]) == "prob_unet"
  from bench.common import emit, machine  # noqa: E402 (needs REPO on the path)
  record.update(machine())
  emit(record)


if __name__ == "__main__":
  main()
