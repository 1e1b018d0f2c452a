//! Sums over a row in f64, a row normalised in f64, and the gradient through
//! a normalisation: the arithmetic of the LayerNorm LSTM's normalisations,
//! written as explicit vector code on each ISA's vector of f64
//! ([`Simd::F64`]: a float32 row is widened to it as it is loaded). Left to
//! the compiler, the one-pass sums came out as scalar f64 code with the
//! partial sums in memory (it paired each element's two sums in one
//! register; M's forward took 1.06× the time of two vectorised passes).
//!
//! Every function gives the bits of its scalar statement on every ISA:
//! element i goes into partial sum i mod [`PARTIALS`] (an AVX-512 vector of
//! f64 holds 8 of them, an AVX2 one 4), each partial sum takes its elements
//! in order with a separate multiply and add (no FMA: the scalar statement has
//! none), and [`combine`] adds the partial sums in one fixed order. Elements
//! past the last whole group of `PARTIALS` continue the same partial sums in
//! scalar code. The portable path (one lane) runs the statement itself.

use super::vector::{Simd, SimdElement};

/// How many interleaved partial sums a row's f64 sums keep: enough
/// independent chains to hide the adder's latency (four AVX-512 vectors of
/// f64, eight AVX2 ones); with 8, one vector's chain of dependent adds bounded
/// the normalisations.
const PARTIALS: usize = 32;

/// The most vectors of f64 [`pair_sums`] keeps per sum: AVX2's 4 lanes make
/// 8 (checked below, so that a change of `PARTIALS` cannot quietly send that
/// path to the statement).
const MAX_VECTORS: usize = 8;

#[cfg(target_arch = "x86_64")]
const _: () = assert!(
    PARTIALS / <super::avx2::F64x4 as Simd>::LANES <= MAX_VECTORS
        && PARTIALS.is_multiple_of(<super::avx2::F64x4 as Simd>::LANES)
        && PARTIALS.is_multiple_of(<super::avx512::F64x8 as Simd>::LANES)
);

/// The partial sums added in their fixed order: halves added element by
/// element until one is left (as vectors do it).
#[inline(always)]
fn combine(mut acc: [f64; PARTIALS]) -> f64 {
    let mut width = PARTIALS / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    acc[0]
}

