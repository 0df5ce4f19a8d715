//! A reference interpreter for ONNX graphs built from the operators chatforge's decoder export
//! uses (and nothing else): it runs the graph node by node, as written, with ONNX's broadcasting
//! rules, so `export verify` checks what the graph computes, not only how it is put together.
//! It is plain and slow (loops, f32), meant for a few tokens on small models.

use std::collections::HashMap;
use std::path::Path;

use chatforge_model::io::onnx::{
    AttributeProto, ModelProto, NodeProto, TensorProto, dtype, initializer_bytes,
};

use crate::{Error, Result};

/// A tensor: its shape and its elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Arr<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// A value of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    F32(Arr<f32>),
    I64(Arr<i64>),
    I32(Arr<i32>),
    Bool(Arr<bool>),
    U8(Arr<u8>),
    I8(Arr<i8>),
}

fn bad(msg: String) -> Error {
    Error::Invalid(format!("running the ONNX graph: {msg}"))
}

impl Value {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Value {
        Value::F32(Arr { shape, data })
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Value {
        Value::I64(Arr { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F32(a) => &a.shape,
            Value::I64(a) => &a.shape,
            Value::I32(a) => &a.shape,
            Value::Bool(a) => &a.shape,
            Value::U8(a) => &a.shape,
            Value::I8(a) => &a.shape,
        }
    }

    pub fn as_f32(&self) -> Result<&Arr<f32>> {
        match self {
            Value::F32(a) => Ok(a),
            other => Err(bad(format!(
                "expected floats, got {:?}",
                std::mem::discriminant(other)
            ))),
        }
    }

    fn as_i64(&self) -> Result<&Arr<i64>> {
        match self {
            Value::I64(a) => Ok(a),
            other => Err(bad(format!(
                "expected int64, got {:?}",
                std::mem::discriminant(other)
            ))),
        }
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The broadcast of two shapes (numpy rules).
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(bad(format!("shapes {a:?} and {b:?} do not broadcast"))),
            }
        })
        .collect()
}

/// For each element of `out`, the flat index into a tensor of `shape` broadcast to it.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let off = out.len() - shape.len();
    let ost = strides(out);
    (0..numel(out))
        .map(|flat| {
            let mut idx = 0;
            for (d, (&dim, &s)) in shape.iter().zip(&st).enumerate() {
                let coord = flat / ost[d + off] % out[d + off];
                if dim != 1 {
                    idx += coord * s;
                }
            }
            idx
        })
        .collect()
}

fn zip_with<A: Copy, B: Copy, C>(a: &Arr<A>, b: &Arr<B>, f: impl Fn(A, B) -> C) -> Result<Arr<C>> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let (ia, ib) = (
        broadcast_index(&a.shape, &shape),
        broadcast_index(&b.shape, &shape),
    );
    let data = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| f(a.data[i], b.data[j]))
        .collect();
    Ok(Arr { shape, data })
}

fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r.max(1)).contains(&x) {
        Ok(x as usize)
    } else {
        Err(bad(format!("axis {a} out of range for rank {rank}")))
    }
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

