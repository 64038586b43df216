"""Training, flag-free: `run(TrainConfig)` trains a model and leaves checkpoints and summaries.

The absl binary `tf_prob_unet.train` only turns flags into a `TrainConfig`. A run writes its
resolved configuration to `model_dir/flags.cfg` (replay with `--flagfile=model_dir/flags.cfg`) and
the model's constructor arguments to `model_dir/model_config.json` (read by evaluate/sample).
"""

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_prob_unet import runtime
from tf_prob_unet import input_pipeline
from tf_prob_unet import models
from tf_prob_unet import objectives
from tf_prob_unet import run_dir

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs. Field names are the train binary's flag names."""
  model: str = "prob_unet"
  dataset: str = "synthetic_ambiguous/lidc_like"
  data_dir: str = ""
  model_dir: str = "runs/default"
  train_steps: int = 1000
  batch_size: int = 16
  strategy: str = "default"
  seed: int = 0
  # Architecture.
  channels: tuple = (32, 64, 128, 192)
  convs_per_block: int = 3
  latent_dim: int = 6
  fcomb_channels: int = 0  # 0: channels[0], as in the reference
  num_fcomb_hidden: int = 3
  upsample_mode: str = "align_corners"
  log_sigma_bound: float = 5.0
  # Loss.
  beta: float = 1.0
  kl_estimate: str = "analytic"
  weight_decay: float = 1e-5
  # Objective of the latent models: elbo (rec + beta * kl) | geco (objectives.GECO).
  objective: str = "elbo"
  geco_kappa: float = 0.05
  geco_decay: float = 0.99
  geco_rate: float = 0.01
  top_k: str = "stochastic"
  top_k_percentage: float = 0.02
  # Baselines.
  dropout_rate: float = 0.5
  dropout_levels: int = 3
  ensemble_size: int = 4
  ensemble_member_batch: str = "shared"
  num_heads: int = 4
  m_heads_epsilon: float = 0.05
  # Optimisation: Adam with a piecewise-constant learning rate.
  lr_values: tuple = (1e-4, 5e-5, 1e-5, 5e-7)
  lr_boundaries: tuple = (80000, 160000, 240000)
  # Bookkeeping.
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  summary_every: int = 50
  log_every: int = 50
  eval_every: int = 500
  eval_batches: int = 4
  shuffle_buffer: int = 1024
  augment: bool = False
  # Testing only: turn the images of this (1-based) step into NaN (0: never).
  debug_nan_step: int = 0

  def validate(self):
    """Raises ValueError naming the first bad field, what was expected and what was found."""
    if self.strategy not in STRATEGIES:
      raise ValueError(f"--strategy: expected one of {STRATEGIES}, found {self.strategy!r}.")
    models.get_model_class(self.model)
    if self.objective not in objectives.OBJECTIVES:
      raise ValueError(f"--objective: expected one of {objectives.OBJECTIVES}, found "
                       f"{self.objective!r}.")
    if self.objective != "elbo" and "objective" not in models.filter_kwargs(
        self.model, {"objective": None}):
      latent = sorted(n for n in models.MODELS if "objective" in models.filter_kwargs(
          n, {"objective": None}))
      raise ValueError(f"--objective: expected elbo for --model={self.model} (GECO trains the "
                       f"latent models: {', '.join(latent)}), found {self.objective!r}.")
    if self.top_k not in objectives.TOP_K_MODES:
      raise ValueError(f"--top_k: expected one of {objectives.TOP_K_MODES}, found "
                       f"{self.top_k!r}.")
    if not 0.0 < self.top_k_percentage <= 1.0:
      raise ValueError(f"--top_k_percentage: expected a fraction in (0, 1], found "
                       f"{self.top_k_percentage}.")
    if not 0.0 <= self.geco_decay < 1.0:
      raise ValueError(f"--geco_decay: expected a value in [0, 1), found {self.geco_decay}.")
    if self.geco_rate <= 0.0:
      raise ValueError(f"--geco_rate: expected a positive value, found {self.geco_rate}.")
    for name in ("train_steps", "batch_size", "latent_dim", "convs_per_block"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name}: expected a positive integer, found {getattr(self, name)}.")
    if len(self.lr_values) != len(self.lr_boundaries) + 1:
      raise ValueError(f"--lr_values: expected len(lr_boundaries) + 1 = "
                       f"{len(self.lr_boundaries) + 1} values, found {len(self.lr_values)}.")
    if list(self.lr_boundaries) != sorted(self.lr_boundaries):
      raise ValueError(f"--lr_boundaries: expected increasing steps, found {self.lr_boundaries}.")
    if not self.channels:
      raise ValueError("--channels: expected at least one level, found none.")
    for name in ("ensemble_size", "num_heads", "dropout_levels"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name}: expected a positive integer, found {getattr(self, name)}.")
    if self.ensemble_member_batch not in ("shared", "split"):
      raise ValueError(f"--ensemble_member_batch: expected shared or split, found "
                       f"{self.ensemble_member_batch!r}.")
    if self.ensemble_member_batch == "split" and self.batch_size % self.ensemble_size:
      raise ValueError(f"--batch_size: expected a multiple of --ensemble_size="
                       f"{self.ensemble_size} with --ensemble_member_batch=split, found "
                       f"{self.batch_size}.")
    for name in ("dropout_rate", "m_heads_epsilon"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"--{name}: expected a value in [0, 1), found {getattr(self, name)}.")
    if not self.model_dir:
      raise ValueError("--model_dir: expected a directory, found an empty string.")
    if self.debug_nan_step < 0:
      raise ValueError(f"--debug_nan_step: expected a step >= 0 (0: off), found "
                       f"{self.debug_nan_step}.")


