"""flashlm-export's library: checkpoint folder -> validated, self-contained ONNX export folder."""
from __future__ import annotations

import logging
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from flashlm_runtime.session import open_session
from tokenizers import Tokenizer

from flashlm import __version__ as flashlm_version
from flashlm import artifacts as A
from flashlm import atomic
from flashlm.checkpoint import load_checkpoint
from flashlm.config import FORMAT_VERSION
from flashlm.errors import ExportError
from flashlm.hashing import sha256_file
from flashlm_export import graph, sidecars, validate

MIN_OPSET = 18  # ReduceMean with axes as an input
EOT = "<|endoftext|>"
# Story openings used when no prepared validation data is given (fp32 parity only needs real-looking text).
BUILTIN_TEXT = (
    "Once upon a time, there was a little girl named Lily. She loved to play in the park with her red ball. "
    "One day, she saw a big dog near the swings. The dog was sad because it had lost its bone. Lily said, "
    "\"Do not be sad, dog. I will help you find it.\" They looked under the slide and behind the tree. "
    "At last, they found the bone in the sand. The dog wagged its tail and Lily smiled. They became best friends."
)


def _io_spec(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)

    def spec(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"inputs": spec(model.graph.input), "outputs": spec(model.graph.output)}


def check_opset(opset: int) -> None:
    max_onnx = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: the graph needs opset >= {MIN_OPSET}")
    if opset > max_onnx:
        raise ExportError(f"--opset {opset} is newer than onnx {onnx.__version__} knows ({max_onnx}); use --opset {MIN_OPSET}")


def _validation_tokens(data_dir: str | None, tok: Tokenizer, eot_id: int) -> tuple[np.ndarray, str]:
    """Tokens of the validation split of a prepared data folder, else of the built-in text."""
    if data_dir and (Path(data_dir) / "val.bin").is_file():
        return np.fromfile(Path(data_dir) / "val.bin", dtype=np.uint16).astype(np.int64), str(Path(data_dir) / "val.bin")
    ids = tok.encode(BUILTIN_TEXT).ids + [eot_id]
    return np.array(ids * 8, np.int64), "builtin"


