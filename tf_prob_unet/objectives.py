"""Training objectives of latent models: the ELBO and GECO (Rezende & Viola 2018), model-agnostic.

The interface (one for every latent model)
-----------------------------------------
A latent model (a conditional VAE: Probabilistic U-Net, image2image VAE, hierarchical models)
computes, for its per-replica batch, the reconstruction logits and the KL per image, and hands them
to `SegmentationModel.elbo_terms(logits, labels, kl, beta)` (`models/common.py`), which turns the
logits into the per-pixel cross-entropy map and calls the model's objective:

    terms = objective_terms(objective, ce, valid, kl, beta=beta, seeds=seeds)

* `ce`: `[B, H, W]` float32 per-pixel cross-entropy, 0 at ignored pixels
  (`losses.pixel_cross_entropy`);
* `valid`: `[B, H, W]` float32, 1 where the pixel counts, 0 where its label is ignored;
* `kl`: `[B]` KL(Q || P) per image (a hierarchical model passes the sum over its scales);
* `seeds`: `[B, 2]` int64 per-example seeds of the stochastic top-k (`SegmentationModel.
  example_seeds`), so an example's draw does not depend on the replica it is on.

It returns a dict of scalars: `loss` (without weight decay, which the model adds), `rec_loss`,
`kl`, `pixel_ce` (mean CE per valid pixel, for logging) and, for GECO, `geco_lambda`,
`geco_constraint`, `geco_rec_ema` (the EMA after this step) and `geco_selected` (mean number of
selected pixels per image). A model opts in by taking `objective=None` in its constructor and
passing it to `SegmentationModel.__init__`; the base class builds the objective, adds its
trackers (`GECO.tracker_names`) and, after each optimizer step, commits the GECO state
(`GECO.commit`), so validation calls of `loss_terms` never move it.

Objectives
----------
* ELBO (`objective=None` or `{"name": "elbo"}`): `rec + beta * kl`, rec = CE summed over the
  valid pixels of each image, averaged over images (the Probabilistic U-Net reference).
* GECO (`{"name": "geco", ...}`, see `GECO`): the official Hierarchical Probabilistic U-Net
  release's form (`geco_utils.py`, `model.py::loss`): stochastic top-k cross-entropy, a constraint
  on its moving average, and a Lagrange multiplier trained by gradient ascent.
"""

import keras
import numpy as np
import tensorflow as tf

OBJECTIVES = ("elbo", "geco")
TOP_K_MODES = ("stochastic", "deterministic", "off")
GECO_DEFAULTS = {"kappa": 0.05, "decay": 0.99, "rate": 0.01, "top_k": "stochastic",
                 "top_k_percentage": 0.02}
# Where an all-zero CE would give log(0): a floor that keeps valid pixels above ignored ones.
_LOG_FLOOR = 1e-30


def gumbel_noise(shape, seeds):
  """Standard Gumbel noise `-log(-log U)`, row `b` drawn from `seeds[b]` alone.

  Args:
    shape: `[B, ...]` (list or 1-D int tensor).
    seeds: `[B, 2]` int64 per-example seeds.

  Returns:
    `[B, ...]` float32.
  """
  row_shape = tf.convert_to_tensor(shape)[1:]
  uniform = tf.map_fn(
      lambda s: tf.random.stateless_uniform(row_shape, seed=s, minval=0.0, maxval=1.0),
      tf.cast(seeds, tf.int64), fn_output_signature=tf.float32)
  # The release's form: -log(-log(U + 1e-20) + 1e-20).
  return -tf.math.log(-tf.math.log(uniform + 1e-20) + 1e-20)


