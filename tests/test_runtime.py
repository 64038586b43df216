"""Process settings of the binaries (tf_prob_unet/runtime.py): oneDNN and the allocator."""

import os
import subprocess
import sys

import pytest

from tf_prob_unet import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_library(tmp_path, name):
  path = tmp_path / runtime.LIBRARIES[name][0]
  path.write_bytes(b"")
  return str(path)


def test_resolve_prefers_tcmalloc_then_jemalloc_then_system(tmp_path):
  dirs = (str(tmp_path),)
  assert runtime.resolve("auto", dirs) == ("system", None)
  jemalloc = _fake_library(tmp_path, "jemalloc")
  assert runtime.resolve("auto", dirs) == ("jemalloc", jemalloc)
  tcmalloc = _fake_library(tmp_path, "tcmalloc")
  assert runtime.resolve("auto", dirs) == ("tcmalloc", tcmalloc)
  assert runtime.resolve("jemalloc", dirs) == ("jemalloc", jemalloc)
  assert runtime.resolve("system", dirs) == ("system", None)


def test_resolve_names_the_problem(tmp_path):
  with pytest.raises(ValueError, match="TF_PROB_UNET_ALLOCATOR: expected one of"):
    runtime.resolve("hoard", (str(tmp_path),))
  with pytest.raises(ValueError, match="expected jemalloc to be installed"):
    runtime.resolve("jemalloc", (str(tmp_path),))


def test_maybe_reexec_preloads_once(monkeypatch):
  calls = []
  environ = {"TF_PROB_UNET_ALLOCATOR": "auto", "LD_PRELOAD": "/other.so"}
  monkeypatch.setattr(runtime, "resolve", lambda choice: ("tcmalloc", "/lib/tc.so"))
  name = runtime.maybe_reexec(environ, execv=lambda *args: calls.append(args))
  assert name == "tcmalloc"
  executable, argv, env = calls[0]
  assert executable == sys.executable and argv == list(sys.orig_argv)
  assert env["LD_PRELOAD"] == "/lib/tc.so:/other.so"
  # The re-executed process does not re-execute again.
  assert runtime.maybe_reexec(env, execv=lambda *args: calls.append(args)) in (
      "system", "tcmalloc", "jemalloc")
  assert len(calls) == 1


def test_no_reexec_unless_asked():
  """The preload is opt-in: without TF_PROB_UNET_ALLOCATOR nothing re-executes."""
  calls = []
  assert runtime.maybe_reexec({}, execv=lambda *args: calls.append(args)) == "system"
  assert runtime.maybe_reexec({"TF_PROB_UNET_ALLOCATOR": "system"},
                              execv=lambda *args: calls.append(args)) == "system"
  assert not calls


def test_binary_runs_with_the_chosen_allocator_mapped():
  """A real re-execution: the library the resolver picks ends up mapped into the process."""
  name, path = runtime.resolve("auto")
  script = ("import sys; from tf_prob_unet import runtime; runtime.maybe_reexec(); "
            "print(runtime.current()); print(open('/proc/self/maps').read())")
  env = dict(os.environ, TF_PROB_UNET_ALLOCATOR="auto", PYTHONPATH=REPO)
  env.pop("TF_PROB_UNET_ALLOCATOR_ACTIVE", None)
  env.pop("LD_PRELOAD", None)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True).stdout
  first, maps = out.split("\n", 1)
  assert first == name
  if path is None:
    assert not any(lib in maps for libs in runtime.LIBRARIES.values() for lib in libs)
  else:
    assert os.path.realpath(path) in maps or path in maps


def test_enable_onednn_keeps_a_users_choice():
  environ = {}
  assert runtime.enable_onednn(environ) == "1" and environ[runtime.ONEDNN_ENV] == "1"
  environ = {runtime.ONEDNN_ENV: "0"}
  assert runtime.enable_onednn(environ) == "0"


def test_prepared_process_runs_tensorflow_with_onednn():
  script = ("from tf_prob_unet import runtime; runtime.prepare_process(); "
            "from tensorflow.python.util import _pywrap_util_port as port; "
            "print(port.IsMklEnabled())")
  env = dict(os.environ, PYTHONPATH=REPO, TF_PROB_UNET_ALLOCATOR="system", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop(runtime.ONEDNN_ENV, None)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip().splitlines()[-1] == "True"
