//! A tensor as the model's files hold it: a shape and its f32 values, row-major. Everything that
//! computes works on plain slices ([`crate::engine`], the decoder); this type only carries named
//! weights between files, the layout and the engines.

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// `data` in `shape`; an error when their sizes disagree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Config(format!("tensor shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(Error::Config(format!(
                "tensor shape {shape:?} holds {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn elem_count(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// A matrix transposed (`(r, c)` → `(c, r)`); other ranks are returned as they are.
    pub fn t(&self) -> Tensor {
        let [r, c] = self.shape[..] else {
            return self.clone();
        };
        let mut out = vec![0f32; r * c];
        for (i, row) in self.data.chunks_exact(c.max(1)).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                out[j * r + i] = x;
            }
        }
        Tensor {
            shape: vec![c, r],
            data: out,
        }
    }
}

/// IEEE half precision to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1F);
    let man = u32::from(h & 0x3FF);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((m << shift) & 0x3FF) << 13)
        }
        (0x1F, m) => sign | 0x7F80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE half precision, rounding to nearest even (overflow to ±inf, NaN kept NaN).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xFF) as i32;
    let man = bits & 0x7F_FFFF;
    if exp == 0xFF {
        return sign | 0x7C00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1F {
        return sign | 0x7C00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal half: shift the mantissa (with its implicit 1) into place, rounding.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut q = m >> shift;
        if rest > half || (rest == half && q & 1 == 1) {
            q += 1;
        }
        return sign | q as u16;
    }
    let mut q = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1FFF;
    if rest > 0x1000 || (rest == 0x1000 && q & 1 == 1) {
        q += 1; // a carry into the exponent is the correct rounding (up to inf)
    }
    sign | q as u16
}

/// f32 to bfloat16, rounding to nearest even (NaN kept NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0 | ((x.to_bits() >> 16) as u16 & 0x8000);
    }
    let b = u64::from(x.to_bits());
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// bfloat16 to f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips_and_rounds_to_nearest_even() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#06x} → {x}");
            }
        }
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f32_to_f16(65520.0), 0x7C00, "rounds up to inf");
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3C00, "a tie goes to even");
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3C02, "a tie goes to even");
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
    }

    #[test]
    fn a_shape_must_hold_the_data() {
        assert!(Tensor::new([2, 3], vec![0.0; 5]).is_err());
        let t = Tensor::new([2, 3], (0..6).map(|x| x as f32).collect()).unwrap();
        assert_eq!(t.t().data(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(t.t().dims(), &[3, 2]);
    }
}
