// FlashLM in the page: onnxruntime-web (WASM) runs the export's int8 backbone with its KV cache, tokenizers.js
// its tokenizer.json; sampling, the sliding window and the FSP plan follow flashlm_runtime. Nothing runs on a server.
// URL parameters: model=/model/ (export folder URL), prompt, temperature, top_p, max, seed, threads=2, autorun=1.
// window.flashlm exposes state for tests: {ready, busy, error, result: {prompt_ids, ids, text, tok_s, ...}}.
// loaded with import() below, so that a missing file shows an error on the page instead of a blank one
let ort, Tokenizer;

const url = new URLSearchParams(location.search);
const MODEL = (url.get("model") ?? "/model/").replace(/\/?$/, "/");
const $ = (id) => document.getElementById(id);
const state = (window.flashlm = {ready: false, busy: false, error: null, result: null});

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").style.display = "block";
}

async function fetchJSON(path, what) {
  let r;
  try {
    r = await fetch(MODEL + path);
  } catch (e) {
    throw new Error(`Could not reach ${MODEL + path} (${e.message}). Is the server still running?  python examples/web/serve.py`);
  }
  if (!r.ok) {
    throw new Error(`No model at ${MODEL}: ${what} is missing (HTTP ${r.status}). ` +
      "Serve an export folder with  python examples/web/serve.py --model EXPORT_DIR  (default: the bundled model).");
  }
  return r.json();
}

// ---- the model -------------------------------------------------------------------------------------------
class Model {
  static async load() {
    const manifest = await fetchJSON("manifest.json", "manifest.json");
    if ((manifest.ops ?? "plain") !== "plain") {
      throw new Error(`This export uses ${manifest.ops} ops (onnxruntime's native fused kernels), which onnxruntime-web does not run: ` +
        "serve a plain export (flashlm-export --ops plain, the default), such as models/flashlm-v10-fsp-onnx.");
    }
    if (!manifest.decoding) {
      throw new Error("This export's manifest has no 'decoding' rules (window, greedy threshold, plan words): it was written " +
        "by an older flashlm-export; export it again.");
    }
    const tokenizer = new Tokenizer(await fetchJSON("tokenizer.json", "tokenizer.json"), await fetchJSON("tokenizer_config.json", "tokenizer_config.json"));
    const pick = (names) => names.find((n) => n in manifest.graphs);
    const backbone = pick(["model_quantized", "model"]);
    const fsp = pick(["fsp_head_quantized", "fsp_head"]);
    const takes = manifest.graphs[backbone].inputs.map((t) => t.name), feeds = Model.feedNames(manifest.config.n_layers);
    if (takes.join() !== feeds.join()) {
      throw new Error(`This export's backbone takes ${takes.join(", ")}, not the inputs this page feeds (${feeds.join(", ")}): ` +
        "export it again with this checkout's flashlm-export.");
    }
    ort.env.wasm.wasmPaths = "/vendor/ort/";
    // threads need a cross-origin-isolated page (serve.py sends COOP/COEP); a laptop's two cores are what we measure
    const threads = Number(url.get("threads") ?? 2);
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, Math.min(threads, navigator.hardwareConcurrency || 1)) : 1;
    const open = async (name) => {
      try {
        return await ort.InferenceSession.create(MODEL + manifest.graphs[name].file, {executionProviders: ["wasm"]});
      } catch (e) {
        throw new Error(`onnxruntime-web could not load ${manifest.graphs[name].file}: ${e.message}. ` +
          "This browser needs WebAssembly with SIMD; if /vendor/ort/ is missing, run  make setup.");
      }
    };
    return new Model(manifest, tokenizer, await open(backbone), fsp ? await open(fsp) : null, backbone);
  }

  constructor(manifest, tokenizer, session, fspSession, graphName) {
    Object.assign(this, {manifest, tokenizer, session, fspSession, graphName});
    this.cfg = manifest.config;
    this.eot = manifest.tokenizer.eot_id;
    // the decoding rules every client follows, written by flashlm-export from flashlm_core.generation
    const {window_keep, greedy_below, plan_skip_words, plan_min_chars} = manifest.decoding;
    Object.assign(this, {keep: window_keep, greedyBelow: greedy_below, skipWords: new Set(plan_skip_words), planMinChars: plan_min_chars});
  }

  // the backbone inputs the page feeds, in the contract's order (flashlm_core.artifacts.backbone_io, plain ops)
  static feedNames(layers) {
    const past = Array.from({length: layers}, (_, i) => [`past_key_values.${i}.key`, `past_key_values.${i}.value`]).flat();
    return ["input_ids", "attention_mask", "position_ids", ...past];
  }

  encode(text) {
    return this.tokenizer.encode(text, {add_special_tokens: false}).ids;
  }

  // one graph run: ids (new tokens) after `past` (null = empty) at positions pastLen..; returns the last
  // position's logits (vocab,) and hidden state (dim,), and the presents to feed back as the next past
  async run(ids, past, pastLen) {
    const {n_layers: L, n_heads: H, dim, vocab_size: V} = this.cfg;
    const hd = dim / H, n = ids.length, total = pastLen + n;
    const i64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), dims);
    const [idsName, maskName, positionsName, ...pastNames] = Model.feedNames(L);
    const feeds = {
      [idsName]: i64(ids, [1, n]),
      [maskName]: i64(new Array(total).fill(1), [1, total]),
      [positionsName]: i64(Array.from({length: n}, (_, i) => pastLen + i), [1, n]),
    };
    const empty = new ort.Tensor("float32", new Float32Array(0), [1, H, 0, hd]);
    // each past_key_values.i.key/value takes the last run's present.i.key/value
    pastNames.forEach((name) => (feeds[name] = past ? past[name.replace("past_key_values.", "present.")] : empty));
    const out = await this.session.run(feeds);
    const logits = out.logits.data.slice((n - 1) * V, n * V);
    const hidden = out.last_hidden_state.data.slice((n - 1) * dim, n * dim);
    return {logits, hidden, past: out};
  }

  // FSP read-out: the k content words the model expects in the next manifest.fsp.tau tokens, with P(appears)
  async plan(hidden, k = 10) {
    if (!this.fspSession) return [];
    const out = await this.fspSession.run({hidden_states: new ort.Tensor("float32", hidden, [1, 1, hidden.length])});
    const logits = out.fsp_logits.data;
    const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
    const words = new Map();
    for (const t of order) {
      const word = this.tokenizer.decode([t]).trim();
      if (word.length >= this.planMinChars && /^\p{L}+$/u.test(word) && !this.skipWords.has(word.toLowerCase()) && !words.has(word.toLowerCase())) {
        words.set(word.toLowerCase(), [word, 1 / (1 + Math.exp(-logits[t]))]);
        if (words.size === k) break;
      }
    }
    return [...words.values()];
  }
}

