"""Reference for crates/model/tests/llama_parity.rs: tiny random Llama-family models from transformers.

usage: llama_parity.py OUT_DIR
For each variant (Llama with a tied head and grouped-query attention, 4 query heads over 2 key/value
heads; Llama with an untied head and Llama 3 rope scaling; Qwen2 with q/k/v biases and GQA; Llama in
bf16) writes OUT_DIR/VARIANT/ (an HF folder) and OUT_DIR/VARIANT.json: the input ids, the logits, the
loss of predicting ids[1:] from ids[:-1], every parameter's gradient, and 24 greedy tokens from a
prompt (transformers' generate with its KV cache), all computed in float32 on the CPU.
"""
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

torch.set_num_threads(2)
out = sys.argv[1]

common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5, attention_dropout=0.0)
VARIANTS = {
    "llama_tied": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True, rope_theta=10000.0), "float32"),
    "llama3_untied": (LlamaConfig, LlamaForCausalLM, dict(
        tie_word_embeddings=False, rope_theta=500000.0, num_key_value_heads=4,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}), "float32"),
    "qwen2_bias": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True, rope_theta=1000000.0,
                                                       use_sliding_window=False), "float32"),
    "llama_bf16": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True, rope_theta=10000.0), "bfloat16"),
}
ids = torch.tensor([[5, 17, 42, 96, 3, 64, 8, 23, 77, 1, 50, 12], [7, 7, 30, 2, 88, 41, 0, 90, 19, 5, 6, 60]])
prompt = torch.tensor([[31, 7, 12, 64, 5, 21, 88, 17, 42, 3]])

for seed, (name, (Config, Model, extra, dtype)) in enumerate(VARIANTS.items()):
    torch.manual_seed(seed)
    cfg = Config(**{**common, **extra})
    model = Model(cfg).float().eval()
    # Larger weights than the default init: a peaked next-token distribution (greedy decoding does
    # not hinge on near-ties), and norms and biases away from their initial values.
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.3 if p.ndim > 1 else 0.1) * torch.randn_like(p))
    folder = os.path.join(out, name)
    if dtype == "bfloat16":
        # Loaded back as a user would: the stored bf16 weights, computed in float32 (casting the
        # model in memory would round its rotary frequencies too).
        model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
        model = Model.from_pretrained(folder, dtype=torch.float32).eval()
    else:
        model.save_pretrained(folder, safe_serialization=True)
    model.zero_grad()
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.detach().flatten().tolist() for n, p in model.named_parameters()}
    # No end-of-sequence: min_new_tokens would otherwise forbid its id, which plain argmax allows.
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        g = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=24, min_new_tokens=24, pad_token_id=0)
    ref = {"ids": ids.tolist(), "logits": logits.detach().flatten().tolist(), "loss": loss.item(),
           "grads": grads, "prompt": prompt[0].tolist(), "greedy": g[0, prompt.shape[1]:].tolist()}
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(ref, f)
print("ok")
