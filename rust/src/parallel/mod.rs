//! How threads share a call: the pool and its team lock, the barrier a team
//! meets at every step, and the policy that splits the time loop.
//!
//! - `pool.rs`: [`Workers`](pool::Workers) (the rayon pool and its team lock),
//!   the thread count, fork safety
//! - `barrier.rs`: [`SpinBarrier`](barrier::SpinBarrier) and team health
//! - `placement.rs`: each member of a team of workers on a core of its own
//! - `split.rs`: batch or hidden split, chunks of rows, running the members
//! - `warm.rs`: workers kept awake between short team calls made close together

pub mod barrier;
pub mod placement;
pub mod pool;
pub mod split;
pub mod warm;
