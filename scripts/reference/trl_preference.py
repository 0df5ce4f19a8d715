"""Reference for crates/train/tests/preference_parity.rs: TRL's DPO and ORPO on a tiny random Llama.

usage: trl_preference.py OUT_DIR
Writes OUT_DIR/policy/ and OUT_DIR/reference/ (HF folders of two tiny random Llama models) and
OUT_DIR/preference.json: three pairs (prompt, chosen and rejected token ids) and, for each case,
TRL's loss and metrics on one batch of them and PyTorch autograd's gradient of that loss by every
parameter of the policy. Cases: DPO (TRL's DPOTrainer, sigmoid loss, reference model), DPO with
label smoothing (the conservative-DPO formula, on TRL's log-probabilities; TRL's sigmoid loss no
longer smooths) and ORPO (trl.experimental's ORPOTrainer). All float32 on the CPU.
"""
import json
import os
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
out = sys.argv[1]
V = 97

cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0)


def model(seed):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for p in m.parameters():
            p.add_((0.2 if p.ndim > 1 else 0.05) * torch.randn_like(p))
    return m


policy, ref = model(0), model(1)
policy.save_pretrained(os.path.join(out, "policy"), safe_serialization=True)
ref.save_pretrained(os.path.join(out, "reference"), safe_serialization=True)

# A word-level tokenizer: text "w5 w17 </s>" is ids [5, 17, 1].
SPECIAL = {0: "<unk>", 1: "</s>", 2: "<pad>"}
word = lambda i: SPECIAL.get(i, f"w{i}")
tok = Tokenizer(models.WordLevel({word(i): i for i in range(V)}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
EOS = 1
pairs = [
    ([5, 17, 42, 9], [33, 64, 8, EOS], [12, 70, EOS]),
    ([7, 30], [60, 61, 62, 63, 90, 3, EOS], [88, 41, 19, 5, EOS]),
    ([11, 22, 44, 55, 66], [13, EOS], [14, 15, EOS]),
]
text = lambda ids: " ".join(word(i) for i in ids)
data = Dataset.from_list([{"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)}
                          for p, c, r in pairs])
result = {"pairs": [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs], "cases": {}}


def grads_of(m):
    return {n: p.grad.detach().flatten().tolist() for n, p in m.named_parameters()}


tmp = tempfile.mkdtemp()
common = dict(output_dir=tmp, per_device_train_batch_size=3, report_to=[], use_cpu=True,
              max_length=None, dataloader_num_workers=0, bf16=False)

# DPO: TRL's loss on the collated batch of the three pairs.
for name, beta in [("dpo", 0.1)]:
    trainer = DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(beta=beta, **common),
                         train_dataset=data, processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(pairs))]
    assert [r["prompt_ids"] for r in rows] == [p for p, _, _ in pairs], rows
    assert [r["chosen_ids"] for r in rows] == [c for _, c, _ in pairs], rows
    inputs = trainer.data_collator(rows)
    policy.train()
    policy.zero_grad()
    loss = trainer._compute_loss(policy, inputs, False)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
               if k.startswith(("rewards/", "logps/"))}
    result["cases"][name] = {"beta": beta, "label_smoothing": 0.0, "loss": loss.item(),
                             "metrics": metrics, "grads": grads_of(policy)}

    # The same batch's per-sequence log-probabilities, for the smoothed loss and the reference's.
    mask = inputs["completion_mask"][:, 1:].float()
    labels = inputs["input_ids"][:, 1:]

    def seq_logps(m):
        logits = m(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
        lp = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
        return (lp * mask).sum(1)

    with torch.no_grad():
        ref_logps = seq_logps(ref)
    n = len(pairs)
    result["reference_logps"] = {"chosen": ref_logps[:n].tolist(), "rejected": ref_logps[n:].tolist()}
    eps, beta = 0.2, 0.5
    policy.zero_grad()
    logps = seq_logps(policy)
    z = beta * ((logps[:n] - ref_logps[:n]) - (logps[n:] - ref_logps[n:]))
    smoothed = (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()
    smoothed.backward()
    result["cases"]["dpo_smoothed"] = {"beta": beta, "label_smoothing": eps, "loss": smoothed.item(),
                                       "grads": grads_of(policy)}

# ORPO: trl.experimental's loss and metrics on the same pairs, collated as its trainer collates.
beta = 0.25
trainer = ORPOTrainer(model=policy, args=ORPOConfig(beta=beta, max_length=64, **{
    k: v for k, v in common.items() if k != "max_length"}), train_dataset=data, processing_class=tokenizer)
L = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
batch = {}
for side, k in [("chosen", 1), ("rejected", 2)]:
    ids, att, lab = [], [], []
    for pair in pairs:
        p, reply = pair[0], pair[k]
        seq = p + reply
        pad = L - len(seq)
        ids.append(seq + [2] * pad)
        att.append([1] * len(seq) + [0] * pad)
        lab.append([-100] * len(p) + reply + [-100] * pad)
    batch[f"{side}_input_ids"] = torch.tensor(ids)
    batch[f"{side}_attention_mask"] = torch.tensor(att)
    batch[f"{side}_labels"] = torch.tensor(lab)
policy.train()
policy.zero_grad()
loss, metrics = trainer.get_batch_loss_metrics(policy, batch)
loss.backward()
keep = ("rewards/", "logps/", "nll_loss", "log_odds_ratio", "log_odds_chosen")
result["cases"]["orpo"] = {"beta": beta, "loss": loss.item(),
                           "metrics": {k: v for k, v in metrics.items() if k.startswith(keep)},
                           "grads": grads_of(policy)}

with open(os.path.join(out, "preference.json"), "w") as f:
    json.dump(result, f)
print("trl", __import__("trl").__version__)
