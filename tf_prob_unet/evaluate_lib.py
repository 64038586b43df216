"""Evaluation, flag-free: samples from trained models, the paper's and the field's measures.

`run(EvalConfig)` draws the largest requested number of samples once per test image and scores
every prefix (`n` in `num_samples`): GED (against the exact modes weighted by their probabilities
where the dataset has them, else against the graders with uniform weights), Hungarian-matched IoU
and S_NCC against the graders, sample diversity, the mode statistics where modes are known, the
pixel flip rates for flip datasets, and a deterministic baseline (the prior-mean / single
prediction repeated). It writes `metrics.json`, `report.md` and PNG figures, each atomically.
"""

import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tf_prob_unet import input_pipeline
from tf_prob_unet import metrics
from tf_prob_unet import plots
from tf_prob_unet import run_dir


@dataclasses.dataclass
class EvalConfig:
  """Evaluation settings. Field names are the evaluate binary's flag names."""
  model_dir: tuple = ()
  output_dir: str = ""
  num_samples: tuple = (1, 4, 8, 16)
  split: str = "test"
  data_dir: str = ""
  batch_size: int = 16
  limit: int = 0
  seed: int = 0

  def validate(self):
    if not self.model_dir:
      raise ValueError("--model_dir: expected at least one training run directory, found none.")
    if not self.output_dir:
      raise ValueError("--output_dir: expected a directory, found an empty string.")
    if not self.num_samples or min(self.num_samples) < 1:
      raise ValueError(f"--num_samples: expected positive sample counts, found "
                       f"{list(self.num_samples)}.")


def progress_bar(total, unit="image"):
  """A `keras.utils.Progbar` over `total` items: redrawn in place on a terminal, one line at the
  end otherwise (logs)."""
  return keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() else 2, unit_name=unit)


def draw_samples(model, builder, spec, split, num_samples, batch_size, limit=0, seed=0):
  """Samples and ground truth for a split, as NumPy arrays.

  Returns:
    A dict: `images` `[B, H, W, C]`, `samples` `[B, S, H, W]` uint8, `mean_prediction`
    `[B, H, W]` uint8 (prior-mean / deterministic prediction), `references`, `reference_weights`,
    and where present `modes`, `mode_probs`, `label`, `ids`; `seconds_per_sample`, a float: the
    wall time of `model.sample` per image and sample, over the batches after the first (the first
    call traces the graph; with one batch it is timed on a second call).
  """
  ds = input_pipeline.eval_dataset(builder, spec, batch_size, split=split, limit=limit or None)
  total = builder.info.splits[split].num_examples
  total = min(total, limit) if limit else total
  sample_fn = tf.function(lambda x, s: model.sample(x, num_samples, seed=s))
  mean_fn = tf.function(lambda x: tf.argmax(model(x, training=False), -1, output_type=tf.int32))
  out = {}
  bar = progress_bar(total)
  done = 0
  timed, timed_samples = 0.0, 0
  for i, batch in enumerate(ds):
    seed_i = tf.constant([seed, i], tf.int64)
    t0 = time.perf_counter()
    samples = sample_fn(batch["image"], seed_i).numpy()
    if i:
      timed += time.perf_counter() - t0
      timed_samples += samples.shape[0] * samples.shape[1]
    parts = {"samples": samples.astype(np.uint8),
             "mean_prediction": mean_fn(batch["image"]).numpy().astype(np.uint8)}
    for key, value in batch.items():
      parts["ids" if key == "id" else key] = value.numpy()
    for key, value in parts.items():
      out.setdefault(key, []).append(value)
    done += len(parts["samples"])
    bar.update(done)
    first = batch["image"]
  if not timed_samples:
    t0 = time.perf_counter()
    samples = sample_fn(first, tf.constant([seed, 0], tf.int64)).numpy()
    timed, timed_samples = time.perf_counter() - t0, samples.shape[0] * samples.shape[1]
  data = {k: np.concatenate(v) for k, v in out.items()}
  data["seconds_per_sample"] = timed / max(timed_samples, 1)
  return data


def _nanmean(x):
  x = np.asarray(x, float)
  return float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")


