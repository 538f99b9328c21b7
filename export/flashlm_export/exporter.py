"""flashlm-export's library: checkpoint folder -> validated, self-contained ONNX export folder, in named steps
(load_source, build_graphs, validate_fp32, quantize, validate_int8, write_metadata; export() runs them)."""
from __future__ import annotations

import logging
import platform
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from flashlm import __version__ as flashlm_version
from flashlm.checkpoint import WEIGHTS, load_checkpoint
from flashlm_core import artifacts as A
from flashlm_core import atomic
from flashlm_core.config import ModelConfig
from flashlm_core.errors import ExportError
from flashlm_core.generation import GENERATION_DEFAULTS, client_rules
from flashlm_core.hashing import sha256_file
from flashlm_core.versioned import FORMAT_VERSION
from flashlm_export import graph, sidecars, validate
from flashlm_runtime.session import open_session

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


def _contract_io(path: Path, cfg: ModelConfig, ops: str) -> dict:
    """A written graph's IO, which must be the contract's (artifacts.backbone_io / fsp_io) to the dim."""
    spec = _io_spec(path)
    want = A.fsp_io(cfg) if path.name.startswith("fsp_head") else A.backbone_io(cfg, ops)
    if spec != want:
        raise ExportError(f"{path.name}: its IO {spec} is not the contract's {want} (flashlm_core.artifacts.backbone_io)")
    return spec


def check_opset(opset: int) -> None:
    max_onnx = onnx.defs.onnx_opset_version()
    if opset < A.OPSET:
        raise ExportError(f"--opset {opset} is too old: the graph needs opset >= {A.OPSET}")
    if opset > max_onnx:
        raise ExportError(f"--opset {opset} is newer than onnx {onnx.__version__} knows ({max_onnx}); use --opset {A.OPSET}")


def _validation_tokens(data_dir: str | None, tok: Tokenizer, eot_id: int) -> tuple[np.ndarray, str]:
    """Tokens of the validation split of a prepared data folder, else of the built-in text."""
    if data_dir and (Path(data_dir) / "val.bin").is_file():
        return np.fromfile(Path(data_dir) / "val.bin", dtype=np.uint16).astype(np.int64), str(Path(data_dir) / "val.bin")
    ids = tok.encode(BUILTIN_TEXT).ids + [eot_id]
    return np.array(ids * 8, np.int64), "builtin"