def config_to_flags(config):
  """The `--name=value` lines of a config (a valid flagfile)."""
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if isinstance(value, (tuple, list)):
      value = ",".join(str(v) for v in value)
    lines.append(f"--{field.name}={value}")
  return "\n".join(lines) + "\n"


def learning_rate_schedule(values, boundaries):
  """Piecewise-constant learning rate (the reference's); a single value is a constant rate."""
  if not boundaries:
    return _ConstantSchedule(float(values[0]))
  return keras.optimizers.schedules.PiecewiseConstantDecay(
      [int(b) for b in boundaries], [float(v) for v in values])


class _ConstantSchedule(keras.optimizers.schedules.LearningRateSchedule):
  def __init__(self, value):
    self.value = value

  def __call__(self, step):
    return tf.constant(self.value, tf.float32)

  def get_config(self):
    return {"value": self.value}


def check_batch_size(batch_size, replicas):
  """The global batch must split evenly over the replicas."""
  if batch_size % replicas:
    raise ValueError(f"--batch_size: expected a multiple of the {replicas} replicas, "
                     f"found {batch_size}.")


def make_strategy(name):
  """The `tf.distribute` strategy called `name` (one of `STRATEGIES`).

  `multi_worker_mirrored` reads the cluster from the `TF_CONFIG` environment variable (see
  BUILD.md); without it, it is a single worker.
  """
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker_mirrored":
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def is_chief(strategy):
  """Whether this process writes the run's checkpoints and summaries (always, unless it is a
  non-chief worker of a multi-worker cluster)."""
  return bool(strategy.extended.should_checkpoint)


def distribute_batch(strategy, batch):
  """Splits a global batch over the replicas: replica r of N gets rows `[r*B/N, (r+1)*B/N)`.

  Every worker reads the same global batch from the same seeded pipeline and keeps its
  replicas' rows, so the data each replica sees does not depend on how many workers there are,
  and one input-pipeline position (saved in the chief's checkpoint) is valid for every worker.
  """
  def rows(ctx):
    def take(x):
      size = x.shape[0] // ctx.num_replicas_in_sync
      return x[ctx.replica_id_in_sync_group * size:(ctx.replica_id_in_sync_group + 1) * size]
    return tf.nest.map_structure(take, batch)
  return strategy.experimental_distribute_values_from_function(rows)


