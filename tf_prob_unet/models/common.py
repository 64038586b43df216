"""What every segmentation model of the package shares: the sampling contract and the train step."""

import keras
import tensorflow as tf

from tf_prob_unet import losses
from tf_prob_unet import objectives


def normal_noise(shape, seed=None):
  """Standard normal noise of `shape`.

  Args:
    shape: a shape (list or 1-D int tensor).
    seed: None (non-repeatable, TF's stateful generator), a Python int, a `[2]` int tensor, or
      `[B, 2]` per-example seeds (`shape[0] == B`): row `b` of the noise is drawn from
      `seed[b]` alone, so an example's noise does not depend on which batch or replica it is
      in. An int or tensor seed gives the same noise every time (stateless RNG).
  """
  if seed is None:
    return tf.random.normal(shape)
  seed = as_seed(seed)
  if seed.shape.rank == 2:
    row_shape = tf.convert_to_tensor(shape)[1:]
    return tf.map_fn(lambda s: tf.random.stateless_normal(row_shape, seed=s), seed,
                     fn_output_signature=tf.float32)
  return tf.random.stateless_normal(shape, seed=seed)


def posterior_sample(distribution, seed=None):
  """A reparameterised draw `mean + stddev * eps` of a diagonal Gaussian, `[B, N]`."""
  loc = distribution.mean()
  return loc + distribution.stddev() * normal_noise(tf.shape(loc), seed)


def as_seed(seed):
  """An int64 stateless-RNG seed: an int becomes `[2]`; `[2]` / `[B, 2]` tensors are cast."""
  if seed is None:
    return None
  seed = tf.convert_to_tensor(seed)
  if seed.shape.rank == 0:
    seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
  return tf.cast(seed, tf.int64)


def centred_one_hot(labels, num_classes, dtype=tf.float32):
  """`one_hot(labels) - 0.5`, `[B, H, W, K]`: entries +-0.5, ignored pixels -0.5 everywhere."""
  return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=dtype) - 0.5


def check_num_samples(num_samples, available, model, unit):
  """`num_samples` as a Python int, checked against a model with `available` fixed samples.

  Args:
    num_samples: the requested number (an int, or a tensor with a static value).
    available: how many distinct samples the model has (heads, ensemble members).
    model: the model's name, for the message.
    unit: what one sample is (`"head"`, `"member"`), for the message.

  Raises:
    ValueError: `num_samples` is not in `[1, available]` or not known statically.
  """
  value = num_samples if isinstance(num_samples, int) else tf.get_static_value(num_samples)
  if value is None or not 1 <= int(value) <= available:
    raise ValueError(f"{model}.sample: num_samples: expected 1 to {available} (one sample per "
                     f"{unit}), found {num_samples}.")
  return int(value)


def split_batch(data):
  """`(images, labels)` from a `(images, labels)` tuple or an `{"image", "label"}` dict."""
  if isinstance(data, dict):
    return data["image"], data["label"]
  images, labels = data[0], data[1]
  return images, labels