def _replica():
  """`(context, replica_id, num_replicas)` of the current replica (`(None, 0, 1)` outside one)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return None, 0, 1
  return ctx, ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def global_mean(x):
  """The mean of a per-replica scalar over the replicas (equal per-replica batches), no gradient."""
  ctx, _, replicas = _replica()
  x = tf.stop_gradient(x)
  if ctx is None:
    return x
  return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, x)


def top_k_mask(ce, valid, percentage, mode="stochastic", seeds=None):
  """The release's top-k pixel selection over the whole (global) batch, `[B, H, W]` float32.

  k = floor(percentage * B * H * W), B the global batch. `stochastic`: Gumbel top-k on
  log(CE / sum CE), i.e. k pixels drawn without replacement with probability proportional to
  their CE (CE stop-gradiented); `deterministic`: the k largest CEs; `off`: every valid pixel.
  Ignored pixels are never selected (score -inf, and the mask is multiplied by `valid`).

  Under a `tf.distribute` strategy the replicas' scores are gathered, the global top-k is taken
  and each replica keeps its own rows, so N replicas select exactly the pixels one device
  selects on the same global batch (the Gumbel noise of an example comes from its own seed).

  Args:
    ce: `[B, H, W]` per-pixel CE (this replica's rows).
    valid: `[B, H, W]` 1 where the pixel counts.
    percentage: fraction of the batch's pixels to select.
    mode: one of `TOP_K_MODES`.
    seeds: `[B, 2]` per-example seeds (stochastic mode).
  """
  if mode == "off":
    return valid
  ce = tf.stop_gradient(ce)
  shape = tf.shape(ce)
  score = tf.math.log(tf.maximum(ce, _LOG_FLOOR))  # log(CE / sum CE) up to a constant shift
  if mode == "stochastic":
    score += gumbel_noise(shape, seeds)
  score = tf.where(valid > 0, score, tf.fill(shape, -np.inf))
  flat = tf.reshape(score, [-1])
  local = tf.size(flat)
  ctx, replica_id, replicas = _replica()
  if ctx is not None:
    flat = tf.reshape(ctx.all_gather(flat[tf.newaxis], axis=0), [-1])
  k = tf.cast(tf.floor(percentage * tf.cast(tf.size(flat), tf.float32)), tf.int32)
  indices = tf.math.top_k(flat, k=k, sorted=False).indices - replica_id * local
  indices = tf.boolean_mask(indices, (indices >= 0) & (indices < local))
  mask = tf.scatter_nd(indices[:, tf.newaxis], tf.ones_like(indices, tf.float32), [local])
  return tf.reshape(mask, shape) * valid


def elbo_terms(ce, valid, kl, beta):
  """The ELBO's terms (without weight decay), each averaged over the images.

  Args:
    ce: `[B, H, W]` per-pixel CE, 0 at ignored pixels.
    valid: `[B, H, W]` valid-pixel mask.
    kl: `[B]` KL per image.
    beta: weight of the KL.

  Returns:
    `{"loss", "rec_loss", "kl", "pixel_ce"}` scalars.
  """
  rec = tf.reduce_mean(tf.reduce_sum(ce, axis=[1, 2]))
  pixel_ce = tf.reduce_mean(tf.reduce_sum(ce, axis=[1, 2]) /
                            tf.maximum(tf.reduce_sum(valid, axis=[1, 2]), 1.0))
  kl = tf.reduce_mean(kl)
  return {"loss": rec + beta * kl, "rec_loss": rec, "kl": kl, "pixel_ce": pixel_ce}


@tf.custom_gradient
def _scale_gradient(x, scale):
  """Identity forward; the gradient multiplied by `scale` (Sonnet 1's `scale_gradient`)."""
  def grad(dy):
    return dy * scale, None
  return tf.identity(x), grad


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class GECO(keras.layers.Layer):
  """GECO as in the Hierarchical Probabilistic U-Net release, with its state in variables.

  * rec: the CE summed over each image's top-k selected pixels (`top_k_mask`), averaged over
    the images.
  * Constraint C = EMA(rec) - kappa * (mean number of selected pixels per image): kappa is a CE
    target per selected pixel. The EMA (decay `decay`, set to the first value it sees) has the
    forward value of the average and passes the gradient straight through to the current rec
    (`rec + stop_gradient(ema - rec)`, Sonnet 1's differentiable `MovingAverage`). Under a
    distribution strategy the EMA and the selected count are of the global batch, so C is the
    same on every replica and equals one device's C.
  * Multiplier lambda = softplus(v)^2, v initialised to softplus^-1(1) so lambda starts at 1; v is
    trainable (the model's optimizer updates it), and its gradient is scaled by `-rate`, so the
    optimizer ascends: lambda grows while C > 0 and shrinks while C < 0 (Sonnet 1's
    `get_lagrange_multiplier`; under Adam only the sign of `rate` matters).
  * loss = lambda * C + KL (the model adds weight decay).

  Variables (`multiplier_v`, `rec_ema`, `ema_initialized`) are the layer's weights, so they are
  saved in checkpoints by path and a resumed run continues them exactly (the release keeps the
  EMA in local variables and restarts it). Calling the layer computes the terms without changing
  any variable; `commit(terms)` stores the EMA after the optimizer step.

  Args:
    kappa: CE target per selected pixel (0.05 in the release).
    decay: EMA decay (0.99).
    rate: gradient scale of the multiplier (0.01; its sign makes it ascent).
    top_k: `stochastic` | `deterministic` | `off` (every valid pixel).
    top_k_percentage: fraction of the batch's pixels selected (0.02).
  """

  tracker_names = ("geco_lambda", "geco_constraint")

  def __init__(self, kappa=0.05, decay=0.99, rate=0.01, top_k="stochastic",
               top_k_percentage=0.02, **kwargs):
    super().__init__(**kwargs)
    if top_k not in TOP_K_MODES:
      raise ValueError(f"GECO: top_k: expected one of {TOP_K_MODES}, found {top_k!r}.")
    if not 0.0 < float(top_k_percentage) <= 1.0:
      raise ValueError(f"GECO: top_k_percentage: expected a fraction in (0, 1], found "
                       f"{top_k_percentage}.")
    if not 0.0 <= float(decay) < 1.0:
      raise ValueError(f"GECO: decay: expected a value in [0, 1), found {decay}.")
    if float(rate) <= 0.0:
      raise ValueError(f"GECO: rate: expected a positive value, found {rate}.")
    self.kappa = float(kappa)
    self.decay = float(decay)
    self.rate = float(rate)
    self.top_k = top_k
    self.top_k_percentage = float(top_k_percentage)

  def build(self, input_shape=None):
    # softplus^-1(sqrt(1)) = log(e - 1): lambda starts at 1.
    self.multiplier_v = self.add_weight(
        shape=(), initializer=keras.initializers.Constant(float(np.log(np.e - 1.0))),
        trainable=True, name="multiplier_v")
    # Written once per step with the same (global) value on every replica.
    self.rec_ema = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                   name="rec_ema", aggregation="only_first_replica")
    self.ema_initialized = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                           name="ema_initialized",
                                           aggregation="only_first_replica")
    self.built = True

  def multiplier(self):
    """lambda = softplus(v)^2, whose gradient into v is scaled by -rate (ascent)."""
    return tf.square(tf.nn.softplus(_scale_gradient(
        tf.convert_to_tensor(self.multiplier_v), tf.constant(-self.rate, tf.float32))))

  def call(self, ce, valid, kl, seeds=None):
    """The GECO terms of one per-replica batch (see the module docstring for the shapes)."""
    mask = top_k_mask(ce, valid, self.top_k_percentage, self.top_k, seeds)
    rec = tf.reduce_mean(tf.reduce_sum(mask * ce, axis=[1, 2]))
    selected = tf.reduce_mean(tf.reduce_sum(mask, axis=[1, 2]))
    rec_global = global_mean(rec)
    ema = tf.where(self.ema_initialized > 0,
                   self.decay * self.rec_ema + (1.0 - self.decay) * rec_global, rec_global)
    constraint = rec + tf.stop_gradient(ema - rec) - self.kappa * global_mean(selected)
    lam = self.multiplier()
    kl = tf.reduce_mean(kl)
    pixel_ce = tf.reduce_mean(tf.reduce_sum(ce, axis=[1, 2]) /
                              tf.maximum(tf.reduce_sum(valid, axis=[1, 2]), 1.0))
    return {"loss": lam * constraint + kl, "rec_loss": rec, "kl": kl, "pixel_ce": pixel_ce,
            "geco_lambda": tf.stop_gradient(lam), "geco_constraint": tf.stop_gradient(constraint),
            "geco_rec_ema": tf.stop_gradient(ema), "geco_selected": selected}

  def commit(self, terms):
    """Stores the step's EMA (`terms["geco_rec_ema"]`); call once after the optimizer step."""
    self.rec_ema.assign(terms["geco_rec_ema"])
    self.ema_initialized.assign(1.0)

  def get_config(self):
    config = super().get_config()
    config.update(kappa=self.kappa, decay=self.decay, rate=self.rate, top_k=self.top_k,
                  top_k_percentage=self.top_k_percentage)
    return config


