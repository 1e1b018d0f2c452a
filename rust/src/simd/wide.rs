//! Sums over a row, a row normalised, and the gradient through a
//! normalisation: the arithmetic of the LayerNorm LSTM's normalisations, in
//! the element type (as the NumPy reference and `torch.nn.LayerNorm`
//! compute them), written as explicit vector code on each ISA's vector.
//! Left to the compiler, the sums came out as one vector's chain of
//! dependent adds, or as scalar code with the partial sums in memory.
//!
//! Every function gives the bits of its scalar statement on every ISA:
//! element i goes into partial sum i mod [`PARTIALS`] (an AVX-512 vector of
//! f32 holds 16 of them, an AVX2 one 8; of f64, 8 and 4), each partial sum
//! takes its elements in order with a separate multiply and add (no FMA: the
//! scalar statement has none), and [`combine`] adds the partial sums in one
//! fixed order. Elements past the last whole group of `PARTIALS` continue the
//! same partial sums in scalar code. The portable path (one lane) runs the
//! statement itself.
//!
//! (These sums once ran in f64, each float32 element widened as it was
//! loaded: half the lanes per vector and a conversion each way. The
//! LayerNorm forward spent about 40 % of its row work there.)

use super::vector::{Simd, SimdElement};

/// How many interleaved partial sums a row's sums keep: enough independent
/// chains to hide the adder's latency (two AVX-512 vectors of f32 per sum,
/// four AVX2 ones; four and eight of f64); with 8, one vector's chain of
/// dependent adds bounded the normalisations.
const PARTIALS: usize = 32;

/// The most vectors [`pair_sums`] keeps per sum: AVX2's 4 lanes of f64 make
/// 8 (checked below, so that a change of `PARTIALS` cannot quietly send that
/// path to the statement).
const MAX_VECTORS: usize = 8;

#[cfg(target_arch = "x86_64")]
const _: () = assert!(
    PARTIALS / <super::avx2::F64x4 as Simd>::LANES <= MAX_VECTORS
        && PARTIALS.is_multiple_of(<super::avx2::F64x4 as Simd>::LANES)
        && PARTIALS.is_multiple_of(<super::avx512::F32x16 as Simd>::LANES)
);

/// The partial sums added in their fixed order: halves added element by
/// element until one is left (as vectors do it).
#[inline(always)]
fn combine<E: SimdElement>(mut acc: [E; PARTIALS]) -> E {
    let mut width = PARTIALS / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] = acc[k] + acc[k + width];
        }
        width /= 2;
    }
    acc[0]
}

/// The rows a sum or a gradient row reads: `a`, and optionally a gain `g`
/// (each element of `a` times its gain, as the gradient dx̂ = dy ⊙ gain is)
/// and a second row `b`; `g` and `b` at least as long as `a`.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, E> {
    pub a: &'a [E],
    pub g: Option<&'a [E]>,
    pub b: Option<&'a [E]>,
}

impl<'a, E: SimdElement> Rows<'a, E> {
    /// The row `a` alone.
    pub fn of(a: &'a [E]) -> Self {
        Rows {
            a,
            g: None,
            b: None,
        }
    }

    /// u_i: a_i, times g_i when there is a gain.
    #[inline(always)]
    fn u(&self, i: usize) -> E {
        match self.g {
            Some(g) => self.a[i] * g[i],
            None => self.a[i],
        }
    }

    /// u_i for the `S::LANES` elements from `at`, as a vector.
    ///
    /// # Safety
    /// As [`pair_sums`]; the rows hold `at + S::LANES` elements.
    #[inline(always)]
    unsafe fn u_vector<S: Simd<E = E>>(&self, at: usize) -> S {
        // SAFETY: forwarded.
        unsafe {
            let a = S::load(self.a.as_ptr().add(at));
            match self.g {
                Some(g) => a.mul(S::load(g.as_ptr().add(at))),
                None => a,
            }
        }
    }

    fn check(&self) {
        let n = self.a.len();
        let long = |r: Option<&[E]>| r.is_none_or(|r| r.len() >= n);
        assert!(
            long(self.g) && long(self.b),
            "wide: a gain or second row shorter than a"
        );
    }
}

