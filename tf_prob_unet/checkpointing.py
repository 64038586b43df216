"""What a training checkpoint holds, how it is written, and how a run stops when asked to.

A checkpoint holds the model's variables keyed by path (trainable or not: any state the model
or its objective keeps as Keras variables, e.g. a constraint multiplier and its moving average),
the optimizer's variables, the step, and the input position as two integers (`input/epoch`
and `input/index`: the offset into that epoch's seeded permutation, see
`input_pipeline.train_dataset`). No input data: its size is the variables' size plus a few
kilobytes.

Writes are atomic: `save` writes `ckpt-N.*`, then publishes it by replacing the directory's
`checkpoint` state file (written to a temporary file and renamed); `tf.train.latest_checkpoint`
only ever sees complete checkpoints. A process killed mid-write leaves the previous checkpoint as
the latest; the unpublished files are removed by the next `save` or `remove_unpublished`. A write
that fails (no space left, a read-only disk) removes what it wrote and raises `WriteError`, one
line naming the path; the previous checkpoint stays loadable.

`StopRequest` turns SIGTERM and SIGINT into a request that the training loop honours after the
step it is in: it checkpoints that step and the train binary exits with `EXIT_PREEMPTED`.
"""

import contextlib
import os
import re
import signal
import threading
import time

import numpy as np
import tensorflow as tf

from tf_prob_unet import errors

# The train binary's exit statuses and the write error live in `errors` (no TensorFlow import).
EXIT_BAD_INPUT = errors.EXIT_BAD_INPUT
EXIT_WRITE_FAILED = errors.EXIT_WRITE_FAILED
EXIT_PREEMPTED = errors.EXIT_PREEMPTED
WriteError = errors.WriteError

STATE_FILE = "checkpoint"
PREFIX = "ckpt"


def describe(error):
  """The first line of an OSError's or TensorFlow error's reason (e.g. "No space left on
  device")."""
  if isinstance(error, tf.errors.OpError):
    text = error.message
  elif isinstance(error, OSError) and error.strerror:
    text = error.strerror
  else:
    text = str(error)
  text = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", str(text)).strip()
  return (text.splitlines() or [type(error).__name__])[0]


class InputPosition:
  """The input pipeline's position as two int64 variables: `epoch` and `index` (the offset into
  that epoch's permutation of the `num_examples` examples).

  Args:
    num_examples: N, examples per epoch of the training split.
  """

  def __init__(self, num_examples):
    self.num_examples = int(num_examples)
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.index = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.trackable = tf.train.Checkpoint(epoch=self.epoch, index=self.index)

  def set(self, position):
    """Stores the stream position `position` (examples consumed since the start of the run)."""
    self.epoch.assign(int(position) // self.num_examples)
    self.index.assign(int(position) % self.num_examples)

  @property
  def position(self):
    return int(self.epoch.numpy()) * self.num_examples + int(self.index.numpy())


def read_position(path, num_examples):
  """The stream position saved in checkpoint `path`, or None if it has none (older runs)."""
  reader = tf.train.load_checkpoint(path)
  keys = reader.get_variable_to_shape_map()
  names = {k: f"input/{k}/.ATTRIBUTES/VARIABLE_VALUE" for k in ("epoch", "index")}
  if not all(n in keys for n in names.values()):
    return None
  return (int(reader.get_tensor(names["epoch"])) * int(num_examples)
          + int(reader.get_tensor(names["index"])))


def run_state(weights, optimizer, step, position):
  """The `tf.train.Checkpoint` of a training run.

  Args:
    weights: `{path: variable}` of every model variable (`model_weights`).
    optimizer: the Keras optimizer (its slots, iteration counter and learning rate).
    step: the step variable (the optimizer's iteration counter).
    position: an `InputPosition`, or None (to read a checkpoint written without one).
  """
  extra = {} if position is None else {"input": position.trackable}
  return tf.train.Checkpoint(weights=weights, optimizer=optimizer, step=step, **extra)


def _files_of(prefix):
  return tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*")


def _remove(prefix):
  """Deletes every file (and temporary directory) of the checkpoint `prefix`."""
  for path in _files_of(prefix):
    try:
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
      else:
        tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError):
      pass


