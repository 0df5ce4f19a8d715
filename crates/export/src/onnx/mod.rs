//! ONNX export of the decoder with a KV cache, in the input/output layout Optimum and ONNX Runtime
//! GenAI use for GPT-2: inputs `input_ids`, `attention_mask` (past + new tokens), `position_ids` and
//! `past_key_values.{i}.key|value` `(batch, heads, past, head_dim)`; outputs `logits` and
//! `present.{i}.key|value`. Opset 17 (`LayerNormalization`), dynamic batch and sequence axes. Written
//! with prost from the schema's field numbers; no Python in the path.

mod llama;
mod verify;

use chatforge_model::layout::{Linear, Norm, Part, Slot};
use std::path::Path;

use chatforge_model::{Activation, Arch, GptConfig, Weights};
use prost::Message;

use crate::{Error, Result, io_err};
use chatforge_model::io::onnx::{
    AttributeProto, DimValue, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
    attr_type, dtype,
};

pub mod run;

pub use verify::{OnnxSummary, verify};

pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;
/// Protobuf messages cannot exceed 2 GB: past this, weights go to `model.onnx.data`.
const INLINE_LIMIT: usize = 1 << 31;
/// Offsets in the external data file are aligned for memory mapping.
const EXTERNAL_ALIGN: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
pub struct OnnxOptions {
    /// Linear layers as `DynamicQuantizeLinear` + `MatMulInteger` over int8 weights (per output
    /// column scales); the output head stays f32.
    pub int8: bool,
    /// Weights in `model.onnx.data` even when the model is under 2 GB.
    pub external_data: bool,
}

/// Builds a graph: named values, nodes in order, initializers.
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}

fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn tensor(name: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type,
        name: name.into(),
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Builder {
    /// Adds a node with one output, returned.
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.next += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.next);
        self.op_into(op, inputs, attrs, &[&out]);
        out
    }

    /// Adds a node with named outputs.
    fn op_into(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, outputs: &[&str]) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("{}_{}", op, self.nodes.len()),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
    }

    fn init(&mut self, name: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> String {
        self.inits.push(tensor(name, data_type, dims, raw));
        name.to_string()
    }

    fn weight(&mut self, w: &Weights, name: &str) -> Result<String> {
        let t = w
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("the model has no tensor {name}")))?;
        Ok(self.init(name, dtype::FLOAT, t.dims(), f32_bytes(t.data())))
    }

    /// An integer constant, added once however often it is asked for.
    fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        if !self.inits.iter().any(|t| t.name == name) {
            let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.init(name, dtype::INT64, &[v.len()], raw);
        }
        name.to_string()
    }

    /// Block `i`'s keys and values `(B, H, T, d)` appended to its cache: `present.{i}.*` from
    /// `past_key_values.{i}.*`.
    fn cache(&mut self, i: usize, k: &str, v: &str) -> (String, String) {
        let (ck, cv) = (format!("present.{i}.key"), format!("present.{i}.value"));
        for (kind, new, out) in [("key", k, &ck), ("value", v, &cv)] {
            let past = format!("past_key_values.{i}.{kind}");
            self.op_into("Concat", &[&past, new], vec![attr_i("axis", 2)], &[out]);
        }
        (ck, cv)
    }

    /// A scalar constant, added once however often it is asked for.
    fn const_f32(&mut self, name: &str, v: f32) -> String {
        if !self.inits.iter().any(|t| t.name == name) {
            self.init(name, dtype::FLOAT, &[], v.to_le_bytes().to_vec());
        }
        name.to_string()
    }

    fn layer_norm(
        &mut self,
        w: &Weights,
        x: &str,
        slot: &dyn Fn(Part) -> Slot,
        eps: f32,
        bias: bool,
    ) -> Result<String> {
        let g = self.weight(w, &slot(Part::Weight).name(Arch::Gpt2))?;
        let mut inputs = vec![x.to_string(), g];
        if bias {
            inputs.push(self.weight(w, &slot(Part::Bias).name(Arch::Gpt2))?);
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.op(
            "LayerNormalization",
            &refs,
            vec![attr_i("axis", -1), attr_f("epsilon", eps)],
        ))
    }

    /// `x W + b` for block `layer`'s `which` linear (an HF Conv1D weight `(in, out)`), in f32 or
    /// int8.
    fn linear(
        &mut self,
        w: &Weights,
        x: &str,
        layer: usize,
        which: Linear,
        bias: bool,
        int8: bool,
    ) -> Result<String> {
        let slot = |p| Slot::BlockLinear(layer, which, p);
        let name = slot(Part::Weight).name(Arch::Gpt2);
        let y = if int8 {
            let t = w
                .get(&name)
                .ok_or_else(|| Error::Invalid(format!("the model has no tensor {name}")))?;
            let (n_in, n_out) = (t.dims()[0], t.dims()[1]);
            let v = t.data();
            // Symmetric per output column: q = round(w / s), s = max|w| / 127.
            let mut scale = vec![0f32; n_out];
            for row in v.chunks(n_out) {
                for (s, &x) in scale.iter_mut().zip(row) {
                    *s = s.max(x.abs());
                }
            }
            scale
                .iter_mut()
                .for_each(|s| *s = if *s > 0.0 { *s / 127.0 } else { 1.0 });
            let q: Vec<u8> = v
                .iter()
                .enumerate()
                .map(|(i, &x)| (x / scale[i % n_out]).round().clamp(-127.0, 127.0) as i8 as u8)
                .collect();
            let wq = self.init(&format!("{name}.int8"), dtype::INT8, &[n_in, n_out], q);
            let ws = self.init(
                &format!("{name}.scale"),
                dtype::FLOAT,
                &[n_out],
                f32_bytes(&scale),
            );
            let wz = self.init(
                &format!("{name}.zero_point"),
                dtype::INT8,
                &[n_out],
                vec![0; n_out],
            );
            self.next += 1;
            let (xq, xs, xz) = (
                format!("{name}.x_q_{}", self.next),
                format!("{name}.x_scale_{}", self.next),
                format!("{name}.x_zero_point_{}", self.next),
            );
            self.op_into("DynamicQuantizeLinear", &[x], vec![], &[&xq, &xs, &xz]);
            let acc = self.op("MatMulInteger", &[&xq, &wq, &xz, &wz], vec![]);
            let acc = self.op("Cast", &[&acc], vec![attr_i("to", i64::from(dtype::FLOAT))]);
            let s = self.op("Mul", &[&xs, &ws], vec![]);
            self.op("Mul", &[&acc, &s], vec![])
        } else {
            let wt = self.weight(w, &name)?;
            self.op("MatMul", &[x, &wt], vec![])
        };
        if bias {
            let b = self.weight(w, &slot(Part::Bias).name(Arch::Gpt2))?;
            Ok(self.op("Add", &[&y, &b], vec![]))
        } else {
            Ok(y)
        }
    }

    fn gelu(&mut self, x: &str, activation: Activation) -> String {
        let half = self.const_f32("const.half", 0.5);
        let one = self.const_f32("const.one_f", 1.0);
        let inner = match activation {
            // 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
            Activation::GeluTanh => {
                let c = self.const_f32("const.gelu_c", 0.044_715);
                let k = self.const_f32("const.gelu_k", (2.0 / std::f32::consts::PI).sqrt());
                let x2 = self.op("Mul", &[x, x], vec![]);
                let x3 = self.op("Mul", &[&x2, x], vec![]);
                let cx3 = self.op("Mul", &[&x3, &c], vec![]);
                let s = self.op("Add", &[x, &cx3], vec![]);
                let ks = self.op("Mul", &[&s, &k], vec![]);
                self.op("Tanh", &[&ks], vec![])
            }
            // 0.5 x (1 + erf(x / √2))
            Activation::GeluErf => {
                let r = self.const_f32("const.rsqrt2", std::f32::consts::FRAC_1_SQRT_2);
                let xs = self.op("Mul", &[x, &r], vec![]);
                self.op("Erf", &[&xs], vec![])
            }
            // `build` refuses the Llama family's gated MLP before any node is made.
            Activation::Silu => return x.to_string(),
        };
        let p = self.op("Add", &[&inner, &one], vec![]);
        let hx = self.op("Mul", &[x, &half], vec![]);
        self.op("Mul", &[&hx, &p], vec![])
    }
}

