"""The flashlm-prepare/-train/-eval/-plot console scripts: thread and allocator set-up before torch loads, quiet Ctrl-C while it imports."""
import glob
import os
import sys

from flashlm_core.entry import launch

# Set while we re-execute ourselves with tcmalloc preloaded, so that a failed preload cannot loop.
_REEXEC_MARK = "FLASHLM_ALLOCATOR_SET"
# Where Linux distributions put tcmalloc (Debian/Ubuntu multiarch, Fedora, /usr/local); globbed, not asked of
# ldconfig, so that start-up (when Ctrl-C is not yet answered in one line) stays short.
TCMALLOC_GLOBS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
                  "/usr/lib/libtcmalloc_minimal.so.4", "/usr/local/lib/libtcmalloc_minimal.so.4")


def _torch_environment() -> None:
    """Environment that libgomp and the allocator read once, at load: so it is set before torch is imported.

    - OMP_WAIT_POLICY=PASSIVE: an OpenMP thread that finds no work sleeps instead of spinning. With the default
      policy a 2-thread training step beside other CPU-bound work took 40 s, with PASSIVE 9.0 s (issue 13);
      on an idle machine the two are within noise (bench/train_busy.py).
    - tcmalloc (Debian's libgoogle-perftools4, installed by `make setup`): torch's many short-lived
      activation buffers are freed and re-allocated every micro-batch; glibc's malloc returns them to the
      OS and faults them in again. The process re-executes itself once with it preloaded, when the library
      is present. FLASHLM_TCMALLOC=0 keeps the system allocator.
    A value the user exported wins in both cases.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("FLASHLM_TCMALLOC", "1") == "0" or os.environ.get(_REEXEC_MARK) or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    found = [path for pattern in TCMALLOC_GLOBS for path in sorted(glob.glob(pattern))] if sys.platform == "linux" else []
    if not found:
        return
    lib = found[0]
    env = {**os.environ, _REEXEC_MARK: "1", "LD_PRELOAD": " ".join(filter(None, (lib, os.environ.get("LD_PRELOAD"))))}
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # cannot re-execute (unusual launcher): train with the system allocator
        return


def prepare():
    return launch("flashlm.cli", "prepare_cmd")


def train():
    _torch_environment()
    return launch("flashlm.cli", "train_cmd")


def evaluate():
    return launch("flashlm.cli", "eval_cmd")


def plot():
    return launch("flashlm.cli", "plot_cmd")