/// Whether `S` runs the sums as vectors (else the scalar statement does).
#[inline(always)]
fn vectorised<S: Simd>() -> bool {
    PARTIALS / S::LANES <= MAX_VECTORS && PARTIALS.is_multiple_of(S::LANES)
}

/// Σ a_i over `a`, in partial sums as the module's doc says.
///
/// # Safety
/// The CPU has `S`'s ISA: true inside a kernel that
/// [`dispatch`](super::dispatch) runs for `S`.
#[inline(always)]
pub(crate) unsafe fn row_sum<S: Simd>(a: &[S::E]) -> S::E {
    let lanes = S::LANES;
    let mut fs = [S::E::ZERO; PARTIALS];
    let mut whole = 0;
    if vectorised::<S>() {
        whole = a.len() / PARTIALS * PARTIALS;
        // SAFETY: every load is of elements below `whole` ≤ a.len(); the
        // stores fill the PARTIALS-long array; the ISA is the caller's.
        unsafe {
            let mut s = [S::splat(S::E::ZERO); MAX_VECTORS];
            let mut i = 0;
            while i < whole {
                for (v, s) in s.iter_mut().enumerate().take(PARTIALS / lanes) {
                    *s = s.add(S::load(a.as_ptr().add(i + v * lanes)));
                }
                i += PARTIALS;
            }
            for (v, s) in s.iter().enumerate().take(PARTIALS / lanes) {
                s.store(fs.as_mut_ptr().add(v * lanes));
            }
        }
    }
    for (i, &x) in a.iter().enumerate().skip(whole) {
        fs[i % PARTIALS] = fs[i % PARTIALS] + x;
    }
    combine(fs)
}

/// (Σ (u_i − k), Σ (u_i − k)·w_i) over `rows`, u_i as [`Rows`] makes it,
/// w_i = b_i with a second row b, else u_i − k. With k the row's mean and no
/// b: the second pass of its mean and variance. With k = 0, a gain and
/// b = x̂: the sum and dot product a normalisation's gradient needs.
///
/// # Safety
/// As [`row_sum`].
#[inline(always)]
pub(crate) unsafe fn pair_sums<S: Simd>(rows: Rows<'_, S::E>, k: S::E) -> (S::E, S::E) {
    rows.check();
    let lanes = S::LANES;
    let vectors = PARTIALS / lanes;
    let (mut fs, mut fq) = ([S::E::ZERO; PARTIALS], [S::E::ZERO; PARTIALS]);
    let mut whole = 0;
    if vectorised::<S>() {
        // Partial sums v·lanes.. in vector v.
        whole = rows.a.len() / PARTIALS * PARTIALS;
        // SAFETY: every load is of elements below `whole` ≤ a.len() (the
        // other rows are at least as long: `Rows::check`); the stores fill
        // the PARTIALS-long arrays; the ISA is the caller's.
        unsafe {
            let kv = S::splat(k);
            let zero = S::splat(S::E::ZERO);
            let (mut s, mut q) = ([zero; MAX_VECTORS], [zero; MAX_VECTORS]);
            let mut i = 0;
            while i < whole {
                for v in 0..vectors {
                    let at = i + v * lanes;
                    let u = rows.u_vector::<S>(at).sub(kv);
                    let w = match rows.b {
                        Some(b) => S::load(b.as_ptr().add(at)),
                        None => u,
                    };
                    s[v] = s[v].add(u);
                    q[v] = q[v].add(u.mul(w));
                }
                i += PARTIALS;
            }
            for v in 0..vectors {
                s[v].store(fs.as_mut_ptr().add(v * lanes));
                q[v].store(fq.as_mut_ptr().add(v * lanes));
            }
        }
    }
    add_tail(rows, k, whole, &mut fs, &mut fq);
    (combine(fs), combine(fq))
}

