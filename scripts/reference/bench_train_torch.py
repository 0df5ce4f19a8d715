"""PyTorch reference for `chatforge bench train`: the same model, batch and optimizer.

usage: bench_train_torch.py [--attention sdpa|math] [--steps 10] [--warmup 3] [--threads 2] [--sft] [--bf16]
Bench model: vocab 4096, context 256, 6 layers, 6 heads, width 384, MLP 4x erf-GELU, pre-LayerNorm,
biases, tied embeddings, batch 8, f32, AdamW (betas 0.9/0.95, weight decay 0.1), random tokens.
Attention by scaled_dot_product_attention (sdpa) or plain math; one variant per process, so peak RSS
is the variant's own. Prints one JSON line: median tokens/s, achieved GFLOP/s, peak RSS.
With --sft, each row packs four documents (40, 72, 56 and 88 tokens): attention is causal within a
document (a block-diagonal mask), positions restart with each, and only the second half of each
document carries loss, as chatforge's SFT batches are.
With --bf16, forward and loss run under torch.autocast("cpu", dtype=torch.bfloat16): the linear layers'
products (forward and backward) in bf16, weights and AdamW's state in f32, as chatforge's --precision bf16.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--attention", choices=["sdpa", "math"], default="sdpa")
p.add_argument("--sft", action="store_true")
p.add_argument("--bf16", action="store_true")
args = p.parse_args()
torch.set_num_threads(args.threads)
V, T, L, H, C, B = 4096, 256, 6, 6, 384, 8
DOCS = [40, 72, 56, 88]
seg = torch.cat([torch.full((n,), i) for i, n in enumerate(DOCS)])
POS = torch.cat([torch.arange(n) for n in DOCS]) if args.sft else torch.arange(T)
# True where a query may attend: same document, not in the future.
SFT_MASK = ((seg[:, None] == seg[None, :]) & torch.tril(torch.ones(T, T, dtype=torch.bool))).view(1, 1, T, T)
LOSS = torch.cat([torch.arange(n) >= n // 2 for n in DOCS])


class Block(nn.Module):
    def __init__(self, sdpa):
        super().__init__()
        self.sdpa = sdpa
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def attn(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        if self.sdpa:
            if args.sft:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=SFT_MASK)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
            allowed = SFT_MASK if args.sft else self.mask[:, :, :t, :t] != 0
            att = att.masked_fill(~allowed, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, sdpa):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(sdpa) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(POS)
        for b in self.h:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))


def run(sdpa):
    torch.manual_seed(0)
    model = GPT(sdpa)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95))
    n_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    flops_per_token = 6 * n_params + 12 * L * H * (C // H) * T
    times = []
    for i in range(args.warmup + args.steps):
        x = torch.randint(0, V, (B, T))
        y = torch.randint(0, V, (B, T))
        if args.sft:
            y = y.masked_fill(~LOSS.expand(B, T), -100)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {
        "impl": "pytorch-" + ("sdpa" if sdpa else "math") + ("-sft" if args.sft else "") + ("-bf16" if args.bf16 else ""),
        "torch": torch.__version__,
        "tokens_per_s": B * T / s,
        "gflops": flops_per_token * B * T / s / 1e9,
        "step_s": s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


print(json.dumps(run(args.attention == "sdpa")), flush=True)