// ---- sampling (flashlm_runtime.sampling: temperature, then the nucleus keeping the token that crosses top_p)
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sample(logits, temperature, topP, rand, greedyBelow) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (!Number.isFinite(logits[best])) throw new Error("the model produced non-finite logits: the export is broken");
  if (temperature < greedyBelow) return best;
  const p = Float64Array.from(logits, (x) => Math.exp((x - logits[best]) / temperature));
  const total = p.reduce((s, x) => s + x, 0);
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]);
  let keep = order.length;
  if (topP < 1) {
    let cum = 0;
    for (let i = 0; i < order.length; i++) {
      if (cum > topP * total) { keep = i; break; }
      cum += p[order[i]];
    }
  }
  const mass = order.slice(0, keep).reduce((s, i) => s + p[i], 0);
  let r = rand() * mass;
  for (let i = 0; i < keep; i++) {
    r -= p[order[i]];
    if (r < 0) return order[i];
  }
  return order[keep - 1];
}

// ---- generation -------------------------------------------------------------------------------------------
async function generate(model, prompt, {temperature, topP, maxTokens, seed}) {
  const T = model.cfg.max_seq_len;
  const encoded = model.encode(prompt);
  const promptIds = encoded.length ? encoded : [model.eot]; // an empty prompt starts a new story, as in flashlm_runtime
  if (promptIds.length > T) {
    throw new Error(`The prompt is ${promptIds.length} tokens; this model reads at most ${T}. Shorten it.`);
  }
  const rand = mulberry32(seed);
  const ids = [];
  const t0 = performance.now();
  let {logits, hidden, past} = await model.run(promptIds, null, 0);
  const tFirst = performance.now();
  let pastLen = promptIds.length;
  const plan = await model.plan(hidden);
  renderPlan(plan, model.manifest.fsp.tau);
  const tDecode = performance.now();
  for (let step = 0; step < maxTokens; step++) {
    const t = sample(logits, temperature, topP, rand, model.greedyBelow);
    if (t === model.eot) break;
    ids.push(t);
    $("gen").textContent = model.tokenizer.decode(ids);
    if (step === maxTokens - 1) break;
    if (pastLen >= T) {
      // the next token would sit at position T, which the model never saw: re-prefill the most recent
      // `keep` tokens at positions 0..keep-1 (flashlm_runtime's window policy)
      const context = [...promptIds, ...ids].slice(-model.keep);
      ({logits, past} = await model.run(context, null, 0));
      pastLen = context.length;
    } else {
      ({logits, past} = await model.run([t], past, pastLen));
      pastLen += 1;
    }
    if (step % 4 === 0) await yieldToPage(); // let the page paint the stream
  }
  const seconds = (performance.now() - tDecode) / 1000;
  return {prompt_ids: encoded, ids, text: model.tokenizer.decode(ids), plan, new_tokens: ids.length,
          ttft_s: (tFirst - t0) / 1000, tok_s: ids.length / seconds, threads: ort.env.wasm.numThreads, graph: model.graphName};
}

