"""flashlm-export: parse flags, call flashlm_export.exporter.export."""
from __future__ import annotations

import math

import click

from flashlm_core import artifacts as A
from flashlm_core.clikit import guarded, require_extra
from flashlm_core.errors import ExportError


@click.command()
@click.argument("checkpoint_dir")
@click.option("--out", "out_dir", required=True,
              help="ONNX: the export folder to create (onnx/, tokenizer.json, manifest.json, sidecars). GGUF: the .gguf file.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "gguf"]), default="onnx", show_default=True,
              help="gguf: one llama-architecture file for llama.cpp and the tools built on it (no FSP head).")
@click.option("--gguf-type", type=click.Choice(["f32", "f16", "q8_0"]), default="q8_0", show_default=True,
              help="With --format gguf: weight type of the 2-D tensors (norms stay f32).")
@click.option("--int8", is_flag=True, help="Also write int8 graphs (dynamic quantization of the MatMul weights).")
@click.option("--int8-only", is_flag=True, help="With --int8: validate against fp32, then keep only the int8 graphs (smallest bundle).")
@click.option("--int8-per-channel", is_flag=True, help="Per-channel int8 weight scales.")
@click.option("--fsp-head/--no-fsp-head", default=True, show_default=True, help="Export the FSP read-out head as onnx/fsp_head.onnx.")
@click.option("--opset", type=int, default=A.OPSET, show_default=True, help="ONNX opset of the graphs (onnxruntime >= 1.18 runs 18).")
@click.option("--ops", type=click.Choice(A.OPS), default=A.PLAIN, show_default=True,
              help="plain: standard ONNX ops, for every client (transformers.js, onnxruntime-web, optimum, genai). contrib: "
                   "onnxruntime's fused CPU kernels and an in-place KV cache: faster in flashlm-run and onnxruntime-genai.")
@click.option("--data", "data_dir", default=A.DATA_DIR, show_default=True, help="Prepared data folder whose val.bin drives the checks.")
@click.option("--max-fp32-delta", type=float, default=None, help="Fail if ONNX fp32 logits differ from torch by more (default 1e-4).")
@click.option("--max-int8-ppl-delta", type=float, default=None, help="Fail if int8 PPL is worse than fp32 by more than this fraction (default 0.01).")
@click.option("--min-int8-top1", type=float, default=None, help="Fail if int8 top-1 agreement with fp32, where fp32 is clear, is lower (default 0.95).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@guarded
def export_cmd(checkpoint_dir, out_dir, fmt, gguf_type, int8, int8_only, int8_per_channel, fsp_head, opset, ops, data_dir, max_fp32_delta, max_int8_ppl_delta, min_int8_top1, force):
    """Export CHECKPOINT_DIR (a flashlm-train best/ or last/ folder) to validated ONNX, or to one GGUF file."""
    require_extra("export")
    from flashlm_export.exporter import export
    from flashlm_export.validate import Gates

    overrides = {"max_fp32_delta": max_fp32_delta, "max_int8_ppl_delta": max_int8_ppl_delta, "min_int8_top1": min_int8_top1}
    for name, value in overrides.items():  # checked before any work: NaN compares false with every bound
        if value is not None and not (math.isfinite(value) and value >= 0 and (name != "min_int8_top1" or value <= 1)):
            bound = "in [0, 1]" if name == "min_int8_top1" else "a finite number >= 0"
            raise ExportError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
    gates = Gates(**{k: v for k, v in overrides.items() if v is not None})
    if fmt == "gguf":
        onnx_only = [flag for flag, on in (("--int8", int8), ("--int8-only", int8_only), ("--int8-per-channel", int8_per_channel)) if on]
        if onnx_only:
            raise ExportError(f"{', '.join(onnx_only)}: ONNX options; a GGUF's weight type is --gguf-type (q8_0 is the int8 flavour)")
        from flashlm_export.gguf_export import export_gguf

        export_gguf(checkpoint_dir, out_dir, gguf_type=gguf_type, data_dir=data_dir, force=force, gates=gates, log=click.echo)
        return
    export(checkpoint_dir, out_dir, int8=int8, per_channel=int8_per_channel, fsp_head=fsp_head, opset=opset, ops=ops,
           data_dir=data_dir, force=force, gates=gates, int8_only=int8_only, log=click.echo)