@dataclass
class Source:
    """What an export is made from: the checkpoint's model and config, its tokenizer, validation text."""

    checkpoint_dir: Path
    model: torch.nn.Module
    ckpt: dict
    eot_id: int
    val_tokens: np.ndarray
    val_source: str

    @property
    def cfg(self):
        return self.model.cfg

    def provenance(self) -> dict:
        """What every exported file records of its checkpoint: its step, tokens seen, and its weights file's sha256."""
        return {"step": self.ckpt.get("step"), "tokens_seen": self.ckpt.get("tokens_seen"),
                "weights_sha256": sha256_file(self.checkpoint_dir / WEIGHTS)}

    def windows(self, n: int) -> np.ndarray:
        """Up to n non-overlapping validation windows (n, T+1): inputs and their next-token targets."""
        T = self.cfg.max_seq_len
        n = min(n, (len(self.val_tokens) - 1) // T)
        return np.stack([self.val_tokens[i * T : i * T + T + 1] for i in range(n)])

    def prompts(self) -> list[list[int]]:
        """The starts of the first stories of the validation text (real text, varied lengths)."""
        starts = [0] + [int(i) + 1 for i in np.flatnonzero(self.val_tokens == self.eot_id)[:3]]
        prompts = [self.val_tokens[s : s + n].tolist() for s, n in zip(starts, (5, 17, 64, 150))]
        return [p for p in prompts if p]


def load_source(checkpoint_dir, data_dir: str | None, *, fsp_head: bool) -> Source:
    """Load and check the checkpoint: finite weights, an FSP projection if asked for, the EOT token."""
    model, ckpt = load_checkpoint(checkpoint_dir)
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ExportError(f"{checkpoint_dir}: weight {name} holds NaN or Inf; export an earlier checkpoint (best/ or last/)")
    if fsp_head and model.fsp_proj is None:
        raise ExportError(f"{checkpoint_dir}: the model has no FSP projection; pass --no-fsp-head")
    tok = Tokenizer.from_file(str(Path(checkpoint_dir) / A.TOKENIZER))
    eot_id = tok.token_to_id(A.EOT)
    if eot_id is None:
        raise ExportError(f"{checkpoint_dir}/{A.TOKENIZER} has no {A.EOT} token")
    val_tokens, val_source = _validation_tokens(data_dir, tok, eot_id)
    return Source(Path(checkpoint_dir), model, ckpt, eot_id, val_tokens, val_source)


def build_graphs(src: Source, tmp: Path, *, opset: int, fsp_head: bool, ops: str) -> tuple[dict, dict]:
    """Write the fp32 graphs into tmp/onnx and open them: (protos, sessions) keyed by manifest name."""
    state = src.model.state_dict()
    (tmp / A.ONNX_DIR).mkdir()
    graphs = {"model": graph.build_backbone(src.cfg, state, opset=opset, ops=ops)}
    if fsp_head:
        graphs["fsp_head"] = graph.build_fsp_head(src.cfg, state, opset=opset)
    for name, proto in graphs.items():
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp / A.GRAPH_FILES[name]))
    try:
        sessions = {name: open_session(str(tmp / A.GRAPH_FILES[name])) for name in graphs}
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the opset-{opset} graph: {exc}") from None
    validate.check_io(sessions["model"], A.backbone_inputs(src.cfg, ops), A.backbone_outputs(src.cfg, ops), "model.onnx")
    if fsp_head:
        validate.check_io(sessions["fsp_head"], [A.FSP_HIDDEN], [A.FSP_LOGITS], "fsp_head.onnx")
    return graphs, sessions


def validate_fp32(src: Source, sessions: dict, gates: validate.Gates, log) -> dict:
    """fp32 ONNX against torch (backbone prefill + decode, FSP head); raises ExportError past the gates."""
    prompts = src.prompts()
    report = {"fp32_vs_torch": validate.fp32_vs_torch(src.model, sessions["model"], prompts)}
    worst = max(report["fp32_vs_torch"]["max_abs_prefill"], report["fp32_vs_torch"]["max_abs_decode"])
    log(f"fp32 vs torch: max |Δlogits| {worst:.2e} over {len(prompts)} prompts + {validate.DECODE_STEPS} decode steps")
    if not worst <= gates.max_fp32_delta:
        raise ExportError(f"fp32 ONNX drifted from torch: max |Δlogits| {worst:.3g} > {gates.max_fp32_delta:g}")
    if A.TOP_PROBS in {o.name for o in sessions["model"].get_outputs()}:
        top_delta = validate.top_vs_torch(src.model, sessions["model"], prompts)
        report["top_vs_torch"] = {"max_abs": top_delta}
        log(f"next-token top probabilities vs torch: max |Δ| {top_delta:.2e}")
        if not top_delta <= gates.max_fp32_delta:
            raise ExportError(f"model.onnx's {A.TOP_PROBS} drifted from torch: max |Δ| {top_delta:.3g} > {gates.max_fp32_delta:g}")
    if "fsp_head" in sessions:
        fsp_delta = validate.fsp_vs_torch(src.model, sessions["fsp_head"], prompts)
        report["fsp_vs_torch"] = {"max_abs": fsp_delta}
        log(f"FSP head vs torch: max |Δ| {fsp_delta:.2e}")
        if not fsp_delta <= gates.max_fp32_delta:
            raise ExportError(f"fsp_head.onnx drifted from torch: max |Δ| {fsp_delta:.3g} > {gates.max_fp32_delta:g}")
    return report


