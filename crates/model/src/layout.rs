//! The weights layout: every tensor of a model, named once. A [`Slot`] is a tensor's role (the
//! token embedding, block 3's attention projection bias, …); this module alone turns slots into
//! checkpoint names (Hugging Face's, which PEFT adapters extend) and llama.cpp's GGUF names, and
//! back. The parameter list, the training engine, the decoder, LoRA, and the HF, ONNX and GGUF
//! readers and writers all take their names from here: a tensor name spelled anywhere else is a bug.
//!
//! GPT-2's layout (HF `GPT2LMHeadModel`): `transformer.wte`, `transformer.wpe`, per block
//! `transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
//! `transformer.ln_f`, and `lm_head` when the head is not tied. Linear weights are Conv1D's
//! `(in, out)`.

use crate::GptConfig;

/// A layer norm inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// Before attention (`ln_1`).
    Attn,
    /// Before the MLP (`ln_2`).
    Mlp,
}

/// A linear layer inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Linear {
    /// Queries, keys and values in one product (`attn.c_attn`).
    AttnQkv,
    /// Attention's output projection (`attn.c_proj`).
    AttnOut,
    /// The MLP's expansion (`mlp.c_fc`).
    MlpUp,
    /// The MLP's projection back (`mlp.c_proj`).
    MlpDown,
}

/// Which tensor of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Weight,
    Bias,
}

/// A tensor's role in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    TokenEmbedding,
    PositionEmbedding,
    BlockNorm(usize, Norm, Part),
    BlockLinear(usize, Linear, Part),
    FinalNorm(Part),
    /// The output head, when it is not tied to the token embedding.
    LmHead,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::Bias => "bias",
        }
    }

    fn parse(s: &str) -> Option<Part> {
        match s {
            "weight" => Some(Part::Weight),
            "bias" => Some(Part::Bias),
            _ => None,
        }
    }
}

impl Norm {
    pub const ALL: [Norm; 2] = [Norm::Attn, Norm::Mlp];

    fn path(self) -> &'static str {
        match self {
            Norm::Attn => "ln_1",
            Norm::Mlp => "ln_2",
        }
    }

    fn gguf(self) -> &'static str {
        match self {
            Norm::Attn => "attn_norm",
            Norm::Mlp => "ffn_norm",
        }
    }
}

impl Linear {
    /// In the order of a block's forward pass.
    pub const ALL: [Linear; 4] = [Linear::AttnQkv, Linear::AttnOut, Linear::MlpUp, Linear::MlpDown];

    /// `(n_in, n_out)` for a model of width `c`.
    pub fn shape(self, c: usize) -> (usize, usize) {
        match self {
            Linear::AttnQkv => (c, 3 * c),
            Linear::AttnOut => (c, c),
            Linear::MlpUp => (c, 4 * c),
            Linear::MlpDown => (4 * c, c),
        }
    }

    /// The module's own name, as LoRA's `target_modules` name it (`c_proj` is both projections).
    pub fn module(self) -> &'static str {
        match self {
            Linear::AttnQkv => "c_attn",
            Linear::AttnOut | Linear::MlpDown => "c_proj",
            Linear::MlpUp => "c_fc",
        }
    }

    /// The residual projections (scaled at initialisation by 1/√(2·n_layer)).
    pub fn is_residual_projection(self) -> bool {
        matches!(self, Linear::AttnOut | Linear::MlpDown)
    }

    fn path(self) -> &'static str {
        match self {
            Linear::AttnQkv => "attn.c_attn",
            Linear::AttnOut => "attn.c_proj",
            Linear::MlpUp => "mlp.c_fc",
            Linear::MlpDown => "mlp.c_proj",
        }
    }

    fn gguf(self) -> &'static str {
        match self {
            Linear::AttnQkv => "attn_qkv",
            Linear::AttnOut => "attn_output",
            Linear::MlpUp => "ffn_up",
            Linear::MlpDown => "ffn_down",
        }
    }
}

/// The module names LoRA can target, each once.
pub const LORA_MODULES: [&str; 3] = ["c_attn", "c_proj", "c_fc"];

fn block(i: usize) -> String {
    format!("transformer.h.{i}")
}

/// A block's linear layer as a module path (`transformer.h.3.attn.c_attn`): its tensors are
/// `PATH.weight` and `PATH.bias`, a LoRA adapter's `PATH.lora_A.weight` and `PATH.lora_B.weight`.
pub fn linear_path(i: usize, l: Linear) -> String {
    format!("{}.{}", block(i), l.path())
}

/// A block's layer norm as a module path (`transformer.h.3.ln_1`).
pub fn norm_path(i: usize, n: Norm) -> String {
    format!("{}.{}", block(i), n.path())
}

/// The names of a LoRA adapter's two matrices on the linear layer at `path`: `(A, B)`, as PEFT
/// names them inside the model (`PATH.lora_A.weight`, `PATH.lora_B.weight`).
pub fn lora_names(path: &str) -> (String, String) {
    (format!("{path}.lora_A.weight"), format!("{path}.lora_B.weight"))
}

/// What PEFT puts before a model's own names in an adapter file
/// (`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The final layer norm's module path.
pub const FINAL_NORM: &str = "transformer.ln_f";

