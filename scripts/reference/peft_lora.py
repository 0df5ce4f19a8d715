"""Reference for crates/model/tests/peft_parity.rs: LoRA adapters with PEFT on a random GPT-2.

usage: peft_lora.py make OUT_DIR     writes OUT_DIR/base (HF folder), OUT_DIR/adapter (PEFT LoRA with
                                     random A and B on c_attn, c_proj, c_fc) and OUT_DIR/reference.json
                                     (input ids, logits of the base and of base + adapter)
       peft_lora.py check BASE ADAPTER   prints {"logits": …} of PeftModel.from_pretrained(base, adapter)
All in float32 on the CPU.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
torch.set_num_threads(2)
IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 8, 23, 77, 1, 50, 12], [7, 7, 30, 2, 88, 41, 0, 100, 19, 5, 6, 60]])


def logits(m):
    with torch.no_grad():
        return m(IDS).logits.tolist()


if sys.argv[1] == "make":
    out = sys.argv[2]
    cfg = GPT2Config(vocab_size=101, n_positions=48, n_embd=64, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new")
    base = GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    ref = {"ids": IDS.tolist(), "base": logits(base)}
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, lcfg).eval()
    ref["adapted"] = logits(model)
    model.save_pretrained(os.path.join(out, "adapter"))
    json.dump(ref, open(os.path.join(out, "reference.json"), "w"))
else:
    base = GPT2LMHeadModel.from_pretrained(sys.argv[2]).float().eval()
    model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
    print(json.dumps({"logits": logits(model)}))
