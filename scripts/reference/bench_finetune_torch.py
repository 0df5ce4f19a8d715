"""PyTorch + transformers + PEFT reference for `chatforge bench finetune`: the same model, batch,
adapters and optimizer.

usage: bench_finetune_torch.py --mode full|lora|qlora [--gc] [--batch 4] [--seq 128] [--rank 8]
                               [--steps 3] [--warmup 1] [--threads 2] [--model gpt2|smollm2] [--targets a,b]
GPT2LMHeadModel of GPT-2 small's shape (vocab 50257, 12 layers, 12 heads, width 768, tied head), or
with --model smollm2 LlamaForCausalLM of SmolLM2-135M's shape (vocab 49152, 30 layers, 9 query heads
over 3 key/value heads, width 576, MLP 1536, tied head; LoRA on all seven linear layers),
random weights (seed 0), dropout off, f32, SDPA attention (transformers' default), random tokens as
inputs and as targets, mean cross-entropy over every position, AdamW (lr 1e-4, betas 0.9/0.95,
no weight decay). `lora`: peft.LoraConfig(r=rank, lora_alpha=2*rank, lora_dropout=0,
target_modules=[c_attn, c_proj, c_fc], fan_in_fan_out=True). `qlora` is refused: bitsandbytes'
4-bit layers need CUDA, so PyTorch has no CPU QLoRA to compare with. `--gc` turns on transformers'
gradient checkpointing (non-reentrant). One mode per process; peak RSS is measured from after the
model is built (the peak is reset through /proc/self/clear_refs, as chatforge does).
Prints one JSON line: trainable parameters, median tokens/s and step time, peak and model RSS.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["full", "lora", "qlora"], default="full")
p.add_argument("--gc", action="store_true")
p.add_argument("--bf16", action="store_true", help="forward and loss under torch.autocast(bfloat16)")
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--rank", type=int, default=8)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", choices=["gpt2", "smollm2"], default="gpt2")
p.add_argument("--targets", default=None, help="LoRA target modules (comma-separated) instead of the model's")
args = p.parse_args()
if args.mode == "qlora":
    sys.exit("qlora: bitsandbytes' 4-bit layers need CUDA; PyTorch has no CPU QLoRA to compare with")
torch.set_num_threads(args.threads)
torch.manual_seed(0)


def status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


if args.model == "smollm2":
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    targets, fan_in_fan_out = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False
else:
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_layer=12, n_head=12, n_embd=768,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    targets, fan_in_fan_out = ["c_attn", "c_proj", "c_fc"], True
if args.gc:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
if args.mode == "lora":
    from peft import LoraConfig, get_peft_model

    if args.targets:
        targets = "all-linear" if args.targets == "all-linear" else args.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules=targets, fan_in_fan_out=fan_in_fan_out))
model.train()
trainable = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
model_rss = status_mb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")

B, T, V = args.batch, args.seq, cfg.vocab_size
times = []
for i in range(args.warmup + args.steps):
    idx = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        logits = model(input_ids=idx).logits
        loss = F.cross_entropy(logits.float().view(-1, V), targets.view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    del logits, loss
    if i >= args.warmup:
        times.append(time.perf_counter() - t0)
s = statistics.median(times)
print(json.dumps({
    "mode": args.mode + ("-gc" if args.gc else ""),
    "torch": torch.__version__,
    "trainable": sum(q.numel() for q in trainable),
    "tokens_per_s": B * T / s,
    "step_s": s,
    "peak_rss_mb": status_mb("VmHWM:"),
    "model_rss_mb": model_rss,
}))