def score(data, spec, num_samples, seed=0):
  """All measures for the drawn samples. Returns the metrics dict (see the module docstring)."""
  counts = sorted(int(n) for n in num_samples)
  kw = dict(num_classes=spec.num_classes,
            class_ids=None if spec.class_ids is None else list(spec.class_ids),
            ignore_index=input_pipeline.VOID if spec.kind == "flips" else None)
  samples = data["samples"].astype(np.int64)
  has_modes = "modes" in data
  gt = data["modes"] if has_modes else data["references"]
  gt_w = data["mode_probs"] if has_modes else data["reference_weights"]
  graders = data["references"]
  result = {"ged": {}, "hm_iou": {}, "diversity": {}, "ncc": {}, "dropped_nan_images": {},
            "per_image": {"ged": {}, "hm_iou": {}}}
  for n in counts:
    s = samples[:, :n]
    g = metrics.ged(s, gt, gt_w, **kw)
    result["per_image"]["ged"][str(n)] = [None if not np.isfinite(v) else float(v) for v in g]
    result["dropped_nan_images"][str(n)] = int(np.sum(~np.isfinite(g)))
    result["ged"][str(n)] = _nanmean(g)
    h = metrics.hungarian_matched_iou(s, graders, **kw)
    result["per_image"]["hm_iou"][str(n)] = [None if not np.isfinite(v) else float(v) for v in h]
    result["hm_iou"][str(n)] = _nanmean(h)
    if n >= 2:
      result["diversity"][str(n)] = _nanmean(metrics.sample_diversity(
          s, ignore_mask_from=graders if kw["ignore_index"] is not None else None, **kw))
      result["ncc"][str(n)] = _nanmean(metrics.s_ncc(
          s, graders, num_classes=spec.num_classes, ignore_index=kw["ignore_index"]))
  if spec.kind == "graders":  # R from the data; QUBIQ for binary multi-rater tasks.
    result["num_raters"] = int(graders.shape[1])
    if spec.num_classes == 2:
      result["qubiq_dice"] = {str(n): _nanmean(metrics.qubiq_dice(samples[:, :n], graders))
                              for n in counts}
  mean_pred = data["mean_prediction"][:, None].astype(np.int64)
  result["ged_mean_prediction"] = _nanmean(metrics.ged(mean_pred, gt, gt_w, **kw))
  result["ged_resampled"] = metrics.resampled_ged(samples, gt, gt_w, counts, seed=seed, **kw)
  if has_modes:
    result["ged_ideal"] = metrics.ideal_geds(data["modes"], data["mode_probs"], counts,
                                             seed=seed, **kw)
    stats = metrics.mode_statistics(samples, data["modes"], data["mode_probs"],
                                    num_samples=counts, seed=seed, **kw)
    for key in ("mode_tv", "mode_tv_per_image", "mode_tv_per_image_floor", "mode_freq_sampled"):
      result[key] = stats[key]
    result["mode_freq_true"] = [float(v) for v in stats["mode_freq_true"]]
    result["mode_names"] = list(spec.mode_names)
  if spec.kind == "flips":
    result["flip_rates"] = metrics.pixel_flip_rates(samples, data["label"], list(spec.flips))
  result["num_images"] = int(len(samples))
  result["conventions"] = {
      "ged_reference": ("exact modes weighted by their probabilities" if has_modes else
                        "graders with uniform weights"),
      "distance": ("1 - foreground IoU; two empty masks at distance 0, one empty at 1"
                   if kw["class_ids"] is None else
                   f"1 - nanmean of per-class IoU over classes {kw['class_ids']}; a class absent "
                   f"from both masks is left out; void ({kw['ignore_index']}) pixels excluded"),
      "pairs": "expectations over pairs include i = j (the reference's V-statistic)",
      "samples": f"the first n of {max(counts)} samples drawn once per image",
      "nan_images": "images whose GED is NaN are dropped before the mean (counted under "
                    "dropped_nan_images)",
      "hm_iou": "Hungarian matching on 1 - IoU, graders and samples tiled to lcm(n, R)",
      "diversity": "mean d(S, S') over i != i'",
      "ged_mean_prediction": "the prior-mean prediction as one deterministic sample",
      "qubiq_dice": "binary graders: mean over t = 0.1..0.9 of Dice(mean of the n sample masks "
                    "> t, mean of the R rater masks > t); two empty masks give Dice 1",
      "ged_resampled": "n draws with replacement from the model's largest sample set (a fixed "
                       "set of heads or members used as a sampler)",
      "ged_ideal": "where modes are known: GED of n iid draws from the true modes ('iid', "
                       "a perfect sampler) and of the modes repeated in proportion ('set')",
  }
  return result


def _label(model_dir):
  return os.path.basename(os.path.normpath(model_dir))