def normalize(objective):
  """A model's `objective` argument as a JSON-able dict, or None for the ELBO.

  Accepts None, `"elbo"`, `"geco"` (the release's defaults) or a dict with `name` and GECO's
  arguments (`GECO_DEFAULTS` fill the missing ones).
  """
  if objective is None:
    return None
  if isinstance(objective, str):
    objective = {"name": objective}
  objective = dict(objective)
  name = objective.pop("name", None)
  if name not in OBJECTIVES:
    raise ValueError(f"objective: expected a name in {OBJECTIVES}, found {name!r}.")
  if name == "elbo":
    if objective:
      raise ValueError(f"objective: the ELBO takes no arguments, found {sorted(objective)}.")
    return None
  unknown = sorted(set(objective) - set(GECO_DEFAULTS))
  if unknown:
    raise ValueError(f"objective: expected GECO arguments among {sorted(GECO_DEFAULTS)}, "
                     f"found {unknown}.")
  return dict({"name": "geco"}, **dict(GECO_DEFAULTS, **objective))


def build(objective):
  """The objective layer of a normalised objective (None for the ELBO, which has no state)."""
  objective = normalize(objective)
  if objective is None:
    return None
  kwargs = {k: v for k, v in objective.items() if k != "name"}
  layer = GECO(name="geco", **kwargs)
  layer.build()
  return layer


def objective_terms(objective, ce, valid, kl, beta, seeds=None):
  """The loss dict of `objective` (a `GECO` layer, or None for the ELBO with weight `beta`)."""
  if objective is None:
    return elbo_terms(ce, valid, kl, beta)
  return objective(ce, valid, kl, seeds=seeds)