fn value_info(name: &str, elem: i32, dims: &[DimValue]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn sym(s: &str) -> DimValue {
    DimValue::DimParam(s.into())
}

fn fixed(n: usize) -> DimValue {
    DimValue::DimValue(n as i64)
}

/// The additive attention mask `(B, 1, T, S)` computed in the graph: key `j` is visible to query
/// `i` (at absolute position `P + i`, after `P` cached tokens) when `j ≤ P + i` and
/// `attention_mask[b, j]` is 1; 0 where visible, −1e9 elsewhere.
fn attention_bias(g: &mut Builder) -> String {
    let zero = g.const_i64("const.zero", &[0]);
    let one = g.const_i64("const.one", &[1]);
    let two = g.const_i64("const.two", &[2]);
    let past_shape = g.op("Shape", &["past_key_values.0.key"], vec![]);
    let p = g.op("Gather", &[&past_shape, &two], vec![attr_i("axis", 0)]); // [1]
    let ids_shape = g.op("Shape", &["input_ids"], vec![]);
    let t = g.op("Gather", &[&ids_shape, &one], vec![attr_i("axis", 0)]); // [1]
    let s = g.op("Add", &[&p, &t], vec![]);
    let scalar = |g: &mut Builder, v: &str| g.op("Squeeze", &[v, &zero], vec![]);
    let (p0, s0, one0) = (scalar(g, &p), scalar(g, &s), scalar(g, &one));
    let zero0 = scalar(g, &zero);
    let q_pos = g.op("Range", &[&p0, &s0, &one0], vec![]); // [T]
    let k_pos = g.op("Range", &[&zero0, &s0, &one0], vec![]); // [S]
    let q_col = g.op("Unsqueeze", &[&q_pos, &one], vec![]); // [T, 1]
    let k_row = g.op("Unsqueeze", &[&k_pos, &zero], vec![]); // [1, S]
    let causal = g.op("LessOrEqual", &[&k_row, &q_col], vec![]); // [T, S]
    let pad = g.op(
        "Cast",
        &["attention_mask"],
        vec![attr_i("to", i64::from(dtype::BOOL))],
    );
    let axes12 = g.const_i64("const.axes12", &[1, 2]);
    let pad = g.op("Unsqueeze", &[&pad, &axes12], vec![]); // [B, 1, 1, S]
    let allowed = g.op("And", &[&causal, &pad], vec![]); // [B, 1, T, S]
    let zero_f = g.const_f32("const.zero_f", 0.0);
    let neg = g.const_f32("const.neg", -1e9);
    g.op("Where", &[&allowed, &zero_f, &neg], vec![])
}

/// The graph's inputs and outputs, named and shaped as Optimum's decoder exports.
fn graph_io(cfg: &GptConfig) -> (Vec<ValueInfoProto>, Vec<ValueInfoProto>) {
    // The cache holds the key/value heads.
    let (h, d) = (cfg.n_kv_head, cfg.head_dim());
    let mut inputs = vec![
        value_info(
            "input_ids",
            dtype::INT64,
            &[sym("batch_size"), sym("sequence_length")],
        ),
        value_info(
            "attention_mask",
            dtype::INT64,
            &[sym("batch_size"), sym("total_sequence_length")],
        ),
        value_info(
            "position_ids",
            dtype::INT64,
            &[sym("batch_size"), sym("sequence_length")],
        ),
    ];
    let mut outputs = vec![value_info(
        "logits",
        dtype::FLOAT,
        &[sym("batch_size"), sym("sequence_length"), fixed(cfg.vocab_size)],
    )];
    for i in 0..cfg.n_layer {
        for kv in ["key", "value"] {
            inputs.push(value_info(
                &format!("past_key_values.{i}.{kv}"),
                dtype::FLOAT,
                &[sym("batch_size"), fixed(h), sym("past_sequence_length"), fixed(d)],
            ));
            outputs.push(value_info(
                &format!("present.{i}.{kv}"),
                dtype::FLOAT,
                &[
                    sym("batch_size"),
                    fixed(h),
                    sym("total_sequence_length"),
                    fixed(d),
                ],
            ));
        }
    }
    (inputs, outputs)
}

/// The decoder graph for `cfg` with `w` (HF names, f32).
fn build(cfg: &GptConfig, w: &Weights, opts: OnnxOptions) -> Result<ModelProto> {
    let mut g = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        next: 0,
    };
    if cfg.arch.is_llama() {
        if opts.int8 {
            return Err(Error::Invalid(format!(
                "int8 ONNX export of {} models is not supported yet: export f32",
                cfg.arch.name()
            )));
        }
        llama::build(&mut g, cfg, w)?;
    } else {
        gpt2(&mut g, cfg, w, opts)?;
    }
    let (h, d) = (cfg.n_head, cfg.head_dim());
    let (inputs, outputs) = graph_io(cfg);
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "chatforge".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{} decoder with KV cache (chatforge export)", cfg.arch.name()),
        graph: Some(GraphProto {
            node: g.nodes,
            name: format!("chatforge_{}", cfg.arch.name()),
            initializer: g.inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        metadata_props: [
            ("num_layers", cfg.n_layer.to_string()),
            ("num_heads", h.to_string()),
            ("num_key_value_heads", cfg.n_kv_head.to_string()),
            ("head_size", d.to_string()),
            (
                "quantization",
                if opts.int8 { "int8" } else { "none" }.to_string(),
            ),
        ]
        .into_iter()
        .map(|(key, value)| StringStringEntryProto {
            key: key.into(),
            value,
        })
        .collect(),
    })
}