// a macrotask boundary without setTimeout's 4 ms clamp or requestAnimationFrame's 60 Hz pace
function yieldToPage() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(0);
  });
}

function renderPlan(plan, tau) {
  $("plan").replaceChildren(...(plan.length ? [document.createTextNode(`FSP plan, words expected in the next ${tau} tokens: `)] : []),
    ...plan.map(([w, p]) => Object.assign(document.createElement("span"), {textContent: `${w} ${p.toFixed(2)}`})));
}

async function onGenerate(model) {
  if (state.busy) return;
  state.busy = true;
  state.result = null;
  $("error").style.display = "none";
  $("go").disabled = true;
  const prompt = $("prompt").value;
  const story = $("story");
  story.replaceChildren(Object.assign(document.createElement("span"), {className: "prompt", textContent: prompt}),
    Object.assign(document.createElement("span"), {id: "gen"}));
  $("stats").textContent = "";
  try {
    const num = (id, lo, hi) => {
      const v = Number($(id).value);
      if (!Number.isFinite(v) || v < lo || v > hi) throw new Error(`${id.replace("_", "-")} must be a number from ${lo} to ${hi}`);
      return v;
    };
    const r = await generate(model, prompt, {temperature: num("temperature", 0, 2), topP: num("top_p", 0.01, 1),
      maxTokens: Math.round(num("max_tokens", 1, 1000)), seed: Math.round(num("seed", 0, 2 ** 31))});
    $("stats").textContent = `${r.new_tokens} new tokens · ${r.tok_s.toFixed(0)} tokens/s · first token after ${(r.ttft_s * 1000).toFixed(0)} ms · ` +
      `onnxruntime-web ${ort.env.versions.web}, ${r.threads} thread${r.threads > 1 ? "s" : ""}, ${r.graph}`;
    state.result = r;
  } catch (e) {
    showError(e.message);
  } finally {
    state.busy = false;
    $("go").disabled = false;
  }
}

for (const [param, id] of [["prompt", "prompt"], ["temperature", "temperature"], ["top_p", "top_p"], ["max", "max_tokens"], ["seed", "seed"]]) {
  if (url.has(param)) $(id).value = url.get(param);
}
try {
  try {
    ort = await import("/vendor/ort/ort.wasm.bundle.min.mjs");
    ({Tokenizer} = await import("/vendor/tokenizers/tokenizers.min.mjs"));
  } catch (e) {
    throw new Error(`Could not load the browser runtime (onnxruntime-web, tokenizers.js): ${e.message}. ` +
      "Serve the page with  python examples/web/serve.py  after  make setup.");
  }
  const model = await Model.load();
  $("go").textContent = "Generate";
  $("go").disabled = false;
  $("go").addEventListener("click", () => onGenerate(model));
  state.ready = true;
  if (url.get("autorun") === "1") await onGenerate(model);
} catch (e) {
  $("go").textContent = "model not loaded";
  showError(e.message);
}
