"""Evaluation, flag-free: samples from trained models, the paper's and the field's measures.

`run(EvalConfig)` draws the largest requested number of samples once per image of the split and
scores every prefix (`n` in `num_samples`): GED (against the exact modes weighted by their
probabilities where the dataset has them, else against the graders with uniform weights),
Hungarian-matched IoU (an optimal transport) and S_NCC (from the samples' class probabilities)
against the graders with their weights, sample diversity, the reliability of the per-pixel
frequencies (`ece`), the mode statistics where modes are known, the pixel flip rates for flip
datasets, and a deterministic baseline (the prior-mean / single prediction repeated). It writes
`metrics.json`, `report.md` and PNG figures, each atomically.

Evaluation streams: each batch is sampled, scored (`Scorer.update`) and dropped; only per-image
scalars, summed counts and the first few images (for the figures) are kept, so memory does not
grow with the split. Labels are uint8.
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
    run_dir.check_writable(self.output_dir, "--output_dir")
    if not self.num_samples or min(self.num_samples) < 1:
      raise ValueError(f"--num_samples: expected positive sample counts, found "
                       f"{list(self.num_samples)}.")


def progress_bar(total, unit="image"):
  """A `keras.utils.Progbar` over `total` items: redrawn in place on a terminal, one line at the
  end otherwise (logs)."""
  return keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() else 2, unit_name=unit)


KEEP_IMAGES = 6  # images kept for the sample grid
RELIABILITY_BINS = 10


def _label_dtype(num_classes):
  return np.uint8 if num_classes < input_pipeline.VOID else np.int32


def sample_batches(model, batches, num_samples, num_classes, seed=0, total=None):
  """Yields the evaluation batches as NumPy dicts with the model's samples added.

  Args:
    model: a model of the registry (`sample(..., return_probs=True)`, `__call__`).
    batches: iterable of dicts as `input_pipeline.eval_dataset` yields (tensors or arrays).
    num_samples: samples per image.
    num_classes: the model's classes (labels are stored as uint8 below 255).
    seed: batch `i` samples with the seed `[seed, i]`.
    total: number of images, for the progress bar (None: no bar).

  Yields:
    The batch's entries (`id` renamed `ids`; label maps `references`, `modes`, `label` as
    uint8) plus `samples` `[b, S, H, W]` uint8, `probabilities` `[b, S, H, W, K]` float32 and
    `mean_prediction` `[b, H, W]` uint8 (prior-mean / deterministic prediction), and
    `sample_seconds`, the wall time of the batch's `model.sample` call (graph tracing excluded).
  """
  sample_fn = tf.function(lambda x, s: model.sample(x, num_samples, seed=s, return_probs=True))
  mean_fn = tf.function(lambda x: tf.argmax(model(x, training=False), -1, output_type=tf.int32))
  dtype = _label_dtype(num_classes)
  bar = progress_bar(total) if total else None
  done = 0
  for i, batch in enumerate(batches):
    seed_i = tf.constant([seed, i], tf.int64)
    sample_fn.get_concrete_function(batch["image"], seed_i)  # a new shape is traced untimed
    t0 = time.perf_counter()
    labels, probs = sample_fn(batch["image"], seed_i)
    labels = labels.numpy()
    out = {"samples": labels.astype(dtype), "probabilities": probs.numpy(),
           "sample_seconds": time.perf_counter() - t0,
           "mean_prediction": mean_fn(batch["image"]).numpy().astype(dtype)}
    for key, value in batch.items():
      value = np.asarray(value)
      out["ids" if key == "id" else key] = (value.astype(dtype) if key in
                                             ("references", "modes", "label") else value)
    done += len(out["samples"])
    if bar is not None:
      bar.update(done)
    yield out


def _nanmean(x):
  x = np.asarray(x, float)
  return float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")


def _finite_list(values):
  return [None if not np.isfinite(v) else float(v) for v in values]


class Scorer:
  """Streaming evaluation: `update` with each batch, `result` at the end.

  Per batch, the distances among the samples, the GED references (modes or graders), the
  mean prediction and (if different) the graders are computed once and every measure is
  derived from them; per-image values are kept as scalars, counts are summed, and the first
  `keep_images` images are kept for the figures. Random draws (resampled and ideal GEDs, the
  mode-statistics floor) are seeded per image, so the result does not depend on the batching.

  Args:
    spec: the dataset's `input_pipeline.DatasetSpec`.
    num_samples: sample counts `n` to score (prefixes of each image's samples).
    seed: seed of the draws.
    keep_images: images kept for the figures.
  """

  def __init__(self, spec, num_samples, seed=0, keep_images=KEEP_IMAGES):
    self.spec = spec
    self.counts = sorted(int(n) for n in num_samples)
    self.seed = seed
    self.keep_images = keep_images
    self.kw = dict(num_classes=spec.num_classes,
                   class_ids=None if spec.class_ids is None else list(spec.class_ids),
                   ignore_index=input_pipeline.VOID if spec.kind == "flips" else None)
    self.images = 0
    self.per_image = {}  # name -> {str(n) or "": list of per-image values}
    self.mode_partials = []
    self.flip_counts = None
    self.reliability = np.zeros((RELIABILITY_BINS, 3))
    self.kept = {}
    self.num_raters = None

  def _add(self, name, values, key=""):
    self.per_image.setdefault(name, {}).setdefault(key, []).extend(np.asarray(values).tolist())

  def update(self, batch):
    """Scores one batch (a dict as `sample_batches` yields, or the whole split at once).

    Without `probabilities` (label maps only) `ncc` is left out.
    """
    spec, kw, counts = self.spec, self.kw, self.counts
    samples = batch["samples"]
    batch_size, s = samples.shape[:2]
    has_modes = "modes" in batch
    gt = batch["modes"] if has_modes else batch["references"]
    gt_w = np.asarray(batch["mode_probs"] if has_modes else batch["reference_weights"],
                      np.float64)
    gt_w = gt_w / gt_w.sum(axis=1, keepdims=True)
    graders_are_gt = not has_modes or spec.kind == "flips"  # flips: references are the modes
    graders = batch["references"]
    g_w = np.asarray(batch["reference_weights"], np.float64)
    g_w = g_w / g_w.sum(axis=1, keepdims=True)
    r = gt.shape[1]
    groups = [samples, gt, batch["mean_prediction"][:, None]]
    if not graders_are_gt:
      groups.append(graders)
    d = metrics.pairwise_distances(groups, void_from=gt, void_weights=gt_w, **kw)
    y = s + np.arange(r)
    mean = s + r
    g = y if graders_are_gt else mean + 1 + np.arange(graders.shape[1])
    d_yy = d[:, y][:, :, y]
    ncc = metrics.s_ncc(batch["probabilities"], graders, g_w, num_classes=spec.num_classes,
                        ignore_index=kw["ignore_index"], num_samples=[n for n in counts if n >= 2]
                        ) if counts[-1] >= 2 and "probabilities" in batch else {}
    for n in counts:
      key = str(n)
      ged = metrics.ged_from_distances(d[:, :n][:, :, y], d[:, :n, :n], d_yy, gt_w)[0]
      self._add("ged", ged, key)
      self._add("hm_iou", metrics.matched_iou_from_distances(d[:, :n][:, :, g], g_w), key)
      if n >= 2:
        self._add("diversity", metrics.diversity_from_distances(d[:, :n, :n]), key)
      if key in ncc:
        self._add("ncc", ncc[key], key)
      if spec.kind == "graders" and spec.num_classes == 2:  # QUBIQ: binary multi-rater tasks
        self._add("qubiq_dice", metrics.qubiq_dice(samples[:, :n], graders), key)
    if spec.kind == "graders":
      self.num_raters = int(graders.shape[1])
    self._add("ged_mean_prediction", metrics.ged_from_distances(
        d[:, mean:mean + 1][:, :, y], d[:, mean:mean + 1, mean:mean + 1], d_yy, gt_w)[0])
    pool = np.concatenate([np.arange(s), y])
    resampled = metrics.resampled_ged_from_distances(
        d[:, pool][:, :, pool], s, gt_w, counts, seed=self.seed, first_image=self.images)
    for key, values in resampled.items():
      self._add("ged_resampled", values, key)
    if has_modes:
      ideal = metrics.ideal_geds_from_distances(d_yy, gt_w, counts, seed=self.seed,
                                                first_image=self.images)
      for kind, per_n in ideal.items():
        for key, values in per_n.items():
          self._add("ged_ideal_" + kind, values, key)
      assigned = metrics.assign_modes_from_distances(d[:, :s][:, :, y], gt_w)
      self.mode_partials.append(metrics.mode_statistics_partial(
          assigned, gt_w, counts, seed=self.seed, first_image=self.images))
    if spec.kind == "flips":
      flips = list(spec.flips)
      counts_f = metrics.pixel_flip_counts(samples, batch["label"], flips)
      self.flip_counts = counts_f if self.flip_counts is None else self.flip_counts + counts_f
    self.reliability += metrics.reliability_counts(samples, gt, gt_w, bins=RELIABILITY_BINS,
                                                   **kw)
    room = self.keep_images - self.images
    if room > 0:
      for key in ("image", "samples", "modes", "mode_probs", "references"):
        if key in batch:
          part = np.asarray(batch[key][:room])
          self.kept[key] = part if key not in self.kept else np.concatenate(
              [self.kept[key], part])
    self.images += batch_size

  def result(self):
    """The metrics dict (see the module docstring); JSON-ready."""
    counts, kw, spec = self.counts, self.kw, self.spec
    per = self.per_image
    mean = lambda name: {k: _nanmean(v) for k, v in per.get(name, {}).items()}  # noqa: E731
    result = {"ged": mean("ged"), "hm_iou": mean("hm_iou"), "diversity": mean("diversity"),
              "ncc": mean("ncc"),
              "dropped_nan_images": {k: int(np.sum(~np.isfinite(np.asarray(v, float))))
                                     for k, v in per["ged"].items()},
              "per_image": {"ged": {k: _finite_list(v) for k, v in per["ged"].items()},
                            "hm_iou": {k: _finite_list(v) for k, v in per["hm_iou"].items()}}}
    if spec.kind == "graders":  # R from the data
      result["num_raters"] = self.num_raters
      if spec.num_classes == 2:
        result["qubiq_dice"] = mean("qubiq_dice")
    result["ged_mean_prediction"] = _nanmean(per["ged_mean_prediction"][""])
    result["ged_resampled"] = mean("ged_resampled")
    has_modes = bool(self.mode_partials)
    if has_modes:
      result["ged_ideal"] = {"iid": mean("ged_ideal_iid"), "set": mean("ged_ideal_set")}
      stats = metrics.reduce_mode_statistics(self.mode_partials)
      for key in ("mode_tv", "mode_tv_per_image", "mode_tv_per_image_floor",
                  "mode_freq_sampled"):
        result[key] = stats[key]
      result["mode_freq_true"] = [float(v) for v in stats["mode_freq_true"]]
      result["mode_names"] = list(spec.mode_names)
    if self.flip_counts is not None:
      result["flip_rates"] = metrics.flip_rates_from_counts(self.flip_counts, list(spec.flips),
                                                            _class_names(spec))
    result["reliability"] = metrics.reliability_diagram(self.reliability)
    result["ece"] = result["reliability"]["ece"]
    result["num_images"] = int(self.images)
    result["conventions"] = _conventions(has_modes, kw, counts, spec)
    return result


def _class_names(spec):
  """`{class id: name}` of a flip dataset's switchable classes: the name of the mode flipping
  only that class (mode index `2^(F - 1 - k)` for flip `k`), or None without mode names."""
  f = len(spec.flips)
  if len(spec.mode_names) != 2**f:
    return None
  return {c: spec.mode_names[2**(f - 1 - k)] for k, (c, _, _) in enumerate(spec.flips)}


def _conventions(has_modes, kw, counts, spec):
  weights = "the mode probabilities" if spec.kind == "flips" else "uniform weights"
  return {
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
      "hm_iou": f"optimal transport on 1 - IoU between the samples (mass 1/n each) and the "
                f"graders ({weights}); for uniform weights the Hungarian matching after tiling "
                f"both to lcm(n, R)",
      "ncc": f"PHiSeg's S_NCC from the samples' softmax probabilities against the graders, "
             f"mean over graders with {weights}",
      "diversity": "mean d(S, S') over i != i'",
      "ece": f"reliability of the per-pixel class frequency over the {max(counts)} samples "
             f"against the frequency over the GED references (weighted), "
             f"{RELIABILITY_BINS} bins",
      "ged_mean_prediction": "the prior-mean prediction as one deterministic sample",
      "qubiq_dice": "binary graders: mean over t = 0.1..0.9 of Dice(mean of the n sample masks "
                    "> t, mean of the R rater masks > t); two empty masks give Dice 1",
      "ged_resampled": "n draws with replacement from the model's largest sample set (a fixed "
                       "set of heads or members used as a sampler)",
      "ged_ideal": "where modes are known: GED of n iid draws from the true modes ('iid', "
                       "a perfect sampler) and of the modes repeated in proportion ('set')",
  }


def score(data, spec, num_samples, seed=0):
  """All measures for samples drawn for a whole split at once (`data` as one `sample_batches`
  batch). Returns the metrics dict; equal to streaming the same images batch by batch."""
  scorer = Scorer(spec, num_samples, seed)
  scorer.update(data)
  return scorer.result()


def evaluate_model(model, batches, spec, num_samples, seed=0, total=None):
  """Samples and scores a split batch by batch: `(metrics dict, kept images for figures)`."""
  counts = sorted(int(n) for n in num_samples)
  scorer = Scorer(spec, counts, seed)
  timed, timed_samples = 0.0, 0
  for batch in sample_batches(model, batches, max(counts), spec.num_classes, seed, total):
    scorer.update(batch)
    timed += batch["sample_seconds"]
    timed_samples += batch["samples"].shape[0] * batch["samples"].shape[1]
  result = scorer.result()
  result["seconds_per_sample"] = timed / max(timed_samples, 1)
  return result, scorer.kept


def _label(model_dir):
  """A run's name in the report: its folder's name (`NAME` for `pretrained:NAME`)."""
  if model_dir.startswith(run_dir.PRETRAINED_PREFIX):
    return model_dir[len(run_dir.PRETRAINED_PREFIX):]
  return os.path.basename(os.path.normpath(model_dir))


def report_markdown(results, counts):
  """A table like the paper's: one row per model, GED and HM-IoU per sample count."""
  lines = ["# Evaluation report", ""]
  splits = sorted({f"{r.get('dataset', '?')}:{r.get('split', '?')}" for r in results.values()})
  lines += [f"Scored on {', '.join(splits)} ({next(iter(results.values()))['num_images']} "
            "images). Settings are chosen on the validation split; the test split is scored "
            "once.", ""]
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
  ncc_counts = [n for n in counts if str(n) in first["ncc"]]
  lines += ["", "## S_NCC, diversity and calibration", "",
            "| model | " + " | ".join(f"S_NCC{n}" for n in ncc_counts) + " | " +
            " | ".join(f"diversity{n}" for n in ncc_counts) + " | ECE |",
            "|---|" + "---|" * (2 * len(ncc_counts) + 1)]
  for label, r in results.items():
    lines.append(f"| {label} | " + " | ".join(
        [f"{r['ncc'][str(n)]:.4f}" for n in ncc_counts] +
        [f"{r['diversity'][str(n)]:.4f}" for n in ncc_counts] + [f"{r['ece']:.4f}"]) + " |")
  lines += ["", "![reliability diagram](reliability.png)"]
  if "flip_rates" in first:
    lines += ["", "## Pixel flip rates (sampled / true)", "", "![flip rates](flip_rates.png)", ""]
    for label, r in results.items():
      lines.append(f"- {label}: " + ", ".join(
          f"{k} {v['sampled']:.3f} / {v['true']:.3f}" for k, v in r["flip_rates"].items()))
  lines += ["", "## Conventions", ""] + [f"- {k}: {v}" for k, v in first["conventions"].items()]
  return "\n".join(lines) + "\n"


def summary_table(label, result, counts):
  """The console table: GED (and the mean-prediction baseline), HM-IoU and mode calibration."""
  has_modes = "mode_tv" in result
  per_sample = result.get("seconds_per_sample")
  lines = [f"{label} (step {result.get('step', '?')}) scored on the "
           f"{result.get('split', '?')} split of {result.get('dataset', '?')}, "
           f"{result['num_images']} images"
           + ("" if per_sample is None else f", {1000 * per_sample:.2f} ms per sample"),
           "   n     GED  GED(mean pred)  HM-IoU   S_NCC" +
           ("  mode_tv  mode_tv/img  floor/img" if has_modes else "")]
  for n in counts:
    k = str(n)
    ncc = result["ncc"].get(k, float("nan"))
    row = (f"{n:4d}  {result['ged'][k]:6.4f}  {result['ged_mean_prediction']:14.4f}  "
           f"{result['hm_iou'][k]:6.4f}  {ncc:6.4f}")
    if has_modes:
      row += (f"  {result['mode_tv'][k]:7.4f}  {result['mode_tv_per_image'][k]:11.4f}  "
              f"{result['mode_tv_per_image_floor'][k]:9.4f}")
    lines.append(row)
  lines.append(f"ECE of the per-pixel frequencies: {result['ece']:.4f}")
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
    total = builder.info.splits[config.split].num_examples
    total = min(total, config.limit) if config.limit else total
    with input_pipeline.input_errors(builder, (config.split,)):
      batches = input_pipeline.eval_dataset(builder, spec, config.batch_size, split=config.split,
                                            limit=config.limit or None)
      result, kept = evaluate_model(model, batches, spec, counts, config.seed, total)
    result.update(model_dir=model_dir, step=info["step"], dataset=info["dataset"],
                  split=config.split, model=info["model"])
    results[label] = result
    figures[label] = (kept, spec)
  out = config.output_dir
  os.makedirs(out, exist_ok=True)
  combined = next(iter(results.values())) if len(results) == 1 else {"models": results}
  run_dir.atomic_write(os.path.join(out, "metrics.json"), json.dumps(combined, indent=1))
  run_dir.atomic_write(os.path.join(out, "report.md"), report_markdown(results, counts))
  written = ["samples.png", "ged_distribution.png", "reliability.png"]
  for label, (kept, spec) in figures.items():
    suffix = "" if len(figures) == 1 else f"_{label}"
    refs = kept["modes"] if "modes" in kept else kept["references"]
    titles = None
    if "mode_probs" in kept:
      probs = kept["mode_probs"]
      if refs.shape[1] > plots.MAX_REFERENCES:  # e.g. Cityscapes' 32 modes: the most probable
        order = np.argsort(-probs, axis=1, kind="stable")[:, :plots.MAX_REFERENCES]
        refs = np.take_along_axis(refs, order[:, :, None, None], axis=1)
        probs = np.take_along_axis(probs, order, axis=1)
      titles = [[f"p={p:.2f}" for p in row] for row in probs]
    plots.sample_grid(os.path.join(out, f"samples{suffix}.png"), kept["image"], refs,
                      kept["samples"], spec.num_classes, titles)
  plots.reliability_diagram(os.path.join(out, "reliability.png"),
                            {k: r["reliability"] for k, r in results.items()})
  first = next(iter(results.values()))
  if "flip_rates" in first:
    plots.flip_rates(os.path.join(out, "flip_rates.png"),
                     {k: r["flip_rates"] for k, r in results.items()})
    written.append("flip_rates.png")
  plots.ged_distribution(os.path.join(out, "ged_distribution.png"),
                         {k: r["per_image"]["ged"] for k, r in results.items()})
  if "mode_freq_true" in first:
    written.append("mode_frequencies.png")
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
      f"({', '.join(written)}).")
  return results