def check_finite(terms, step, checkpoint_dir):
  """Raises FloatingPointError naming the step and every non-finite loss term.

  Args:
    terms: `{name: float}` of one step, the loss terms plus `grad_norm`.
    step: the 1-based step that produced them.
    checkpoint_dir: the run's checkpoint directory (its newest checkpoint is named).
  """
  bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
  if not bad:
    return
  last_checkpoint = tf.train.latest_checkpoint(checkpoint_dir)
  names = ", ".join(f"{'gradient norm' if k == 'grad_norm' else 'loss term ' + repr(k)} = {v}"
                    for k, v in bad.items())
  kept = (f"the last good checkpoint {last_checkpoint} is intact" if last_checkpoint
          else "no checkpoint was written")
  raise FloatingPointError(f"Training stopped at step {step}: non-finite {names}; nothing was "
                           f"saved from this step, {kept}.")


def model_kwargs(config, spec):
  """Constructor arguments of `config.model` for a dataset with `spec`."""
  kwargs = dict(num_classes=spec.num_classes, channels=tuple(config.channels),
                convs_per_block=config.convs_per_block, latent_dim=config.latent_dim,
                fcomb_channels=config.fcomb_channels or None,
                num_fcomb_hidden=config.num_fcomb_hidden, beta=config.beta,
                kl_estimate=config.kl_estimate, weight_decay=config.weight_decay,
                log_sigma_bound=config.log_sigma_bound, upsample_mode=config.upsample_mode,
                seed=config.seed,
                # The baselines' classifier heads mirror f_comb (without the latent).
                head_channels=config.fcomb_channels or None,
                num_head_hidden=config.num_fcomb_hidden,
                dropout_rate=config.dropout_rate, dropout_levels=config.dropout_levels,
                ensemble_size=config.ensemble_size,
                member_batch=config.ensemble_member_batch, num_heads=config.num_heads,
                epsilon=config.m_heads_epsilon, objective=objective_spec(config))
  return models.filter_kwargs(config.model, kwargs)


def objective_spec(config):
  """The latent models' `objective` argument of a config (None: the ELBO)."""
  if config.objective == "elbo":
    return None
  return objectives.normalize({
      "name": config.objective, "kappa": config.geco_kappa, "decay": config.geco_decay,
      "rate": config.geco_rate, "top_k": config.top_k,
      "top_k_percentage": config.top_k_percentage})


def _sample_grid(images, references, samples):
  """A `[1, B*H, (1+R+M)*W, 1]` grid: image channel 0, references, samples (one row per image)."""
  rows = []
  for b in range(images.shape[0]):
    tiles = [images[b, :, :, :1]]
    tiles += [tf.cast(r, tf.float32)[..., None] for r in references[b]]
    tiles += [tf.cast(s, tf.float32)[..., None] for s in samples[b]]
    rows.append(tf.concat(tiles, axis=1))
  grid = tf.concat(rows, axis=0)
  grid = grid / tf.maximum(tf.reduce_max(grid), 1.0)
  return grid[tf.newaxis]


def _format_eta(seconds):
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
      else f"{seconds // 60}m{seconds % 60:02d}s"