/// The gradient through a normalisation, row by row: `out_i` =
/// r·((u_i − mean_u) − b_i·mean_ub), u_i as [`Rows`] makes it, b = x̂ (the
/// normalised row) required; `out` holds a.len().
///
/// # Safety
/// As [`row_sum`]; `out` is writable for a.len() elements and overlaps
/// none of the rows.
#[inline(always)]
pub(crate) unsafe fn gradient_row<S: Simd>(
    rows: Rows<'_, S::E>,
    out: *mut S::E,
    r: S::E,
    mean_u: S::E,
    mean_ub: S::E,
) {
    rows.check();
    let b = rows.b.expect("gradient_row: the normalised row is missing");
    let lanes = S::LANES;
    let n = rows.a.len();
    let whole = n / lanes * lanes;
    // SAFETY: every access is of an element below n of every row
    // (`Rows::check`) and of `out` (the caller's bounds); the ISA is the
    // caller's.
    unsafe {
        let (rv, mu, mub) = (S::splat(r), S::splat(mean_u), S::splat(mean_ub));
        let mut i = 0;
        while i < whole {
            let x = S::load(b.as_ptr().add(i));
            let g = rv.mul(rows.u_vector::<S>(i).sub(mu).sub(x.mul(mub)));
            g.store(out.add(i));
            i += lanes;
        }
        for (i, &x) in b.iter().enumerate().take(n).skip(whole) {
            *out.add(i) = r * ((rows.u(i) - mean_u) - x * mean_ub);
        }
    }
}

/// `out_i = (a_i − mean)·r` for the `n` elements from `a` into `out` (which
/// may be `a`: each element is read before it is written).
///
/// # Safety
/// As [`row_sum`]; `a` is readable and `out` writable for `n` elements.
#[inline(always)]
pub(crate) unsafe fn normalise_row<S: Simd>(
    a: *const S::E,
    out: *mut S::E,
    n: usize,
    mean: S::E,
    r: S::E,
) {
    let lanes = S::LANES;
    let whole = n / lanes * lanes;
    // SAFETY: elements below n (the caller's bounds); the ISA is the caller's.
    unsafe {
        let (mv, rv) = (S::splat(mean), S::splat(r));
        let mut i = 0;
        while i < whole {
            S::load(a.add(i)).sub(mv).mul(rv).store(out.add(i));
            i += lanes;
        }
        for i in whole..n {
            *out.add(i) = (*a.add(i) - mean) * r;
        }
    }
}