/// The rows a sum or a gradient row reads: `a`, and optionally a gain `g`
/// (each element of `a` times its gain, rounded to the element type, as the
/// gradient dx̂ = dy ⊙ gain is) and a second row `b`; `g` and `b` at least as
/// long as `a`.
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

    /// u_i: a_i, times g_i when there is a gain (rounded to E), as f64.
    #[inline(always)]
    fn u(&self, i: usize) -> f64 {
        match self.g {
            Some(g) => (self.a[i] * g[i]).to_f64(),
            None => self.a[i].to_f64(),
        }
    }

    /// u_i for the `S::F64::LANES` elements from `at`, as vectors.
    ///
    /// # Safety
    /// As [`pair_sums`]; the rows hold `at + S::F64::LANES` elements.
    #[inline(always)]
    unsafe fn u_vector<S: Simd<E = E>>(&self, at: usize) -> S::F64 {
        // SAFETY: forwarded.
        unsafe {
            match self.g {
                Some(g) => S::load_f64_product(self.a.as_ptr().add(at), g.as_ptr().add(at)),
                None => S::load_f64(self.a.as_ptr().add(at)),
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

/// (Σ (u_i − k), Σ (u_i − k)·w_i) in f64 over `rows`, u_i as [`Rows`] makes
/// it, w_i = b_i with a second row b, else u_i − k. With k a value of the
/// row and no b: the shifted sums of its mean and variance (shifted by a
/// value of the row, the variance Σu²/n − (Σu/n)² does not cancel away when
/// the mean is large against the spread). With k = 0, a gain and b = x̂: the
/// sum and dot product a normalisation's gradient needs.
///
/// # Safety
/// The CPU has `S`'s ISA: true inside a kernel that
/// [`dispatch`](super::dispatch) runs for `S`.
#[inline(always)]
pub(crate) unsafe fn pair_sums<S: Simd>(rows: Rows<'_, S::E>, k: f64) -> (f64, f64) {
    rows.check();
    let lanes = S::F64::LANES;
    let vectors = PARTIALS / lanes;
    let (mut fs, mut fq) = ([0.0f64; PARTIALS], [0.0f64; PARTIALS]);
    let mut whole = 0;
    if vectors <= MAX_VECTORS && PARTIALS.is_multiple_of(lanes) {
        // Partial sums v·lanes.. in vector v.
        whole = rows.a.len() / PARTIALS * PARTIALS;
        // SAFETY: every load is of elements below `whole` ≤ a.len() (the
        // other rows are at least as long: `Rows::check`); the stores fill
        // the PARTIALS-long arrays; the ISA is the caller's.
        unsafe {
            let kv = S::F64::splat(k);
            let zero = S::F64::splat(0.0);
            let (mut s, mut q) = ([zero; MAX_VECTORS], [zero; MAX_VECTORS]);
            let mut i = 0;
            while i < whole {
                for v in 0..vectors {
                    let at = i + v * lanes;
                    let u = rows.u_vector::<S>(at).sub(kv);
                    let w = match rows.b {
                        Some(b) => S::load_f64(b.as_ptr().add(at)),
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
/// r·((u_i − mean_u) − b_i·mean_ub) in f64, rounded once, u_i as [`Rows`]
/// makes it, b = x̂ (the normalised row) required; `out` holds a.len().
///
/// # Safety
/// As [`pair_sums`]; `out` is writable for a.len() elements and overlaps
/// none of the rows.
#[inline(always)]
pub(crate) unsafe fn gradient_row<S: Simd>(
    rows: Rows<'_, S::E>,
    out: *mut S::E,
    r: f64,
    mean_u: f64,
    mean_ub: f64,
) {
    rows.check();
    let b = rows.b.expect("gradient_row: the normalised row is missing");
    let lanes = S::F64::LANES;
    let n = rows.a.len();
    let whole = n / lanes * lanes;
    // SAFETY: every access is of an element below n of every row
    // (`Rows::check`) and of `out` (the caller's bounds); the ISA is the
    // caller's.
    unsafe {
        let (rv, mu, mub) = (
            S::F64::splat(r),
            S::F64::splat(mean_u),
            S::F64::splat(mean_ub),
        );
        let mut i = 0;
        while i < whole {
            let x = S::load_f64(b.as_ptr().add(i));
            let g = rv.mul(rows.u_vector::<S>(i).sub(mu).sub(x.mul(mub)));
            S::store_f64(g, out.add(i));
            i += lanes;
        }
        for (i, x) in b.iter().enumerate().take(n).skip(whole) {
            let g = r * ((rows.u(i) - mean_u) - x.to_f64() * mean_ub);
            *out.add(i) = S::E::from_f64(g);
        }
    }
}

/// `out_i = (a_i − mean)·r` in f64, rounded once to the element type, for
/// the `n` elements from `a` into `out` (which may be `a`: each element is
/// read before it is written).
///
/// # Safety
/// As [`pair_sums`]; `a` is readable and `out` writable for `n` elements.
#[inline(always)]
pub(crate) unsafe fn normalise_row<S: Simd>(
    a: *const S::E,
    out: *mut S::E,
    n: usize,
    mean: f64,
    r: f64,
) {
    let lanes = S::F64::LANES;
    let whole = n / lanes * lanes;
    // SAFETY: elements below n (the caller's bounds); the ISA is the caller's.
    unsafe {
        let (mv, rv) = (S::F64::splat(mean), S::F64::splat(r));
        let mut i = 0;
        while i < whole {
            S::store_f64(S::load_f64(a.add(i)).sub(mv).mul(rv), out.add(i));
            i += lanes;
        }
        for i in whole..n {
            *out.add(i) = S::E::from_f64(((*a.add(i)).to_f64() - mean) * r);
        }
    }
}

/// Elements `from..` of the rows continuing the partial sums `s` and `q`
/// (element i into partial sum i mod `PARTIALS`): the scalar statement of
/// [`pair_sums`], and the vector paths' tail.
#[inline(always)]
fn add_tail<E: SimdElement>(
    rows: Rows<'_, E>,
    k: f64,
    from: usize,
    s: &mut [f64; PARTIALS],
    q: &mut [f64; PARTIALS],
) {
    for i in from..rows.a.len() {
        let u = rows.u(i) - k;
        let w = rows.b.map_or(u, |b| b[i].to_f64());
        s[i % PARTIALS] += u;
        q[i % PARTIALS] += u * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{dispatch, Isa, Kernel};

    struct Sums<'a, E> {
        rows: Rows<'a, E>,
        k: f64,
    }

    impl<E: SimdElement> Kernel<E> for Sums<'_, E> {
        type Output = (f64, f64);
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) -> (f64, f64) {
            // SAFETY: `dispatch` runs this for S on a CPU that has S's ISA.
            unsafe { pair_sums::<S>(self.rows, self.k) }
        }
    }

    struct Normalise<'a, E> {
        a: &'a [E],
        out: &'a mut [E],
        mean: f64,
        r: f64,
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
        m: [f64; 3],
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
    fn statement<E: SimdElement>(rows: Rows<'_, E>, k: f64) -> (f64, f64) {
        let (mut s, mut q) = ([0.0; PARTIALS], [0.0; PARTIALS]);
        add_tail(rows, k, 0, &mut s, &mut q);
        (combine(s), combine(q))
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
                    (Rows::of(&a[..]), a[0].to_f64()),
                    (Rows::of(&a[..]), 0.0),
                    (
                        Rows {
                            a: &a,
                            g: None,
                            b: Some(b),
                        },
                        0.0,
                    ),
                    (
                        Rows {
                            a: &a,
                            g: Some(g),
                            b: Some(b),
                        },
                        0.0,
                    ),
                    (
                        Rows {
                            a: &a,
                            g: Some(g),
                            b: None,
                        },
                        0.5,
                    ),
                ];
                for (rows, k) in cases {
                    let got = dispatch(isa, Sums { rows, k });
                    let want = statement(rows, k);
                    assert_eq!(got.0.to_bits(), want.0.to_bits(), "{isa:?} n={n} sum");
                    assert_eq!(got.1.to_bits(), want.1.to_bits(), "{isa:?} n={n} second");
                }
                let (mean, r) = (0.123, 3.7);
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
                for (o, x) in out.iter().zip(&a) {
                    let want = E::from_f64((x.to_f64() - mean) * r);
                    assert_eq!(
                        o.to_f64().to_bits(),
                        want.to_f64().to_bits(),
                        "{isa:?} n={n}"
                    );
                }
                let m = [1.7, -0.03, 0.41];
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
                        // dx̂ rounded to E first, as the kernels make it.
                        let u = gain.map_or(a[i], |g| a[i] * g[i]).to_f64();
                        let want = E::from_f64(m[0] * ((u - m[1]) - b[i].to_f64() * m[2]));
                        assert_eq!(
                            o.to_f64().to_bits(),
                            want.to_f64().to_bits(),
                            "{isa:?} n={n} i={i}"
                        );
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
                assert_eq!(*o, ((f64::from(*x) + 1.5) * 0.25) as f32, "{isa:?}");
            }
        }
    }
}