def report_markdown(results, counts):
  """A table like the paper's: one row per model, GED and HM-IoU per sample count."""
  lines = ["# Evaluation report", ""]
  header = ["model", "step"] + [f"GED{n}" for n in counts] + [f"HM-IoU{n}" for n in counts] + \
      ["GED mean pred.", "--model", "ms / sample"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for label, r in results.items():
    per_sample = r.get("seconds_per_sample")
    row = [label, str(r.get("step", ""))] + [f"{r['ged'][str(n)]:.4f}" for n in counts] + \
        [f"{r['hm_iou'][str(n)]:.4f}" for n in counts] + [f"{r['ged_mean_prediction']:.4f}"] + \
        [r.get("model", ""), "" if per_sample is None else f"{1000 * per_sample:.2f}"]
    lines.append("| " + " | ".join(row) + " |")
  first = next(iter(results.values()))
  if "ged_ideal" in first:
    ref = first["ged_ideal"]
    for kind, what in (("iid", "ideal sampler (iid true modes)"),
                       ("set", "ideal set (modes in proportion)")):
      lines.append("| " + " | ".join([what, ""] + [f"{ref[kind][str(n)]:.4f}" for n in counts] +
                                     [""] * (len(counts) + 3)) + " |")
  if all("ged_resampled" in r for r in results.values()):
    lines += ["", "GED of n draws with replacement from each model's largest sample set (fixed "
              "sets such as heads or members used as samplers):", "",
              "| model | " + " | ".join(f"GED{n}" for n in counts) + " |",
              "|---|" + "---|" * len(counts)]
    for label, r in results.items():
      lines.append(f"| {label} | " + " | ".join(f"{r['ged_resampled'][str(n)]:.4f}"
                                                for n in counts) + " |")
  if "mode_tv" in first:
    lines += ["", "## Mode calibration", "",
              "| model | n | mode_tv | mode_tv_per_image | floor |", "|---|---|---|---|---|"]
    for label, r in results.items():
      for n in counts:
        lines.append(f"| {label} | {n} | {r['mode_tv'][str(n)]:.4f} | "
                     f"{r['mode_tv_per_image'][str(n)]:.4f} | "
                     f"{r['mode_tv_per_image_floor'][str(n)]:.4f} |")
    n = str(max(counts))
    lines += ["", f"Pooled mode frequencies at {n} samples (true / sampled):", ""]
    names = first.get("mode_names") or [str(i) for i in range(len(first["mode_freq_true"]))]
    lines += ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| true | " + " | ".join(f"{v:.3f}" for v in first["mode_freq_true"]) + " |")
    for label, r in results.items():
      lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in r["mode_freq_sampled"][n])
                   + " |")
  if "flip_rates" in first:
    lines += ["", "## Pixel flip rates (sampled / true)", ""]
    for label, r in results.items():
      lines.append(f"- {label}: " + ", ".join(
          f"{k} {v['sampled']:.3f} / {v['true']:.3f}" for k, v in r["flip_rates"].items()))
  lines += ["", "## Conventions", ""] + [f"- {k}: {v}" for k, v in first["conventions"].items()]
  return "\n".join(lines) + "\n"


def summary_table(label, result, counts):
  """The console table: GED (and the mean-prediction baseline), HM-IoU and mode calibration."""
  has_modes = "mode_tv" in result
  per_sample = result.get("seconds_per_sample")
  lines = [f"{label} (step {result.get('step', '?')}) on {result.get('dataset', '?')}:"
           f"{result.get('split', '?')}, {result['num_images']} images"
           + ("" if per_sample is None else f", {1000 * per_sample:.2f} ms per sample"),
           "   n     GED  GED(mean pred)  HM-IoU" +
           ("  mode_tv  mode_tv/img  floor/img" if has_modes else "")]
  for n in counts:
    k = str(n)
    row = (f"{n:4d}  {result['ged'][k]:6.4f}  {result['ged_mean_prediction']:14.4f}  "
           f"{result['hm_iou'][k]:6.4f}")
    if has_modes:
      row += (f"  {result['mode_tv'][k]:7.4f}  {result['mode_tv_per_image'][k]:11.4f}  "
              f"{result['mode_tv_per_image_floor'][k]:9.4f}")
    lines.append(row)
  if "ged_ideal" in result:
    ref = result["ged_ideal"]
    lines.append("GED of ideal models (true modes): iid sampler " + ", ".join(
        f"{ref['iid'][str(n)]:.4f}" for n in counts) + "; set in proportion " + ", ".join(
            f"{ref['set'][str(n)]:.4f}" for n in counts))
  if has_modes:
    k = str(max(counts))
    names = result.get("mode_names") or [str(i) for i in range(len(result["mode_freq_true"]))]
    lines.append(f"mode frequencies at {k} samples, sampled / true: " + ", ".join(
        f"{name} {s:.3f} / {t:.3f}" for name, s, t in
        zip(names, result["mode_freq_sampled"][k], result["mode_freq_true"])))
  return "\n".join(lines)


