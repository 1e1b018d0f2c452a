//! What the profiling examples share: the shape from the command line and
//! deterministic inputs, so that two builds time and hash the same problem.

/// `B T I H [calls]` from the command line's numbers: the shape (M, B=16 T=100
/// I=H=256, when absent) and the number of calls (`calls` when absent).
pub fn shape_and_calls(args: &[String], usage: &str, calls: usize) -> [usize; 5] {
    let numbers: Vec<usize> = args.iter().map(|a| a.parse().expect(usage)).collect();
    let [b, t, i, h] = match numbers.as_slice() {
        [b, t, i, h, ..] => [*b, *t, *i, *h],
        _ => [16, 100, 256, 256],
    };
    [b, t, i, h, numbers.get(4).copied().unwrap_or(calls)]
}

/// A small deterministic generator (xorshift): `n` values in [-0.5, 0.5),
/// each call continuing from `state`.
pub fn uniform(state: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The seed of `uniform`'s state.
pub const SEED: u64 = 0x2545_f491_4f6c_dd1d;