def _check_resume(config, record):
  """A run in `model_dir` resumes only with the same model and input shape."""
  path = os.path.join(config.model_dir, run_dir.MODEL_CONFIG_FILE)
  if not (os.path.exists(path) and tf.train.latest_checkpoint(
      os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))):
    return
  with open(path) as f:
    saved = json.load(f)
  differs = [k for k in ("model", "input_shape") if saved.get(k) != record[k]]
  differs += [f"kwargs.{k}" for k in sorted(set(saved["kwargs"]) | set(record["kwargs"]))
              if saved["kwargs"].get(k) != record["kwargs"].get(k)]
  if differs:
    first = differs[0]
    get = (lambda r: r["kwargs"].get(first[7:])) if first.startswith("kwargs.") else (
        lambda r: r.get(first))
    raise ValueError(f"--model_dir: {config.model_dir!r} holds a run that cannot resume with "
                     f"this command: {', '.join(differs)} differ ({first}: run has "
                     f"{get(saved)!r}, this command gives {get(record)!r}; dataset "
                     f"{saved.get('dataset')!r} vs {record['dataset']!r}).")


def run(config, log=print):
  """Trains `config.model` on `config.dataset`, resuming from `config.model_dir` if it has a run.

  Under `multi_worker_mirrored` every worker runs this with the same config; the chief writes
  the run, the other workers write their checkpoints and summaries to temporary directories
  that are removed when they finish. Every worker restores from the chief's latest checkpoint.

  Nothing is written before the dataset, the first training and validation batches and (for
  an existing run) the compatibility of the model have been checked.

  Returns:
    A dict with the final `step`, the last logged training terms and `model_dir`.

  Raises:
    ValueError: a bad flag or input, in one line.
    FloatingPointError: a non-finite loss term or gradient (the step and the term named).
  """
  config.validate()
  strategy = make_strategy(config.strategy)
  replicas = strategy.num_replicas_in_sync
  check_batch_size(config.batch_size, replicas)
  builder = input_pipeline.get_builder(config.dataset, config.data_dir or None)
  spec = input_pipeline.dataset_spec(builder)
  kwargs = model_kwargs(config, spec)
  record = json.loads(json.dumps({  # as saved (tuples become lists), to compare with a saved run
      "model": config.model, "kwargs": kwargs, "input_shape": list(spec.image_shape),
      "dataset": config.dataset, "data_dir": config.data_dir}))
  _check_resume(config, record)

  keras.utils.set_random_seed(config.seed)
  train_ds = input_pipeline.train_dataset(builder, spec, config.batch_size, config.seed,
                                          shuffle_buffer=config.shuffle_buffer,
                                          augment=config.augment)
  val_ds = input_pipeline.eval_dataset(builder, spec, 4, split="validation",
                                       limit=max(config.eval_batches, 1) * 4)
  # Bad records and labels fail here, before anything is written.
  with input_pipeline.input_errors(builder, ("train", "validation")):
    next(iter(train_ds))
    grid_batch = next(iter(val_ds))

  chief = is_chief(strategy)
  # Non-chief workers save too (all workers take part in saving), but to a scratch directory.
  write_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="tf_prob_unet_worker_")
  try:
    if chief:
      os.makedirs(config.model_dir, exist_ok=True)
      run_dir.atomic_write(os.path.join(config.model_dir, run_dir.FLAGS_FILE),
                           config_to_flags(config))
      run_dir.atomic_write(os.path.join(config.model_dir, run_dir.MODEL_CONFIG_FILE),
                           json.dumps(record, indent=2))
    return _train(config, strategy, builder, spec, kwargs, train_ds, val_ds, grid_batch,
                  write_dir, chief, log)
  finally:
    if not chief:
      shutil.rmtree(write_dir, ignore_errors=True)