/// An initializer as a value.
fn tensor_value(file: &Path, t: &TensorProto) -> Result<Value> {
    let raw = initializer_bytes(file, t).map_err(|e| bad(e.to_string()))?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let chunks = |n: usize| raw.chunks_exact(n);
    Ok(match t.data_type {
        dtype::FLOAT => Value::f32(shape, chatforge_model::io::f32s_le(&raw)),
        dtype::INT64 => Value::i64(
            shape,
            chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        dtype::INT8 => Value::I8(Arr {
            shape,
            data: raw.iter().map(|&b| b as i8).collect(),
        }),
        dtype::UINT8 => Value::U8(Arr {
            shape,
            data: raw.clone(),
        }),
        other => return Err(bad(format!("initializer {} has type {other}", t.name))),
    })
}

/// Runs `model` (its weights beside `file`) on `inputs`; returns the graph's outputs.
pub fn run(
    model: &ModelProto,
    file: &Path,
    inputs: HashMap<String, Value>,
) -> Result<HashMap<String, Value>> {
    let graph = model.graph.as_ref().ok_or_else(|| bad("no graph".into()))?;
    let mut env = inputs;
    for t in &graph.initializer {
        env.insert(t.name.clone(), tensor_value(file, t)?);
    }
    for node in &graph.node {
        let args: Vec<&Value> = node
            .input
            .iter()
            .map(|i| {
                env.get(i)
                    .ok_or_else(|| bad(format!("{} reads {i}, which is not defined", node.name)))
            })
            .collect::<Result<_>>()?;
        let outs = eval(node, &args).map_err(|e| bad(format!("{} ({}): {e}", node.name, node.op_type)))?;
        for (name, v) in node.output.iter().zip(outs) {
            env.insert(name.clone(), v);
        }
    }
    graph
        .output
        .iter()
        .map(|o| {
            env.remove(&o.name)
                .map(|v| (o.name.clone(), v))
                .ok_or_else(|| bad(format!("output {} was not computed", o.name)))
        })
        .collect()
}

fn eval(n: &NodeProto, a: &[&Value]) -> Result<Vec<Value>> {
    let arg = |i: usize| a.get(i).copied().ok_or_else(|| bad(format!("input {i} missing")));
    let one = |v: Value| Ok(vec![v]);
    match n.op_type.as_str() {
        "Div" => one(Value::F32(zip_with(
            arg(0)?.as_f32()?,
            arg(1)?.as_f32()?,
            |p, q| p / q,
        )?)),
        "Add" | "Mul" => {
            let add = n.op_type == "Add";
            match (arg(0)?, arg(1)?) {
                (Value::F32(x), Value::F32(y)) => {
                    one(Value::F32(zip_with(
                        x,
                        y,
                        |p, q| if add { p + q } else { p * q },
                    )?))
                }
                (Value::I64(x), Value::I64(y)) => {
                    one(Value::I64(zip_with(
                        x,
                        y,
                        |p, q| if add { p + q } else { p * q },
                    )?))
                }
                _ => Err(bad("mixed types".into())),
            }
        }
        "And" => match (arg(0)?, arg(1)?) {
            (Value::Bool(x), Value::Bool(y)) => one(Value::Bool(zip_with(x, y, |p, q| p && q)?)),
            _ => Err(bad("And takes booleans".into())),
        },
        "LessOrEqual" => one(Value::Bool(zip_with(
            arg(0)?.as_i64()?,
            arg(1)?.as_i64()?,
            |p, q| p <= q,
        )?)),
        "Where" => {
            let Value::Bool(c) = arg(0)? else {
                return Err(bad("Where's condition is not boolean".into()));
            };
            let (x, y) = (arg(1)?.as_f32()?, arg(2)?.as_f32()?);
            let shape = broadcast(&broadcast(&c.shape, &x.shape)?, &y.shape)?;
            let (ic, ix, iy) = (
                broadcast_index(&c.shape, &shape),
                broadcast_index(&x.shape, &shape),
                broadcast_index(&y.shape, &shape),
            );
            let data = (0..numel(&shape))
                .map(|k| {
                    if c.data[ic[k]] {
                        x.data[ix[k]]
                    } else {
                        y.data[iy[k]]
                    }
                })
                .collect();
            one(Value::f32(shape, data))
        }
        "Tanh" | "Erf" | "Sqrt" | "Sigmoid" => {
            let x = arg(0)?.as_f32()?;
            let f: fn(f32) -> f32 = match n.op_type.as_str() {
                "Tanh" => f32::tanh,
                "Sqrt" => f32::sqrt,
                "Sigmoid" => |v| 1.0 / (1.0 + (-v).exp()),
                _ => erf,
            };
            one(Value::f32(
                x.shape.clone(),
                x.data.iter().map(|&v| f(v)).collect(),
            ))
        }
        "Shape" => one(Value::i64(
            vec![arg(0)?.shape().len()],
            arg(0)?.shape().iter().map(|&d| d as i64).collect(),
        )),
        "Cast" => cast(arg(0)?, attr_i(n, "to", 0)).map(|v| vec![v]),
        "Gather" => gather(arg(0)?, arg(1)?.as_i64()?, attr_i(n, "axis", 0)).map(|v| vec![v]),
        "Squeeze" | "Unsqueeze" => {
            let v = arg(0)?;
            let axes = &arg(1)?.as_i64()?.data;
            let shape = v.shape().to_vec();
            let new = if n.op_type == "Squeeze" {
                let ax: Vec<usize> = axes
                    .iter()
                    .map(|&x| axis(x, shape.len()))
                    .collect::<Result<_>>()?;
                shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            } else {
                let rank = shape.len() + axes.len();
                let ax: Vec<usize> = axes.iter().map(|&x| axis(x, rank)).collect::<Result<_>>()?;
                let mut it = shape.iter();
                (0..rank)
                    .map(|i| {
                        if ax.contains(&i) {
                            1
                        } else {
                            *it.next().unwrap_or(&1)
                        }
                    })
                    .collect()
            };
            one(reshaped(v, new))
        }
        "Reshape" => {
            let v = arg(0)?;
            let spec = &arg(1)?.as_i64()?.data;
            let mut shape: Vec<usize> = spec
                .iter()
                .enumerate()
                .map(|(i, &s)| if s == 0 { v.shape()[i] } else { s.max(0) as usize })
                .collect();
            if let Some(k) = spec.iter().position(|&s| s == -1) {
                let rest: usize = shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != k)
                    .map(|(_, &d)| d)
                    .product();
                shape[k] = numel(v.shape()) / rest.max(1);
            }
            if numel(&shape) != numel(v.shape()) {
                return Err(bad(format!("cannot reshape {:?} to {shape:?}", v.shape())));
            }
            one(reshaped(v, shape))
        }
        "Range" => {
            let s = |i: usize| -> Result<i64> {
                arg(i)?
                    .as_i64()?
                    .data
                    .first()
                    .copied()
                    .ok_or_else(|| bad("empty scalar".into()))
            };
            let (start, limit, delta) = (s(0)?, s(1)?, s(2)?);
            if delta <= 0 {
                return Err(bad("Range needs a positive delta here".into()));
            }
            let data: Vec<i64> = (start..limit).step_by(delta as usize).collect();
            one(Value::i64(vec![data.len()], data))
        }
        "Transpose" => {
            let x = arg(0)?.as_f32()?;
            let perm: Vec<usize> = attr(n, "perm")
                .map(|p| p.ints.iter().map(|&i| i as usize).collect())
                .unwrap_or_else(|| (0..x.shape.len()).rev().collect());
            one(Value::F32(transpose(x, &perm)))
        }
        "Concat" => concat(a, attr_i(n, "axis", 0)).map(|v| vec![v]),
        "Split" => {
            let x = arg(0)?.as_f32()?;
            let ax = axis(attr_i(n, "axis", 0), x.shape.len())?;
            let sizes = &arg(1)?.as_i64()?.data;
            let mut from = 0;
            sizes
                .iter()
                .map(|&s| {
                    let v = slice(x, ax, from, from + s as usize);
                    from += s as usize;
                    Ok(Value::F32(v))
                })
                .collect()
        }
        "MatMul" => one(Value::F32(matmul(arg(0)?.as_f32()?, arg(1)?.as_f32()?)?)),
        "Softmax" => {
            let x = arg(0)?.as_f32()?;
            if axis(attr_i(n, "axis", -1), x.shape.len())? + 1 != x.shape.len() {
                return Err(bad("Softmax over the last axis only".into()));
            }
            let last = *x.shape.last().unwrap_or(&1);
            let mut data = x.data.clone();
            for row in data.chunks_mut(last.max(1)) {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - m).exp();
                    sum += *v;
                }
                row.iter_mut().for_each(|v| *v /= sum);
            }
            one(Value::f32(x.shape.clone(), data))
        }
        "LayerNormalization" => {
            let x = arg(0)?.as_f32()?;
            let g = arg(1)?.as_f32()?;
            let b = a.get(2).map(|v| v.as_f32()).transpose()?;
            let eps = attr(n, "epsilon").map_or(1e-5, |a| a.f);
            let c = *x.shape.last().unwrap_or(&1);
            let mut data = x.data.clone();
            for row in data.chunks_mut(c.max(1)) {
                let mean = row.iter().sum::<f32>() / c as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (*v - mean) * inv * g.data[j] + b.map_or(0.0, |b| b.data[j]);
                }
            }
            one(Value::f32(x.shape.clone(), data))
        }
        "DynamicQuantizeLinear" => {
            let x = arg(0)?.as_f32()?;
            let (lo, hi) = x
                .data
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
            let q = x
                .data
                .iter()
                .map(|&v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8)
                .collect();
            Ok(vec![
                Value::U8(Arr {
                    shape: x.shape.clone(),
                    data: q,
                }),
                Value::f32(vec![], vec![scale]),
                Value::U8(Arr {
                    shape: vec![],
                    data: vec![zp as u8],
                }),
            ])
        }
        "MatMulInteger" => {
            let (Value::U8(x), Value::I8(w)) = (arg(0)?, arg(1)?) else {
                return Err(bad("MatMulInteger takes uint8 × int8 here".into()));
            };
            let xz = match arg(2)? {
                Value::U8(z) => i32::from(z.data.first().copied().unwrap_or(0)),
                _ => return Err(bad("a uint8 zero point".into())),
            };
            let wz: Vec<i32> = match arg(3)? {
                Value::I8(z) => z.data.iter().map(|&v| i32::from(v)).collect(),
                _ => return Err(bad("an int8 zero point".into())),
            };
            let xf = Arr {
                shape: x.shape.clone(),
                data: x.data.iter().map(|&v| (i32::from(v) - xz) as f32).collect(),
            };
            let cols = *w.shape.last().unwrap_or(&1);
            let wf = Arr {
                shape: w.shape.clone(),
                data: w
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        (i32::from(v) - wz.get(i % cols).or(wz.first()).copied().unwrap_or(0)) as f32
                    })
                    .collect(),
            };
            let y = matmul(&xf, &wf)?;
            // Exact in f32 for these sizes (|sum| < 2^24 for widths below ~260).
            one(Value::I32(Arr {
                shape: y.shape,
                data: y.data.iter().map(|&v| v.round() as i32).collect(),
            }))
        }
        other => Err(bad(format!(
            "operator {other} is not one chatforge's exports use"
        ))),
    }
}

