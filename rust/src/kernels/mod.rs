//! What one thread computes: the register tiles, the weight layouts they
//! stream, the large products, and one chunk's forward and backward
//! recurrence, each written once over [`Simd`](crate::simd::Simd).
//!
//! A chunk of batch rows is run by a team: one member (the batch is split
//! across threads, nobody waits) or several that split the hidden units and
//! meet at a barrier after every step. Every output element is computed by the
//! same instructions either way, so the split never changes a bit.
//!
//! - `microkernel.rs`: the register tiles, named by shape (`mrx4v`, ...)
//! - `pack.rs`: the weight layouts (padded gate blocks, panels of `w_hh`)
//! - `gemm.rs`: the large products, split by rows over the pool
//! - `panel_product.rs`: a step's few rows times prepacked panels, as dense
//!   rows (the LayerNorm LSTM's per-step products)
//! - `layout.rs`: where every (step, row) lives
//! - `row_major.rs`: a short forward of one row from the weights as given,
//!   without packing them
//! - `forward_step.rs`, `backward_step.rs`: one chunk's time loop
//! - `bf16_dot.rs`: bf16 inference's recurrent product on AVX-512 BF16
//! - `candidate.rs`: zoneout's candidate cell, computed once by forward and
//!   rebuilt by backward with the same operation

pub mod backward_step;
pub mod bf16_dot;
pub mod candidate;
pub mod forward_step;
pub mod gemm;
pub mod gemm_kernel;
pub mod layout;
pub mod microkernel;
pub mod pack;
pub mod panel_product;
pub mod row_major;
