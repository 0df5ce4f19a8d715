"""PyTorch + transformers reference for `chatforge bench generate`.

usage: bench_generate_torch.py --shape bench|gpt2 [--context 16] [--new 200] [--batch 1] [--threads 2] [--runs 3]
A GPT2LMHeadModel with random weights (seed 0) of the bench shape (vocab 4096, context 1024 for the
decode sweep, 6 layers, 6 heads, width 384) or GPT-2 small (vocab 50257, context 1024, 12 layers,
12 heads, width 768). Greedy decoding with the KV cache (`generate(do_sample=False, use_cache=True)`),
eager attention, f32, min_new_tokens = max_new_tokens so every run decodes the same number of tokens.
Prints one JSON line: median decode tokens/s, timed from the first to the last call of a logits
processor (called once per forward pass: the first right after the prompt's pass), so the prompt is
excluded; and the prompt time.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

p = argparse.ArgumentParser()
p.add_argument("--shape", choices=["bench", "gpt2"], default="bench")
p.add_argument("--context", type=int, default=16)
p.add_argument("--new", type=int, default=200)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=3)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
if args.shape == "bench":
    cfg = GPT2Config(vocab_size=4096, n_positions=1024, n_layer=6, n_head=6, n_embd=384,
                     bos_token_id=0, eos_token_id=0)
else:
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_layer=12, n_head=12, n_embd=768)
cfg._attn_implementation = "eager"
model = GPT2LMHeadModel(cfg).eval()
prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.context))
attn = torch.ones_like(prompt)


class Clock(LogitsProcessor):
    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def run(n):
    clock = Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=attn, do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, use_cache=True, pad_token_id=0,
                             logits_processor=LogitsProcessorList([clock]))
    assert out.shape[1] == args.context + n and len(clock.times) == n
    return clock.times[0] - t0, clock.times[-1] - clock.times[0]


run(4)  # warm-up
rates, prompts = [], []
for _ in range(args.runs):
    first, decode = run(args.new)
    rates.append(args.batch * (args.new - 1) / decode)
    prompts.append(first)
print(json.dumps({
    "impl": "pytorch",
    "shape": args.shape,
    "context": args.context,
    "batch": args.batch,
    "new_tokens": args.new,
    "tokens_per_s": statistics.median(rates),
    "prompt_s": statistics.median(prompts),
    "torch": torch.__version__,
}))
