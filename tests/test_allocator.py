"""The allocator choice of the binaries (tf_prob_unet/allocator.py)."""

import os
import subprocess
import sys

import pytest

from tf_prob_unet import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_library(tmp_path, name):
  path = tmp_path / allocator.LIBRARIES[name][0]
  path.write_bytes(b"")
  return str(path)


def test_resolve_prefers_tcmalloc_then_jemalloc_then_system(tmp_path):
  dirs = (str(tmp_path),)
  assert allocator.resolve("auto", dirs) == ("system", None)
  jemalloc = _fake_library(tmp_path, "jemalloc")
  assert allocator.resolve("auto", dirs) == ("jemalloc", jemalloc)
  tcmalloc = _fake_library(tmp_path, "tcmalloc")
  assert allocator.resolve("auto", dirs) == ("tcmalloc", tcmalloc)
  assert allocator.resolve("jemalloc", dirs) == ("jemalloc", jemalloc)
  assert allocator.resolve("system", dirs) == ("system", None)


def test_resolve_names_the_problem(tmp_path):
  with pytest.raises(ValueError, match="TF_PROB_UNET_ALLOCATOR: expected one of"):
    allocator.resolve("hoard", (str(tmp_path),))
  with pytest.raises(ValueError, match="expected jemalloc to be installed"):
    allocator.resolve("jemalloc", (str(tmp_path),))


def test_maybe_reexec_preloads_once(monkeypatch):
  calls = []
  environ = {"TF_PROB_UNET_ALLOCATOR": "auto", "LD_PRELOAD": "/other.so"}
  monkeypatch.setattr(allocator, "resolve", lambda choice: ("tcmalloc", "/lib/tc.so"))
  name = allocator.maybe_reexec(environ, execv=lambda *args: calls.append(args))
  assert name == "tcmalloc"
  executable, argv, env = calls[0]
  assert executable == sys.executable and argv == list(sys.orig_argv)
  assert env["LD_PRELOAD"] == "/lib/tc.so:/other.so"
  # The re-executed process does not re-execute again.
  assert allocator.maybe_reexec(env, execv=lambda *args: calls.append(args)) in (
      "system", "tcmalloc", "jemalloc")
  assert len(calls) == 1


def test_binary_runs_with_the_chosen_allocator_mapped():
  """A real re-execution: the library the resolver picks ends up mapped into the process."""
  name, path = allocator.resolve("auto")
  script = ("import sys; from tf_prob_unet import allocator; allocator.maybe_reexec(); "
            "print(allocator.current()); print(open('/proc/self/maps').read())")
  env = dict(os.environ, TF_PROB_UNET_ALLOCATOR="auto", PYTHONPATH=REPO)
  env.pop("TF_PROB_UNET_ALLOCATOR_ACTIVE", None)
  env.pop("LD_PRELOAD", None)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True).stdout
  first, maps = out.split("\n", 1)
  assert first == name
  if path is None:
    assert not any(lib in maps for libs in allocator.LIBRARIES.values() for lib in libs)
  else:
    assert os.path.realpath(path) in maps or path in maps
