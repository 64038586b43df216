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
from tqdm import tqdm

from tf_prob_unet import checkpointing
from tf_prob_unet import runtime
from tf_prob_unet import input_pipeline
from tf_prob_unet import models
from tf_prob_unet import objectives
from tf_prob_unet import plots
from tf_prob_unet import run_dir

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


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
  dtype_policy: str = "float32"
  seed: int = 0
  # Architecture.
  channels: tuple = (32, 64, 128, 192)
  convs_per_block: int = 3
  latent_dim: int = 6
  fcomb_channels: int = 0  # 0: channels[0], as in the reference
  num_fcomb_hidden: int = 3
  upsample_mode: str = "align_corners"
  log_sigma_bound: float = 5.0
  # Hierarchical Probabilistic U-Net (hprob_unet); its levels are `channels`.
  latent_dims: tuple = (1, 1, 1, 1)
  blocks_per_level: int = 3
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
  shuffle_buffer: int = 1024  # unused: the input order is a full seeded permutation per epoch
  augment: bool = False
  # Testing only: turn the images of this (1-based) step into NaN (0: never).
  debug_nan_step: int = 0
  # Testing only: seconds between writing a checkpoint and publishing it (a fault lands mid-write).
  debug_checkpoint_pause: float = 0.0

  def validate(self):
    """Raises ValueError naming the first bad field, what was expected and what was found."""
    if self.strategy not in STRATEGIES:
      raise ValueError(f"--strategy: expected one of {STRATEGIES}, found {self.strategy!r}.")
    if self.dtype_policy not in DTYPE_POLICIES:
      raise ValueError(f"--dtype_policy: expected one of {DTYPE_POLICIES}, found "
                       f"{self.dtype_policy!r}.")
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
    for name in ("train_steps", "batch_size", "latent_dim", "convs_per_block",
                 "blocks_per_level"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name}: expected a positive integer, found {getattr(self, name)}.")
    if len(self.lr_values) != len(self.lr_boundaries) + 1:
      raise ValueError(f"--lr_values: expected len(lr_boundaries) + 1 = "
                       f"{len(self.lr_boundaries) + 1} values, found {len(self.lr_values)}.")
    if list(self.lr_boundaries) != sorted(self.lr_boundaries):
      raise ValueError(f"--lr_boundaries: expected increasing steps, found {self.lr_boundaries}.")
    if not self.channels:
      raise ValueError("--channels: expected at least one level, found none.")
    if self.model == "hprob_unet" and not (
        1 <= len(self.latent_dims) < len(self.channels) and min(self.latent_dims) >= 1):
      raise ValueError(f"--latent_dims: expected 1 to len(--channels) - 1 = "
                       f"{len(self.channels) - 1} positive latent sizes, found "
                       f"{','.join(str(d) for d in self.latent_dims)!r}.")
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
    run_dir.check_writable(self.model_dir, "--model_dir")
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
  docs/training.md); without it, it is a single worker.
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


def worker_train_dataset(builder, spec, config, start, input_context, with_ids=False):
  """The training pipeline of one worker: only its replicas' rows of every global batch.

  Replica r of R holds rows `[r*B/R, (r+1)*B/R)` of global batch s (stream positions
  `start + s*B + ...`); worker w of W feeds replicas `[w*R/W, (w+1)*R/W)` and reads only their
  examples, one `B/R`-row element per replica, in replica order (what
  `distribute_datasets_from_function` hands to the worker's devices). Which example sits at a
  position, its grader or flip draw and its noise seed are global (functions of the position and
  the seed), so one process and N workers train on the same global batches.

  Args:
    builder, spec: the dataset.
    config: the `TrainConfig` (batch size, seed).
    start: the stream position of the first global batch (from the checkpoint).
    input_context: a `tf.distribute.InputContext` (workers, this worker's index, replicas).
    with_ids: yield dicts with each example's `id`, `index`, `epoch` and `position` too.
  """
  replicas = input_context.num_replicas_in_sync
  local = replicas // input_context.num_input_pipelines
  first = input_context.input_pipeline_id * local
  return input_pipeline.train_dataset(builder, spec, config.batch_size, config.seed,
                                      start=start, num_replicas=replicas,
                                      replicas=range(first, first + local), with_ids=with_ids,
                                      augment=config.augment)


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
                seed=config.seed, latent_dims=tuple(config.latent_dims),
                blocks_per_level=config.blocks_per_level,
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


