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
//!
//! The Llama family's (`LlamaForCausalLM`, `Qwen2ForCausalLM`): `model.embed_tokens`, per block
//! `model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
//! mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head`. Linear weights are `nn.Linear`'s
//! `(out, in)`; a model's flat order keeps q, k and v (and their biases), and gate and up, next to
//! each other, so each group is one `(out, in)` matrix the engines multiply by once.

use crate::{Arch, GptConfig};

/// A norm inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// Before attention (`ln_1`, `input_layernorm`).
    Attn,
    /// Before the MLP (`ln_2`, `post_attention_layernorm`).
    Mlp,
}

/// A linear layer inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Linear {
    /// GPT-2: queries, keys and values in one product (`attn.c_attn`).
    AttnQkv,
    /// The Llama family's queries, keys and values (`self_attn.{q,k,v}_proj`).
    Q,
    K,
    V,
    /// Attention's output projection (`attn.c_proj`, `self_attn.o_proj`).
    AttnOut,
    /// The Llama family's gate (`mlp.gate_proj`).
    Gate,
    /// The MLP's expansion (`mlp.c_fc`, `mlp.up_proj`).
    MlpUp,
    /// The MLP's projection back (`mlp.c_proj`, `mlp.down_proj`).
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
    /// GPT-2's learned positions.
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

    fn path(self, arch: Arch) -> &'static str {
        match (self, arch.is_llama()) {
            (Norm::Attn, false) => "ln_1",
            (Norm::Mlp, false) => "ln_2",
            (Norm::Attn, true) => "input_layernorm",
            (Norm::Mlp, true) => "post_attention_layernorm",
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
    /// GPT-2's, in the order of a block's forward pass.
    pub const GPT2: [Linear; 4] = [Linear::AttnQkv, Linear::AttnOut, Linear::MlpUp, Linear::MlpDown];
    /// The Llama family's, in the order of a block's forward pass (and of the flat layout).
    pub const LLAMA: [Linear; 7] = [
        Linear::Q,
        Linear::K,
        Linear::V,
        Linear::AttnOut,
        Linear::Gate,
        Linear::MlpUp,
        Linear::MlpDown,
    ];

    /// A family's linear layers, in forward order.
    pub fn of(arch: Arch) -> &'static [Linear] {
        if arch.is_llama() {
            &Linear::LLAMA
        } else {
            &Linear::GPT2
        }
    }

    /// `(n_in, n_out)` in a model of `cfg` (however the weight is stored, see [`Slot::shape`]).
    pub fn shape(self, cfg: &GptConfig) -> (usize, usize) {
        let (c, kv, inner) = (cfg.n_embd, cfg.kv_dim(), cfg.n_inner);
        match self {
            Linear::AttnQkv => (c, 3 * c),
            Linear::Q | Linear::AttnOut => (c, c),
            Linear::K | Linear::V => (c, kv),
            Linear::Gate | Linear::MlpUp => (c, inner),
            Linear::MlpDown => (inner, c),
        }
    }

    /// The module's name in a model of `arch`, as LoRA's `target_modules` name it (`c_fc` in
    /// GPT-2, `up_proj` in Llama; GPT-2's `c_proj` is both projections).
    pub fn module_in(self, arch: Arch) -> &'static str {
        match (self, arch.is_llama()) {
            (Linear::AttnQkv, _) => "c_attn",
            (Linear::AttnOut | Linear::MlpDown, false) => "c_proj",
            (Linear::MlpUp, false) => "c_fc",
            (Linear::Q, _) => "q_proj",
            (Linear::K, _) => "k_proj",
            (Linear::V, _) => "v_proj",
            (Linear::AttnOut, true) => "o_proj",
            (Linear::Gate, _) => "gate_proj",
            (Linear::MlpUp, true) => "up_proj",
            (Linear::MlpDown, true) => "down_proj",
        }
    }

    /// The residual projections (scaled at initialisation by 1/√(2·n_layer)).
    pub fn is_residual_projection(self) -> bool {
        matches!(self, Linear::AttnOut | Linear::MlpDown)
    }

    fn path(self, arch: Arch) -> String {
        let group = match (self, arch.is_llama()) {
            (Linear::AttnQkv | Linear::AttnOut, false) => "attn",
            (Linear::Q | Linear::K | Linear::V | Linear::AttnOut, _) => "self_attn",
            _ => "mlp",
        };
        format!("{group}.{}", self.module_in(arch))
    }

    fn gguf(self) -> &'static str {
        match self {
            Linear::AttnQkv => "attn_qkv",
            Linear::Q => "attn_q",
            Linear::K => "attn_k",
            Linear::V => "attn_v",
            Linear::AttnOut => "attn_output",
            Linear::Gate => "ffn_gate",
            Linear::MlpUp => "ffn_up",
            Linear::MlpDown => "ffn_down",
        }
    }

    /// The layers a LoRA target name covers in a model of `arch`: its own modules, and
    /// GPT-2's names in the Llama family (`c_attn`: q, k and v; `c_fc`: gate and up; `c_proj`:
    /// both projections), so one config serves both; `all-linear` is every one.
    pub fn targeted(name: &str, arch: Arch) -> Vec<Linear> {
        let all = Linear::of(arch);
        if name == "all-linear" {
            return all.to_vec();
        }
        let direct: Vec<Linear> = all
            .iter()
            .copied()
            .filter(|l| l.module_in(arch) == name)
            .collect();
        if !direct.is_empty() || !arch.is_llama() {
            return direct;
        }
        match name {
            "c_attn" => vec![Linear::Q, Linear::K, Linear::V],
            "c_fc" => vec![Linear::Gate, Linear::MlpUp],
            "c_proj" => vec![Linear::AttnOut, Linear::MlpDown],
            _ => Vec::new(),
        }
    }
}

