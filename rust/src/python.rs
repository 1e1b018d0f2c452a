//! The only file that knows about Python: converts NumPy arrays to slices,
//! releases the GIL around every computation, and turns engine errors into
//! exceptions (in `to_py`, the one place that does).
//!
//! The Python layer (`lstm_fast/functional.py`) has already checked shapes,
//! resolved the dtype and made every array C-contiguous; here we only borrow.

use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;
use crate::float::Float;
use crate::lstm::{self, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence};
use crate::simd::{self, Isa};
use crate::threads;

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Value(msg) => PyValueError::new_err(msg),
        Error::TooLarge(msg) => PyMemoryError::new_err(msg),
    }
}

type In<'py, E> = PyReadonlyArrayDyn<'py, E>;
type Out<'py, E> = PyReadwriteArrayDyn<'py, E>;
/// Three optional arguments passed together (dy, dh_n, dc_n).
type Opt3<'a, 'py> = (
    Option<&'a Bound<'py, PyAny>>,
    Option<&'a Bound<'py, PyAny>>,
    Option<&'a Bound<'py, PyAny>>,
);

fn slice<'a, E: Float + numpy::Element>(name: &str, a: &'a In<'_, E>) -> PyResult<&'a [E]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous and aligned")))
}

fn slice_mut<'a, E: Float + numpy::Element>(
    name: &str,
    a: &'a mut Out<'_, E>,
) -> PyResult<&'a mut [E]> {
    a.as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous and aligned")))
}

fn opt_slice<'a, E: Float + numpy::Element>(
    name: &str,
    a: &'a Option<In<'_, E>>,
) -> PyResult<Option<&'a [E]>> {
    a.as_ref().map(|a| slice(name, a)).transpose()
}

fn lengths_vec(lengths: Option<PyReadonlyArrayDyn<'_, i64>>) -> PyResult<Option<Vec<usize>>> {
    lengths
        .map(|l| {
            l.as_array()
                .iter()
                .map(|&v| {
                    usize::try_from(v).map_err(|_| {
                        PyValueError::new_err(format!("lengths must be >= 0, got {v}"))
                    })
                })
                .collect()
        })
        .transpose()
}

/// The arrays that describe one sequence, borrowed from Python.
struct SeqArrays<'py, E: numpy::Element> {
    x: In<'py, E>,
    w_ih: In<'py, E>,
    w_hh: In<'py, E>,
    bias: Option<In<'py, E>>,
    h0: Option<In<'py, E>>,
    c0: Option<In<'py, E>>,
    lengths: Option<Vec<usize>>,
    batch_first: bool,
    reverse: bool,
}

impl<'py, E: Float + numpy::Element> SeqArrays<'py, E> {
    fn dims(&self) -> PyResult<Dims> {
        let (xs, ws) = (self.x.shape(), self.w_hh.shape());
        if xs.len() != 3 || ws.len() != 2 {
            return Err(PyValueError::new_err("x must be 3-D and w_hh 2-D"));
        }
        let (steps, batch) = if self.batch_first {
            (xs[1], xs[0])
        } else {
            (xs[0], xs[1])
        };
        Ok(Dims {
            steps,
            batch,
            input: xs[2],
            hidden: ws[1],
        })
    }

    fn sequence(&self) -> PyResult<Sequence<'_, E>> {
        Ok(Sequence {
            dims: self.dims()?,
            batch_first: self.batch_first,
            reverse: self.reverse,
            lengths: self.lengths.as_deref(),
            x: slice("x", &self.x)?,
            w_ih: slice("w_ih", &self.w_ih)?,
            w_hh: slice("w_hh", &self.w_hh)?,
            bias: opt_slice("bias", &self.bias)?,
            h0: opt_slice("h0", &self.h0)?,
            c0: opt_slice("c0", &self.c0)?,
        })
    }
}

fn extract<'py, E: numpy::Element>(name: &str, a: &Bound<'py, PyAny>) -> PyResult<In<'py, E>> {
    a.extract::<In<'py, E>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a C-contiguous array of the compute dtype"
        ))
    })
}

fn extract_opt<'py, E: numpy::Element>(
    name: &str,
    a: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<In<'py, E>>> {
    a.map(|a| extract(name, a)).transpose()
}

fn extract_out<'py, E: numpy::Element>(name: &str, a: &Bound<'py, PyAny>) -> PyResult<Out<'py, E>> {
    let arr = a.cast::<PyArrayDyn<E>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a writable array of the compute dtype"
        ))
    })?;
    arr.try_readwrite()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn seq_arrays<'py, E: Float + numpy::Element>(
    x: &Bound<'py, PyAny>,
    w_ih: &Bound<'py, PyAny>,
    w_hh: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    h0: Option<&Bound<'py, PyAny>>,
    c0: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArrayDyn<'py, i64>>,
    batch_first: bool,
    reverse: bool,
) -> PyResult<SeqArrays<'py, E>> {
    Ok(SeqArrays {
        x: extract("x", x)?,
        w_ih: extract("w_ih", w_ih)?,
        w_hh: extract("w_hh", w_hh)?,
        bias: extract_opt("bias", bias)?,
        h0: extract_opt("h0", h0)?,
        c0: extract_opt("c0", c0)?,
        lengths: lengths_vec(lengths)?,
        batch_first,
        reverse,
    })
}