@contextmanager
def _quiet_root_logger():
    """quantize_dynamic warns about pre-processing on the root logger: silence it, then restore the level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize(graphs: dict, sessions: dict, tmp: Path, *, per_channel: bool) -> dict:
    """int8 twin of every graph (dynamic MatMul quantization); opens them into `sessions`; returns the recipe."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in list(graphs):
        src, dst = tmp / A.GRAPH_FILES[name], tmp / A.GRAPH_FILES[f"{name}_quantized"]
        with _quiet_root_logger():
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                             per_channel=per_channel,
                             # contrib nodes defeat onnx shape inference, which the quantizer uses to type MatMul outputs
                             extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
                             nodes_to_exclude=graph.rope_rotation_nodes(graphs[name]))
        if name == "model":
            onnx.save(graph.half_embedding(onnx.load(str(dst))), str(dst))
        sessions[f"{name}_quantized"] = open_session(str(dst))
    return {"method": "onnxruntime.quantization.quantize_dynamic", "op_types": ["MatMul"], "weight_type": "QInt8",
            "per_channel": per_channel, "activations": "dynamic uint8", "embedding_gather": "float16 table, rows cast to float32",
            "extra_options": {"MatMulConstBOnly": True}, "not_quantized": "RoPE rotation MatMuls (exact signed permutations)"}


def validate_int8(src: Source, sessions: dict, gates: validate.Gates, log, *, n_windows: int) -> dict:
    """int8 against fp32 on validation windows (PPL, clear top-1, KL; FSP top-k overlap); raises past the gates."""
    windows = src.windows(n_windows)
    report = {"int8_vs_fp32": validate.int8_vs_fp32(src.cfg, sessions["model"], sessions["model_quantized"], windows)}
    r = report["int8_vs_fp32"]
    clear = "n/a" if r["top1_agreement_clear"] is None else f"{r['top1_agreement_clear']:.1%}"
    log(f"int8 vs fp32 on {r['tokens']} validation tokens: top-1 {clear} on {r['clear_positions']} clear positions "
        f"({r['top1_agreement']:.1%} on all), KL {r['kl_mean']:.4f}, PPL {r['ppl_fp32']:.3f} -> {r['ppl_int8']:.3f} "
        f"({r['ppl_rel_delta']:+.2%}), max |Δlogit| {r['max_abs_logit_delta']:.3f}")
    failed = validate.int8_failures(r, gates)
    if failed:
        raise ExportError(f"int8 drifted from fp32: {'; '.join(failed)}; try --int8-per-channel, "
                          "loosen --max-int8-ppl-delta, or export fp32 only")
    if "fsp_head_quantized" in sessions:
        with torch.no_grad():
            _, h, _ = src.model(torch.from_numpy(windows[:4, :-1]))
        report["fsp_int8_vs_fp32"] = validate.fsp_int8_vs_fp32(sessions["fsp_head"], sessions["fsp_head_quantized"], h.numpy())
    return report


