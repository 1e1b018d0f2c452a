//! Every tuning constant of the engine in one table, each with the reason for
//! its value (the way matrixmultiply's `archparam.rs` and BLIS's per-CPU
//! context tables collect theirs).
//!
//! None of them changes a result, only how fast it comes: every output is the
//! same chain of operations in the same order whatever the blocking, grouping
//! or split (docs/design.md, "Threads").

// ---------------------------------------------------------------------------
// One thread's kernels (kernels/)
// ---------------------------------------------------------------------------

/// Bytes of a panel slice kept in L1 while every row group runs over it: half
/// of L1d, the rest for the rows of A and the accumulators.
pub const L1_PANEL_BYTES: usize = 24 * 1024;
/// A floor for the depth of that slice (`l1_depth` in `kernels/microkernel.rs`);
/// it does not bind at today's vector widths (the shallowest is 48, f64 on
/// AVX-512).
pub const MIN_PANEL_DEPTH: usize = 16;

/// The register tile of the step products (`rows_x4v_kblocked` in
/// `kernels/microkernel.rs`), BLIS's MR × NR in rows and vectors, per register
/// file. A tile needs MR·NV accumulators, NV panel vectors and one broadcast;
/// its MR·NV independent FMA chains must cover FMA latency × FMA ports (8 on
/// Zen 3/4/5 and Skylake-X: 4 cycles, 2 ports) with room to spare, since any
/// stall on a bare 8 leaves a port idle.
///
/// 16 registers (AVX2): 6 rows × 2 vectors = 12 chains, 12 + 2 + 1 = 15
/// registers (BLIS's haswell sgemm 6x16). A 4-vector panel is then run as two
/// passes of 2 vectors. The old 2 × 4 tile had 8 chains, exactly the minimum.
pub const MR_16_REGISTERS: usize = 6;
pub const NV_16_REGISTERS: usize = 2;
/// 32 registers (AVX-512): 6 rows × 4 vectors = 24 chains, 24 + 4 + 1 = 29
/// registers (BLIS's zen4/skx sgemm 6x64 shape), one pass over the panel.
pub const MR_32_REGISTERS: usize = 6;
pub const NV_32_REGISTERS: usize = 4;
/// How the rows of a product are grouped into tiles (`RowGroups` in
/// `kernels/microkernel.rs`): ⌈rows / MR⌉ groups, and a remainder (rows mod
/// MR) of up to this many rows runs apart over the whole panel width (4
/// vectors) in one pass: 2 rows × 4 = 8 chains in 13 registers even on AVX2.
/// A larger remainder is not given a short tile of its own: the rows are dealt
/// out evenly over the same number of groups (16 = 6 + 5 + 5, not 6 + 6 + 4;
/// 10 = 5 + 5), since a 4-row tile has 4 × 2 = 8 FMA chains on AVX2, the bare
/// minimum, and runs below the full tiles' rate, where 5 rows have 10. At M
/// (B = 16, 1 thread, Zen 3 under a load of 5 on 2 vCPUs) the forward's CPU
/// time moved by less than the noise (±1 ms of 26); on AVX-512 (MR × 4 = 24
/// chains) a 4-row tile already has 16 and the even split should be neutral
/// (not measured: no AVX-512 machine here).
pub const REMAINDER_FULL_WIDTH_ROWS: usize = 2;

/// Rows (step, slot) per block of the input projection inside the time loop
/// (the fused kernels', and the LayerNorm LSTM's past
/// `LAYER_NORM_WHOLE_PRODUCT_BYTES`; also how many rows a LayerNorm call
/// with prepared weights projects on their panels): enough for an efficient
/// product, few enough that the block stays in cache (scratch is O(B·H),
/// independent of T).
pub const PROJECTION_ROWS: usize = 256;

