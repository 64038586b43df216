"""Native (C++) kernels, compiled on first use for the machine that runs them.

Two custom ops, both CPU-only and float32 (`applies`):
- `ProbUnetFcombSample` (`fcomb_sample_op.cc`): the per-sample part of f_comb fused over tiles of
  pixels, used by `FComb.combine` when sampling. TensorFlow's pip build runs its own (Eigen)
  kernels without AVX2/FMA and runs f_comb's small ops one by one over whole tensors; the fused
  kernel is about 1.5x faster per sample. No gradient.
- `ProbUnetConvKernelGrad` (`conv_kernel_grad_op.cc`): the kernel and bias gradients of a
  stride-1 SAME convolution, used by `ShiftedConv2D` in training; deterministic (independent of
  the thread count).
docs/benchmarks.md ("Native kernels") has the measurements.

The kernels need an x86-64 CPU with AVX2 and FMA (`cpu_supported`, read from the CPU's feature
flags before anything is built or loaded). Each library is compiled with the C++ compiler
(`$CXX`, default `g++`), TensorFlow's own compile and link flags and the fixed instruction-set
flags `-O3 -mavx2 -mfma` (never `-march=native`: on CPUs with AVX-512 FP16 that pulls in
TensorFlow's Eigen FP16 headers, which g++ 12 rejects), into a cache directory
(`$TF_PROB_UNET_CACHE`, default `~/.cache/tf_prob_unet`) under a name that hashes the source
and its headers, the TensorFlow version, the flags and the CPU's feature flags, so a shared home
directory never hands a library to the wrong machine or TensorFlow. A build takes about 10-25 s;
`make install` (and so `make demo` and `make test`) runs it once with
`python -m tf_prob_unet.native`.

On a CPU without AVX2/FMA, without a compiler, or with `TF_PROB_UNET_NATIVE=0`,
`fcomb_sample_op()` and `conv_kernel_grad_op()` return None and the callers use TensorFlow ops
(same arithmetic, slower); the first such fallback logs one line saying why (a failed build adds
the compiler's last lines).
"""

import functools
import glob
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import tensorflow as tf

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE = os.path.join(_HERE, "fcomb_sample_op.cc")
_CONV_SOURCE = os.path.join(_HERE, "conv_kernel_grad_op.cc")
SOURCES = (_SOURCE, _CONV_SOURCE)
# Fixed instruction-set flags: the kernels' SIMD paths are AVX2 + FMA (op_common.h).
_ISA_FLAGS = ["-mavx2", "-mfma"]
_REQUIRED_CPU_FEATURES = ("avx2", "fma")
_CXX_FLAGS = ["-O3"] + _ISA_FLAGS + ["-shared", "-fPIC", "-Wno-deprecated-declarations"]
_LOCK = threading.Lock()

logger = logging.getLogger(__name__)


def enabled():
  """False when the environment turns the native kernels off (`TF_PROB_UNET_NATIVE=0`)."""
  return os.environ.get("TF_PROB_UNET_NATIVE", "1").strip().lower() not in ("0", "false", "no")


def applies(dtype):
  """True where the native kernels serve a computation in `dtype`: float32, and no GPU visible
  (they are CPU kernels; a GPU would run TensorFlow's own ops better)."""
  return dtype == tf.float32 and not tf.config.list_logical_devices("GPU")