impl Slot {
    /// The checkpoint name (HF's).
    pub fn name(self) -> String {
        match self {
            Slot::TokenEmbedding => "transformer.wte.weight".into(),
            Slot::PositionEmbedding => "transformer.wpe.weight".into(),
            Slot::BlockNorm(i, n, p) => format!("{}.{}", norm_path(i, n), p.name()),
            Slot::BlockLinear(i, l, p) => format!("{}.{}", linear_path(i, l), p.name()),
            Slot::FinalNorm(p) => format!("{FINAL_NORM}.{}", p.name()),
            Slot::LmHead => "lm_head.weight".into(),
        }
    }

    /// The slot a checkpoint name stands for.
    pub fn from_name(name: &str) -> Option<Slot> {
        match name {
            "transformer.wte.weight" => return Some(Slot::TokenEmbedding),
            "transformer.wpe.weight" => return Some(Slot::PositionEmbedding),
            "lm_head.weight" => return Some(Slot::LmHead),
            _ => {}
        }
        if let Some(p) = name.strip_prefix("transformer.ln_f.") {
            return Part::parse(p).map(Slot::FinalNorm);
        }
        let rest = name.strip_prefix("transformer.h.")?;
        let (i, rest) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let (module, part) = rest.rsplit_once('.')?;
        let part = Part::parse(part)?;
        if let Some(n) = Norm::ALL.into_iter().find(|n| n.path() == module) {
            return Some(Slot::BlockNorm(i, n, part));
        }
        Linear::ALL
            .into_iter()
            .find(|l| l.path() == module)
            .map(|l| Slot::BlockLinear(i, l, part))
    }

    /// llama.cpp's name, and whether the matrix is stored transposed there (HF's Conv1D keeps
    /// `(in, out)`; ggml wants `(out, in)` row-major).
    pub fn gguf(self) -> (String, bool) {
        match self {
            Slot::TokenEmbedding => ("token_embd.weight".into(), false),
            Slot::PositionEmbedding => ("position_embd.weight".into(), false),
            Slot::FinalNorm(p) => (format!("output_norm.{}", p.name()), false),
            Slot::LmHead => ("output.weight".into(), false),
            Slot::BlockNorm(i, n, p) => (format!("blk.{i}.{}.{}", n.gguf(), p.name()), false),
            Slot::BlockLinear(i, l, p) => (format!("blk.{i}.{}.{}", l.gguf(), p.name()), p == Part::Weight),
        }
    }

    /// The tensor's shape in a model of `cfg`.
    pub fn shape(self, cfg: &GptConfig) -> Vec<usize> {
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        match self {
            Slot::TokenEmbedding | Slot::LmHead => vec![v, c],
            Slot::PositionEmbedding => vec![cfg.n_ctx, c],
            Slot::BlockNorm(..) | Slot::FinalNorm(_) => vec![c],
            Slot::BlockLinear(_, l, Part::Weight) => {
                let (i, o) = l.shape(c);
                vec![i, o]
            }
            Slot::BlockLinear(_, l, Part::Bias) => vec![l.shape(c).1],
        }
    }
}

/// A tensor name as other GPT-2 checkpoints write it, in this layout's terms: OpenAI's converted
/// files have no `transformer.` prefix, and their attention-mask buffers (`attn.bias` of rank 4,
/// `attn.masked_bias`) are not weights (`None`).
pub fn checkpoint_alias(name: &str, rank: usize) -> Option<String> {
    if name.ends_with(".attn.bias") && rank == 4 || name.ends_with(".attn.masked_bias") {
        return None;
    }
    Some(
        if name.starts_with("transformer.") || name == Slot::LmHead.name() {
            name.to_string()
        } else {
            format!("transformer.{name}")
        },
    )
}

/// Every tensor of a model of `cfg`, in checkpoint order: embeddings, each block's
/// `ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj` (weight, then bias when the model has
/// biases), the final norm, and the head when untied.
pub fn slots(cfg: &GptConfig) -> Vec<Slot> {
    let parts: &[Part] = if cfg.bias {
        &[Part::Weight, Part::Bias]
    } else {
        &[Part::Weight]
    };
    let mut out = vec![Slot::TokenEmbedding, Slot::PositionEmbedding];
    for i in 0..cfg.n_layer {
        let norm = |n| parts.iter().map(move |&p| Slot::BlockNorm(i, n, p));
        let linear = |l| parts.iter().map(move |&p| Slot::BlockLinear(i, l, p));
        out.extend(norm(Norm::Attn));
        out.extend(linear(Linear::AttnQkv));
        out.extend(linear(Linear::AttnOut));
        out.extend(norm(Norm::Mlp));
        out.extend(linear(Linear::MlpUp));
        out.extend(linear(Linear::MlpDown));
    }
    out.extend(parts.iter().map(|&p| Slot::FinalNorm(p)));
    if !cfg.tie_embeddings {
        out.push(Slot::LmHead);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_hf_gpt2() {
        let cfg = GptConfig {
            tie_embeddings: false,
            ..GptConfig::tiny(50)
        };
        for s in slots(&cfg) {
            assert_eq!(Slot::from_name(&s.name()), Some(s), "{}", s.name());
        }
        assert_eq!(
            Slot::BlockLinear(1, Linear::AttnQkv, Part::Weight).name(),
            "transformer.h.1.attn.c_attn.weight"
        );
        assert_eq!(
            Slot::BlockLinear(0, Linear::MlpDown, Part::Weight).gguf(),
            ("blk.0.ffn_down.weight".to_string(), true)
        );
        assert_eq!(Slot::FinalNorm(Part::Bias).gguf().0, "output_norm.bias");
        assert_eq!(Slot::from_name("transformer.h.0.attn.bias"), None);
        assert_eq!(Slot::from_name("transformer.h.x.ln_1.weight"), None);
    }
}
