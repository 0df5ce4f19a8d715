"""Reference for crates/model/tests/hf_parity.rs: a random-weight GPT2LMHeadModel from transformers.

usage: gpt2_parity.py OUT_DIR
Writes OUT_DIR/{safetensors,bin,f16}/ (HF folders: config.json + weights) and OUT_DIR/reference.json with
the input ids, logits, the loss of predicting ids[1:] from ids[:-1], and gradients of a few parameters,
all computed in float32 on the CPU. The f16 folder stores the same model in half precision; its
reference logits come from those rounded weights, computed in float32.
"""
import json
import os
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
torch.set_num_threads(2)
out = sys.argv[1]
cfg = GPT2Config(vocab_size=101, n_positions=48, n_embd=64, n_layer=2, n_head=4,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new")
model = GPT2LMHeadModel(cfg).float().eval()
# Give biases and layer norms non-trivial values too, so the parity test sees every parameter.
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.add_(0.1 * torch.randn_like(p))

ids = torch.tensor([[5, 17, 42, 99, 3, 64, 8, 23, 77, 1, 50, 12], [7, 7, 30, 2, 88, 41, 0, 100, 19, 5, 6, 60]])
GRADS = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
         "transformer.h.0.attn.c_proj.bias", "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.ln_2.weight",
         "transformer.ln_f.bias"]


def run(m):
    m.zero_grad()
    logits = m(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    loss.backward()
    params = dict(m.named_parameters())
    return {
        "logits": logits.detach().tolist(),
        "loss": loss.item(),
        "grads": {n: params[n].grad.detach().tolist() for n in GRADS},
    }


ref = {"ids": ids.tolist(), "fp32": run(model)}
model.save_pretrained(os.path.join(out, "safetensors"), safe_serialization=True)
model.save_pretrained(os.path.join(out, "bin"), safe_serialization=False)
half = GPT2LMHeadModel(cfg)
half.load_state_dict(model.state_dict())
half = half.half()
half.save_pretrained(os.path.join(out, "f16"), safe_serialization=True)
ref["f16"] = run(half.float().eval())
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(ref, f)
print("ok")