def demo_targets(result, n=16):
  """The embedded dataset's targets (README): `{name: (passed, measured, target)}`."""
  k = str(n)
  out = {"ged <= 0.5 * mean-prediction GED": (
      result["ged"][k] <= 0.5 * result["ged_mean_prediction"], result["ged"][k],
      0.5 * result["ged_mean_prediction"])}
  if "mode_tv" in result:
    floor = result["mode_tv_per_image_floor"][k]
    ratios = [s / t for s, t in zip(result["mode_freq_sampled"][k], result["mode_freq_true"])
              if t > 0]
    out["mode_tv <= 0.10"] = (result["mode_tv"][k] <= 0.10, result["mode_tv"][k], 0.10)
    out["mode_tv_per_image <= floor + 0.15"] = (
        result["mode_tv_per_image"][k] <= floor + 0.15, result["mode_tv_per_image"][k],
        floor + 0.15)
    out["every mode sampled >= 0.5 x its frequency"] = (min(ratios) >= 0.5, min(ratios), 0.5)
  return out


def run(config, log=print):
  """Evaluates every run in `config.model_dir`; returns `{label: metrics}`."""
  config.validate()
  counts = sorted(int(n) for n in config.num_samples)
  results, figures = {}, {}
  for model_dir in config.model_dir:
    model, info = run_dir.load_model(model_dir)
    builder = input_pipeline.get_builder(info["dataset"], config.data_dir or info.get("data_dir")
                                         or None)
    spec = input_pipeline.dataset_spec(builder)
    if config.split not in builder.info.splits:
      raise ValueError(f"--split: expected one of {sorted(builder.info.splits)}, "
                       f"found {config.split!r}.")
    found = (list(spec.image_shape), spec.num_classes)
    expected = (list(info["input_shape"]), info["kwargs"].get("num_classes", spec.num_classes))
    if found != expected:
      raise ValueError(f"--data_dir: the model of {model_dir!r} takes images {expected[0]} with "
                       f"{expected[1]} classes; {builder.info.full_name} in {builder.data_dir!r} "
                       f"has images {found[0]} with {found[1]} classes.")
    label = _label(model_dir)
    log(f"Evaluating {label} (step {info['step']}) on {info['dataset']}:{config.split} with "
        f"{max(counts)} samples per image")
    with input_pipeline.input_errors(builder, (config.split,)):
      data = draw_samples(model, builder, spec, config.split, max(counts), config.batch_size,
                          config.limit, config.seed)
    result = score(data, spec, counts, config.seed)
    result.update(model_dir=model_dir, step=info["step"], dataset=info["dataset"],
                  split=config.split, model=info["model"],
                  seconds_per_sample=data["seconds_per_sample"])
    results[label] = result
    figures[label] = (data, spec)
  out = config.output_dir
  os.makedirs(out, exist_ok=True)
  combined = next(iter(results.values())) if len(results) == 1 else {"models": results}
  run_dir.atomic_write(os.path.join(out, "metrics.json"), json.dumps(combined, indent=1))
  run_dir.atomic_write(os.path.join(out, "report.md"), report_markdown(results, counts))
  for label, (data, spec) in figures.items():
    suffix = "" if len(figures) == 1 else f"_{label}"
    refs = data["modes"] if "modes" in data else data["references"]
    titles = None
    if "mode_probs" in data:
      probs = data["mode_probs"]
      if refs.shape[1] > plots.MAX_REFERENCES:  # e.g. Cityscapes' 32 modes: the most probable
        order = np.argsort(-probs, axis=1, kind="stable")[:, :plots.MAX_REFERENCES]
        refs = np.take_along_axis(refs, order[:, :, None, None], axis=1)
        probs = np.take_along_axis(probs, order, axis=1)
      titles = [[f"p={p:.2f}" for p in row] for row in probs]
    plots.sample_grid(os.path.join(out, f"samples{suffix}.png"), data["image"], refs,
                      data["samples"], spec.num_classes, titles)
  plots.ged_distribution(os.path.join(out, "ged_distribution.png"),
                         {k: r["per_image"]["ged"] for k, r in results.items()})
  first = next(iter(results.values()))
  if "mode_freq_true" in first:
    n = str(max(counts))
    plots.mode_frequencies(os.path.join(out, "mode_frequencies.png"), first["mode_freq_true"],
                           {k: r["mode_freq_sampled"][n] for k, r in results.items()},
                           first.get("mode_names"))
  for label, result in results.items():
    log(summary_table(label, result, counts))
    if str(16) in result["ged"] and "mode_tv" in result:
      log("targets at 16 samples: " + "; ".join(
          f"{name}: {'PASS' if ok else 'FAIL'} ({got:.3f} vs {want:.3f})"
          for name, (ok, got, want) in demo_targets(result).items()))
  log(f"Wrote {os.path.join(out, 'metrics.json')}, report.md and figures "
      f"(samples.png, ged_distribution.png{', mode_frequencies.png' if 'mode_freq_true' in first else ''}).")
  return results
