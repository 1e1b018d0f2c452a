//! Which instructions run: vectors behind one trait, one implementation per
//! ISA, the run-time choice of ISA, and the activation functions written once
//! over the trait.
//!
//! - `vector.rs`: the [`Simd`] and [`SimdElement`] traits, partial loads and stores
//! - `element.rs`: `f32` and `f64` as elements (activation constants, vector
//!   type per ISA)
//! - `scalar.rs`, `avx2.rs`, `avx512.rs`: the vectors of each ISA
//! - `isa.rs`: [`Isa`], detection, the active ISA, [`Kernel`], [`dispatch`]
//!   and [`dispatch_dq`]
//! - `activation.rs`: [`exp`], [`sigmoid`], [`tanh`]
//! - `bf16.rs`: [`Bf16`], the weight format of bf16 inference, and its rounding
//! - `bandwidth.rs`: the measured read bandwidth of one core from a buffer
//! - `peak.rs`: the measured single-core FMA peak of an ISA
//! - `wide.rs`: sums over a row, a row normalised and a normalisation's
//!   gradient row, the same bits on every ISA (the LayerNorm LSTM's
//!   normalisations)

pub mod activation;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod bandwidth;
pub mod bf16;
pub mod element;
pub mod isa;
pub mod peak;
pub mod scalar;
pub mod vector;
pub(crate) mod wide;

pub use activation::{exp, sigmoid, tanh};
pub use bf16::Bf16;
pub use isa::{dispatch, dispatch_dq, Isa, Kernel};
pub use vector::{load_n, store_n, Simd, SimdElement};
