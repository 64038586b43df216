"""Process-level settings the binaries apply before TensorFlow loads: oneDNN and the allocator.

**oneDNN.** TensorFlow's x86 wheels carry oneDNN (MKL-DNN) kernels but enable them by default only
on some Intel CPUs; on this AMD EPYC they were off. `enable_onednn` sets `TF_ENABLE_ONEDNN_OPTS=1`
unless the user set it: measured here, the U-Net forward pass got about 1.45x faster and a training
step about 1.2x (docs/benchmarks.md). Results differ from the Eigen kernels by float round-off only.

**Allocator.** TensorFlow on CPU allocates and frees many large, short-lived buffers per step; with
glibc malloc a part of every step goes to page faults. A tuned allocator must be loaded before the
process starts (`LD_PRELOAD`). It is opt-in: with the environment variable `TF_PROB_UNET_ALLOCATOR`
set, the binaries re-execute themselves once with it preloaded (`maybe_reexec`):

- unset or `system` (default): glibc malloc, no re-execution;
- `auto`: the first of tcmalloc, jemalloc found on the machine, else glibc malloc;
- `tcmalloc` / `jemalloc`: that one (an error if it is not installed).

The benchmarks (`bench/run_all.py`) set it explicitly (`auto` unless told otherwise).

The libraries come from the distribution's packages (Debian: `libtcmalloc-minimal4`,
`libjemalloc2`; `make allocators` installs them). docs/benchmarks.md lists what each allocator measured.

**Start-up chatter.** TensorFlow's first import and device query print notices before its log
level applies: oneDNN and CPU-feature notices, and on a machine without an NVIDIA driver the
failed CUDA probing (`cuInit`, `cudart_stub`). `import_tensorflow_quietly` drops those lines
(CUDA ones only where no NVIDIA driver is installed) and passes everything else on.

`prepare_process()` does the first two; call it first thing, before importing TensorFlow.
"""

import os
import sys
import tempfile

ENV = "TF_PROB_UNET_ALLOCATOR"
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
_ACTIVE = "TF_PROB_UNET_ALLOCATOR_ACTIVE"
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")
DEFAULT = "system"  # opt-in: no re-execution unless TF_PROB_UNET_ALLOCATOR asks for one
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
               "/usr/lib", "/usr/local/lib")


def find_library(name, search_dirs=SEARCH_DIRS):
  """The path of allocator `name`'s shared library, or None when it is not installed."""
  for directory in search_dirs:
    for filename in LIBRARIES[name]:
      path = os.path.join(directory, filename)
      if os.path.exists(path):
        return path
  return None


def resolve(choice, search_dirs=SEARCH_DIRS):
  """`(allocator name, library path or None)` for a `TF_PROB_UNET_ALLOCATOR` value.

  Raises:
    ValueError: an unknown choice, or a named allocator that is not installed.
  """
  if choice not in CHOICES:
    raise ValueError(f"{ENV}: expected one of {CHOICES}, found {choice!r}.")
  if choice == "system":
    return "system", None
  names = ("tcmalloc", "jemalloc") if choice == "auto" else (choice,)
  for name in names:
    path = find_library(name, search_dirs)
    if path:
      return name, path
  if choice == "auto":
    return "system", None
  raise ValueError(f"{ENV}: expected {choice} to be installed (one of {LIBRARIES[choice]} in "
                   f"{', '.join(search_dirs)}), found none; install it (`make allocators`) or "
                   f"set {ENV}=system.")


def preload_environment(environ, path):
  """A copy of `environ` with `path` first in `LD_PRELOAD`, marked as already re-executed."""
  env = dict(environ)
  preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and p != path]
  env["LD_PRELOAD"] = ":".join([path] + preload)
  env[_ACTIVE] = "1"
  return env


def current():
  """The allocator this process runs with: a library name from `LD_PRELOAD`, or `system`."""
  preload = os.environ.get("LD_PRELOAD", "")
  for name, filenames in LIBRARIES.items():
    if any(f in preload for f in filenames):
      return name
  return "system"


def maybe_reexec(environ=None, execv=os.execve):
  """Re-executes the running command once with the chosen allocator preloaded.

  Call it first thing in a binary's `main`. Does nothing when `TF_PROB_UNET_ALLOCATOR` is unset
  or `system`, when none is installed (`auto`), or when this process was already re-executed.

  Returns:
    The allocator name in use (only when it returns, i.e. without re-executing).
  """
  environ = os.environ if environ is None else environ
  if environ.get(_ACTIVE):
    return current()
  name, path = resolve(environ.get(ENV, DEFAULT))
  if path is None:
    return "system"
  execv(sys.executable, list(sys.orig_argv), preload_environment(environ, path))
  return name  # Only reached when `execv` is replaced (tests).


def enable_onednn(environ=None):
  """Turns TensorFlow's oneDNN kernels on unless `TF_ENABLE_ONEDNN_OPTS` is already set.

  Only takes effect before TensorFlow is imported. Returns the value in force.
  """
  environ = os.environ if environ is None else environ
  return environ.setdefault(ONEDNN_ENV, "1")


def prepare_process():
  """`enable_onednn()` then `maybe_reexec()`; returns the allocator in use."""
  enable_onednn()
  return maybe_reexec()


_NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
            "cpu_feature_guard.cc", "To enable the following instructions",
            "rebuild TensorFlow with the appropriate compiler flags")
_CUDA_PROBING = ("cudart_stub.cc", "cuda_platform.cc", "cuInit", "Unable to register cu",
                 "computation_placer.cc", "cuda_executor.cc", "cuda_diagnostics.cc")
NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def import_tensorflow_quietly(nvidia_driver=NVIDIA_DRIVER):
  """Imports TensorFlow and probes its devices with the start-up notices filtered from stderr.

  Lines about CUDA are dropped only when no NVIDIA driver is installed (`nvidia_driver` absent):
  on a GPU machine they may be the reason a GPU is not used. Anything else is written through.
  Returns the `tensorflow` module.
  """
  noise = _NOTICES + (() if os.path.exists(nvidia_driver) else _CUDA_PROBING)
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.list_physical_devices()
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(keepends=True):
        if not any(n in line for n in noise):
          sys.stderr.write(line)
      sys.stderr.flush()
  return tf
