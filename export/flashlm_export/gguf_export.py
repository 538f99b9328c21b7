"""flashlm-export --format gguf: a checkpoint as one llama-architecture .gguf file for llama.cpp, validated first."""
from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from flashlm import __version__ as flashlm_version
from flashlm_core import artifacts as A
from flashlm_core import atomic
from flashlm_core.config import ModelConfig
from flashlm_core.errors import ExportError
from flashlm_core.generation import GENERATION_DEFAULTS
from flashlm_core.versioned import FORMAT_VERSION
from flashlm_export import validate
from flashlm_export.exporter import Source, load_source

GGUF_TYPES = ("f32", "f16", "q8_0")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ExportError("--format gguf needs the gguf package: pip install -e '.[export]'") from None
    return gguf


def llama_tensors(cfg: ModelConfig, state: dict) -> dict[str, np.ndarray]:
    """The checkpoint's weights under llama.cpp's llama names, float32, torch layout (out, in).

    No permutation: FlashLM's RoPE rotates interleaved pairs (x[2i], x[2i+1]), which is GGML's normal
    rope mode for the llama architecture. The 1/sqrt(head_dim) attention scale stays out of the q weights
    (llama.cpp applies it). A tied head is left out: llama.cpp then reuses token_embd as the output.
    """
    get = {k: v.detach().float().numpy() for k, v in state.items()}
    out = {"token_embd.weight": get["tok_emb.weight"]}  # (vocab, dim)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        wq, wk, wv = np.split(get[p + "attn.wqkv.weight"], 3)  # (3*dim, dim) -> 3 x (dim, dim), q/k/v rows
        gate, up = np.split(get[p + "ffn.w_gate_up.weight"], 2)  # (2*d_ff, dim) -> 2 x (d_ff, dim)
        out |= {
            f"blk.{i}.attn_norm.weight": get[p + "attn_norm.weight"],
            f"blk.{i}.attn_q.weight": wq, f"blk.{i}.attn_k.weight": wk, f"blk.{i}.attn_v.weight": wv,
            f"blk.{i}.attn_output.weight": get[p + "attn.wo.weight"],
            f"blk.{i}.ffn_norm.weight": get[p + "ffn_norm.weight"],
            f"blk.{i}.ffn_gate.weight": gate, f"blk.{i}.ffn_up.weight": up,
            f"blk.{i}.ffn_down.weight": get[p + "ffn.w_down.weight"],
        }
    out["output_norm.weight"] = get["norm.weight"]
    if not cfg.tie_embeddings:
        out["output.weight"] = get["lm_head.weight"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def tokenizer_fields(tokenizer_json: Path) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, GGUF token types, merges "a b") of a byte-level BPE tokenizer.json."""
    gguf = _gguf()
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ExportError(f"{tokenizer_json}: GGUF export needs a byte-level BPE tokenizer (flashlm-prepare makes one)")
    vocab = dict(model["vocab"])
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    vocab.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    tokens = [None] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    if None in tokens:
        raise ExportError(f"{tokenizer_json}: token ids are not contiguous from 0")
    types = [int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL) for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def _write(path: Path, src: Source, tensors: dict, gguf_type: str, report: dict | None) -> None:
    """One .gguf file: llama hyper-parameters, tokenizer, provenance under flashlm.*, tensors."""
    gguf = _gguf()
    cfg, gguf_version = src.cfg, version("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("FlashLM v10 FSP")
    w.add_type("model")
    w.add_description("FlashLM: a tiny story model trained on a CPU (TinyStories); FSP head not included")
    # provenance in general.*: what made the file and from what data; the config and source step are in flashlm.*
    w.add_basename("flashlm-v10-fsp")
    w.add_version(flashlm_version)
    w.add_size_label(f"{cfg.n_params / 1e6:.1f}M")
    w.add_quantized_by(f"flashlm-export {flashlm_version} (gguf {gguf_version})")
    w.add_dataset_count(1)
    w.add_dataset_name(0, "TinyStories")
    w.add_dataset_author(0, "Ronen Eldan, Yuanzhi Li")
    w.add_dataset_repo_url(0, "https://huggingface.co/datasets/roneneldan/TinyStories")
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    tokens, types, merges = tokenizer_fields(src.checkpoint_dir / A.TOKENIZER)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre("gpt-2")  # GPT-2's split regex = tokenizers' ByteLevel(use_regex=True); "default" splits 's and quotes differently
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for add in (w.add_bos_token_id, w.add_eos_token_id, w.add_pad_token_id):
        add(src.eot_id)  # <|endoftext|> separates stories; prompts carry no BOS
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_sampling_temp(GENERATION_DEFAULTS["temperature"])
    w.add_sampling_top_p(GENERATION_DEFAULTS["top_p"])
    w.add_string("flashlm.format_version", str(FORMAT_VERSION))
    w.add_string("flashlm.config", json.dumps(cfg.to_dict()))
    w.add_string("flashlm.source", json.dumps(src.provenance()))
    w.add_string("flashlm.producer", json.dumps({"flashlm": flashlm_version, "gguf": gguf_version, "torch": torch.__version__,
                                                 "python": platform.python_version()}))
    if report is not None:
        w.add_string("flashlm.validation", json.dumps(report))
    for name, t in tensors.items():
        if t.ndim == 1 or gguf_type == "f32":  # norm weights stay f32 in every flavour, as llama.cpp's converters do
            w.add_tensor(name, t)
        elif gguf_type == "f16":
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .gguf file, dequantized to float32 in torch layout (out, in)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)  # numpy shape = reversed GGML ne
        out[t.name] = np.asarray(data, np.float32).reshape([int(n) for n in reversed(t.shape)])
    return out


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def numpy_forward(cfg: ModelConfig, w: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """The llama graph llama.cpp runs, in float32 numpy, from GGUF tensors. ids (T,) -> logits (T, vocab)."""
    T, H, hd = len(ids), cfg.n_heads, cfg.head_dim
    inv_freq = np.array(cfg.rope_inv_freq, dtype=np.float32)
    ang = np.arange(T, dtype=np.float32)[:, None] * inv_freq  # (T, hd/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]  # (T, 1, hd/2)

    def rope(x):  # (T, H, hd): rotate pairs (x[2i], x[2i+1])
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return np.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).reshape(x.shape)

    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    x = w["token_embd.weight"][ids]  # (T, dim)
    for i in range(cfg.n_layers):
        b = {name[len(f"blk.{i}."):-len(".weight")]: t for name, t in w.items() if name.startswith(f"blk.{i}.")}
        h = _rms(x, b["attn_norm"], cfg.norm_eps)
        q, k, v = (h @ b[n].T for n in ("attn_q", "attn_k", "attn_v"))
        q, k, v = rope(q.reshape(T, H, hd)), rope(k.reshape(T, H, hd)), v.reshape(T, H, hd)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask  # (H, T, T)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", p, v).reshape(T, cfg.dim) @ b["attn_output"].T
        h = _rms(x, b["ffn_norm"], cfg.norm_eps)
        g = h @ b["ffn_gate"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ b["ffn_up"].T)) @ b["ffn_down"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return _rms(x, w["output_norm.weight"], cfg.norm_eps) @ head.T


@torch.no_grad()
def validate_gguf(src: Source, w: dict[str, np.ndarray], gguf_type: str, gates: validate.Gates, log, *, n_windows: int) -> dict:
    """A written file's tensors w (read_tensors), run by numpy_forward, against torch: max |Δlogits| on the prompts
    (gated for f32), and PPL / clear top-1 agreement on validation windows (gated for f16 and q8_0)."""
    cfg, prompts = src.cfg, src.prompts()
    worst = 0.0
    for ids in prompts:
        ids = ids[-cfg.max_seq_len:]
        want = src.model(torch.tensor([ids]))[0][0].numpy()
        got = numpy_forward(cfg, w, np.array(ids))
        validate.check_finite(got, f"GGUF {gguf_type} logits")
        worst = max(worst, float(np.abs(got - want).max()))
    report = {"gguf_type": gguf_type, "validation_text": src.val_source, "max_abs_logit_delta_prompts": worst}
    r = validate.agreement(src.windows(n_windows), lambda x: src.model(torch.from_numpy(x))[0].numpy(),
                           lambda x: numpy_forward(cfg, w, x[0])[None], names=("torch", "gguf"))
    report["gguf_vs_torch"] = r
    log(f"GGUF {gguf_type} (numpy forward of the file's tensors) vs torch: max |Δlogits| {worst:.2e} on {len(prompts)} prompts; "
        f"on {r['tokens']} validation tokens top-1 {r['top1_agreement']:.1%}, PPL {r['ppl_torch']:.3f} -> {r['ppl_gguf']:.3f} "
        f"({r['ppl_rel_delta']:+.2%})")
    if gguf_type == "f32":
        if not worst <= gates.max_fp32_delta:
            raise ExportError(f"GGUF f32 drifted from torch: max |Δlogits| {worst:.3g} > {gates.max_fp32_delta:g}")
    else:
        failed = validate.int8_failures(r, gates)
        if failed:
            raise ExportError(f"GGUF {gguf_type} drifted from torch fp32: {'; '.join(failed)}; try --gguf-type f16 or f32")
    return report


def export_gguf(checkpoint_dir, out_path, *, gguf_type: str = "q8_0", data_dir: str | None = A.DATA_DIR,
                force: bool = False, gates: validate.Gates | None = None, n_windows: int = 16, log=print) -> dict:
    """Write CHECKPOINT as one validated .gguf file (llama architecture); returns the validation report.

    The file is written to a temp name, read back and checked (validate_gguf), then written again
    with the report in its metadata and renamed into place: a failed gate leaves nothing behind.
    """
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    out = Path(out_path)
    if out.suffix != ".gguf" or out.is_dir():
        raise ExportError(f"--out {out}: a GGUF export is one file; give a path ending in .gguf (e.g. exports/model.{gguf_type}.gguf)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.exclusive(out, what="GGUF export"):
        if out.exists() and not force:
            raise ExportError(f"{out} exists; pass --force to replace it")
        gates = gates or validate.Gates()
        src = load_source(checkpoint_dir, data_dir, fsp_head=False)
        tensors = llama_tensors(src.cfg, src.model.state_dict())
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.recover(out)
        checked, final = (out.with_name(f".{out.name}.{os.getpid()}-{tag}.tmp") for tag in ("checked", "final"))
        try:
            _write(checked, src, tensors, gguf_type, report=None)
            a = read_tensors(checked)
            report = validate_gguf(src, a, gguf_type, gates, log, n_windows=n_windows)
            report["gates"] = dict(vars(gates))
            _write(final, src, tensors, gguf_type, report=report)
            b = read_tensors(final)
            if a.keys() != b.keys() or not all(np.array_equal(a[k], b[k]) for k in a):  # the file renamed is the file checked
                raise ExportError("GGUF writer is not deterministic: the re-written tensors differ from the validated ones")
            os.replace(final, out)
        finally:
            for tmp in (checked, final):  # only what was written: on a read-only disk an unlink would hide the real error
                if tmp.exists():
                    tmp.unlink()
    log(f"wrote {out}: {out.stat().st_size / 1e6:.2f} MB ({gguf_type})")
    return report