class SegmentationModel(keras.Model):
  """Base class: the `sample(images, num_samples)` contract and a distribution-aware train step.

  Subclasses implement `sample_logits(images, num_samples, seed)` (`[B, M, H, W, K]` logits) and
  `loss_terms(images, labels, seed, training)` (a dict of scalar terms including `"loss"`), and
  call `_init_trackers(...)` with the names of the terms they report.

  Args:
    num_classes: number of classes K.
    ignore_index: label value excluded from the loss.
    seed: base seed of the training-time noise.
    objective: the training objective of a latent model (`objectives.normalize`: None or
      `"elbo"` for the ELBO, `"geco"` or a dict such as `{"name": "geco", "kappa": 0.05}` for
      GECO). Latent models name it in their constructor and compute their loss with
      `elbo_terms`; the others leave it None.
  """

  # True: `loss_terms` accepts `[B, 2]` per-example seeds (all its noise goes through
  # `normal_noise`), so training draws the same noise on one or N replicas. False: it gets one
  # `[2]` seed per replica and step (e.g. batch-wide stateless dropout masks).
  per_example_seeds = False

  def __init__(self, num_classes=2, ignore_index=255, seed=0, objective=None, **kwargs):
    super().__init__(**kwargs)
    self.objective_config = objectives.normalize(objective)
    # Built here, under the model's name, so its variables' paths are `<model>/geco/...` like
    # the other sublayers' (checkpoints are keyed by path below the model).
    with keras.name_scope(self.name):
      self.objective = objectives.build(self.objective_config)
    if int(num_classes) < 2:
      raise ValueError(f"{type(self).__name__}: `num_classes` must be >= 2 (binary tasks use 2), "
                       f"found {num_classes}.")
    self.num_classes = int(num_classes)
    self.ignore_index = None if ignore_index is None else int(ignore_index)
    self.seed = int(seed)

  def _init_trackers(self, *names):
    if self.objective is not None:
      names += tuple(n for n in self.objective.tracker_names if n not in names)
    self.tracker_names = tuple(names)
    self.trackers = [keras.metrics.Mean(name=n) for n in names]

  @property
  def metrics(self):
    return list(self.trackers)

  def weight_decay_loss(self):
    """Sum of the kernel regularisers (the reference's weight decay), a scalar."""
    regs = self.losses
    return tf.add_n(regs) if regs else tf.constant(0.0)

  def reconstruction_terms(self, logits, labels):
    """`(rec_loss, pixel_ce)`: CE summed over valid pixels and mean CE per valid pixel, each
    averaged over the images of the batch (logits `[B, H, W, K]`, labels `[B, H, W]`)."""
    rec_sum, rec_mean = losses.reconstruction_loss(logits, labels, self.ignore_index)
    return tf.reduce_mean(rec_sum), tf.reduce_mean(rec_mean)

  def elbo_terms(self, logits, labels, kl, beta):
    """The terms of a latent model's loss under its objective (ELBO or GECO), batch-averaged.

    Every latent model computes its loss through here (`objectives` documents the interface):
    the per-pixel CE map of `logits` against `labels` and the KL per image go to the model's
    objective; the top-k draw of GECO uses per-example seeds (stream 3).

    Args:
      logits: `[B, H, W, K]` reconstruction logits.
      labels: `[B, H, W]` labels.
      kl: `[B]` KL (or its estimate) per image (a hierarchical model: summed over scales).
      beta: weight of the KL term under the ELBO (GECO weighs the KL by 1).

    Returns:
      A dict of scalars: `rec_loss`, `kl`, `weight_decay_loss`, `loss`
      (ELBO: `rec + beta * kl + wd`; GECO: `lambda * C + kl + wd`) and `pixel_ce`; GECO adds
      `geco_lambda`, `geco_constraint`, `geco_rec_ema` and `geco_selected`.
    """
    ce, valid = losses.pixel_cross_entropy(logits, labels, self.ignore_index)
    seeds = None
    if self.objective is not None:
      seeds = self.example_seeds(3, tf.shape(ce)[0])
    terms = objectives.objective_terms(self.objective, ce, valid, kl, beta, seeds=seeds)
    wd = self.weight_decay_loss()
    terms["loss"] = terms["loss"] + wd
    terms["weight_decay_loss"] = wd
    return terms

  def _step_seed(self, stream):
    """A `[2]` seed from the base seed, a stream id, the optimizer step and the replica id."""
    replica = tf.distribute.get_replica_context()
    replica_id = 0 if replica is None else replica.replica_id_in_sync_group
    step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
    first = (tf.cast(self.seed, tf.int64) * 1_000_003 + stream * 7919
             + tf.cast(replica_id, tf.int64))
    return tf.stack([first, tf.cast(step, tf.int64)])

  def example_seeds(self, stream, batch_size):
    """`[B, 2]` per-example seeds: base seed and stream, then (step, global example index).

    Under a `tf.distribute` strategy replica `r` holds rows `[r * B, (r + 1) * B)` of the global
    batch (see `train_lib`), so example `r * B + b` gets the same seed, and the same noise,
    whatever the number of replicas: one device and N replicas train on identical draws.

    Args:
      stream: a small int separating independent noise streams (1: training draws).
      batch_size: B, the per-replica batch size (a scalar, may be a tensor).
    """
    replica = tf.distribute.get_replica_context()
    replica_id, replicas = (0, 1) if replica is None else (
        replica.replica_id_in_sync_group, replica.num_replicas_in_sync)
    batch_size = tf.cast(batch_size, tf.int64)
    step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
    index = (tf.cast(step, tf.int64) * batch_size * replicas
             + tf.cast(replica_id, tf.int64) * batch_size + tf.range(batch_size))
    first = tf.cast(self.seed, tf.int64) * 1_000_003 + stream * 7919
    return tf.stack([tf.fill(tf.shape(index), first), index], axis=1)

  def _update_trackers(self, terms):
    for name, tracker in zip(self.tracker_names, self.trackers):
      tracker.update_state(terms[name])
    return {t.name: t.result() for t in self.trackers}

  def train_step_terms(self, data):
    """One optimizer step on this replica's batch; returns the step's own terms.

    The loss terms are computed with per-example seeds (`example_seeds`) if the model supports
    them (`per_example_seeds`), else with one seed per replica and step; the trackers are updated, and the returned dict adds `grad_norm`, the global norm of this replica's
    gradients (the training loop stops on a non-finite value before it checkpoints).
    """
    images, labels = split_batch(data)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      seed = (self.example_seeds(1, tf.shape(images)[0]) if self.per_example_seeds
              else self._step_seed(1))
      terms = self.loss_terms(images, labels, seed, training=True)
      # Gradients are summed over replicas; each replica's loss is a mean over its own images.
      scaled = terms["loss"] / replicas
    grads = tape.gradient(scaled, self.trainable_variables)
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    if self.objective is not None:
      self.objective.commit(terms)
    self._update_trackers(terms)
    return dict(terms, grad_norm=tf.linalg.global_norm(grads))

  def train_step(self, data):
    self.train_step_terms(data)
    return {t.name: t.result() for t in self.trackers}

  def test_step(self, data):
    images, labels = split_batch(data)
    terms = self.loss_terms(images, labels, self._step_seed(2), training=False)
    return self._update_trackers(terms)

  def sample_logits(self, images, num_samples=1, seed=None):
    raise NotImplementedError

  def sample_labels(self, images, num_samples=1, seed=None):
    """`[B, M, H, W]` int32 labels; models with a cheaper label-only path override this."""
    return tf.argmax(self.sample_logits(images, num_samples, seed), axis=-1,
                     output_type=tf.int32)

  def sample(self, images, num_samples=1, seed=None, return_logits=False, return_probs=False):
    """Draws `num_samples` segmentations per image.

    Args:
      images: `[B, H, W, C]` float images, normalised as in training.
      num_samples: M, samples per image.
      seed: None, an int or a `[2]` int tensor; a seed makes the draw repeatable.
      return_logits: also return the logits.
      return_probs: also return the softmax probabilities.

    Returns:
      `[B, M, H, W]` int32 label maps; with `return_logits` / `return_probs` a tuple
      `(labels, logits?, probs?)` whose extra entries are `[B, M, H, W, K]`.
    """
    if not (return_logits or return_probs):
      return self.sample_labels(images, num_samples=num_samples, seed=seed)
    logits = self.sample_logits(images, num_samples=num_samples, seed=seed)
    labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
    out = (labels,)
    if return_logits:
      out += (logits,)
    if return_probs:
      out += (tf.nn.softmax(logits, axis=-1),)
    return out

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, ignore_index=self.ignore_index, seed=self.seed)
    if self.objective_config is not None:
      config.update(objective=dict(self.objective_config))
    return config