def run(config, log=print, stop=None):
  """Trains `config.model` on `config.dataset`, resuming from `config.model_dir` if it has a run.

  Under `multi_worker_mirrored` every worker runs this with the same config; the chief writes
  the run, the other workers write their checkpoints and summaries to temporary directories
  that are removed when they finish. Every worker restores from the chief's latest checkpoint
  and reads only its own replicas' examples (`worker_train_dataset`).

  Nothing is written before the dataset, the first training and validation batches and (for
  an existing run) the compatibility of the model have been checked.

  Args:
    config: a `TrainConfig`.
    log: called with each progress line.
    stop: a `checkpointing.StopRequest` (or anything whose truth means "stop"): once it is set,
      training finishes the step it is in, checkpoints it and returns with `preempted` True.
      Under `multi_worker_mirrored` the workers' requests are summed inside every step, so all
      workers stop after the same step, the chief writes the checkpoint and every worker returns.

  Returns:
    A dict with the final `step`, the last logged training terms, `model_dir`, `preempted`.

  Raises:
    ValueError: a bad flag or input, in one line.
    FloatingPointError: a non-finite loss term or gradient (the step and the term named).
    checkpointing.WriteError: a checkpoint could not be written (the path named).
  """
  config.validate()
  strategy = make_strategy(config.strategy)
  if hasattr(stop, "reinstall"):  # a multi-worker strategy may have taken over SIGTERM
    stop.reinstall()
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
  num_examples = builder.info.splits["train"].num_examples
  latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))
  start = checkpointing.read_position(latest, num_examples) if latest else 0
  if start is None:  # a run from before input positions were saved: continue after its steps
    start = int(tf.train.load_checkpoint(latest).get_tensor(
        "step/.ATTRIBUTES/VARIABLE_VALUE")) * config.batch_size
  contexts = []

  def dataset_fn(input_context):
    contexts.append(input_context)
    return worker_train_dataset(builder, spec, config, start, input_context)

  # Bad records and labels fail here, before anything is written.
  with input_pipeline.input_errors(builder, ("train", "validation")):
    train_ds = strategy.distribute_datasets_from_function(dataset_fn)
    next(iter(worker_train_dataset(builder, spec, config, start, contexts[0])))
    val_ds = input_pipeline.eval_dataset(builder, spec, 4, split="validation",
                                         limit=max(config.eval_batches, 1) * 4)
    grid_batch = next(iter(val_ds))

  chief = is_chief(strategy)
  # Non-chief workers save too (all workers take part in saving), but to a scratch directory.
  write_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="tf_prob_unet_worker_")
  # Keras' dtype policy is process-global: set for this run's model only, restored after it.
  previous_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(config.dtype_policy)
  try:
    if chief:
      os.makedirs(config.model_dir, exist_ok=True)
      for name, text in ((run_dir.FLAGS_FILE, config_to_flags(config)),
                         (run_dir.MODEL_CONFIG_FILE, json.dumps(record, indent=2))):
        path = os.path.join(config.model_dir, name)
        try:
          run_dir.atomic_write(path, text)
        except OSError as e:
          raise checkpointing.WriteError(f"could not write {path}: "
                                         f"{checkpointing.describe(e)}.") from None
      removed = checkpointing.remove_unpublished(
          os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))
      if removed:
        log(f"Removed unfinished checkpoint files {', '.join(removed)}.")
    return _train(config, strategy, builder, spec, kwargs, train_ds, contexts[0], start,
                  num_examples, val_ds, grid_batch, write_dir, chief, stop, log)
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
    if not chief:
      shutil.rmtree(write_dir, ignore_errors=True)


