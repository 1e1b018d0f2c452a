//! lstm_fast: batched LSTM forward and backward (full BPTT) on the CPU.
//!
//! The engine is pure Rust over slices; `python.rs` (feature `python`) is the
//! only part that knows about Python. Its layers are folders, and imports
//! point down this map, never back up (no two files import each other;
//! docs/design.md, "Layers"):
//!
//! ```text
//! the public sequence API
//!   lstm.rs           forward(), backward(): one layer, one direction, a whole sequence
//!   check.rs          the checks of their arguments
//!   sequence.rs       what a pass takes and gives: Dims, Sequence, Cache, Outputs, ...
//!   variant.rs        Variant, Activation: the gate math of the LSTM variants
//!   layernorm.rs      the LayerNorm LSTM's forward and backward (its own path)
//! kernels/          what one thread computes
//!   forward_step.rs   one chunk's forward time loop, fused with the gate math
//!   backward_step.rs  one chunk's backward time loop, fused with the derivatives
//!   microkernel.rs    the register tiles: mrxnv_accumulate, rows_x4v_kblocked, row_x4pv
//!   gemm.rs           the large products, split by rows
//!   pack.rs           the weight layouts, PanelCache (packed once for many calls)
//!   layout.rs         where every (step, row) lives
//! parallel/         how threads share a call
//!   split.rs          batch or hidden split, chunks of rows, running the members
//!   barrier.rs        the barrier a team meets at every step, team health
//!   pool.rs           the rayon pool and its team lock (Workers), thread count
//!   warm.rs           workers kept awake between short team calls made close together
//! float.rs          Float: SimdElement + cache padding
//! simd/             which instructions run
//!   isa.rs            Isa, detection, the active ISA, Kernel + dispatch
//!   activation.rs     exp, sigmoid, tanh
//!   peak.rs           the measured FMA peak of one core
//!   bandwidth.rs      the measured read bandwidth of one core from a buffer
//!   element.rs        f32 and f64: activation constants, vector type per ISA
//!   scalar.rs avx2.rs avx512.rs   the vectors of each ISA
//!   vector.rs         the Simd and SimdElement traits, partial loads/stores
//! tuning.rs         every tuning constant, with its reason
//! alloc.rs          every buffer the engine allocates, fallibly
//! setting.rs        a choice among an enum's values read once from the environment
//! cancel.rs         Cancel: asks a running pass to stop
//! error.rs          Error, Result
//! ```
//!
//! `parallel/` sits below `kernels/` although it decides more: a kernel meets
//! its team at parallel's barrier and a large product asks whether it runs in
//! the pool, while `parallel/` runs any closure and knows no kernel.

pub mod alloc;
pub mod cancel;
pub mod check;
pub mod checkpoint;
pub mod error;
pub mod float;
pub mod kernels;
pub mod layernorm;
pub mod lstm;
pub mod masks;
pub mod parallel;
pub mod sequence;
pub mod setting;
pub mod simd;
pub mod tuning;
pub mod variant;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod tests;

/// Large blocks start on a cache line: see [`alloc::LineAligned`].
#[global_allocator]
static ALLOCATOR: alloc::LineAligned = alloc::LineAligned;

pub use cancel::Cancel;
pub use checkpoint::{
    backward_checkpointed, backward_checkpointed_ln, checkpoint_len, forward_checkpointed,
    forward_checkpointed_ln,
};
pub use error::{Error, Result};
pub use float::Float;
pub use kernels::pack::PanelCache;
pub use lstm::{backward, forward};
pub use masks::ZoneoutDraws;
#[doc(hidden)]
pub use parallel::barrier::{last_team_stats, TeamStats};
#[doc(hidden)]
pub use parallel::pool::hold_pool_lock;
pub use parallel::pool::{
    env_num_threads, forget_pool_after_fork, num_threads, set_num_threads, threads_out_of_range,
};
pub use parallel::split::{force_split, ForcedSplit};
pub use sequence::{hidden_pad, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence};
pub use simd::Isa;
pub use variant::{Activation, Variant, Zone};