def _train(config, strategy, builder, spec, kwargs, train_ds, val_ds, grid_batch, write_dir,
           chief, log):
  """The training loop of `run` (arguments as prepared there)."""
  replicas = strategy.num_replicas_in_sync
  with strategy.scope():
    model = models.get_model_class(config.model)(**kwargs)
    model.build((None,) + spec.image_shape)
    schedule = learning_rate_schedule(config.lr_values, config.lr_boundaries)
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
  # One plain tf.data iterator per worker, saved in the checkpoint (a distributed iterator
  # cannot be); `distribute_batch` hands each replica its rows.
  iterator = iter(train_ds)
  # The training step is the optimizer's own counter; it is also saved under `step` so that
  # `run_dir.load_model` can read it without rebuilding an optimizer.
  step = optimizer.iterations
  checkpoint = tf.train.Checkpoint(weights=run_dir.model_weights(model), optimizer=optimizer,
                                   step=step, iterator=iterator)
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(write_dir, run_dir.CHECKPOINT_DIR), config.keep_checkpoints)
  latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))
  if latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    log(f"Restored {latest} at step {int(step.numpy())}.")

  @tf.function
  def train_step(it):
    images, labels = next(it)
    if config.debug_nan_step:
      poison = tf.equal(step + 1, config.debug_nan_step)
      images = tf.where(poison, tf.fill(tf.shape(images), float("nan")), images)
    terms = strategy.run(model.train_step_terms,
                         args=(distribute_batch(strategy, (images, labels)),))
    return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
            for k, v in terms.items()}

  writers = {k: tf.summary.create_file_writer(os.path.join(write_dir, "summaries", k))
             for k in ("train", "validation")}
  start = int(step.numpy())
  logs, pending = {}, []
  t0 = time.time()
  last_t, last_step = t0, start
  log(f"Training {config.model} on {config.dataset} ({spec.image_shape}, {spec.num_classes} "
      f"classes) for {config.train_steps} steps, batch {config.batch_size} on {replicas} "
      f"replica(s); starting at step {start}; allocator {runtime.current()}; "
      f"model_dir={config.model_dir}")
  current = start
  with input_pipeline.input_errors(builder, ("train",)):
    while current < config.train_steps:
      terms = {k: float(v) for k, v in train_step(iterator).items()}
      current = int(step.numpy())
      check_finite(terms, current, os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))
      pending.append(terms)
      last = current == config.train_steps
      if current % config.summary_every == 0 or current % config.log_every == 0 or last:
        logs = {k: float(np.mean([t[k] for t in pending])) for k in model.tracker_names}
        pending = []
        with writers["train"].as_default(step=current):
          for name, value in logs.items():
            tf.summary.scalar(name, value)
          tf.summary.scalar("learning_rate", float(schedule(current)))
        if current % config.log_every == 0 or last:
          now = time.time()
          rate = (current - last_step) / max(now - last_t, 1e-9)
          last_t, last_step = now, current
          log(f"step {current}/{config.train_steps} | {rate:.2f} steps/s | ETA "
              f"{_format_eta((config.train_steps - current) / max(rate, 1e-9))} | "
              + " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
      if chief and (current % config.eval_every == 0 or last):
        _evaluate_and_summarise(model, val_ds, grid_batch, writers["validation"], current,
                                config.seed, log)
      if current % config.checkpoint_every == 0 or last:
        manager.save(checkpoint_number=current)
  for writer in writers.values():
    writer.flush()
  return {"step": int(step.numpy()), "logs": logs, "model_dir": config.model_dir,
          "seconds": time.time() - t0, "model": model}


def _evaluate_and_summarise(model, val_ds, grid_batch, writer, step, seed, log):
  """Validation ELBO terms and a sample grid into the validation summaries."""
  sums, count = {}, 0
  for i, batch in enumerate(val_ds):  # the first grader (or the unflipped mode) as the label
    terms = model.loss_terms(batch["image"], batch["references"][:, 0],
                             tf.constant([seed, 2 + i], tf.int64), training=False)
    for name in model.tracker_names:
      sums[name] = sums.get(name, 0.0) + float(terms[name])
    count += 1
  logs = {k: v / max(count, 1) for k, v in sums.items()}
  samples = model.sample(grid_batch["image"], 4, seed=0)
  with writer.as_default(step=step):
    for name, value in logs.items():
      tf.summary.scalar(name, value)
    tf.summary.image("samples", _sample_grid(grid_batch["image"], grid_batch["references"][:, :4],
                                             samples))
  log(f"validation at step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
