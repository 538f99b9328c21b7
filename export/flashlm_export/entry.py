"""The flashlm-export console script (quiet Ctrl-C while torch imports, see flashlm_core.entry)."""
from flashlm_core.entry import launch


def main():
    return launch("flashlm_export.cli", "export_cmd")
