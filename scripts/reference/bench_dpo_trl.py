"""TRL reference for `chatforge bench train --mode dpo`: TRL's DPOTrainer on the CPU, same model and batch.

usage: bench_dpo_trl.py [--steps 10] [--warmup 3] [--threads 2]
The bench model as transformers' GPT2LMHeadModel (vocab 4096, context 256, 6 layers, 6 heads,
width 384, erf-GELU MLP, tied embeddings, SDPA attention), random weights, f32. Each step is 8
pairs of random tokens: a 64-token prompt with a 64-token chosen and a 64-token rejected reply
(the last token end-of-sequence), so a step holds 8 × 256 positions as chatforge's does. DPO's
sigmoid loss (β 0.1), AdamW (betas 0.9/0.95, weight decay 0.1, lr 6e-4), reference
log-probabilities precomputed before training (`precompute_ref_log_probs`, as chatforge computes
them), so a step is the policy's forward and backward on both replies. The steps are timed by a
trainer callback (begin to end of each optimizer step). Prints one JSON line: median tokens/s and
peak RSS.
"""
import argparse
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
from trl import DPOConfig, DPOTrainer

warnings.filterwarnings("ignore")
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(args.threads)
V, B, PART = 4096, 8, 64

SPECIAL = {0: "<unk>", 1: "</s>"}
word = lambda i: SPECIAL.get(i, f"w{i}")
tok = Tokenizer(models.WordLevel({word(i): i for i in range(V)}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")

g = torch.Generator().manual_seed(0)
rand = lambda n: " ".join(word(int(i)) for i in torch.randint(2, V, (n,), generator=g))
rows = [{"prompt": rand(PART), "chosen": " " + rand(PART - 1) + " </s>", "rejected": " " + rand(PART - 1) + " </s>"}
        for _ in range(B * (args.steps + args.warmup))]

cfg = GPT2Config(vocab_size=V, n_positions=256, n_embd=384, n_layer=6, n_head=6, n_inner=1536,
                 activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                 tie_word_embeddings=True)
torch.manual_seed(0)
model = GPT2LMHeadModel(cfg).float()


class Timer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, a, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, a, state, control, **kw):
        self.times.append(time.perf_counter() - self.t0)


timer = Timer()
out = tempfile.mkdtemp()
dpo = DPOConfig(output_dir=out, per_device_train_batch_size=B, max_steps=args.steps + args.warmup,
                learning_rate=6e-4, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, lr_scheduler_type="constant",
                beta=0.1, precompute_ref_log_probs=True, max_length=None, use_cpu=True, bf16=False,
                report_to=[], logging_steps=10_000, save_strategy="no", dataloader_num_workers=0,
                disable_tqdm=True, max_grad_norm=1.0)
# The trainer prints its logs; stdout carries only the result line.
with contextlib.redirect_stdout(sys.stderr):
    trainer = DPOTrainer(model=model, args=dpo, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[timer])
    trainer.train()
first = trainer.train_dataset[0]
positions = len(first["prompt_ids"]) * 2 + len(first["chosen_ids"]) + len(first["rejected_ids"])
assert positions == 4 * PART, positions
s = statistics.median(timer.times[args.warmup:])
print(json.dumps({
    "impl": "trl DPOTrainer",
    "trl": __import__("trl").__version__,
    "torch": torch.__version__,
    "tokens_per_s": B * positions / s,
    "step_s": s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
