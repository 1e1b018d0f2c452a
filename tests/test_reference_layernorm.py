"""The NumPy reference's LayerNorm LSTM (docs/variants.md, 'LayerNorm LSTM') against
independent oracles.

- A hand-written torch loop (autograd, ``torch.nn.functional.layer_norm``) of the
  equations: outputs, final states and every gradient, float64, tight; with
  lengths, reverse, batch_first, h0/c0, a projection, peepholes, clip, and the
  regularisation (the loop draws its masks from ``lstm_fast.masks`` and applies
  them itself; tests/test_reference_regularisation.py uses it too).
- Central finite differences in float64 for every gradient, the six gains and
  biases included; the cell API likewise.
- Bad arguments are errors that name the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import helpers
from tests.helpers import BAD_LAYER_NORM, bad_option_id, loss_of, numeric_gradient, ref

try:
    from lstm_fast import masks
except Exception:  # the compiled engine is missing: load the module beside the reference
    import importlib

    masks = importlib.import_module(ref.__name__.rsplit(".", 1)[0] + ".masks")

NORM_NAMES = ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c")
NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr", "peepholes", *NORM_NAMES)
GRAD_NAME = {"x": "dx", "h0": "dh0", "c0": "dc0"}
# Which gains and biases a test gives: all six, haste's set (no bias on the two
# projections: the gate biases play that role) or none (gains 1, biases 0).
NORM_SETS = {"all": NORM_NAMES, "haste": ("w_ln_ih", "w_ln_hh", "w_ln_c", "b_ln_c"), "none": ()}


def make_arrays(seed, T, B, I, H, P=None, *, peepholes=False, norms=NORM_NAMES, batch_first=False):  # noqa: E741
    """Random float64 arguments of one layer (``NAMES``; ``None`` where absent) and
    the output gradients dy, dh_n, dc_n."""
    rng = np.random.default_rng(seed)
    S = H if P is None else P
    k = 1.5 / np.sqrt(H)
    seq = (B, T) if batch_first else (T, B)
    a = {
        "x": rng.standard_normal((*seq, I)),
        "w_ih": rng.uniform(-k, k, (4 * H, I)),
        "w_hh": rng.uniform(-k, k, (4 * H, S)),
        "b_ih": rng.uniform(-k, k, 4 * H),
        "b_hh": rng.uniform(-k, k, 4 * H),
        "h0": 0.5 * rng.standard_normal((B, S)),
        "c0": rng.standard_normal((B, H)),
        "w_hr": None if P is None else rng.uniform(-k, k, (P, H)),
        "peepholes": rng.uniform(-1, 1, 3 * H) if peepholes else None,
        "dy": rng.standard_normal((*seq, S)),
        "dh_n": rng.standard_normal((B, S)),
        "dc_n": rng.standard_normal((B, H)),
    }
    for name in NORM_NAMES:
        width = H if name.endswith("_c") else 4 * H
        given = name in norms
        a[name] = (
            (rng.uniform(0.5, 1.5, width) if name[0] == "w" else rng.uniform(-0.5, 0.5, width))
            if given
            else None
        )
    return a


def run(a, **options):
    """reference.forward with the arrays of ``a``."""
    return ref.forward(**{**{k: a[k] for k in NAMES}, **options})


def check_finite_differences(a, grads, loss, names=NAMES):
    """Every gradient of ``grads`` of an argument in ``a`` against central differences."""
    helpers.check_finite_differences(a, grads, loss, names)


# --------------------------------------------------------------------------
# The torch oracle: the equations of docs/variants.md as a loop of torch ops


def torch_oracle(
    a,
    *,
    lengths=None,
    reverse=False,
    batch_first=False,
    clip=None,
    layer_norm=False,
    layer_norm_eps=1e-5,
    zoneout=0.0,
    recurrent_dropout=0.0,
    weight_drop=0.0,
    seed=None,
    layer=0,
    training=True,
):
    """(y, h_n, c_n, {name: gradient}) of the loss ``loss_of`` by autograd."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.tensor(a[k], requires_grad=True) for k in NAMES if a[k] is not None}
    x = t["x"].transpose(0, 1) if batch_first else t["x"]
    T, B, _ = x.shape
    H = a["w_hh"].shape[0] // 4
    P = a["w_hh"].shape[1]
    direction = int(reverse)
    z_h, z_c = zoneout if isinstance(zoneout, tuple) else (zoneout, zoneout)

    def keep(stream, shape, p):  # the inverted-dropout factor, 1/(1-p) or 0
        dropped = masks.events(seed, stream, layer, direction, shape, p)
        return torch.tensor(np.where(dropped, 0.0, 1.0 / (1.0 - p)))

    w_hh = t["w_hh"]
    if training and weight_drop:
        w_hh = w_hh * keep(masks.WEIGHT_DROP, (4 * H, P), weight_drop)
    h_keep = None
    if training and recurrent_dropout:
        h_keep = keep(masks.RECURRENT_DROPOUT, (B, P), recurrent_dropout)
    zone = {}
    for name, stream, rate, width in (
        ("h", masks.ZONEOUT_H, z_h, P),
        ("c", masks.ZONEOUT_C, z_c, H),
    ):
        if rate and training:
            zone[name] = torch.tensor(
                masks.events(seed, stream, layer, direction, (T, B, width), rate)
            )
        elif rate:
            zone[name] = rate

    def zoneout_mix(name, prev, new, t_idx, rows):
        if name not in zone:
            return new
        if isinstance(zone[name], float):
            return zone[name] * prev + (1 - zone[name]) * new
        return torch.where(zone[name][t_idx, rows], prev, new)

    def norm(v, w, b, width):
        if not layer_norm:
            return v
        return F.layer_norm(v, (width,), t.get(w), t.get(b), layer_norm_eps)

    def clamp(v):
        return v if clip is None else torch.clamp(v, -clip, clip)

    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    rows = torch.arange(B)
    h = t.get("h0", torch.zeros(B, P, dtype=torch.float64))
    c = t.get("c0", torch.zeros(B, H, dtype=torch.float64))
    y_rows = {}
    for s in range(T):
        valid = torch.tensor(s < lengths)
        t_idx = torch.tensor(np.where(s < lengths, lengths - 1 - s if reverse else s, 0))
        h_in = h if h_keep is None else h * h_keep
        pre = norm(x[t_idx, rows] @ t["w_ih"].T, "w_ln_ih", "b_ln_ih", 4 * H)
        pre = pre + norm(h_in @ w_hh.T, "w_ln_hh", "b_ln_hh", 4 * H)
        pre = pre + t.get("b_ih", 0) + t.get("b_hh", 0)
        z_i, z_f, z_g, z_o = pre.chunk(4, dim=1)
        if "peepholes" in t:
            p_i, p_o, p_f = t["peepholes"].chunk(3)
            z_i, z_f = z_i + p_i * c, z_f + p_f * c
        c_new = torch.sigmoid(clamp(z_f)) * c + torch.sigmoid(clamp(z_i)) * torch.tanh(clamp(z_g))
        if "peepholes" in t:
            z_o = z_o + p_o * c_new
        h_new = torch.sigmoid(clamp(z_o)) * torch.tanh(norm(c_new, "w_ln_c", "b_ln_c", H))
        if "w_hr" in t:
            h_new = h_new @ t["w_hr"].T
        h_new = zoneout_mix("h", h, h_new, t_idx, rows)
        c_new = zoneout_mix("c", c, c_new, t_idx, rows)
        for b in range(B):
            if valid[b]:
                y_rows[int(t_idx[b]), b] = h_new[b]
        h = torch.where(valid[:, None], h_new, h)
        c = torch.where(valid[:, None], c_new, c)
    zero = torch.zeros(P, dtype=torch.float64)
    y = torch.stack([torch.stack([y_rows.get((ti, b), zero) for b in range(B)]) for ti in range(T)])
    if batch_first:
        y = y.transpose(0, 1)
    loss = (y * torch.tensor(a["dy"])).sum() + (h * torch.tensor(a["dh_n"])).sum()
    (loss + (c * torch.tensor(a["dc_n"])).sum()).backward()
    grads = {k: v.grad.numpy() for k, v in t.items()}
    return y.detach().numpy(), h.detach().numpy(), c.detach().numpy(), grads