def _train(config, strategy, builder, spec, kwargs, train_ds, input_context, start_position,
           num_examples, val_ds, grid_batch, write_dir, chief, stop, log):
  """The training loop of `run` (arguments as prepared there)."""
  replicas = strategy.num_replicas_in_sync
  workers = input_context.num_input_pipelines
  with strategy.scope():
    model = models.get_model_class(config.model)(**kwargs)
    model.build((None,) + spec.image_shape)
    schedule = learning_rate_schedule(config.lr_values, config.lr_boundaries)
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
  # The training step is the optimizer's own counter; it is also saved under `step` so that
  # `load_model` can read it without rebuilding an optimizer. The input position is two
  # integers (no buffered examples): see `input_pipeline.train_dataset`.
  step = optimizer.iterations
  position = checkpointing.InputPosition(num_examples)
  checkpoint = checkpointing.run_state(run_dir.model_weights(model), optimizer, step, position)
  checkpoint_dir = os.path.join(write_dir, run_dir.CHECKPOINT_DIR)
  latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))
  if latest:
    has_position = checkpointing.read_position(latest, num_examples) is not None
    restore = checkpoint if has_position else checkpointing.run_state(
        run_dir.model_weights(model), optimizer, step, None)
    restore.read(latest).expect_partial().assert_existing_objects_matched()
    log(f"Restored {latest} at step {int(step.numpy())}.")
  iterator = iter(train_ds)

  @tf.function
  def train_step(it, stop_requested):
    images, labels = next(it)

    def replica_step(images, labels):
      if config.debug_nan_step:
        poison = tf.equal(step + 1, config.debug_nan_step)
        images = tf.where(poison, tf.fill(tf.shape(images), float("nan")), images)
      return model.train_step_terms((images, labels)), tf.identity(stop_requested)

    terms, stops = strategy.run(replica_step, args=(images, labels))
    out = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
           for k, v in terms.items()}
    # Any worker's stop request stops every worker after this same step.
    out["stop"] = strategy.reduce(tf.distribute.ReduceOp.SUM, stops, axis=None)
    return out

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
  if workers > 1:
    log(f"Worker {input_context.input_pipeline_id} of {workers} reads "
        f"{config.batch_size // workers} of every {config.batch_size} examples (its replicas' "
        f"rows); input position {start_position}.")
  current, preempted = start, False
  with input_pipeline.input_errors(builder, ("train",)):
    while current < config.train_steps:
      requested = tf.constant(1.0 if stop else 0.0)
      terms = {k: float(v) for k, v in train_step(iterator, requested).items()}
      # One process stops after the step it is in; workers after the step that carried the
      # first request (the same step on every worker).
      stopping = bool(stop) if workers == 1 else terms["stop"] > 0
      del terms["stop"]
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
              f"{tqdm.format_interval((config.train_steps - current) / max(rate, 1e-9))} | "
              + " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
      if chief and not stopping and (current % config.eval_every == 0 or last):
        _evaluate_and_summarise(model, val_ds, grid_batch, writers["validation"], current,
                                config.seed, log)
      if current % config.checkpoint_every == 0 or last or stopping:
        position.set(start_position + (current - start) * config.batch_size)
        path = checkpointing.save(checkpoint, checkpoint_dir, current, config.keep_checkpoints,
                                  pause=config.debug_checkpoint_pause)
        if stopping and not last:
          preempted = True
          log(f"Stop requested ({getattr(stop, 'signal', None) or 'by another worker'}): "
              f"saved step {current} to {path if chief else 'the chief'}; rerun the same "
              f"command to continue.")
          break
  for writer in writers.values():
    writer.flush()
  return {"step": int(step.numpy()), "logs": logs, "model_dir": config.model_dir,
          "seconds": time.time() - t0, "model": model, "preempted": preempted}


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
    tf.summary.image("samples", plots.sample_grid_image(
        grid_batch["image"].numpy(), grid_batch["references"][:, :4].numpy(), samples.numpy(),
        model.num_classes))
  log(f"validation at step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