/// Rows of a forward panel written at a time while packing: they gather from
/// 4·lanes rows of the weights, 64 elements each: at most 64 rows × 64 floats
/// = 16 KiB, half of the smallest L1 seen (Zen 3's 32 KiB), so those pieces
/// stay there while the block is written.
pub const PACK_DEPTH: usize = 64;

/// Panels the batch-1 product (`row_x4pv`) runs at once: 4 FMA chains each,
/// so 3 panels give 12 chains, slack over the 8 that FMA latency × ports
/// needs, in 13 of AVX2's 16 registers.
pub const BATCH1_PANELS: usize = 3;

/// Panel rows ahead that the batch-1 product prefetches: far enough ahead to
/// cover L2's latency at the rate the row is consumed.
pub const ROW_PREFETCH_DISTANCE: usize = 8;

/// Steps up to which a forward of one row with a cache (a training pass, on
/// one thread) reads the weights as given (`kernels/row_major.rs`) instead of
/// packing them: a packed step is cheaper (its weights need no transposes
/// and stay in L2, split over a team), packing costs several steps. Measured
/// on Zen 5, two threads, packed against read as given, µs: I = H = 256, 4
/// steps 216 / 175, 6 steps 236 / 257; H = 512, 4 steps 952 / 701, 6 steps
/// 928 / 921.
pub const ROW_MAJOR_MAX_STEPS: usize = 4;

/// The same without a cache (inference, on a team from
/// `ROW_MAJOR_TEAM_BYTES`). Measured as above, 8 steps: H = 64 46 / 26, 128
/// 74 / 41, 256 200 / 127, 512 786 / 547.
pub const ROW_MAJOR_MAX_INFERENCE_STEPS: usize = 8;

/// The same from prepared weights, whose panels are already packed (only the
/// row-major pass's transposes against the packed steps), over weights of
/// `TEAM_WEIGHT_BYTES` or more: one step. Measured on a 2-vCPU Xeon (model
/// 207), two threads, `prepare_weights(...).forward` (packed) against
/// `LSTM.forward` (read as given, with the layer's Python), µs min: T = 1 at
/// I = H = 64 23 / 15, 128 27 / 24, 256 87 / 46, 512 253 / 209; T = 2 24 / 19,
/// 32 / 29, 94 / 72, 300 / 400; T = 4 26 / 27, 37 / 45, 109 / 116, 385 / 752.
/// Then the prepared forward itself, one step, packed → read as given: 64 23
/// → 24–25, 128 27–28 → 31–32 (under 1 MiB: the packed step runs on the
/// calling thread, and wins), 256 84 → 51–52, 512 242–255 → 214–222.
pub const ROW_MAJOR_MAX_PACKED_STEPS: usize = 1;

/// Bytes of `w_ih` and `w_hh` from which that forward, without a cache, runs
/// on a team (the calling thread and pool threads, each reading its slice of
/// the rows: `split::run_team_here`). Measured on Zen 5, two threads,
/// `LSTM.step` at batch 1: I = H = 64 (128 KiB) 7.4 µs alone, 8.0 with a team;
/// 128 (512 KiB) 11.9 and 10.2; 256 (2 MiB) 42 and 23.
pub const ROW_MAJOR_TEAM_BYTES: usize = 384 << 10;

/// Bytes of `w_hh` panels one member of the batch-1 forward reads per step
/// above which it prefetches rows ahead (`row_x4pv_with`): beyond this they
/// do not stay in a 512 KiB L2 beside the step's other data and come from L3,
/// where the hints pay; up to it (H ≤ 128 at one thread: 256 KiB) they stay
/// in L2, and the hints cost some 5 % of the step (H = 128, Zen 3: 3.55 µs
/// per step without them, 3.75 µs with), spent in the load slots the stream
/// itself needs.
pub const BATCH1_PREFETCH_BYTES: usize = 384 * 1024;

/// Bytes compared per task when proving weights unchanged (`pack::same_bytes`):
/// large enough that a task costs more than handing it to another thread
/// (~1 µs), small enough that two threads split a 1 MiB matrix evenly.
pub const SAME_BYTES_BLOCK: usize = 64 * 1024;