/// The module names LoRA can target in a model of `arch`, each once.
pub fn lora_modules(arch: Arch) -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for l in Linear::of(arch) {
        if !out.contains(&l.module_in(arch)) {
            out.push(l.module_in(arch));
        }
    }
    out
}

fn block(i: usize, arch: Arch) -> String {
    if arch.is_llama() {
        format!("model.layers.{i}")
    } else {
        format!("transformer.h.{i}")
    }
}

/// A block's linear layer as a module path (`transformer.h.3.attn.c_attn`,
/// `model.layers.3.self_attn.q_proj`): its tensors are `PATH.weight` and `PATH.bias`, a LoRA
/// adapter's `PATH.lora_A.weight` and `PATH.lora_B.weight`.
pub fn linear_path(i: usize, l: Linear, arch: Arch) -> String {
    format!("{}.{}", block(i, arch), l.path(arch))
}

/// A block's norm as a module path (`transformer.h.3.ln_1`).
pub fn norm_path(i: usize, n: Norm, arch: Arch) -> String {
    format!("{}.{}", block(i, arch), n.path(arch))
}

/// The names of a LoRA adapter's two matrices on the linear layer at `path`: `(A, B)`, as PEFT
/// names them inside the model (`PATH.lora_A.weight`, `PATH.lora_B.weight`).
pub fn lora_names(path: &str) -> (String, String) {
    (format!("{path}.lora_A.weight"), format!("{path}.lora_B.weight"))
}

/// What PEFT puts before a model's own names in an adapter file
/// (`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The final norm's module path.
pub fn final_norm(arch: Arch) -> &'static str {
    if arch.is_llama() {
        "model.norm"
    } else {
        "transformer.ln_f"
    }
}

impl Slot {
    /// The checkpoint name (HF's) in a model of `arch`.
    pub fn name(self, arch: Arch) -> String {
        let llama = arch.is_llama();
        match self {
            Slot::TokenEmbedding if llama => "model.embed_tokens.weight".into(),
            Slot::TokenEmbedding => "transformer.wte.weight".into(),
            Slot::PositionEmbedding => "transformer.wpe.weight".into(),
            Slot::BlockNorm(i, n, p) => format!("{}.{}", norm_path(i, n, arch), p.name()),
            Slot::BlockLinear(i, l, p) => format!("{}.{}", linear_path(i, l, arch), p.name()),
            Slot::FinalNorm(p) => format!("{}.{}", final_norm(arch), p.name()),
            Slot::LmHead => "lm_head.weight".into(),
        }
    }

