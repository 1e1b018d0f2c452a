//! lstm_fast: batched LSTM forward and backward (full BPTT) on the CPU.
//!
//! The engine is pure Rust over slices; `python.rs` (feature `python`) is the
//! only part that knows about Python.
//!
//! - [`lstm`]: a whole sequence, one layer and direction (the public entry points)
//! - [`step`]: the fused recurrent kernels the time loop runs
//! - [`simd`]: vectors per ISA, run-time dispatch, activation functions
//! - [`gemm`], [`pack`]: the large products and the weight layouts
//! - [`threads`]: the pool, [`error`]: the error type

pub mod error;
pub mod float;
pub mod gemm;
pub mod kernel;
pub mod lstm;
pub mod pack;
pub mod simd;
pub mod step;
pub mod threads;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use float::Float;
pub use lstm::{
    backward, forward, hidden_pad, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence,
};
pub use lstm::{force_split, ForcedSplit};
pub use simd::Isa;
pub use threads::{forget_pool_after_fork, num_threads, set_num_threads};