/// Bytes below which that proof compares on the calling thread: handing the
/// blocks to the pool and waiting for them costs several microseconds (far
/// more on a busy machine), the time one core compares ~256 KiB in; with one
/// thread the pool only adds that hand-off. A step at B = 1 compares the
/// weights twice over (live and kept), so this decides whether one step per
/// call pays a hand-off at all.
pub const SAME_BYTES_PARALLEL_MIN: usize = 1024 * 1024;

/// Multiply-adds of a panel product (the LayerNorm LSTM's per-step products,
/// `kernels/panel_product.rs`) per task, at least: handing tasks to the pool
/// and joining them costs microseconds on a virtual machine, more than a
/// whole step's product at batch 1 (H = 128: 65 536 multiply-adds, ~1 µs).
/// Split there, the LayerNorm forward at S took 1.48 ms on 2 threads against
/// 1.23 on one (Zen 3); 2^19 is ~10 µs of one core's work.
pub const PANEL_TASK_MIN_WORK: usize = 1 << 19;
/// Elements that a per-step loop of the LayerNorm LSTM (its rows' gate math,
/// its per-step sums, `each` in `layernorm.rs`) touches in all, at least,
/// before it is shared among the pool's threads: handing a loop out and
/// joining it costs microseconds, tens of them on 16 cores under a sandbox,
/// where at batch 1 the backward's per-step sums (10 column blocks of one
/// row) took the LN S backward from 1.26 ms on one thread to 3.2 on 16
/// (Sapphire Rapids). At M (16 rows, H = 256) the loops touch 40–60 K.
pub const STEP_LOOP_MIN_ELEMENTS: usize = 1 << 15;
/// When the LayerNorm LSTM's forward splits the batch into one chunk per
/// thread, each running the whole time loop alone (`layernorm.rs`), instead
/// of sharing out each step's rows and products, which meets twice per step:
/// from `LAYER_NORM_CHUNK_ROWS` rows per chunk while w_hh (its panels) fits
/// in `LAYER_NORM_CHUNK_WEIGHT_BYTES` (about a core's L2, from which each
/// chunk reads all of it every step), from `LAYER_NORM_CHUNK_STREAMING_ROWS`
/// beyond (enough rows to pay for reading it from L3). Measured on 2 Zen 5
/// threads against the shared steps: B = 8, T = 200, I = H = 64, 0.66× the
/// time; M (16 rows, H = 256, 1 MiB), 0.98×; B = 64, H = 512, 1.00×; B = 8,
/// H = 512 (4 MiB, 4 rows a chunk), 1.05× (hence no chunks there).
pub const LAYER_NORM_CHUNK_ROWS: usize = 4;
pub const LAYER_NORM_CHUNK_STREAMING_ROWS: usize = 16;
pub const LAYER_NORM_CHUNK_WEIGHT_BYTES: usize = 1 << 20;
/// Bytes of packing room the large products keep from one call to the next,
/// at most (`with_kept_room` in `kernels/gemm.rs`): a B block and an A
/// block per task, 4 MiB + 0.5 MiB a task on AVX-512, so 64 MiB covers 120
/// threads; a product that needs more (more threads) allocates its room per
/// call and gives it back, as every product did before.
pub const KEPT_ROOM_MAX_BYTES: usize = 64 << 20;
/// Bytes of s_x for a whole call (T·B rows of 4H) up to which the LayerNorm
/// forward without a cache makes every row's input products at once, one
/// product over all rows as with a cache; past it, each chunk makes its own a
/// block of `PROJECTION_ROWS` rows at a time inside its loop, scratch O(B·H)
/// (T = 10^4, B = 16, I = H = 256: peak RSS 785 → 158 MiB, y itself 156).
/// Blocks per chunk re-read w_ih's panels once per block: at 16 threads
/// (Xeon), with B = 16 split into 1-row chunks, M's forward took 1.15× the
/// time on blocks of 100 steps and 1.9× on blocks of 16; L's (64 rows, 52 MB
/// of s_x) 0.85× on blocks of 64 steps (no whole buffer to zero and fault in).
pub const LAYER_NORM_WHOLE_PRODUCT_BYTES: usize = 16 << 20;
/// Rows of C handed to one task of a large product: enough that packing B is
/// amortised (each task's rows are also a multiple of the ISA's MR,
/// [`GEMM_SHAPES`], so no task but the last ends in a partial sliver).
pub const GEMM_MIN_ROWS_PER_TASK: usize = 32;

