"""Reference for crates/infer/tests/llama_lora.rs: LoRA adapters with PEFT on a tiny random Llama.

usage: peft_llama.py make OUT_DIR     writes OUT_DIR/base (HF folder: grouped-query attention, 4 query
                                      heads over 2 key/value heads), OUT_DIR/adapter (PEFT LoRA with random A
                                      and B on all seven linear layers) and OUT_DIR/reference.json (input ids,
                                      logits of the base and of base + adapter, the adapted model's loss of
                                      predicting ids[1:] and the gradient of every adapter matrix)
       peft_llama.py check BASE ADAPTER   prints {"logits": …} of PeftModel.from_pretrained(base, adapter)
All in float32 on the CPU.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
torch.set_num_threads(2)
IDS = torch.tensor([[5, 17, 42, 96, 3, 64, 8, 23, 77, 1, 50, 12], [7, 7, 30, 2, 88, 41, 0, 90, 19, 5, 6, 60]])


def logits(m):
    with torch.no_grad():
        return m(IDS).logits.flatten().tolist()


if sys.argv[1] == "make":
    out = sys.argv[2]
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, rope_theta=10000.0)
    base = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_((0.3 if p.ndim > 1 else 0.1) * torch.randn_like(p))
    base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    ref = {"ids": IDS.tolist(), "base": logits(base)}
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, lcfg).eval()
    ref["adapted"] = logits(model)
    out_logits = model(IDS).logits
    loss = torch.nn.functional.cross_entropy(out_logits[:, :-1].reshape(-1, cfg.vocab_size), IDS[:, 1:].reshape(-1))
    loss.backward()
    ref["loss"] = loss.item()
    ref["grads"] = {n.replace("base_model.model.", "").replace(".default", ""): p.grad.flatten().tolist()
                    for n, p in model.named_parameters() if p.requires_grad}
    model.save_pretrained(os.path.join(out, "adapter"))
    json.dump(ref, open(os.path.join(out, "reference.json"), "w"))
else:
    base = LlamaForCausalLM.from_pretrained(sys.argv[2]).float().eval()
    model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
    print(json.dumps({"logits": logits(model)}))
