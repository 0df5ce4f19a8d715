//! The precision of the training engine's weight products: what a run asks for
//! ([`PrecisionSetting`]: `auto`, `f32` or `bf16`) and what it runs ([`Precision`]), chosen from
//! the CPU's features. Weights, gradients and the optimizer's state are f32 either way.

use crate::kernels::bf16;

/// The precision of a product's inputs (the sums and the result are f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Inputs rounded to bf16 ([`crate::kernels::bf16`]): twice the multiply-adds per
    /// instruction where the CPU has AVX-512 BF16.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The kernel that runs this precision's products on this CPU, for manifests and benches.
    pub fn kernel(self) -> &'static str {
        match (self, bf16::tile()) {
            (Precision::F32, _) => "gemm crate (f32)",
            (Precision::Bf16, bf16::Tile::Native) => "AVX-512 BF16",
            (Precision::Bf16, bf16::Tile::Emulated) => "bf16 emulated (no AVX-512 BF16 on this CPU)",
        }
    }
}

/// What a run asks for. In a config file `precision = "auto" | "f32" | "bf16"`, or Hugging Face
/// `TrainingArguments`' `bf16 = true | false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// bf16 where the CPU has AVX-512 BF16, f32 elsewhere.
    Auto,
    #[default]
    F32,
    /// bf16, refused on a CPU without AVX-512 BF16 (emulated products would be slower than f32).
    Bf16,
}

/// Set to `1`, `bf16` also runs on a CPU without AVX-512 BF16, on the emulated tile: the same
/// numbers as the instruction's (to f32 rounding) at f32's speed or below, to see how a bf16 run
/// would train before moving it to a machine that has the instruction (and for the tests).
pub const EMULATE_ENV: &str = "CHATFORGE_EMULATE_BF16";

impl PrecisionSetting {
    /// The precision this CPU runs for the setting, or why `bf16` cannot run here.
    pub fn resolve(self) -> Result<Precision, String> {
        let emulate = || std::env::var(EMULATE_ENV).is_ok_and(|v| v == "1");
        match self {
            PrecisionSetting::F32 => Ok(Precision::F32),
            PrecisionSetting::Auto if bf16::native() => Ok(Precision::Bf16),
            PrecisionSetting::Auto => Ok(Precision::F32),
            PrecisionSetting::Bf16 if bf16::native() || emulate() => Ok(Precision::Bf16),
            PrecisionSetting::Bf16 => Err("precision bf16 needs AVX-512 BF16 (vdpbf16ps), which this CPU \
                 does not have: emulated bf16 products would be slower than f32. Use precision f32, or \
                 auto (bf16 where the CPU has it); CHATFORGE_EMULATE_BF16=1 runs it emulated"
                .into()),
        }
    }
}

impl std::str::FromStr for PrecisionSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionSetting::Auto),
            "f32" | "fp32" | "float32" => Ok(PrecisionSetting::F32),
            "bf16" | "bfloat16" => Ok(PrecisionSetting::Bf16),
            _ => Err(format!("unknown precision {s:?} (expected auto, f32 or bf16)")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PrecisionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(PrecisionSetting::Bf16),
            Raw::Flag(false) => Ok(PrecisionSetting::F32),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_resolve_by_the_cpu() {
        let parse = |s: &str| serde_json::from_str::<PrecisionSetting>(s);
        assert_eq!(parse("\"auto\"").unwrap(), PrecisionSetting::Auto);
        assert_eq!(parse("\"bf16\"").unwrap(), PrecisionSetting::Bf16);
        assert_eq!(parse("true").unwrap(), PrecisionSetting::Bf16);
        assert_eq!(parse("false").unwrap(), PrecisionSetting::F32);
        assert!(
            parse("\"fp8\"")
                .unwrap_err()
                .to_string()
                .contains("expected auto, f32 or bf16")
        );
        assert_eq!(PrecisionSetting::F32.resolve(), Ok(Precision::F32));
        if bf16::native() {
            assert_eq!(PrecisionSetting::Auto.resolve(), Ok(Precision::Bf16));
            assert_eq!(PrecisionSetting::Bf16.resolve(), Ok(Precision::Bf16));
        } else {
            assert_eq!(PrecisionSetting::Auto.resolve(), Ok(Precision::F32));
            assert!(
                PrecisionSetting::Bf16
                    .resolve()
                    .unwrap_err()
                    .contains("AVX-512 BF16")
            );
        }
    }
}
