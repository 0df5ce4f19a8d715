//! Which vector instructions this CPU has, detected once, and [`vectorized`]: runs a closure
//! compiled for the widest of them, so elementwise loops (GELU, softmax, layer norm) use AVX-512
//! or AVX2 where the default build would give SSE2, and the binary still runs everywhere.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// The widest instruction set this CPU runs, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// Runs `f` inside a function compiled for this CPU's widest vectors; `f` (inlined there) is
/// vectorised for them.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match isa() {
            #[allow(unsafe_code)]
            // SAFETY: `isa()` detected these features on this CPU.
            Isa::Avx512 => unsafe { avx512(f) },
            #[allow(unsafe_code)]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2(f) },
            Isa::Baseline => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f()
    }
}