/// Columns of the bias gradient summed by one task, at least (`lstm.rs`'s
/// `ordered_column_sums` gives each thread one block of a multiple of this;
/// each column is summed over all rows in order, so the split never changes
/// a bit).
pub const DB_COLUMN_BLOCK: usize = 64;

/// Rows of da (and of x, h_prev) per product of the weight gradients, which
/// sum over (step, row) in backward's order rather than the layout's
/// (`lstm.rs`, `weight_grads`; read in place, or gathered when the rows have
/// different lengths): each product passes over its C once
/// per depth block, so a block as deep as the deepest KC of `GEMM_SHAPES`
/// (1024, AVX2) costs no more passes over C than one product over all rows.
pub const ORDERED_BLOCK_ROWS: usize = 1024;

/// Columns of a transposed A (daᵀ in the weight sums) that packing gives to
/// each sliver at once (`pack_a` in `kernels/gemm_kernel.rs`): the slivers lie
/// a multiple of 4 KiB apart, so one column per sliver in turn writes every
/// sliver's line in one set of L1, more lines than it has ways; 8 columns of
/// 6 (MR) elements are 192 bytes, three whole lines per sliver, and the 8
/// columns read (at most 8 · 4 KiB apart) fit the 8 ways of Zen 3's L1.
pub const PACK_GROUP: usize = 8;

/// Independent FMA chains in the peak measurement (`simd/peak.rs`): FMA
/// latency × FMA ports is 8 on Zen 3/4/5 and Skylake-X (4 cycles, 2 ports);
/// 12 covers a latency of up to 6 and still fits 16 registers with the two
/// operands.
pub const FMA_PEAK_CHAINS: usize = 12;
/// Independent chains in the bfloat16 dot products' peak measurement
/// (`kernels/bf16_dot.rs`): `vdpbf16ps` takes longer than an FMA on Zen 5,
/// where 12 chains reached 503 GFLOP/s on one core and 24 reach 550 (2
/// instructions per cycle, twice the FMA peak of 271 in the same run).
pub const BF16_DOT_PEAK_CHAINS: usize = 24;

// ---------------------------------------------------------------------------
// How threads share a call (parallel/)
// ---------------------------------------------------------------------------

/// The most threads `set_num_threads` and `LSTM_FAST_NUM_THREADS` accept (the
/// default, every core, is capped at it too). A call's work is split at most
/// this many ways, far more than any machine has cores: more threads only
/// thrash, and rayon starts them one by one (2^31 asked for once meant tens of
/// thousands of threads started over minutes).
pub const MAX_THREADS: usize = 1024;

