// transformers.js (onnxruntime-node, CPU) on a FlashLM export folder: greedy token ids for each prompt, for the
// interop tests. One JSON request on stdin: {"model_dir": DIR, "prompts": [...], "max_new_tokens": 40, "dtype": null}
// With "batch": true the prompts also go as one padded batch (the tokenizer pads as tokenizer_config.json says).
// One JSON answer on stdout: {"prompt_ids": [[...]], "new_ids": [[...]], "batch_new_ids": [[...]]}.
import path from "node:path";
import {AutoModelForCausalLM, AutoTokenizer, env} from "@huggingface/transformers";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString("utf8"));

// a local folder only: never reach for the hub
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(req.model_dir));
const name = path.basename(path.resolve(req.model_dir));

const tokenizer = await AutoTokenizer.from_pretrained(name);
const options = req.dtype ? {dtype: req.dtype} : {};  // none: the folder's config.json transformers.js_config decides
const model = await AutoModelForCausalLM.from_pretrained(name, options);
const out = {prompt_ids: [], new_ids: []};
for (const prompt of req.prompts) {
  const inputs = tokenizer(prompt);
  const n = inputs.input_ids.dims[1];
  const seq = await model.generate({...inputs, max_new_tokens: req.max_new_tokens ?? 40, do_sample: false});
  const ids = seq.tolist()[0].map(Number);
  out.prompt_ids.push(ids.slice(0, n));
  out.new_ids.push(ids.slice(n));
}
if (req.batch) {
  const inputs = tokenizer(req.prompts, {padding: true});
  const n = inputs.input_ids.dims[1];
  const seqs = await model.generate({...inputs, max_new_tokens: req.max_new_tokens ?? 40, do_sample: false});
  out.batch_new_ids = seqs.tolist().map((row) => row.map(Number).slice(n));
}
process.stdout.write(JSON.stringify(out) + "\n");
await model.dispose();