def cache_dir():
  """Where compiled libraries go: `$TF_PROB_UNET_CACHE`, else `~/.cache/tf_prob_unet`."""
  return os.environ.get("TF_PROB_UNET_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "tf_prob_unet")


def _cpu_flags():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def cpu_supported():
  """True on an x86-64 CPU whose feature flags include AVX2 and FMA (what the kernels use)."""
  if platform.machine().lower() not in ("x86_64", "amd64"):
    return False
  features = set(_cpu_flags().lower().split())
  return all(f in features for f in _REQUIRED_CPU_FEATURES)


def _compiler():
  return os.environ.get("CXX", "g++")


def _build_command(source, output):
  return ([_compiler()] + _CXX_FLAGS + [source, "-o", output] + tf.sysconfig.get_compile_flags()
          + tf.sysconfig.get_link_flags())


def library_path(source=_SOURCE):
  """The cache path of the library built from `source` for this machine and TensorFlow."""
  digest = hashlib.sha256()
  # The source and the headers beside it (op_common.h), so that editing either rebuilds.
  headers = sorted(glob.glob(os.path.join(os.path.dirname(source), "*.h")))
  for path in [source] + headers:
    with open(path, "rb") as f:
      digest.update(f.read())
  digest.update(" ".join(_build_command("SRC", "OUT")).encode())
  digest.update(tf.__version__.encode())
  digest.update(_cpu_flags().encode())
  name = os.path.splitext(os.path.basename(source))[0]
  return os.path.join(cache_dir(), f"{name}_{digest.hexdigest()[:16]}.so")


def build(source=_SOURCE):
  """Compiles `source` into the cache unless it is there; returns the library's path.

  The library is written to a temporary file beside its target and renamed into place, so a
  concurrent or interrupted build never leaves a partial library under the final name.

  Raises:
    RuntimeError: the CPU lacks AVX2/FMA, or the compiler is missing or fails (the message ends
      with its last lines).
  """
  if not cpu_supported():
    raise RuntimeError(f"native kernels: this CPU ({platform.machine()}) lacks "
                       f"{'/'.join(f.upper() for f in _REQUIRED_CPU_FEATURES)}, which they need.")
  path = library_path(source)
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if shutil.which(_compiler()) is None:
    raise RuntimeError(f"native kernels: the C++ compiler {_compiler()!r} ($CXX) was not found.")
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".build-", suffix=".so")
  os.close(fd)
  try:
    result = subprocess.run(_build_command(source, tmp), capture_output=True, text=True)
    if result.returncode != 0:
      tail = "\n".join(result.stderr.strip().splitlines()[-15:])
      raise RuntimeError(f"native kernels: compiling {source} failed "
                         f"(exit {result.returncode}):\n{tail}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.lru_cache(maxsize=None)
def _load(source):
  """The loaded library built from `source`, or None (cached: a failed build is not retried)."""
  with _LOCK:
    try:
      return tf.load_op_library(build(source))
    except (RuntimeError, OSError, tf.errors.NotFoundError) as e:
      # One line; `python -m tf_prob_unet.native` shows the compiler's output.
      logger.warning("%s; TensorFlow ops are used instead (slower). Details: python -m "
                     "tf_prob_unet.native; TF_PROB_UNET_NATIVE=0 silences this.",
                     str(e).splitlines()[0].rstrip(":"))
      return None


def _op(source, name, dtype):
  """Op function `name` of the library built from `source`, or None: native kernels off, the
  library unbuildable, or (with a `dtype`) a computation they do not serve (`applies`)."""
  if not enabled() or (dtype is not None and not applies(dtype)):
    return None
  library = _load(source)
  return None if library is None else getattr(library, name)


def fcomb_sample_op(dtype=None):
  """The `ProbUnetFcombSample` op function, or None where native kernels are off or unbuildable,
  or (with a `dtype`) where they do not apply to it.

  The op (see `fcomb_sample_op.cc`) takes `projected [B, P, C]`, `z_part [B, M, C]`, the
  hidden kernels `[C, C]` and biases `[C]` after the first layer, the logits kernel `[C, K]` and
  bias `[K]`, and returns logits `[B, M, P, K]` (`out_type=tf.float32`) or labels `[B, M, P]`
  (`out_type=tf.int32`: the first arg-max, or `logit > 0` for K = 1). CPU only, no gradient.
  """
  return _op(_SOURCE, "prob_unet_fcomb_sample", dtype)


def conv_kernel_grad_op(dtype=None):
  """The `ProbUnetConvKernelGrad` op function, or None where native kernels are off or
  unbuildable, or (with a `dtype`) where they do not apply to it.

  The op (see `conv_kernel_grad_op.cc`) takes `input [B, H, W, C_in]`, `grad_output
  [B, H, W, C_out]` and the attribute `kernel_size=[kh, kw]` (odd), and returns the kernel
  gradient `[kh, kw, C_in, C_out]` and the bias gradient `[C_out]` of the stride-1 SAME
  convolution (with a bias added to its output). CPU only.
  """
  return _op(_CONV_SOURCE, "prob_unet_conv_kernel_grad", dtype)