/// The fewest rows of a batch chunk. One: a thread with a chunk of one row
/// (the batch-1 product, streaming w_hh from its own cache) beats a thread left
/// idle. On 16 cores of a Sapphire Rapids the M backward's time loop (4 tiles:
/// a team of 2 at most) took ~9 ms on 16 one-row chunks against ~17 on 2
/// chunks of 8 rows. On 2 threads it splits batches of 2–15 rows that go to
/// the batch split (projections, tiny H, the backward of H ≤ 192 on AVX-512)
/// in two where they ran on one thread, if the call has the work for it
/// (`MIN_CHUNK_WORK`).
pub const MIN_ROWS_PER_CHUNK: usize = 1;
/// Multiply-adds of a batch chunk, at least: a call with less runs as fewer
/// chunks, down to one on the calling thread (no hand-off to the pool, which
/// costs microseconds: `LSTM.step` of a few rows is a call of ~10^5). 2^21 is
/// some 40 µs of one core's work. A team's member needs as much
/// (`split::team_pays`, with `TEAM_WEIGHT_BYTES`).
pub const MIN_CHUNK_WORK: usize = 1 << 21;
/// Bytes of weights a time loop reads every step from which it runs on a
/// team however short it is (`split::team_pays`; the row-major path has its
/// own `ROW_MAJOR_TEAM_BYTES`). 1 MiB is chosen between what was measured:
/// at 512 KiB a short call was faster without a team, at 2 MiB even; it is
/// also what one core's L2 holds on the 1 MiB-L2 machines, where a team
/// keeps each member's half in its own. Below, a short call's team cost
/// more than it saved: the caller slept while both workers ran the call,
/// then they spun beside its next Python work. Measured on a 2-vCPU Xeon
/// (model 207, 2 MiB L2), batch 1, two threads, the whole call, µs min /
/// median, team → none: a prepared one-step forward at I = H = 64 61–71 /
/// 74–98 → 27 / 29–33, at 128 69–71 / 83–91 → 31 / 34; 16 steps at 128
/// 99–126 / 135–159 → 76 / 82–95; `cell_forward` + `cell_backward` at 128
/// 425–430 / 537–541 → 268–281 / 306–308. At 256 (2 MiB) the team stays
/// (about 80 / 90 either way there).
pub const TEAM_WEIGHT_BYTES: usize = 1 << 20;
/// Rows per thread from which the batch split wins over the hidden split.
pub const BATCH_SPLIT_ROWS: usize = 32;
/// Tiles of hidden units from which a team may give each member a single
/// tile (`choose_split` in `parallel/split.rs`); with fewer, each member gets
/// at least two, so that a step's work is not dwarfed by the meeting at its
/// end. At 8 tiles (H = 128 on AVX-512) a member's step is 1/8 of the step
/// products: on the 16-core Sapphire Rapids the batch-1 forward at H = 128 took
/// 0.44 ms on a team of 8 and 0.69 ms alone (T = 100). Counted in tiles
/// whatever their width: 8 tiles are also H = 64 on AVX2 and H = 32 in f64 on
/// AVX2, where a member's step is smaller; not measured there (2 threads keep
/// their old rule either way).
pub const ONE_TILE_TEAMS_FROM: usize = 8;

/// How long a barrier waiter spins before it sleeps: twice its own last step
/// (from leaving the barrier to leaving it again), at least `SPIN_MIN` and at
/// most `SPIN_MAX`. A wait longer than two whole steps means a partner lost its
/// core, and the waiter's core is better given back; anything shorter is the
/// members' work differing by a few tiles' worth, which a spin answers in tens
/// of nanoseconds where a sleep and a wake cost tens of microseconds (far more
/// under a sandbox such as gVisor, where each is a trip through its kernel).
/// Measured on a 16-core Sapphire Rapids under gVisor: with a fixed 20 000
/// polls (some 10–20 µs) a third of the waits of a 16-member team at L ended
/// asleep and a step took ~370 µs for ~130 µs of work per member.
pub const SPIN_STEPS: u32 = 2;
pub const SPIN_MIN: std::time::Duration = std::time::Duration::from_micros(50);
pub const SPIN_MAX: std::time::Duration = std::time::Duration::from_millis(1);
/// The least spin of every waiter once a member of the call has slept: a
/// member being woken takes tens of microseconds to arrive (more under a
/// sandbox), and waiters that gave up sooner would sleep in turn, every step.
/// (The spin before this session's change was 100 000 polls after a sleep,
/// 35–100 µs.)
pub const SPIN_AFTER_SLEEP: std::time::Duration = std::time::Duration::from_micros(200);
/// Polls of the generation between readings of the clock while spinning (a
/// poll is about a nanosecond, a reading some tens).
pub const POLLS_PER_CLOCK: usize = 128;
/// Steps between a member's readings of the clock as it leaves the barrier
/// (its step is the mean over them; steps that include a sleep are not
/// measured).
pub const STEPS_PER_CLOCK: u32 = 8;
/// Waits at the start of each member's part of a call whose sleeps do not
/// count against the team (they wait for members being woken, not for busy
/// cores).
pub const WARMUP_WAITS: usize = 8;

