//! Preference tuning's objectives on a micro-batch of pairs: DPO (Rafailov et al. 2023, the sigmoid
//! loss with conservative label smoothing) and ORPO (Hong et al. 2024, reference-free), as TRL
//! computes them, with TRL's metric names. The engine gives each position's log-probability of
//! its target ([`chatforge_model::engine::TrainEngine::forward_logps`]); this module sums them per
//! sequence, computes the loss, its metrics and the loss's derivative by each log-probability,
//! which the engine's backward takes ([`chatforge_model::engine::TrainEngine::backward_logps`]).

use serde::{Deserialize, Serialize};

/// What preference tuning optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// DPO against a reference model's log-probabilities: `−(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)`,
    /// `Δ` the chosen reply's log-ratio to the reference minus the rejected one's.
    Dpo { beta: f64, label_smoothing: f64 },
    /// ORPO: the chosen sequence's negative log-likelihood minus `λ·logσ(log odds ratio)` of the
    /// replies' mean token log-probabilities (`beta` is λ).
    Orpo { beta: f64 },
}

/// The layout of a micro-batch of pairs: each position's sequence in the batch (`u32::MAX` on
/// padding), whether its target belongs to the reply (the loss mask), and the sequences' count.
/// Sequences `2k` and `2k + 1` are pair `k`'s chosen and rejected sequences.
#[derive(Debug, Clone, Copy)]
pub struct Pairs<'a> {
    pub seqs: &'a [u32],
    pub reply: &'a [u8],
    pub n_seqs: usize,
}

/// A micro-batch's metrics, named as TRL logs them; means over its pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefMetrics {
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    /// ORPO: the chosen sequences' mean negative log-likelihood, the mean `logσ(log odds)` and
    /// the mean log odds ratio.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nll_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log_odds_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log_odds_chosen: Option<f64>,
}

impl PrefMetrics {
    /// Adds one pair's rewards and log-probabilities to the sums (divided by the pairs later).
    fn add_pair(&mut self, chosen: f64, rejected: f64, (logp_c, logp_r): (f64, f64)) {
        self.rewards_chosen += chosen;
        self.rewards_rejected += rejected;
        self.rewards_accuracies += f64::from(u8::from(chosen > rejected));
        self.rewards_margins += chosen - rejected;
        self.logps_chosen += logp_c;
        self.logps_rejected += logp_r;
    }

    /// The mean of several micro-batches' metrics, weighted by their pairs.
    pub fn mean(parts: &[(PrefMetrics, usize)]) -> PrefMetrics {
        let total: usize = parts.iter().map(|p| p.1).sum();
        if total == 0 {
            return PrefMetrics::default();
        }
        let avg = |f: fn(&PrefMetrics) -> f64| {
            parts.iter().map(|(m, n)| f(m) * *n as f64).sum::<f64>() / total as f64
        };
        let avg_opt = |f: fn(&PrefMetrics) -> Option<f64>| {
            parts
                .iter()
                .map(|(m, n)| f(m).map(|x| x * *n as f64))
                .sum::<Option<f64>>()
                .map(|s| s / total as f64)
        };
        PrefMetrics {
            rewards_chosen: avg(|m| m.rewards_chosen),
            rewards_rejected: avg(|m| m.rewards_rejected),
            rewards_accuracies: avg(|m| m.rewards_accuracies),
            rewards_margins: avg(|m| m.rewards_margins),
            logps_chosen: avg(|m| m.logps_chosen),
            logps_rejected: avg(|m| m.logps_rejected),
            nll_loss: avg_opt(|m| m.nll_loss),
            log_odds_ratio: avg_opt(|m| m.log_odds_ratio),
            log_odds_chosen: avg_opt(|m| m.log_odds_chosen),
        }
    }
}

/// One micro-batch's loss, metrics and pairs, and `coef[i]`: the loss's derivative by position
/// `i`'s log-probability, times `scale`.
#[derive(Debug, Clone)]
pub struct PrefOutcome {
    pub loss: f64,
    pub metrics: PrefMetrics,
    pub pairs: usize,
    pub coef: Vec<f32>,
}

/// Sums of the reply's log-probabilities per sequence, and the reply's token counts.
pub fn reply_logps(logps: &[f32], p: &Pairs<'_>) -> (Vec<f64>, Vec<usize>) {
    let (mut sums, mut counts) = (vec![0f64; p.n_seqs], vec![0usize; p.n_seqs]);
    for ((&s, &r), &lp) in p.seqs.iter().zip(p.reply).zip(logps) {
        if r == 1 && (s as usize) < p.n_seqs {
            sums[s as usize] += f64::from(lp);
            counts[s as usize] += 1;
        }
    }
    (sums, counts)
}