#[allow(clippy::too_many_arguments)]
fn forward_typed<'py, E: Float + numpy::Element>(
    py: Python<'py>,
    arrays: SeqArrays<'py, E>,
    y: &Bound<'py, PyAny>,
    h_n: &Bound<'py, PyAny>,
    c_n: &Bound<'py, PyAny>,
    cache: Option<(&Bound<'py, PyAny>, &Bound<'py, PyAny>, &Bound<'py, PyAny>)>,
) -> PyResult<()> {
    let seq = arrays.sequence()?;
    let (mut y, mut h_n, mut c_n) = (
        extract_out::<E>("y", y)?,
        extract_out::<E>("h_n", h_n)?,
        extract_out::<E>("c_n", c_n)?,
    );
    let mut cache = cache
        .map(|(g, c, h)| {
            Ok::<_, PyErr>((
                extract_out::<E>("gates", g)?,
                extract_out::<E>("cells", c)?,
                extract_out::<E>("h_prev", h)?,
            ))
        })
        .transpose()?;
    let out = Outputs {
        y: slice_mut("y", &mut y)?,
        h_n: slice_mut("h_n", &mut h_n)?,
        c_n: slice_mut("c_n", &mut c_n)?,
    };
    let cache = match cache.as_mut() {
        Some((g, c, h)) => Some(Cache {
            gates: slice_mut("gates", g)?,
            cells: slice_mut("cells", c)?,
            h_prev: slice_mut("h_prev", h)?,
        }),
        None => None,
    };
    py.detach(|| lstm::forward(&seq, out, cache)).map_err(to_py)
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<'py, E: Float + numpy::Element>(
    py: Python<'py>,
    arrays: SeqArrays<'py, E>,
    cache: (&Bound<'py, PyAny>, &Bound<'py, PyAny>, &Bound<'py, PyAny>),
    seeds: Opt3<'_, 'py>,
    grads: [&Bound<'py, PyAny>; 5],
    db: Option<&Bound<'py, PyAny>>,
    scratch: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let seq = arrays.sequence()?;
    let (gates, cells, h_prev) = (
        extract::<E>("gates", cache.0)?,
        extract::<E>("cells", cache.1)?,
        extract::<E>("h_prev", cache.2)?,
    );
    let (dy, dh_n, dc_n) = (
        extract_opt::<E>("dy", seeds.0)?,
        extract_opt::<E>("dh_n", seeds.1)?,
        extract_opt::<E>("dc_n", seeds.2)?,
    );
    let names = ["dx", "dh0", "dc0", "dw_ih", "dw_hh"];
    let mut outs = Vec::with_capacity(5);
    for (name, g) in names.iter().zip(grads) {
        outs.push(extract_out::<E>(name, g)?);
    }
    let mut db = db.map(|d| extract_out::<E>("db", d)).transpose()?;
    let mut scratch = scratch
        .map(|d| extract_out::<E>("scratch", d))
        .transpose()?;
    let [dx, dh0, dc0, dw_ih, dw_hh] = outs.as_mut_slice() else {
        unreachable!("five gradient arrays")
    };
    let grads = Grads {
        dx: slice_mut("dx", dx)?,
        dh0: slice_mut("dh0", dh0)?,
        dc0: slice_mut("dc0", dc0)?,
        dw_ih: slice_mut("dw_ih", dw_ih)?,
        dw_hh: slice_mut("dw_hh", dw_hh)?,
        db: db.as_mut().map(|d| slice_mut("db", d)).transpose()?,
        scratch: scratch
            .as_mut()
            .map(|d| slice_mut("scratch", d))
            .transpose()?,
    };
    let cache = CacheRef {
        gates: slice("gates", &gates)?,
        cells: slice("cells", &cells)?,
        h_prev: slice("h_prev", &h_prev)?,
    };
    let seeds = Seeds {
        dy: opt_slice("dy", &dy)?,
        dh_n: opt_slice("dh_n", &dh_n)?,
        dc_n: opt_slice("dc_n", &dc_n)?,
    };
    py.detach(|| lstm::backward(&seq, cache, seeds, grads))
        .map_err(to_py)
}

/// Whether `x` holds float64 (else float32): a look at its dtype, so the
/// arrays are borrowed only once, by `seq_arrays`.
fn is_f64(x: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = x.py();
    let dtype = x
        .cast::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err("x must be a float32 or float64 array"))?
        .dtype();
    if dtype.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(true)
    } else if dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(false)
    } else {
        Err(PyTypeError::new_err(format!(
            "x must be a float32 or float64 array, got {dtype}"
        )))
    }
}

#[pymodule]
mod _core {
    use super::*;