def assert_matches_oracle(a, out, grads, oracle):
    """Outputs and every gradient of the reference against the torch oracle's."""
    y, h_n, c_n, expected = oracle
    tight = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(out.y, y, **tight, err_msg="y")
    np.testing.assert_allclose(out.h_n, h_n, **tight, err_msg="h_n")
    np.testing.assert_allclose(out.c_n, c_n, **tight, err_msg="c_n")
    for name in NAMES:
        if a[name] is None:
            continue
        field = GRAD_NAME.get(name, "d" + name)
        np.testing.assert_allclose(getattr(grads, field), expected[name], **tight, err_msg=field)


LAYOUTS = {
    "plain": {},
    "lengths-reverse": dict(lengths=[3, 0, 2, 4], reverse=True),
    "lengths-batch-first": dict(lengths=[4, 1, 3, 2], batch_first=True),
}


# --------------------------------------------------------------------------
# Against torch autograd


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("norms", NORM_SETS, ids=str)
def test_layer_norm_matches_torch(norms, layout):
    pytest.importorskip("torch")
    options = dict(layer_norm=True, **LAYOUTS[layout])
    a = make_arrays(
        10, 4, 4, 3, 5, norms=NORM_SETS[norms], batch_first=options.get("batch_first", False)
    )
    out = run(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert isinstance(grads, ref.LayerNormGradients)
    assert grads[:7] == tuple(grads)[:7] and len(grads) == 16
    for name in NORM_NAMES:  # an absent gain or bias has no gradient
        assert (getattr(grads, "d" + name) is None) == (a[name] is None), name
    assert_matches_oracle(a, out, grads, torch_oracle(a, **options))


@pytest.mark.parametrize(
    "shape, options",
    [
        (dict(P=3), {}),
        (dict(peepholes=True), dict(clip=0.8)),
        (dict(P=2, peepholes=True), dict(clip=1.0, lengths=[2, 4, 1, 3], reverse=True)),
    ],
    ids=["projection", "peepholes-clip", "projection-peepholes-clip-reverse"],
)
def test_layer_norm_variants_match_torch(shape, options):
    pytest.importorskip("torch")
    options = dict(layer_norm=True, layer_norm_eps=1e-3, **options)
    a = make_arrays(11, 4, 4, 3, 5, **shape)
    out = run(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    if options.get("clip"):
        z = np.abs(out.cache.z)
        assert np.any(z > options["clip"]) and np.any(z < options["clip"]), "clip must bite"
    assert_matches_oracle(a, out, grads, torch_oracle(a, **options))


def test_layer_norm_without_initial_state_and_biases_matches_torch():
    pytest.importorskip("torch")
    a = make_arrays(12, 3, 2, 2, 4)
    a.update(h0=None, c0=None, b_ih=None, b_hh=None)
    out = run(a, layer_norm=True)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert grads.db_ih is None and grads.db_hh is None
    assert_matches_oracle(a, out, grads, torch_oracle(a, layer_norm=True))


# --------------------------------------------------------------------------
# Finite differences


FD_CASES = {
    "all": (dict(), {}),
    "haste-lengths-reverse": (
        dict(norms=NORM_SETS["haste"]),
        dict(lengths=[2, 0, 3], reverse=True),
    ),
    "projection-peepholes-batch-first": (
        dict(P=2, peepholes=True),
        dict(lengths=[3, 1, 2], batch_first=True, layer_norm_eps=1e-2),
    ),
    "clip-activations": (
        dict(peepholes=True),
        dict(clip=0.7, activations=["HardSigmoid", "Softsign", "Elu"]),
    ),
}


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_layer_norm_gradients_match_finite_differences(case):
    shape, options = FD_CASES[case]
    options = dict(layer_norm=True, **options)
    a = make_arrays(13, 3, 3, 2, 3, batch_first=options.get("batch_first", False), **shape)
    out = run(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"], flow=True)
    assert grads.flow is not None
    check_finite_differences(a, grads, lambda: loss_of(run(a, **options), a))


@pytest.mark.parametrize("with_projection", [False, True], ids=["plain", "projection"])
def test_layer_norm_cell_gradients_match_finite_differences(with_projection):
    a = make_arrays(14, 1, 3, 2, 3, P=2 if with_projection else None, peepholes=with_projection)
    a["x_t"] = a["x"][0]
    weights = ("w_ih", "w_hh", "b_ih", "b_hh")

    def cell():
        options = {k: a[k] for k in ("w_hr", "peepholes", *NORM_NAMES)}
        return ref.cell_forward(
            a["x_t"], a["h0"], a["c0"], *(a[k] for k in weights), layer_norm=True, **options
        )

    def loss():
        step = cell()
        return float(np.sum(step.h_new * a["dh_n"]) + np.sum(step.c_new * a["dc_n"]))

    grads = ref.cell_backward(cell().cache, a["dh_n"], a["dc_n"])
    assert isinstance(grads, ref.CellLayerNormGradients)
    names = ("x_t", *weights, "w_hr", "peepholes", *NORM_NAMES)
    a_named = {**a, "x": None}
    for name in names:
        if a_named.get(name) is None:
            continue
        field = "dx" if name == "x_t" else "d" + name
        np.testing.assert_allclose(
            getattr(grads, field),
            numeric_gradient(loss, a[name]),
            rtol=1e-6,
            atol=1e-6,
            err_msg=name,
        )
    np.testing.assert_allclose(grads.dh, numeric_gradient(loss, a["h0"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads.dc, numeric_gradient(loss, a["c0"]), rtol=1e-6, atol=1e-6)


def test_layer_norm_cell_is_one_step_of_the_sequence():
    a = make_arrays(15, 1, 3, 2, 4)
    norms = {k: a[k] for k in NORM_NAMES}
    seq = run(a, layer_norm=True)
    step = ref.cell_forward(
        a["x"][0],
        a["h0"],
        a["c0"],
        a["w_ih"],
        a["w_hh"],
        a["b_ih"],
        a["b_hh"],
        layer_norm=True,
        **norms,
    )
    np.testing.assert_allclose(step.h_new, seq.h_n, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(step.c_new, seq.c_n, rtol=1e-13, atol=1e-14)
    g_seq = ref.backward(seq.cache, None, a["dh_n"], a["dc_n"])
    g_cell = ref.cell_backward(step.cache, a["dh_n"], a["dc_n"])
    for field in ("dw_ih", "dw_hh", "db_ih", *("d" + n for n in NORM_NAMES)):
        np.testing.assert_allclose(
            getattr(g_cell, field), getattr(g_seq, field), rtol=1e-12, atol=1e-13, err_msg=field
        )


# --------------------------------------------------------------------------
# What the normalisation does, and the defaults


def test_layer_norm_is_invariant_to_scaling_the_weights():
    """LN makes the gates invariant to a positive scale of w_ih and of w_hh
    (up to eps): the property the normalisation exists for."""
    a = make_arrays(16, 4, 3, 2, 4)
    out = run(a, layer_norm=True, layer_norm_eps=1e-12)
    scaled = dict(a, w_ih=7.0 * a["w_ih"], w_hh=0.3 * a["w_hh"])
    np.testing.assert_allclose(
        run(scaled, layer_norm=True, layer_norm_eps=1e-12).y, out.y, rtol=1e-9, atol=1e-9
    )


def test_normalised_statistics():
    a = make_arrays(17, 4, 3, 2, 4)
    cache = run(a, layer_norm=True).cache
    for name in ("sx", "sh", "c"):
        v, rstd = getattr(cache.ln, name + "_hat"), getattr(cache.ln, name + "_rstd")[..., 0]
        np.testing.assert_allclose(v.mean(axis=-1), 0, atol=1e-12, err_msg=name)
        # var(x_hat) = var / (var + eps) = 1 - eps * rstd^2, eps = 1e-5
        np.testing.assert_allclose(v.var(axis=-1), 1 - 1e-5 * rstd**2, rtol=1e-12, err_msg=name)


def test_layer_norm_off_is_the_plain_lstm_bit_for_bit():
    a = make_arrays(18, 4, 3, 2, 4, norms=())
    plain = ref.forward(*(a[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")))
    same = run(a, layer_norm=False)
    for field in ("y", "h_n", "c_n"):
        assert getattr(plain, field).tobytes() == getattr(same, field).tobytes(), field
    g = ref.backward(same.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert type(g) is type(ref.backward(plain.cache, a["dy"], a["dh_n"], a["dc_n"]))


def test_float32_layer_norm_follows_float64():
    a = make_arrays(19, 4, 3, 2, 4)
    a32 = {k: None if v is None else v.astype(np.float32) for k, v in a.items()}
    out32, out64 = run(a32, layer_norm=True), run(a, layer_norm=True)
    assert out32.y.dtype == np.float32
    np.testing.assert_allclose(out32.y, out64.y, rtol=1e-4, atol=1e-5)
    g32 = ref.backward(out32.cache, a32["dy"], a32["dh_n"], a32["dc_n"])
    g64 = ref.backward(out64.cache, a["dy"], a["dh_n"], a["dc_n"])
    for field in ("dx", "dw_hh", "dw_ln_ih", "dw_ln_c", "db_ln_c"):
        assert getattr(g32, field).dtype == np.float32
        np.testing.assert_allclose(
            getattr(g32, field), getattr(g64, field), rtol=1e-3, atol=1e-4, err_msg=field
        )


# --------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("options, error, match", BAD_LAYER_NORM, ids=bad_option_id)
def test_bad_layer_norm_arguments_name_the_argument(options, error, match):
    a = make_arrays(20, 2, 2, 3, 4, norms=())
    with pytest.raises(error, match=match):
        run(a, **options)
    with pytest.raises(error, match=match):
        ref.cell_forward(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"], **options)


def test_float16_and_mixed_dtypes_follow_the_rules():
    a = make_arrays(21, 2, 2, 3, 4, norms=())
    a32 = {k: None if v is None else v.astype(np.float32) for k, v in a.items()}
    out = run(a32, layer_norm=True, w_ln_c=np.ones(4, np.float16))
    assert out.y.dtype == np.float32
    out = run(a32, layer_norm=True, w_ln_c=np.ones(4, np.float64))  # a float64 gain promotes
    assert out.y.dtype == np.float64