/// GPT-2's decoder graph: nodes and initializers in `g`.
fn gpt2(g: &mut Builder, cfg: &GptConfig, w: &Weights, opts: OnnxOptions) -> Result<()> {
    let (c, h) = (cfg.n_embd, cfg.n_head);
    let d = cfg.head_dim();
    let eps = cfg.layer_norm_eps as f32;
    // Embeddings.
    let wte = g.weight(w, &Slot::TokenEmbedding.name(Arch::Gpt2))?;
    let wpe = g.weight(w, &Slot::PositionEmbedding.name(Arch::Gpt2))?;
    let tok = g.op("Gather", &[&wte, "input_ids"], vec![attr_i("axis", 0)]);
    let pos = g.op("Gather", &[&wpe, "position_ids"], vec![attr_i("axis", 0)]);
    let mut x = g.op("Add", &[&tok, &pos], vec![]);

    let bias = attention_bias(g);

    let split = g.const_i64("const.split", &[c as i64, c as i64, c as i64]);
    let heads_shape = g.const_i64("const.heads_shape", &[0, 0, h as i64, d as i64]);
    let merge_shape = g.const_i64("const.merge_shape", &[0, 0, c as i64]);
    let scale = g.const_f32("const.attn_scale", 1.0 / (d as f32).sqrt());
    for i in 0..cfg.n_layer {
        let hdn = g.layer_norm(w, &x, &|p| Slot::BlockNorm(i, Norm::Attn, p), eps, cfg.bias)?;
        let qkv = g.linear(w, &hdn, i, Linear::AttnQkv, cfg.bias, opts.int8)?;
        let (q, k, v) = (format!("q_{i}"), format!("k_{i}"), format!("v_{i}"));
        g.op_into("Split", &[&qkv, &split], vec![attr_i("axis", 2)], &[&q, &k, &v]);
        let heads = |g: &mut Builder, z: &str| {
            let r = g.op("Reshape", &[z, &heads_shape], vec![]);
            g.op("Transpose", &[&r], vec![attr_ints("perm", &[0, 2, 1, 3])])
        };
        let (q, k, v) = (heads(g, &q), heads(g, &k), heads(g, &v));
        let (ck, cv) = g.cache(i, &k, &v);
        let kt = g.op("Transpose", &[&ck], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let scores = g.op("MatMul", &[&q, &kt], vec![]);
        let scores = g.op("Mul", &[&scores, &scale], vec![]);
        let scores = g.op("Add", &[&scores, &bias], vec![]);
        let probs = g.op("Softmax", &[&scores], vec![attr_i("axis", -1)]);
        let y = g.op("MatMul", &[&probs, &cv], vec![]);
        let y = g.op("Transpose", &[&y], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let y = g.op("Reshape", &[&y, &merge_shape], vec![]);
        let y = g.linear(w, &y, i, Linear::AttnOut, cfg.bias, opts.int8)?;
        x = g.op("Add", &[&x, &y], vec![]);
        let hdn = g.layer_norm(w, &x, &|p| Slot::BlockNorm(i, Norm::Mlp, p), eps, cfg.bias)?;
        let m = g.linear(w, &hdn, i, Linear::MlpUp, cfg.bias, opts.int8)?;
        let m = g.gelu(&m, cfg.activation);
        let m = g.linear(w, &m, i, Linear::MlpDown, cfg.bias, opts.int8)?;
        x = g.op("Add", &[&x, &m], vec![]);
    }
    let x = g.layer_norm(w, &x, &Slot::FinalNorm, eps, cfg.bias)?;
    let head = if cfg.tie_embeddings {
        wte
    } else {
        g.weight(w, &Slot::LmHead.name(Arch::Gpt2))?
    };
    let head_t = g.op("Transpose", &[&head], vec![attr_ints("perm", &[1, 0])]);
    g.op_into("MatMul", &[&x, &head_t], vec![], &["logits"]);
    Ok(())
}

/// Writes `model.onnx` (and `model.onnx.data` when the weights go outside) into `dir`.
pub fn write_onnx(cfg: &GptConfig, w: &Weights, opts: OnnxOptions, dir: &Path) -> Result<()> {
    let mut model = build(cfg, w, opts)?;
    let total: usize = model
        .graph
        .as_ref()
        .map_or(0, |g| g.initializer.iter().map(|t| t.raw_data.len()).sum());
    if opts.external_data || total >= INLINE_LIMIT - (64 << 20) {
        let data_path = dir.join("model.onnx.data");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&data_path).map_err(io_err(&data_path))?);
        let mut offset = 0usize;
        for t in model.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
            // Small tensors (shapes, scalars) stay inline.
            if t.raw_data.len() < 1024 {
                continue;
            }
            let pad = (EXTERNAL_ALIGN - offset % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
            std::io::Write::write_all(&mut f, &vec![0u8; pad]).map_err(io_err(&data_path))?;
            offset += pad;
            let raw = std::mem::take(&mut t.raw_data);
            std::io::Write::write_all(&mut f, &raw).map_err(io_err(&data_path))?;
            t.data_location = 1;
            t.external_data = vec![
                StringStringEntryProto {
                    key: "location".into(),
                    value: "model.onnx.data".into(),
                },
                StringStringEntryProto {
                    key: "offset".into(),
                    value: offset.to_string(),
                },
                StringStringEntryProto {
                    key: "length".into(),
                    value: raw.len().to_string(),
                },
            ];
            offset += raw.len();
        }
        std::io::Write::flush(&mut f).map_err(io_err(&data_path))?;
    }
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).map_err(io_err(&path))
}