    /// Forward pass of one layer and direction into preallocated outputs.
    #[pyfunction]
    #[pyo3(signature = (x, w_ih, w_hh, bias, h0, c0, lengths, batch_first, reverse, y, h_n, c_n, gates=None, cells=None, h_prev=None))]
    #[allow(clippy::too_many_arguments)]
    fn forward<'py>(
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        w_ih: &Bound<'py, PyAny>,
        w_hh: &Bound<'py, PyAny>,
        bias: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        lengths: Option<PyReadonlyArrayDyn<'py, i64>>,
        batch_first: bool,
        reverse: bool,
        y: &Bound<'py, PyAny>,
        h_n: &Bound<'py, PyAny>,
        c_n: &Bound<'py, PyAny>,
        gates: Option<&Bound<'py, PyAny>>,
        cells: Option<&Bound<'py, PyAny>>,
        h_prev: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let cache = match (gates, cells, h_prev) {
            (Some(g), Some(c), Some(h)) => Some((g, c, h)),
            (None, None, None) => None,
            _ => return Err(PyValueError::new_err("gates, cells and h_prev go together")),
        };
        if is_f64(x)? {
            let a = seq_arrays::<f64>(x, w_ih, w_hh, bias, h0, c0, lengths, batch_first, reverse)?;
            forward_typed(py, a, y, h_n, c_n, cache)
        } else {
            let a = seq_arrays::<f32>(x, w_ih, w_hh, bias, h0, c0, lengths, batch_first, reverse)?;
            forward_typed(py, a, y, h_n, c_n, cache)
        }
    }

    /// Backward pass (BPTT) of one layer and direction into preallocated gradients.
    #[pyfunction]
    #[pyo3(signature = (x, w_ih, w_hh, c0, lengths, batch_first, reverse, gates, cells, h_prev, dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, db=None, scratch=None))]
    #[allow(clippy::too_many_arguments)]
    fn backward<'py>(
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        w_ih: &Bound<'py, PyAny>,
        w_hh: &Bound<'py, PyAny>,
        c0: Option<&Bound<'py, PyAny>>,
        lengths: Option<PyReadonlyArrayDyn<'py, i64>>,
        batch_first: bool,
        reverse: bool,
        gates: &Bound<'py, PyAny>,
        cells: &Bound<'py, PyAny>,
        h_prev: &Bound<'py, PyAny>,
        dy: Option<&Bound<'py, PyAny>>,
        dh_n: Option<&Bound<'py, PyAny>>,
        dc_n: Option<&Bound<'py, PyAny>>,
        dx: &Bound<'py, PyAny>,
        dh0: &Bound<'py, PyAny>,
        dc0: &Bound<'py, PyAny>,
        dw_ih: &Bound<'py, PyAny>,
        dw_hh: &Bound<'py, PyAny>,
        db: Option<&Bound<'py, PyAny>>,
        scratch: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let grads = [dx, dh0, dc0, dw_ih, dw_hh];
        if is_f64(x)? {
            let a =
                seq_arrays::<f64>(x, w_ih, w_hh, None, None, c0, lengths, batch_first, reverse)?;
            backward_typed(
                py,
                a,
                (gates, cells, h_prev),
                (dy, dh_n, dc_n),
                grads,
                db,
                scratch,
            )
        } else {
            let a =
                seq_arrays::<f32>(x, w_ih, w_hh, None, None, c0, lengths, batch_first, reverse)?;
            backward_typed(
                py,
                a,
                (gates, cells, h_prev),
                (dy, dh_n, dc_n),
                grads,
                db,
                scratch,
            )
        }
    }

    /// The padded hidden size of the cache layout for an element size in bytes.
    #[pyfunction]
    fn hidden_pad(hidden: usize, itemsize: usize) -> PyResult<usize> {
        match itemsize {
            4 => Ok(lstm::hidden_pad::<f32>(hidden)),
            8 => Ok(lstm::hidden_pad::<f64>(hidden)),
            _ => Err(PyValueError::new_err(format!(
                "itemsize must be 4 or 8, got {itemsize}"
            ))),
        }
    }

    #[pyfunction]
    fn set_num_threads(n: i64) -> PyResult<()> {
        let n = usize::try_from(n).unwrap_or(0);
        threads::set_num_threads(n).map_err(to_py)
    }

    #[pyfunction]
    fn get_num_threads() -> usize {
        threads::num_threads()
    }

    /// Drops the pool without joining it; registered with os.register_at_fork.
    #[pyfunction]
    fn _after_fork_in_child() {
        threads::forget_pool_after_fork();
    }

    #[pyfunction]
    fn available_isas() -> Vec<&'static str> {
        Isa::available().into_iter().map(Isa::name).collect()
    }

    #[pyfunction]
    fn get_isa() -> &'static str {
        simd::active().name()
    }

    #[pyfunction]
    fn set_isa(name: &str) -> PyResult<()> {
        Isa::parse(name).and_then(simd::set_active).map_err(to_py)
    }
}