fn erf(x: f32) -> f32 {
    chatforge_model::kernels::fast_math::erf(x)
}

fn reshaped(v: &Value, shape: Vec<usize>) -> Value {
    match v {
        Value::F32(a) => Value::F32(Arr {
            shape,
            data: a.data.clone(),
        }),
        Value::I64(a) => Value::I64(Arr {
            shape,
            data: a.data.clone(),
        }),
        Value::I32(a) => Value::I32(Arr {
            shape,
            data: a.data.clone(),
        }),
        Value::Bool(a) => Value::Bool(Arr {
            shape,
            data: a.data.clone(),
        }),
        Value::U8(a) => Value::U8(Arr {
            shape,
            data: a.data.clone(),
        }),
        Value::I8(a) => Value::I8(Arr {
            shape,
            data: a.data.clone(),
        }),
    }
}

fn cast(v: &Value, to: i64) -> Result<Value> {
    Ok(match (v, to as i32) {
        (Value::I64(a), dtype::BOOL) => Value::Bool(Arr {
            shape: a.shape.clone(),
            data: a.data.iter().map(|&x| x != 0).collect(),
        }),
        (Value::I32(a), dtype::FLOAT) => {
            Value::f32(a.shape.clone(), a.data.iter().map(|&x| x as f32).collect())
        }
        (Value::I64(a), dtype::FLOAT) => {
            Value::f32(a.shape.clone(), a.data.iter().map(|&x| x as f32).collect())
        }
        (v @ Value::F32(_), dtype::FLOAT) => v.clone(),
        _ => return Err(bad(format!("Cast to type {to} from this input"))),
    })
}

