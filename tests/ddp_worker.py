"""Run under torchrun by test_train.py: a few DDP steps, then each rank writes its weights digest."""
import json
import sys

from flashlm.recipes import recipe_config
from flashlm.train import train
from flashlm_core.config import model_preset

data_dir, out_dir = sys.argv[1], sys.argv[2]
tc = recipe_config("default", seq_len=32, micro_batch=2, grad_accum=2, max_steps=4, eval_every=2, eval_batches=2,
                   warmup_steps=2, threads=1, dropout=0.1)
summary = train(data_dir, out_dir, model_preset("tiny"), tc, progress=False)
with open(f"{out_dir}/rank{summary['rank']}.json", "w") as f:
    json.dump(summary, f)