def _published(directory):
  state = tf.train.get_checkpoint_state(directory)
  return list(state.all_model_checkpoint_paths) if state else []


def _write_state(directory, paths):
  """Replaces the `checkpoint` state file atomically (temporary file, then rename)."""
  lines = [f'model_checkpoint_path: "{os.path.basename(paths[-1])}"']
  lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)}"' for p in paths]
  target = os.path.join(directory, STATE_FILE)
  tmp = os.path.join(directory, f".{STATE_FILE}.tmp-{os.getpid()}")
  try:
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write("\n".join(lines) + "\n")
    tf.io.gfile.rename(tmp, target, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def remove_unpublished(directory):
  """Deletes checkpoint files that the state file does not list (a write that was killed)."""
  published = {os.path.basename(p) for p in _published(directory)}
  numbers = set()
  for path in tf.io.gfile.glob(os.path.join(directory, PREFIX + "-*")):
    match = re.match(rf"({PREFIX}-\d+)(\.|_temp)", os.path.basename(path))
    if match and match.group(1) not in published:
      numbers.add(match.group(1))
  for name in numbers:
    _remove(os.path.join(directory, name))
  return sorted(numbers)


def save(checkpoint, directory, number, keep, pause=0.0):
  """Writes `checkpoint` as `directory/ckpt-<number>`, publishes it and keeps the newest `keep`.

  Args:
    checkpoint: a `tf.train.Checkpoint`.
    directory: the checkpoint directory.
    number: the checkpoint number (the training step).
    keep: how many published checkpoints to keep.
    pause: testing only: seconds to wait between writing the files and publishing them (a
      window in which a fault lands mid-write).

  Returns:
    The checkpoint's path prefix.

  Raises:
    WriteError: the files or the state file could not be written; one line naming the path.
      Nothing of this checkpoint is left and the previous one is still the latest.
  """
  prefix = os.path.join(directory, f"{PREFIX}-{number}")
  previous = tf.train.latest_checkpoint(directory)
  kept = (f"the previous checkpoint {previous} is intact" if previous and previous != prefix
          else "no earlier checkpoint exists")
  if os.path.basename(prefix) in {os.path.basename(p) for p in _published(directory)}:
    return prefix  # this step is saved already
  try:
    tf.io.gfile.makedirs(directory)
    _remove(prefix)  # files of an earlier write of this number that was never published
    path = checkpoint.write(prefix)
    if pause:
      time.sleep(pause)
    paths = [p for p in _published(directory) if os.path.basename(p) !=
             os.path.basename(path)] + [path]
    _write_state(directory, paths[-keep:])
  except (OSError, tf.errors.OpError) as e:
    _remove(prefix)
    raise WriteError(f"could not write checkpoint {prefix}: {describe(e)}; {kept}.") from None
  for old in paths[:-keep]:
    _remove(os.path.join(directory, os.path.basename(old)))
  return path


def size_bytes(prefix):
  """Bytes on disk of the checkpoint `prefix` (its index and data files)."""
  return sum(tf.io.gfile.stat(p).length for p in tf.io.gfile.glob(prefix + ".*"))


def variables_bytes(variables):
  """Bytes of the values of `variables` (an iterable of tf.Variables)."""
  return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


class StopRequest:
  """A request to stop training after the current step, set by SIGTERM or SIGINT.

  Use `with request.installed():` around training (main thread only; elsewhere the handlers are
  not installed and the request can still be set by `set`). A second SIGINT interrupts at once
  (KeyboardInterrupt); further SIGTERMs are ignored (the step and the checkpoint finish).
  """

  def __init__(self):
    self.signal = None
    self._event = threading.Event()

  def set(self, signum=signal.SIGTERM):
    self.signal = signal.Signals(signum).name
    self._event.set()

  def __bool__(self):
    return self._event.is_set()

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self:
      raise KeyboardInterrupt
    self.set(signum)

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    self._active = True
    try:
      yield self
    finally:
      self._active = False
      for s, handler in previous.items():
        signal.signal(s, handler)

  def reinstall(self):
    """Puts the handlers back (inside `installed`): TensorFlow's coordination service installs
    its own SIGTERM handler when a multi-worker strategy starts."""
    if getattr(self, "_active", False) and threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, self._handle)