fn gather(data: &Value, idx: &Arr<i64>, ax: i64) -> Result<Value> {
    let shape = data.shape().to_vec();
    let ax = axis(ax, shape.len())?;
    let (outer, dim, inner) = (numel(&shape[..ax]), shape[ax], numel(&shape[ax + 1..]));
    let picks: Vec<usize> = idx
        .data
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + dim as i64 } else { i };
            if (0..dim as i64).contains(&j) {
                Ok(j as usize)
            } else {
                Err(bad(format!("index {i} out of range {dim}")))
            }
        })
        .collect::<Result<_>>()?;
    let mut out_shape = shape[..ax].to_vec();
    out_shape.extend(&idx.shape);
    out_shape.extend(&shape[ax + 1..]);
    fn take<T: Copy>(d: &[T], outer: usize, dim: usize, inner: usize, picks: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * picks.len() * inner);
        for o in 0..outer {
            for &p in picks {
                out.extend_from_slice(&d[(o * dim + p) * inner..(o * dim + p + 1) * inner]);
            }
        }
        out
    }
    Ok(match data {
        Value::F32(a) => Value::f32(out_shape, take(&a.data, outer, dim, inner, &picks)),
        Value::I64(a) => Value::i64(out_shape, take(&a.data, outer, dim, inner, &picks)),
        _ => return Err(bad("Gather of this type".into())),
    })
}