    /// The slot a checkpoint name stands for (the families' names do not overlap, but for the
    /// head's).
    pub fn from_name(name: &str) -> Option<Slot> {
        match name {
            "transformer.wte.weight" | "model.embed_tokens.weight" => return Some(Slot::TokenEmbedding),
            "transformer.wpe.weight" => return Some(Slot::PositionEmbedding),
            "lm_head.weight" => return Some(Slot::LmHead),
            _ => {}
        }
        let (arch, rest) = if let Some(r) = name.strip_prefix("model.") {
            (Arch::Llama, r)
        } else {
            (Arch::Gpt2, name.strip_prefix("transformer.")?)
        };
        if let Some(p) = name
            .strip_prefix(final_norm(arch))
            .and_then(|r| r.strip_prefix('.'))
        {
            return Part::parse(p).map(Slot::FinalNorm);
        }
        let rest = rest.strip_prefix(if arch.is_llama() { "layers." } else { "h." })?;
        let (i, rest) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let (module, part) = rest.rsplit_once('.')?;
        let part = Part::parse(part)?;
        if let Some(n) = Norm::ALL.into_iter().find(|n| n.path(arch) == module) {
            return Some(Slot::BlockNorm(i, n, part));
        }
        Linear::of(arch)
            .iter()
            .find(|l| l.path(arch) == module)
            .map(|&l| Slot::BlockLinear(i, l, part))
    }

    /// llama.cpp's name, and whether the matrix is stored transposed there (HF's Conv1D keeps
    /// `(in, out)`; ggml wants `(out, in)` row-major, as `nn.Linear` keeps it).
    pub fn gguf(self, arch: Arch) -> (String, bool) {
        match self {
            Slot::TokenEmbedding => ("token_embd.weight".into(), false),
            Slot::PositionEmbedding => ("position_embd.weight".into(), false),
            Slot::FinalNorm(p) => (format!("output_norm.{}", p.name()), false),
            Slot::LmHead => ("output.weight".into(), false),
            Slot::BlockNorm(i, n, p) => (format!("blk.{i}.{}.{}", n.gguf(), p.name()), false),
            Slot::BlockLinear(i, l, p) => (
                format!("blk.{i}.{}.{}", l.gguf(), p.name()),
                p == Part::Weight && !linear_out_in(arch),
            ),
        }
    }

    /// The tensor's shape in a model of `cfg`: a linear weight is `(in, out)` in GPT-2 and
    /// `(out, in)` in the Llama family ([`linear_out_in`]).
    pub fn shape(self, cfg: &GptConfig) -> Vec<usize> {
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        match self {
            Slot::TokenEmbedding | Slot::LmHead => vec![v, c],
            Slot::PositionEmbedding => vec![cfg.n_ctx, c],
            Slot::BlockNorm(..) | Slot::FinalNorm(_) => vec![c],
            Slot::BlockLinear(_, l, Part::Weight) => {
                let (i, o) = l.shape(cfg);
                if linear_out_in(cfg.arch) {
                    vec![o, i]
                } else {
                    vec![i, o]
                }
            }
            Slot::BlockLinear(_, l, Part::Bias) => vec![l.shape(cfg).1],
        }
    }
}

/// Whether a family stores a linear weight `(out, in)` (`nn.Linear`) rather than `(in, out)`
/// (GPT-2's Conv1D).
/// A block's products as both engines compute them, in order: attention's input (queries, keys
/// and values side by side), attention's output, the MLP's expansion (the Llama family's gate and
/// up side by side) and the MLP's projection back; each lists its layers in column order.
pub fn products(arch: Arch) -> [&'static [Linear]; 4] {
    if arch.is_llama() {
        [
            &[Linear::Q, Linear::K, Linear::V],
            &[Linear::AttnOut],
            &[Linear::Gate, Linear::MlpUp],
            &[Linear::MlpDown],
        ]
    } else {
        [
            &[Linear::AttnQkv],
            &[Linear::AttnOut],
            &[Linear::MlpUp],
            &[Linear::MlpDown],
        ]
    }
}