/// How long the workers of a team led by the calling thread
/// (`split::run_team_here`) stay awake after its call, and after each piece
/// of work they run meanwhile, when it came within this long of the call
/// before (`parallel/warm.rs`). Measured on KVM (Intel Xeon, 2
/// vCPUs), a team call of no work from a caller that spun g µs between calls,
/// median: 1 µs awake for every g up to 200; asleep (rayon's idling) 15 µs at
/// g = 50, 32 at 100, 36 at 1000.
pub const WARM_SPAN: std::time::Duration = std::time::Duration::from_micros(250);
/// The longest a keep-awake job lives, in spans (`parallel/warm.rs`): one
/// that a worker took up while waiting for a join or a scope delays that wait
/// at most this long; the next call led by a caller gives another.
pub const WARM_LIFE_SPANS: u32 = 4;
/// The longest a team call's caller spins for its workers to finish their
/// part before it blocks: they leave the last barrier when it does, so they
/// are done within a microsecond unless one lost its core.
pub const FINISH_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// A team call in which more than 1 wait in this many ended asleep (not
/// counting the warm-up waits) disables teams for a while.
pub const TEAM_SLEEP_RATIO: usize = 16;
/// Calls without teams after a bad team call: this many at first, doubling
/// while team calls keep going badly (up to the maximum), back to the first
/// after one goes well. A passing disturbance (a cold start on a virtual
/// machine) costs a few calls; lasting contention settles on the path without
/// a barrier.
pub const TEAM_BACKOFF_MIN: usize = 8;
pub const TEAM_BACKOFF_MAX: usize = 256;

// ---------------------------------------------------------------------------
// Interrupts (python.rs)
// ---------------------------------------------------------------------------

/// Multiply-adds of a call (T·B·4H·(I+H), a forward's; a backward does about
/// twice as many) from which a call from Python's main thread runs the engine on
/// another thread, so that the calling thread can watch for Ctrl-C. Handing the
/// call over and back costs some tens of microseconds on a virtual machine
/// (measured at half this size: within 2 % of the same call run inline); such
/// a call takes about 20 ms on one core with AVX2, and smaller ones end soon
/// enough for Ctrl-C to be answered when they do.
pub const INTERRUPTIBLE_WORK: usize = 1 << 28;
/// How often the calling thread checks for signals while the engine runs: the
/// delay before Ctrl-C stops a call, at the cost of taking the GIL once per
/// period. Also how often a call waiting for another call's team to end checks
/// whether it was cancelled.
pub const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Bytes of a cache line on every x86-64 the engine targets: the alignment the
/// global allocator gives large blocks (`alloc.rs`, `LineAligned`).
pub const CACHE_LINE: usize = 64;

/// Blocks of at least this many bytes start on a cache line: every buffer a
/// kernel streams (panels, packed rows: kilobytes and more); smaller ones
/// (names, lists of rows) keep the system's cheaper 16-byte blocks.
pub const LINE_ALIGNED_FROM: usize = 1024;

// ---------------------------------------------------------------------------
// The large products (kernels/gemm.rs, kernels/gemm_kernel.rs)
// ---------------------------------------------------------------------------

