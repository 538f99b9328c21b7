"""The flashlm-run console script (quiet Ctrl-C during start-up, see flashlm_core.entry)."""
from flashlm_core.entry import launch


def main():
    return launch("flashlm_runtime.cli", "run_cmd")


def serve():
    return launch("flashlm_runtime.serve_cli", "serve_cmd")
