"""Reference for crates/infer/tests/metrics_parity.rs: sacreBLEU and rouge-score on the fixture pairs.

usage: metrics_reference.py PAIRS_JSONL
Prints one JSON object: corpus BLEU (sacrebleu.corpus_bleu defaults: 13a, exp smoothing) with its
precisions, brevity penalty and lengths; ROUGE-1/2/L (rouge_score.RougeScorer, no stemming) per pair
and their means.
"""
import json
import sys

import sacrebleu
from rouge_score import rouge_scorer

pairs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
hyps = [p["hypothesis"] for p in pairs]
refs = [p["reference"] for p in pairs]
b = sacrebleu.corpus_bleu(hyps, [refs])
scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
per = [scorer.score(r, h) for r, h in zip(refs, hyps)]
out = {
    "bleu": {"score": b.score, "precisions": b.precisions, "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len},
    "rouge": [{k: {"p": v.precision, "r": v.recall, "f": v.fmeasure} for k, v in s.items()} for s in per],
    "rouge_mean_f": {k: sum(s[k].fmeasure for s in per) / len(per) for k in ("rouge1", "rouge2", "rougeL")},
    "tokens_13a": [sacrebleu.BLEU().tokenizer(h) for h in hyps + refs],
}
print(json.dumps(out))