pub fn linear_out_in(arch: Arch) -> bool {
    arch.is_llama()
}

/// A tensor name as other GPT-2 checkpoints write it, in this layout's terms: OpenAI's converted
/// files have no `transformer.` prefix, and their attention-mask buffers (`attn.bias` of rank 4,
/// `attn.masked_bias`) are not weights (`None`). The Llama family's rotary buffers
/// (`rotary_emb.inv_freq`, kept by older checkpoints) are not weights either.
pub fn checkpoint_alias(name: &str, rank: usize) -> Option<String> {
    if name.ends_with(".attn.bias") && rank == 4
        || name.ends_with(".attn.masked_bias")
        || name.ends_with(".rotary_emb.inv_freq")
    {
        return None;
    }
    Some(
        if name.starts_with("transformer.") || name.starts_with("model.") || name == "lm_head.weight" {
            name.to_string()
        } else {
            format!("transformer.{name}")
        },
    )
}

/// Every tensor of a model of `cfg`, in the flat order: GPT-2's embeddings, each block's
/// `ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj` (weight, then bias when the model has
/// biases), the final norm, and the head when untied; the Llama family's embedding, each block's
/// `input_layernorm, q, k, v (weights, then biases), o, post_attention_layernorm, gate, up,
/// down`, the final norm and the head when untied.
pub fn slots(cfg: &GptConfig) -> Vec<Slot> {
    if cfg.arch.is_llama() {
        return llama_slots(cfg);
    }
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

fn llama_slots(cfg: &GptConfig) -> Vec<Slot> {
    let mut out = vec![Slot::TokenEmbedding];
    for i in 0..cfg.n_layer {
        let lin = |l| Slot::BlockLinear(i, l, Part::Weight);
        out.push(Slot::BlockNorm(i, Norm::Attn, Part::Weight));
        out.extend([lin(Linear::Q), lin(Linear::K), lin(Linear::V)]);
        if cfg.bias {
            out.extend([Linear::Q, Linear::K, Linear::V].map(|l| Slot::BlockLinear(i, l, Part::Bias)));
        }
        out.push(lin(Linear::AttnOut));
        out.push(Slot::BlockNorm(i, Norm::Mlp, Part::Weight));
        out.extend([lin(Linear::Gate), lin(Linear::MlpUp), lin(Linear::MlpDown)]);
    }
    out.push(Slot::FinalNorm(Part::Weight));
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
        for cfg in [
            cfg,
            GptConfig {
                tie_embeddings: false,
                ..GptConfig::llama_tiny(50)
            },
            GptConfig {
                arch: Arch::Qwen2,
                bias: true,
                ..GptConfig::llama_tiny(50)
            },
        ] {
            for s in slots(&cfg) {
                let name = s.name(cfg.arch);
                assert_eq!(Slot::from_name(&name), Some(s), "{name}");
            }
        }
        let g = Arch::Gpt2;
        assert_eq!(
            Slot::BlockLinear(0, Linear::Gate, Part::Weight).name(Arch::Llama),
            "model.layers.0.mlp.gate_proj.weight"
        );
        assert_eq!(
            Slot::BlockNorm(2, Norm::Mlp, Part::Weight).name(Arch::Qwen2),
            "model.layers.2.post_attention_layernorm.weight"
        );
        assert_eq!(
            Linear::targeted("c_fc", Arch::Llama),
            [Linear::Gate, Linear::MlpUp]
        );
        assert_eq!(Linear::targeted("c_proj", g), [Linear::AttnOut, Linear::MlpDown]);
        assert_eq!(
            Slot::BlockLinear(1, Linear::AttnQkv, Part::Weight).name(g),
            "transformer.h.1.attn.c_attn.weight"
        );
        assert_eq!(
            Slot::BlockLinear(0, Linear::MlpDown, Part::Weight).gguf(g),
            ("blk.0.ffn_down.weight".to_string(), true)
        );
        assert_eq!(Slot::FinalNorm(Part::Bias).gguf(g).0, "output_norm.bias");
        assert_eq!(Slot::from_name("transformer.h.0.attn.bias"), None);
        assert_eq!(Slot::from_name("transformer.h.x.ln_1.weight"), None);
    }
}