fn transpose(x: &Arr<f32>, perm: &[usize]) -> Arr<f32> {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let (ist, ost) = (strides(&x.shape), strides(&shape));
    let data = (0..numel(&shape))
        .map(|flat| {
            let src: usize = perm
                .iter()
                .enumerate()
                .map(|(d, &p)| (flat / ost[d] % shape[d]) * ist[p])
                .sum();
            x.data[src]
        })
        .collect();
    Arr { shape, data }
}

fn slice(x: &Arr<f32>, ax: usize, from: usize, to: usize) -> Arr<f32> {
    let (outer, dim, inner) = (numel(&x.shape[..ax]), x.shape[ax], numel(&x.shape[ax + 1..]));
    let mut data = Vec::with_capacity(outer * (to - from) * inner);
    for o in 0..outer {
        data.extend_from_slice(&x.data[(o * dim + from) * inner..(o * dim + to) * inner]);
    }
    let mut shape = x.shape.clone();
    shape[ax] = to - from;
    Arr { shape, data }
}

fn concat(vals: &[&Value], ax: i64) -> Result<Value> {
    let first = vals.first().ok_or_else(|| bad("Concat of nothing".into()))?;
    let rank = first.shape().len();
    let ax = axis(ax, rank)?;
    let outer = numel(&first.shape()[..ax]);
    let mut shape = first.shape().to_vec();
    shape[ax] = vals.iter().map(|v| v.shape()[ax]).sum();
    macro_rules! join {
        ($variant:ident) => {{
            let parts: Vec<&Arr<_>> = vals
                .iter()
                .map(|v| match v {
                    Value::$variant(a) => Ok(a),
                    _ => Err(bad("Concat of mixed types".into())),
                })
                .collect::<Result<_>>()?;
            let mut data = Vec::with_capacity(numel(&shape));
            for o in 0..outer {
                for p in &parts {
                    let chunk = numel(&p.shape[ax..]);
                    data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
                }
            }
            Value::$variant(Arr { shape, data })
        }};
    }
    Ok(match first {
        Value::F32(_) => join!(F32),
        Value::I64(_) => join!(I64),
        _ => return Err(bad("Concat of this type".into())),
    })
}

/// numpy `matmul`: `(…, M, K) × (…, K, N)`, batch dimensions broadcast.
fn matmul(x: &Arr<f32>, y: &Arr<f32>) -> Result<Arr<f32>> {
    let (xr, yr) = (x.shape.len(), y.shape.len());
    if xr < 2 || yr < 2 {
        return Err(bad("MatMul of vectors".into()));
    }
    let (m, k, n) = (x.shape[xr - 2], x.shape[xr - 1], y.shape[yr - 1]);
    if y.shape[yr - 2] != k {
        return Err(bad(format!("MatMul {:?} × {:?}", x.shape, y.shape)));
    }
    let batch = broadcast(&x.shape[..xr - 2], &y.shape[..yr - 2])?;
    let (bx, by) = (
        broadcast_index(&x.shape[..xr - 2], &batch),
        broadcast_index(&y.shape[..yr - 2], &batch),
    );
    let mut data = vec![0f32; numel(&batch) * m * n];
    for (b, out) in data.chunks_mut((m * n).max(1)).enumerate().take(numel(&batch)) {
        let xs = &x.data[bx[b] * m * k..(bx[b] + 1) * m * k];
        let ys = &y.data[by[b] * k * n..(by[b] + 1) * k * n];
        for i in 0..m {
            for p in 0..k {
                let a = xs[i * k + p];
                for (o, &w) in out[i * n..(i + 1) * n].iter_mut().zip(&ys[p * n..(p + 1) * n]) {
                    *o += a * w;
                }
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Arr { shape, data })
}
