"""Run under torchrun by test_train.py: DDP steps (DATA OUT [MAX_STEPS [resume]]), then each rank writes its summary
(weights digest included) and the lines the run said."""
import json
import sys
from pathlib import Path

from flashlm.recipes import recipe_config
from flashlm.train import train
from flashlm_core.config import model_preset

data_dir, out_dir = sys.argv[1], sys.argv[2]
max_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
resume = sys.argv[4:5] == ["resume"]
tc = recipe_config("default", seq_len=32, micro_batch=2, grad_accum=2, max_steps=max_steps, eval_every=2, eval_batches=2,
                   warmup_steps=2, threads=1, dropout=0.1)
said = []
summary = train(data_dir, out_dir, model_preset("tiny"), tc, progress=False, resume=resume, log=said.append)
Path(out_dir).mkdir(parents=True, exist_ok=True)  # on another "machine" than rank 0 the run folder is not written
with open(f"{out_dir}/rank{summary['rank']}.json", "w") as f:
    json.dump({**summary, "said": said}, f)