fn log_sigmoid(x: f64) -> f64 {
    // log σ(x) = −log(1 + e^{−x}), without overflow for large |x|.
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 − e^x)` for `x < 0`, accurate on both sides of `−ln 2`.
fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

/// The objective on one micro-batch. `logps` are the engine's per-position log-probabilities
/// (of every real target: ORPO's likelihood term covers the prompt too, as TRL's does);
/// `reference` holds each pair's reference log-probabilities `(chosen, rejected)` for DPO.
pub fn evaluate(
    obj: Objective,
    logps: &[f32],
    p: &Pairs<'_>,
    reference: &[(f64, f64)],
    scale: f64,
) -> PrefOutcome {
    let (sums, counts) = reply_logps(logps, p);
    let n_pairs = p.n_seqs / 2;
    let mut coef = vec![0f32; logps.len()];
    // d loss / d (sequence s's reply log-probability), and the same for every target of a
    // chosen sequence (ORPO's likelihood term).
    let mut d_reply = vec![0f64; p.n_seqs];
    let mut d_all_chosen = 0f64;
    let mut m = PrefMetrics::default();
    let mut loss = 0f64;
    let np = n_pairs.max(1) as f64;
    match obj {
        Objective::Dpo {
            beta,
            label_smoothing: eps,
        } => {
            for k in 0..n_pairs {
                let (c, r) = (sums[2 * k], sums[2 * k + 1]);
                let (rc, rr) = reference.get(k).copied().unwrap_or((0.0, 0.0));
                let z = beta * ((c - rc) - (r - rr));
                loss += -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
                let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
                d_reply[2 * k] = scale * beta * dz / np;
                d_reply[2 * k + 1] = -scale * beta * dz / np;
                m.add_pair(beta * (c - rc), beta * (r - rr), (c, r));
            }
            loss /= np;
        }
        Objective::Orpo { beta } => {
            // The chosen sequences' mean negative log-likelihood over all their targets.
            let (mut nll, mut n_nll) = (0f64, 0usize);
            for (i, &s) in p.seqs.iter().enumerate() {
                if (s as usize) < p.n_seqs && s.is_multiple_of(2) {
                    nll -= f64::from(logps[i]);
                    n_nll += 1;
                }
            }
            let n_nll = n_nll.max(1) as f64;
            nll /= n_nll;
            d_all_chosen = -scale / n_nll;
            let (mut ratio_sum, mut odds_sum) = (0f64, 0f64);
            for k in 0..n_pairs {
                let (nc, nr) = (counts[2 * k].max(1) as f64, counts[2 * k + 1].max(1) as f64);
                let (ac, ar) = (sums[2 * k] / nc, sums[2 * k + 1] / nr);
                let odds = (ac - ar) - (log1mexp(ac) - log1mexp(ar));
                let ratio = log_sigmoid(odds);
                ratio_sum += ratio;
                odds_sum += odds;
                // loss −= β·ratio / pairs; d odds/d ac = 1/(1 − e^ac), d odds/d ar = −1/(1 − e^ar).
                let d_odds = -beta * sigmoid(-odds) / np;
                d_reply[2 * k] = scale * d_odds / (-ac.exp_m1()) / nc;
                d_reply[2 * k + 1] = -scale * d_odds / (-ar.exp_m1()) / nr;
                m.add_pair(beta * ac, beta * ar, (ac, ar));
            }
            loss = nll - beta * ratio_sum / np;
            m.nll_loss = Some(nll);
            m.log_odds_ratio = Some(ratio_sum / np);
            m.log_odds_chosen = Some(odds_sum / np);
        }
    }
    for f in [
        &mut m.rewards_chosen,
        &mut m.rewards_rejected,
        &mut m.rewards_accuracies,
        &mut m.rewards_margins,
        &mut m.logps_chosen,
        &mut m.logps_rejected,
    ] {
        *f /= np;
    }
    for (i, (&s, &r)) in p.seqs.iter().zip(p.reply).enumerate() {
        let s = s as usize;
        if s >= p.n_seqs {
            continue;
        }
        let mut g = if r == 1 { d_reply[s] } else { 0.0 };
        if s.is_multiple_of(2) {
            g += d_all_chosen;
        }
        coef[i] = g as f32;
    }
    PrefOutcome {
        loss,
        metrics: m,
        pairs: n_pairs,
        coef,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivatives by each log-probability against central differences of the loss.
    #[test]
    fn coefficients_are_the_loss_derivatives() {
        // Two pairs over 10 positions: seqs 0..4, prompts (reply 0) and replies (reply 1).
        let seqs = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3];
        let reply = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1];
        let p = Pairs {
            seqs: &seqs,
            reply: &reply,
            n_seqs: 4,
        };
        let logps: Vec<f32> = (0..10).map(|i| -0.3 - 0.17 * i as f32).collect();
        let reference = [(-1.5, -2.0), (-2.2, -1.1)];
        for obj in [
            Objective::Dpo {
                beta: 0.1,
                label_smoothing: 0.0,
            },
            Objective::Dpo {
                beta: 0.5,
                label_smoothing: 0.2,
            },
            Objective::Orpo { beta: 0.3 },
        ] {
            let out = evaluate(obj, &logps, &p, &reference, 1.0);
            for i in 0..10 {
                let h = 1e-3;
                let at = |d: f32| {
                    let mut l = logps.clone();
                    l[i] += d;
                    evaluate(obj, &l, &p, &reference, 1.0).loss
                };
                let numeric = (at(h) - at(-h)) / (2.0 * f64::from(h));
                assert!(
                    (numeric - f64::from(out.coef[i])).abs() < 1e-4,
                    "{obj:?} position {i}: {numeric} vs {}",
                    out.coef[i]
                );
            }
        }
    }

    #[test]
    fn metrics_mean_weights_by_pairs() {
        let a = PrefMetrics {
            rewards_accuracies: 1.0,
            ..Default::default()
        };
        let b = PrefMetrics::default();
        assert_eq!(PrefMetrics::mean(&[(a, 3), (b, 1)]).rewards_accuracies, 0.75);
    }
}
