// llama.cpp (through node-llama-cpp, prebuilt CPU binaries) on a FlashLM .gguf: tokenization, greedy ids,
// teacher-forced top-1 and decode timing, for the Python tests and benchmarks. One JSON request on stdin,
// one JSON answer on stdout:
//   {"model": PATH, "threads": 1, "texts": [...], "greedy": {"prompts": [[ids]], "tokens": 40},
//    "top1": [[ids]] (windows), "timing": {"prompt": [ids], "tokens": 200, "repeats": 3}}
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString("utf8"));

// llama.cpp's own timing report (llama_perf_context_print) arrives through the logger
const logs = [];
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.info,
                              logger: (level, message) => { logs.push(message); if (level === "error") process.stderr.write(message + "\n"); }});
const model = await llama.loadModel({modelPath: req.model});
const context = await model.createContext({contextSize: req.context ?? 256, threads: req.threads ?? 1, batchSize: 256,
                                           performanceTracking: Boolean(req.timing)});
const seq = context.getSequence();
const greedy = {temperature: 0};
const out = {llama_cpp: {build: llama.llamaCppRelease, gpu: llama.gpu}};

// ids of each text as llama.cpp's own tokenizer splits it (no BOS: the file says add_bos_token false)
if (req.texts) out.tokens = req.texts.map((t) => model.tokenize(t, false));

// prefill a prompt, then greedy decode n tokens (the sequence's own generation loop; no stop at end-of-text)
async function decode(prompt, n) {
  await seq.clearHistory();
  const ids = [];
  for await (const token of seq.evaluate(prompt, greedy)) {
    ids.push(token);
    if (ids.length >= n) break;
  }
  return ids;
}

if (req.greedy) {
  out.greedy = [];
  for (const p of req.greedy.prompts) out.greedy.push(await decode(p, req.greedy.tokens));
}

// teacher forcing: the argmax after every position of each window (one forward pass per window)
if (req.top1) {
  out.top1 = [];
  for (const w of req.top1) {
    await seq.clearHistory();
    const res = await seq.controlledEvaluate(w.map((t) => [t, {generateNext: {token: true, options: greedy}}]));
    out.top1.push(res.map((r) => r.next.token));
  }
}

// wall time of prefill + greedy decode through the JavaScript wrapper, per repeat; then llama.cpp's own
// per-token eval time, averaged over every decode step this process ran (greedy requests included)
if (req.timing) {
  out.timing = [];
  for (let r = 0; r < req.timing.repeats; r++) {
    const t0 = process.hrtime.bigint();
    await decode(req.timing.prompt, req.timing.tokens);
    out.timing.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  logs.length = 0;
  await context.printTimings();
  const line = logs.join("\n").split("\n").find((l) => /\beval time\b/.test(l) && !/prompt eval/.test(l));
  const m = line && line.match(/eval time =\s*([0-9.]+) ms \/\s*([0-9]+) runs/);
  out.eval = m ? {ms: Number(m[1]), runs: Number(m[2])} : {line: logs.join("\n")};
}

process.stdout.write(JSON.stringify(out) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