/// The register tile and block sizes of the large products on one ISA: BLIS's
/// MR × NR (NR = `nv` vectors) and its KC, MC, NC (the last two as bytes of
/// the packed blocks, so f64 gets half the elements of f32).
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    /// Rows of A broadcast per k (MR).
    pub mr: usize,
    /// Vectors of B per k (NR = nv · lanes): MR·NV accumulators, NV panel
    /// vectors and one broadcast must fit the register file.
    pub nv: usize,
    /// Depth of a block (KC), in elements: each tile of C is loaded and stored
    /// once per KC FMAs of each of its chains, and its B micro-panel (KC × NR)
    /// is read from L2 while every sliver of A's block runs over it.
    pub kc: usize,
    /// Bytes of A's packed block (MC × KC), kept in L2 while every B
    /// micro-panel runs over it; sets MC.
    pub a_block_bytes: usize,
    /// Bytes of B's packed block (KC × NC), read from L3 once per A block;
    /// sets NC.
    pub b_block_bytes: usize,
}

/// One row per ISA, indexed by register file: the portable path, AVX2 (16
/// vector registers), AVX-512 (32).
///
/// - Portable: 4 × 2 scalars, 8 chains in SSE's 16 registers.
/// - AVX2: 6 × 2 vectors (6 × 16 f32, 6 × 8 f64) = 12 FMA chains, 12 + 2 + 1 =
///   15 of 16 registers (BLIS's haswell 6x16). KC 1024, not BLIS's 256 (a
///   micro-panel in L1): measured on a quiet Zen 3 (the backward products at
///   L and XL, 1 thread), streaming the 64 KiB micro-panel from L2 costs less
///   than the 4× more round trips of C through L3 that KC 256 makes (KC 256:
///   80 % of the peak, 512: 84 %, 1024: 86–88 %, 2048: 85 %). On a loaded
///   machine (load 9–19 on 2 vCPUs) KC 384 (a 24 KiB micro-panel in L1) gave
///   the weight sums at L and XL 4–7 points more and the projection at L up
///   to 8–12 fewer: not adopted until measured quiet. A's block 256 KiB (64
///   rows f32) in the 512 KiB L2 beside the micro-panel (96 to 384 KiB within
///   noise); B's block 2 MiB in L3 (4 and 8 MiB measured slower).
/// - AVX-512: 6 × 4 vectors (6 × 64 f32) = 24 chains, 24 + 4 + 1 = 29 of 32
///   registers (BLIS's zen4 6x64), broadcasts embedded in the FMAs; KC 512 (a
///   128 KiB micro-panel, 256 bytes per k from L2 against 24 FMAs), A's block
///   512 KiB, B's 4 MiB for the 1–2 MiB L2 of Zen 4/5 and Sapphire Rapids.
///   Measured once on a Sapphire Rapids core (2 MiB L2, 48 KiB L1d, peak
///   178 GFLOP/s on this path; `product_rates gemm`, one thread): dx and
///   daᵀ·x at L 86 and 83 % of the peak, at XL 84 and 86 %; at M 61–66 %,
///   where B is only 4 micro-panels wide and each packed A block serves just
///   those (AVX2 on the same core: 78–86 % at L and XL of its 93). Swept
///   on a 2-vCPU guest of the same model (`backward_profile blocks` at L,
///   one thread, peak 192–198): KC 128–1024 × A blocks 256 KiB–1 MiB gave
///   dx 144–163 GFLOP/s and daᵀ·x 147–168, KC 512 with 512 KiB within 2 %
///   of the best of each (160 and 168): nothing to change.
pub const GEMM_SHAPES: [GemmShape; 3] = [
    GemmShape {
        mr: 4,
        nv: 2,
        kc: 256,
        a_block_bytes: 128 * 1024,
        b_block_bytes: 2 * 1024 * 1024,
    },
    GemmShape {
        mr: 6,
        nv: 2,
        kc: 1024,
        a_block_bytes: 256 * 1024,
        b_block_bytes: 2 * 1024 * 1024,
    },
    GemmShape {
        mr: 6,
        nv: 4,
        kc: 512,
        a_block_bytes: 512 * 1024,
        b_block_bytes: 4 * 1024 * 1024,
    },
];
