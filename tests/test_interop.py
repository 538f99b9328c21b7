"""The export in the clients users already have: transformers.js (Node) and onnxruntime-genai, on the shipped model
and on a fresh fp32 + int8 export, greedy token ids against flashlm_runtime: fp32 exactly, int8 by the clear-margin
rule of tests/agreement.py (each client runs its own onnxruntime build, whose int8 kernels may round otherwise)."""
import json

import pytest

from agreement import assert_greedy_agrees
from flashlm_core.generation import SAMPLE_PROMPTS
from flashlm_runtime import FlashLM
from node_clients import PORTABLE_MODEL_DIR, need_module, run_node

NEW = 40  # greedy tokens per prompt


def until_eos(ids, eos):
    """Clients return the end-of-text token and stop; the runtime stops before it."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos)] if eos in ids else ids


def ended(ids, eos):
    """Clients return the end-of-text token when they pick it."""
    return eos in [int(i) for i in ids]


def transformers_js(request: dict) -> dict:
    return run_node("transformers_js/generate.mjs", request, package="@huggingface/transformers", timeout=600)


@pytest.mark.parametrize("which", ["shipped", "fresh"])
def test_transformers_js_greedy_ids_agree_with_the_runtime(which, tiny_export):
    model_dir = PORTABLE_MODEL_DIR if which == "shipped" else tiny_export
    lm = FlashLM(model_dir)
    prompts = list(SAMPLE_PROMPTS)
    # no dtype given: config.json's transformers.js_config picks the graph (q8 = the int8 one flashlm-run runs)
    got = transformers_js({"model_dir": str(model_dir), "prompts": prompts, "max_new_tokens": NEW, "batch": True})
    assert got["prompt_ids"] == [lm.encode(p) for p in prompts]
    assert_greedy_agrees(lm, got["prompt_ids"], [until_eos(new, lm.eot_id) for new in got["new_ids"]],
                         ended=[ended(new, lm.eot_id) for new in got["new_ids"]], what="transformers.js")
    # one left-padded batch (tokenizer_config.json padding_side), teacher-forced as one batch too: int8 rows of a batch
    # are quantized with the batch's scales. Once a row ends, transformers.js keeps feeding it its own next argmax
    # while the runtime feeds <|endoftext|>, which changes the batch's scales: rows are judged up to the first end.
    rows = [until_eos(ids, lm.eot_id) for ids in got["batch_new_ids"]]
    first_end = min(len(r) for r in rows)
    assert_greedy_agrees(lm, got["prompt_ids"], [r[:first_end] for r in rows],
                         ended=[len(r) == first_end and ended(ids, lm.eot_id) for r, ids in zip(rows, got["batch_new_ids"])],
                         batch=True, what="transformers.js (batch)")


def test_transformers_js_fp32_graph_of_a_full_export(tiny_export):
    lm = FlashLM(tiny_export, int8=False)
    want = [lm.generate(p, temperature=0, max_new_tokens=NEW).token_ids for p in SAMPLE_PROMPTS]
    got = transformers_js({"model_dir": str(tiny_export), "prompts": list(SAMPLE_PROMPTS), "max_new_tokens": NEW, "dtype": "fp32"})
    assert [until_eos(ids, lm.eot_id) for ids in got["new_ids"]] == want


@pytest.mark.parametrize("which", ["shipped", "fresh", "contrib"])
def test_onnxruntime_genai_greedy_ids_agree_with_the_runtime(which, tiny_export, request):
    og = need_module("onnxruntime_genai")
    # contrib: genai's own layout (GroupQueryAttention writing into a shared past/present buffer)
    model_dir = {"shipped": PORTABLE_MODEL_DIR, "fresh": tiny_export}.get(which) or request.getfixturevalue("tiny_contrib_export")
    lm = FlashLM(model_dir)
    model = og.Model(str(model_dir))  # reads genai_config.json
    tokenizer = og.Tokenizer(model)
    prompts, outs = [], []
    for prompt in SAMPLE_PROMPTS:
        ids = tokenizer.encode(prompt)
        assert list(ids) == lm.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + NEW)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        out = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        prompts.append(list(ids))
        outs.append(out)
    assert_greedy_agrees(lm, prompts, [until_eos(o, lm.eot_id) for o in outs], ended=[ended(o, lm.eot_id) for o in outs],
                         what="onnxruntime-genai")


def test_sidecars_point_every_client_at_the_graph_the_runtime_runs(tiny_export):
    config = json.loads((tiny_export / "config.json").read_text())
    genai = json.loads((tiny_export / "genai_config.json").read_text())
    tok = json.loads((tiny_export / "tokenizer_config.json").read_text())
    gen = json.loads((tiny_export / "generation_config.json").read_text())
    assert config["transformers.js_config"]["dtype"] == "q8"
    assert genai["model"]["decoder"]["filename"] == "onnx/model_quantized.onnx"
    assert (tiny_export / genai["model"]["decoder"]["filename"]).is_file()
    assert genai["search"]["past_present_share_buffer"] is False
    assert genai["search"]["max_length"] == gen["max_length"] == config["max_position_embeddings"]
    assert tok["padding_side"] == "left" and tok["model_input_names"] == ["input_ids", "attention_mask"]
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert "genai_config.json" in manifest["files"]  # hashed like every other file
