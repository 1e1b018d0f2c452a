//! The two element types the engine computes in: what the vector code needs
//! ([`SimdElement`]: activation constants, the vector of each ISA) plus what the
//! rest of the engine needs (the cache padding).

use crate::alloc::Zeroable;
use crate::simd::SimdElement;

/// `f32` or `f64`: everything the engine needs to know about an element type.
pub trait Float: SimdElement + Zeroable {
    /// Hidden sizes are padded to a multiple of this inside the engine, so every
    /// ISA's vector (at most 64 bytes) tiles a row without a remainder and a cache
    /// made under one ISA can be consumed under another.
    const PAD: usize;
}

impl Float for f32 {
    const PAD: usize = 16;
}

impl Float for f64 {
    const PAD: usize = 8;
}
