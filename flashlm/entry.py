"""The flashlm-prepare/-train/-eval/-plot console scripts (quiet Ctrl-C while torch imports, see flashlm_core.entry)."""
from flashlm_core.entry import launch


def prepare():
    return launch("flashlm.cli", "prepare_cmd")


def train():
    return launch("flashlm.cli", "train_cmd")


def evaluate():
    return launch("flashlm.cli", "eval_cmd")


def plot():
    return launch("flashlm.cli", "plot_cmd")