def export(
    checkpoint_dir,
    out_dir,
    *,
    int8: bool = False,
    fsp_head: bool = True,
    opset: int = MIN_OPSET,
    per_channel: bool = False,
    force: bool = False,
    data_dir: str | None = "data/tinystories",
    gates: validate.Gates | None = None,
    int8_windows: int = 16,
    int8_only: bool = False,
    log=print,
) -> dict:
    """Build, validate and write the export folder atomically; returns the manifest.

    int8_only drops the fp32 graphs after validation (the package-data bundle, where size counts);
    their figures stay in the manifest's validation report.
    Raises ExportError (nothing written) when a validation gate fails.
    """
    check_opset(opset)
    if int8_only and not int8:
        raise ExportError("--int8-only needs --int8 (it keeps only the int8 graphs)")
    gates = gates or validate.Gates()
    out = Path(out_dir)
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    model, ckpt = load_checkpoint(checkpoint_dir)
    cfg = model.cfg
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ExportError(f"{checkpoint_dir}: weight {name} holds NaN or Inf; export an earlier checkpoint (best/ or last/)")
    if fsp_head and model.fsp_proj is None:
        raise ExportError(f"{checkpoint_dir}: the model has no FSP projection; pass --no-fsp-head")
    tok = Tokenizer.from_file(str(Path(checkpoint_dir) / "tokenizer.json"))
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise ExportError(f"{checkpoint_dir}/tokenizer.json has no {EOT} token")
    state = model.state_dict()
    val_tokens, val_source = _validation_tokens(data_dir, tok, eot_id)
    T = cfg.max_seq_len
    # Prompts: the starts of the first stories of the validation text (real text, varied lengths).
    starts = [0] + [int(i) + 1 for i in np.flatnonzero(val_tokens == eot_id)[:3]]
    prompts = [val_tokens[s : s + n].tolist() for s, n in zip(starts, (5, 17, 64, 150))]
    prompts = [p for p in prompts if p]

    with atomic.atomic_dir(out) as tmp:
        (tmp / A.ONNX_DIR).mkdir()
        graphs = {"model": graph.build_backbone(cfg, state, opset=opset)}
        if fsp_head:
            graphs["fsp_head"] = graph.build_fsp_head(cfg, state, opset=opset)
        for name, proto in graphs.items():
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(tmp / A.GRAPH_FILES[name]))
        try:
            sessions = {name: open_session(str(tmp / A.GRAPH_FILES[name])) for name in graphs}
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime {ort.__version__} cannot load the opset-{opset} graph: {exc}") from None
        validate.check_io(sessions["model"], A.backbone_inputs(cfg.n_layers), A.backbone_outputs(cfg.n_layers), "model.onnx")

        report = {"validation_text": val_source, "gates": dict(vars(gates))}
        report["fp32_vs_torch"] = validate.fp32_vs_torch(model, sessions["model"], prompts)
        worst = max(report["fp32_vs_torch"]["max_abs_prefill"], report["fp32_vs_torch"]["max_abs_decode"])
        log(f"fp32 vs torch: max |Δlogits| {worst:.2e} over {len(prompts)} prompts + {validate.DECODE_STEPS} decode steps")
        if worst > gates.max_fp32_delta:
            raise ExportError(f"fp32 ONNX drifted from torch: max |Δlogits| {worst:.3g} > {gates.max_fp32_delta:g}")
        if fsp_head:
            validate.check_io(sessions["fsp_head"], [A.FSP_HIDDEN], [A.FSP_LOGITS], "fsp_head.onnx")
            fsp_delta = validate.fsp_vs_torch(model, sessions["fsp_head"], prompts)
            report["fsp_vs_torch"] = {"max_abs": fsp_delta}
            log(f"FSP head vs torch: max |Δ| {fsp_delta:.2e}")
            if fsp_delta > gates.max_fp32_delta:
                raise ExportError(f"fsp_head.onnx drifted from torch: max |Δ| {fsp_delta:.3g} > {gates.max_fp32_delta:g}")

        quant = None
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quant = {"method": "onnxruntime.quantization.quantize_dynamic", "op_types": ["MatMul"], "weight_type": "QInt8",
                     "per_channel": per_channel, "activations": "dynamic uint8", "embedding_gather": "float16 table, rows cast to float32",
                     "extra_options": {"MatMulConstBOnly": True}, "not_quantized": "RoPE rotation MatMuls (exact signed permutations)"}
            for name in list(graphs):
                logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing on the root logger
                src, dst = tmp / A.GRAPH_FILES[name], tmp / A.GRAPH_FILES[f"{name}_quantized"]
                quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                                 per_channel=per_channel, extra_options={"MatMulConstBOnly": True},
                                 nodes_to_exclude=graph.rope_rotation_nodes(graphs[name]))
                if name == "model":
                    onnx.save(graph.half_embedding(onnx.load(str(dst))), str(dst))
                sessions[f"{name}_quantized"] = open_session(str(dst))
            n = min(int8_windows, (len(val_tokens) - 1) // T)
            windows = np.stack([val_tokens[i * T : i * T + T + 1] for i in range(n)])
            report["int8_vs_fp32"] = r = validate.int8_vs_fp32(cfg, sessions["model"], sessions["model_quantized"], windows)
            clear = "n/a" if r["top1_agreement_clear"] is None else f"{r['top1_agreement_clear']:.1%}"
            log(f"int8 vs fp32 on {r['tokens']} validation tokens: top-1 {clear} on {r['clear_positions']} clear positions "
                f"({r['top1_agreement']:.1%} on all), KL {r['kl_mean']:.4f}, PPL {r['ppl_fp32']:.3f} -> {r['ppl_int8']:.3f} "
                f"({r['ppl_rel_delta']:+.2%}), max |Δlogit| {r['max_abs_logit_delta']:.3f}")
            failed = validate.int8_failures(r, gates)
            if failed:
                raise ExportError(f"int8 drifted from fp32: {'; '.join(failed)}; try --int8-per-channel, "
                                  "loosen --max-int8-ppl-delta, or export fp32 only")
            if fsp_head:
                with torch.no_grad():
                    _, h, _ = model(torch.from_numpy(windows[:4, :-1]))
                report["fsp_int8_vs_fp32"] = validate.fsp_int8_vs_fp32(sessions["fsp_head"], sessions["fsp_head_quantized"], h.numpy())

        if int8_only:
            for name in graphs:
                del sessions[name]
                (tmp / A.GRAPH_FILES[name]).unlink()
        shutil.copyfile(Path(checkpoint_dir) / "tokenizer.json", tmp / A.TOKENIZER)
        tau = ckpt["train"].fsp_tau if fsp_head else None
        atomic.write_json(tmp / "config.json", sidecars.hf_config(
            cfg, eot_id=eot_id, opset=opset, fsp_tau=tau, fsp_files=[A.GRAPH_FILES[n] for n in sessions if n.startswith("fsp_head")]))
        atomic.write_json(tmp / "tokenizer_config.json", sidecars.tokenizer_config(eot=EOT, max_len=T))
        atomic.write_json(tmp / "generation_config.json", sidecars.generation_config(eot_id=eot_id))
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "graphs": {name: {"file": A.GRAPH_FILES[name], **_io_spec(tmp / A.GRAPH_FILES[name])} for name in sessions},
            "opset": opset,
            "ops": "plain",
            "quantization": quant,
            "tokenizer": {"file": A.TOKENIZER, "eot_id": eot_id, "eot": EOT},
            "fsp": {"tau": tau, "head": fsp_head},
            "generation": dict(A.GENERATION_DEFAULTS),
            "source": {"checkpoint": str(Path(checkpoint_dir).resolve()), "step": ckpt.get("step"), "tokens_seen": ckpt.get("tokens_seen")},
            "producer": {"flashlm": flashlm_version, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__, "python": platform.python_version()},
            "validation": report,
            "deterministic": "graphs are built node by node from the weights; the same checkpoint and versions give byte-identical files",
            "files": files,
        }
        atomic.write_json(tmp / A.MANIFEST, manifest)
    log(f"wrote {out}: " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in files.items() if k.endswith(".onnx")))
    return manifest
