"""The flashlm-export console script (torch's thread and allocator set-up, quiet Ctrl-C while torch imports, see flashlm_core.entry)."""
from flashlm_core.entry import launch


def main():
    from flashlm.entry import torch_environment  # the exporter runs torch: same OpenMP wait and allocator as training

    torch_environment()
    return launch("flashlm_export.cli", "export_cmd")
