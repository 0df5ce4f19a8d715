"""Reference for crates/train/tests/adamw_parity.rs: torch.optim.AdamW on given tensors.

usage: adamw_step.py IN_JSON  (reads {"params": [[...]], "grads": [[[...] per step]], "decay": [bool], lr, betas, eps, weight_decay})
prints the parameters after each step as JSON.
"""
import json
import sys

import torch

spec = json.load(open(sys.argv[1]))
params = [torch.tensor(p, dtype=torch.float32, requires_grad=True) for p in spec["params"]]
groups = [
    {"params": [p for p, d in zip(params, spec["decay"]) if d], "weight_decay": spec["weight_decay"]},
    {"params": [p for p, d in zip(params, spec["decay"]) if not d], "weight_decay": 0.0},
]
opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"], foreach=False)
history = []
for step_grads in spec["grads"]:
    for p, g in zip(params, step_grads):
        p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    history.append([p.detach().tolist() for p in params])
print(json.dumps(history))