/// Elements `from..` of the rows continuing the partial sums `s` and `q`
/// (element i into partial sum i mod `PARTIALS`): the scalar statement of
/// [`pair_sums`], and the vector paths' tail.
#[inline(always)]
fn add_tail<E: SimdElement>(
    rows: Rows<'_, E>,
    k: E,
    from: usize,
    s: &mut [E; PARTIALS],
    q: &mut [E; PARTIALS],
) {
    for i in from..rows.a.len() {
        let u = rows.u(i) - k;
        let w = rows.b.map_or(u, |b| b[i]);
        s[i % PARTIALS] = s[i % PARTIALS] + u;
        q[i % PARTIALS] = q[i % PARTIALS] + u * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{dispatch, Isa, Kernel};

    struct Sums<'a, E> {
        rows: Rows<'a, E>,
        k: E,
    }

    impl<E: SimdElement> Kernel<E> for Sums<'_, E> {
        type Output = (E, E, E);
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) -> (E, E, E) {
            // SAFETY: `dispatch` runs this for S on a CPU that has S's ISA.
            unsafe {
                let (s, q) = pair_sums::<S>(self.rows, self.k);
                (s, q, row_sum::<S>(self.rows.a))
            }
        }
    }

    struct Normalise<'a, E> {
        a: &'a [E],
        out: &'a mut [E],
        mean: E,
        r: E,
    }

    impl<E: SimdElement> Kernel<E> for Normalise<'_, E> {
        type Output = ();
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) {
            let n = self.a.len();
            // SAFETY: as above; both rows hold n elements.
            unsafe {
                normalise_row::<S>(self.a.as_ptr(), self.out.as_mut_ptr(), n, self.mean, self.r)
            }
        }
    }

    struct Gradient<'a, E> {
        rows: Rows<'a, E>,
        out: &'a mut [E],
        m: [E; 3],
    }

    impl<E: SimdElement> Kernel<E> for Gradient<'_, E> {
        type Output = ();
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) {
            let [r, mu, mub] = self.m;
            // SAFETY: as above; `out` holds a.len() elements of its own.
            unsafe { gradient_row::<S>(self.rows, self.out.as_mut_ptr(), r, mu, mub) }
        }
    }

    /// The statement: element i into partial sum i mod PARTIALS, in order.
    fn statement<E: SimdElement>(rows: Rows<'_, E>, k: E) -> (E, E, E) {
        let (mut s, mut q) = ([E::ZERO; PARTIALS], [E::ZERO; PARTIALS]);
        add_tail(rows, k, 0, &mut s, &mut q);
        let mut plain = [E::ZERO; PARTIALS];
        for (i, &x) in rows.a.iter().enumerate() {
            plain[i % PARTIALS] = plain[i % PARTIALS] + x;
        }
        (combine(s), combine(q), combine(plain))
    }

    fn values<E: SimdElement>(n: usize, seed: u64) -> Vec<E> {
        // Values of mixed magnitude and sign, so that a changed order of
        // additions changes the rounding.
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                E::from_f64((u - 0.3) * 10f64.powi((x % 7) as i32 - 3))
            })
            .collect()
    }

    fn bits<E: SimdElement>(x: E) -> u64 {
        x.to_f64().to_bits()
    }

    fn same_bits<E: SimdElement>() {
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            for n in [1, 2, 7, 8, 31, 32, 33, 61, 64, 100, 244, 1024, 1037] {
                let (a, g, b) = (
                    values::<E>(n, 1),
                    values::<E>(n + 3, 2),
                    values::<E>(n + 1, 3),
                );
                let (g, b) = (&g[..], &b[..]);
                let cases = [
                    (Rows::of(&a[..]), a[0]),
                    (Rows::of(&a[..]), E::ZERO),
                    (
                        Rows {
                            a: &a,
                            g: None,
                            b: Some(b),
                        },
                        E::ZERO,
                    ),
                    (
                        Rows {
                            a: &a,
                            g: Some(g),
                            b: Some(b),
                        },
                        E::ZERO,
                    ),
                    (
                        Rows {
                            a: &a,
                            g: Some(g),
                            b: None,
                        },
                        E::from_f64(0.5),
                    ),
                ];
                for (rows, k) in cases {
                    let got = dispatch(isa, Sums { rows, k });
                    let want = statement(rows, k);
                    assert_eq!(bits(got.0), bits(want.0), "{isa:?} n={n} sum");
                    assert_eq!(bits(got.1), bits(want.1), "{isa:?} n={n} second");
                    assert_eq!(bits(got.2), bits(want.2), "{isa:?} n={n} row_sum");
                }
                let (mean, r) = (E::from_f64(0.123), E::from_f64(3.7));
                let mut out = vec![E::ZERO; n];
                dispatch(
                    isa,
                    Normalise {
                        a: &a,
                        out: &mut out,
                        mean,
                        r,
                    },
                );
                for (o, &x) in out.iter().zip(&a) {
                    assert_eq!(bits(*o), bits((x - mean) * r), "{isa:?} n={n}");
                }
                let m = [1.7, -0.03, 0.41].map(E::from_f64);
                for gain in [None, Some(g)] {
                    let rows = Rows {
                        a: &a,
                        g: gain,
                        b: Some(b),
                    };
                    let mut out = vec![E::ZERO; n];
                    dispatch(
                        isa,
                        Gradient {
                            rows,
                            out: &mut out,
                            m,
                        },
                    );
                    for (i, o) in out.iter().enumerate() {
                        let u = gain.map_or(a[i], |g| a[i] * g[i]);
                        let want = m[0] * ((u - m[1]) - b[i] * m[2]);
                        assert_eq!(bits(*o), bits(want), "{isa:?} n={n} i={i}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_isa_gives_the_statements_bits_f32() {
        same_bits::<f32>();
    }

    #[test]
    fn every_isa_gives_the_statements_bits_f64() {
        same_bits::<f64>();
    }

    #[test]
    fn normalises_in_place() {
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            let a = values::<f32>(77, 3);
            let mut v = a.clone();
            struct InPlace<'a>(&'a mut [f32]);
            impl Kernel<f32> for InPlace<'_> {
                type Output = ();
                #[inline(always)]
                fn run<S: Simd<E = f32>>(self) {
                    let (p, n) = (self.0.as_mut_ptr(), self.0.len());
                    // SAFETY: as above; one row of n elements, read before written.
                    unsafe { normalise_row::<S>(p, p, n, -1.5, 0.25) }
                }
            }
            dispatch(isa, InPlace(&mut v));
            for (o, x) in v.iter().zip(&a) {
                assert_eq!(*o, (*x + 1.5) * 0.25, "{isa:?}");
            }
        }
    }
}