def write_metadata(src: Source, tmp: Path, sessions: dict, *, opset: int, fsp_head: bool, quant: dict | None, report: dict,
                   ops: str) -> dict:
    """Tokenizer, HF sidecars and manifest.json (config, graphs with IO specs, provenance, validation, sha256 of every file)."""
    cfg, T = src.cfg, src.cfg.max_seq_len
    shutil.copyfile(src.checkpoint_dir / A.TOKENIZER, tmp / A.TOKENIZER)
    tau = src.ckpt["train"].fsp_tau if fsp_head else None
    int8 = "model_quantized" in sessions  # the graph flashlm-run runs by default; every client's sidecar points at it
    atomic.write_json(tmp / "config.json", sidecars.hf_config(
        cfg, eot_id=src.eot_id, opset=opset, fsp_tau=tau, fsp_files=[A.GRAPH_FILES[n] for n in sessions if n.startswith("fsp_head")],
        int8=int8, ops=ops))
    atomic.write_json(tmp / "tokenizer_config.json", sidecars.tokenizer_config(eot=A.EOT, max_len=T))
    atomic.write_json(tmp / "generation_config.json", sidecars.generation_config(eot_id=src.eot_id, max_len=T))
    atomic.write_json(tmp / "genai_config.json", sidecars.genai_config(
        cfg, eot_id=src.eot_id, decoder_file=A.GRAPH_FILES["model_quantized" if int8 else "model"], ops=ops))
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        files[path.relative_to(tmp).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "graphs": {name: {"file": A.GRAPH_FILES[name], **_contract_io(tmp / A.GRAPH_FILES[name], cfg, ops)} for name in sessions},
        "opset": opset,
        "ops": ops,
        "quantization": quant,
        "tokenizer": {"file": A.TOKENIZER, "eot_id": src.eot_id, "eot": A.EOT},
        "fsp": {"tau": tau, "head": fsp_head},
        "generation": dict(GENERATION_DEFAULTS),
        "decoding": client_rules(cfg),
        "source": {"checkpoint": str(src.checkpoint_dir.resolve()), **src.provenance(),
                   **{k: src.ckpt[k] for k in ("imported", "init_from") if src.ckpt.get(k)}},
        "producer": {"flashlm": flashlm_version, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "python": platform.python_version()},
        "validation": report,
        "deterministic": "graphs are built node by node from the weights; the same checkpoint and versions give byte-identical files",
        "files": files,
    }
    atomic.write_json(tmp / A.MANIFEST, manifest)
    return manifest


def export(
    checkpoint_dir,
    out_dir,
    *,
    int8: bool = False,
    fsp_head: bool = True,
    opset: int = A.OPSET,
    per_channel: bool = False,
    force: bool = False,
    data_dir: str | None = A.DATA_DIR,
    gates: validate.Gates | None = None,
    int8_windows: int = 16,
    int8_only: bool = False,
    ops: str = A.PLAIN,
    log=print,
) -> dict:
    """Build, validate and write the export folder atomically; returns the manifest.

    Steps: load_source -> build_graphs -> validate_fp32 -> [quantize -> validate_int8] -> write_metadata.
    int8_only drops the fp32 graphs after validation (the package-data bundle, where size counts);
    their figures stay in the manifest's validation report.
    Raises ExportError (nothing written) when a validation gate fails.
    """
    check_opset(opset)
    if ops not in A.OPS:
        raise ExportError(f"--ops {ops!r}: choose one of {', '.join(A.OPS)}")
    if int8_only and not int8:
        raise ExportError("--int8-only needs --int8 (it keeps only the int8 graphs)")
    gates = gates or validate.Gates()
    out = Path(out_dir)
    with atomic.exclusive(out, what="export"):  # a second export to the same --out stops here, before any work
        if out.exists() and not force:
            raise ExportError(f"{out} exists; pass --force to replace it")
        src = load_source(checkpoint_dir, data_dir, fsp_head=fsp_head)
        with atomic.atomic_dir(out) as tmp:
            graphs, sessions = build_graphs(src, tmp, opset=opset, fsp_head=fsp_head, ops=ops)
            report = {"validation_text": src.val_source, "gates": dict(vars(gates)), **validate_fp32(src, sessions, gates, log)}
            quant = None
            if int8:
                quant = quantize(graphs, sessions, tmp, per_channel=per_channel)
                report.update(validate_int8(src, sessions, gates, log, n_windows=int8_windows))
            if int8_only:
                for name in graphs:
                    del sessions[name]
                    (tmp / A.GRAPH_FILES[name]).unlink()
            manifest = write_metadata(src, tmp, sessions, opset=opset, fsp_head=fsp_head, quant=quant, report=report, ops=ops)
    log(f"wrote {out}: " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in manifest["files"].items() if k.endswith(".onnx")))
    return manifest
