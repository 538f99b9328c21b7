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


def torch_environment() -> None:
    """For the torch commands (flashlm-train, -eval, -export): environment that libgomp and the allocator read
    once, at load, so it is set before torch is imported.

    - GOMP_SPINCOUNT=10000: an OpenMP thread waiting at a barrier spins ~10k iterations, then sleeps. libgomp's
      default spins ~300k, which collapses when other work shares the cores; sleeping at once
      (OMP_WAIT_POLICY=PASSIVE) costs the idle machine; this is close to the default idle and close to PASSIVE
      beside busy work (bench/train_busy.py, figures in docs/benchmarks.md).
    - tcmalloc (Debian's libgoogle-perftools4, installed by `make setup`): torch's many short-lived
      activation buffers are freed and re-allocated every micro-batch; glibc's malloc returns them to the
      OS and faults them in again (bench/train_speed.py with and without LD_PRELOAD measures the gain).
      The process re-executes itself once with it preloaded, when the library is present.
      FLASHLM_TCMALLOC=0 keeps the system allocator.
    A value the user exported wins (OMP_WAIT_POLICY or GOMP_SPINCOUNT for the first).
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
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
    torch_environment()
    return launch("flashlm.cli", "train_cmd")


def evaluate():
    torch_environment()
    return launch("flashlm.cli", "eval_cmd")


def import_seed():
    torch_environment()
    return launch("flashlm.cli", "import_cmd")


def plot():
    return launch("flashlm.cli", "plot_cmd")
