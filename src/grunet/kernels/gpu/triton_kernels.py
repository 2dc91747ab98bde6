"""The Triton kernels of the GRU time loop: one persistent program per block of BLOCK_B batch rows.

The input side G = x W_ih^T + b_ih (T, B, 3H), rows r | z | n, is computed for all steps before the loop
(one large product). Each program then walks the whole sequence for its rows. Symbols as in grunet.reference
and grunet.contract:

    h_in = m_h * h                     (recurrent dropout; h_in = h without it)
    reset-after:   a   = W_hn h_in + b_hn
                   r = sigma(G_r + W_hr h_in + b_hr)   z = sigma(G_z + W_hz h_in + b_hz)   n = tanh(G_n + r a)
    reset-before:  rh  = r * h_in
                   r = sigma(G_r + W_hr h_in)          z = sigma(G_z + W_hz h_in)          n = tanh(G_n + W_hn rh)
    layer norm (reset-after): W_hh h_in -> LN(W_hh h_in) g_hh over its 3H values (the input side is in G)
    h~ = z h + (1 - z) n,   zoneout: h' = h + k (h~ - h)   (k: the (T, B, H) mask in training, 1 - p in eval)
    lengths: a row with t >= len keeps h and outputs 0

Two pairs of kernels (forward, backward) compute this:
- gru_forward_kernel / gru_backward_kernel hold the rows' state (BLOCK_B, HP) in registers, HP being H padded
  to a power of two >= 16 (tl.dot's smallest side); the padding is zero in the weight tiles, so padded
  units stay 0 and never reach a real one. Each gate's product is one tl.dot with an (HP, HP) tile of W_hh,
  loaded once before the time loop (RESIDENT) or at every step;
- gru_forward_wide_kernel / gru_backward_wide_kernel, for layers whose (HP, HP) tiles do not fit on chip:
  the state and the products sit in small global buffers and the products run in column tiles.
The backwards walk time the other way (equations beside them, as in kernels/cpu/gru_backward.cpp) and store
dG = [da_r | da_z | da_n] for every step (reset-after also da = d(W_hn h_in + b_hn); layer norm dP =
d(W_hh h_in)), from which the caller forms dW_hh and the biases with a few large products after the loop.
The per-step cell math is written once, in @triton.jit helpers both families call (the gates, the state
update with zoneout and lengths, what is saved for the backward, the backward's local derivatives); Triton
inlines them, and their switches stay constexpr.

Codes: ACT 0 sigmoid, 1 hard_sigmoid_keras2, 2 hard_sigmoid_keras3; ZONE 0 off, 1 the training mask, 2 eval
(keep_eval = 1 - p). Every product uses input_precision="ieee": float32 as the reference computes it (TF32
would differ from it by ~1e-3).

This file is imported twice by grunet.kernels.gpu.triton_layer: compiled for CUDA tensors and, with
TRITON_INTERPRET=1 while it is imported, interpreted (numpy) for CPU tensors. The kernels call only
triton.language's builtins (tl.full, not tl.zeros; tl.reduce with a combine function of this file, not
tl.sum): the helpers triton.language itself defines with @triton.jit were decorated when triton was first
imported, compiled if that was without TRITON_INTERPRET (torch.compile imports triton), and the interpreter
cannot call those.
"""
import triton
import triton.language as tl


@triton.jit
def _sigma(a, ACT: tl.constexpr):
    """The recurrent activation: sigmoid, clip(0.2 a + 0.5, 0, 1) (Keras 2) or clip(a / 6 + 0.5, 0, 1) (Keras 3)."""
    if ACT == 0:
        s = 1.0 / (1.0 + tl.exp(-a))
    elif ACT == 1:
        s = tl.minimum(tl.maximum(0.2 * a + 0.5, 0.0), 1.0)
    else:
        s = tl.minimum(tl.maximum(a / 6.0 + 0.5, 0.0), 1.0)
    return s


@triton.jit
def _sigma_backward(s, g, ACT: tl.constexpr):
    """d sigma(a) / da * g from s = sigma(a); the hard sigmoids pass g where they did not clip (torch's clamp)."""
    if ACT == 0:
        d = g * (1.0 - s) * s
    elif ACT == 1:
        d = tl.where((s > 0.0) & (s < 1.0), g * 0.2, 0.0)
    else:
        d = tl.where((s > 0.0) & (s < 1.0), g * (1.0 / 6.0), 0.0)
    return d


@triton.jit
def _tanh(a):
    # tanh(a) = 2 sigmoid(2a) - 1: absolute error ~1e-7 in float32; exp(-2a) = inf gives -1 exactly
    return 2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _row_sum(v):
    """Sum over the units of each row (tl.reduce with this file's combine function: see the docstring)."""
    return tl.reduce(v, 1, _add)


@triton.jit
def _tile(W, gate, H, HP: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Gate block `gate` of W_hh (3H, H) as an (HP, HP) tile, zero outside H x H; TRANSPOSED gives W^T (for
    h @ W^T in the forward), else W itself (for dG @ W in the backward)."""
    i = tl.arange(0, HP)[:, None]
    j = tl.arange(0, HP)[None, :]
    inside = (i < H) & (j < H)
    if TRANSPOSED:
        tile = tl.load(W + (gate * H + j) * H + i, mask=inside, other=0.0)
    else:
        tile = tl.load(W + (gate * H + i) * H + j, mask=inside, other=0.0)
    return tile


@triton.jit
def _weights(resident, W_hh, gate, H, HP: tl.constexpr, TRANSPOSED: tl.constexpr, RESIDENT: tl.constexpr):
    """The gate's W_hh tile for this step: the one loaded before the time loop (RESIDENT), else read again
    from global memory (L2 after the first step)."""
    if RESIDENT:
        tile = resident
    else:
        tile = _tile(W_hh, gate, H, HP, TRANSPOSED)
    return tile


# ----------------------------------------------------------------------------------------------------
# The per-step cell math both kernel families share (Triton inlines these calls; the switches stay constexpr).


@triton.jit
def _reset_after_gates(a_r, a_z, g_n, a, ACT: tl.constexpr):
    """reset-after: r = sigma(a_r), z = sigma(a_z), n = tanh(G_n + r a), with a = W_hn h_in + b_hn."""
    r = _sigma(a_r, ACT)
    z = _sigma(a_z, ACT)
    n = _tanh(g_n + r * a)
    return r, z, n


@triton.jit
def _new_state(h, z, n, Zone, bh_t, ok, keep_eval, valid, ZONE: tl.constexpr, HAS_LEN: tl.constexpr):
    """(h', output) of the step: h~ = z h + (1 - z) n; zoneout h' = h + k (h~ - h) (k from Zone, or keep_eval
    in eval); a padded row (not valid) keeps h and outputs 0."""
    h_new = z * h + (1.0 - z) * n
    if ZONE == 1:
        k = tl.load(Zone + bh_t, mask=ok, other=0.0)
        h_new = h + k * (h_new - h)
    elif ZONE == 2:
        h_new = h + keep_eval * (h_new - h)
    if HAS_LEN:
        h_new = tl.where(valid, h_new, h)
        out = tl.where(valid, h_new, 0.0)
    else:
        out = h_new
    return h_new, out


@triton.jit
def _save_step(R_s, Z_s, N_s, Aux_s, Hprev_s, bh_t, ok, r, z, n, aux, h, valid, HAS_LEN: tl.constexpr):
    """Store what the backward reads of the step: r, z, n, aux (reset-after a, reset-before rh) and h. A padded
    row's values take no part (its dG is 0): zeros keep NaN from x out."""
    if HAS_LEN:
        r = tl.where(valid, r, 0.0)
        z = tl.where(valid, z, 0.0)
        n = tl.where(valid, n, 0.0)
        aux = tl.where(valid, aux, 0.0)
        h = tl.where(valid, h, 0.0)
    tl.store(R_s + bh_t, r, mask=ok)
    tl.store(Z_s + bh_t, z, mask=ok)
    tl.store(N_s + bh_t, n, mask=ok)
    tl.store(Aux_s + bh_t, aux, mask=ok)
    tl.store(Hprev_s + bh_t, h, mask=ok)


@triton.jit
def _save_xhat(Xhat_s, bg_t, ok, H, x_r, x_z, x_n, valid, HAS_LEN: tl.constexpr):
    """Layer norm: store the step's normalised products xhat (zeros for a padded row)."""
    if HAS_LEN:
        x_r = tl.where(valid, x_r, 0.0)
        x_z = tl.where(valid, x_z, 0.0)
        x_n = tl.where(valid, x_n, 0.0)
    tl.store(Xhat_s + bg_t, x_r, mask=ok)
    tl.store(Xhat_s + bg_t + H, x_z, mask=ok)
    tl.store(Xhat_s + bg_t + 2 * H, x_n, mask=ok)


@triton.jit
def _save_rstd(Rstd_s, t, B, rows, row_ok, rstd, length, HAS_LEN: tl.constexpr):
    """Layer norm: store the rows' rstd of step t (0 for a padded row)."""
    if HAS_LEN:
        rstd = tl.where(t < length, rstd, 0.0)
    tl.store(Rstd_s + t.to(tl.int64) * B + rows, rstd, mask=row_ok)


@triton.jit
def _step_backward(dh, D_out, Zone, bh_t, ok, keep_eval, z, n, h_prev,
                   HAS_D_OUT: tl.constexpr, ZONE: tl.constexpr, ACT: tl.constexpr):
    """(d, d_direct, da_z, da_n) of the step from dh = dL/dh' (+ dL/dout_t when HAS_D_OUT):
        zoneout: d = k dh', d_direct = (1 - k) dh' (what reaches h itself; 0 without zoneout)
        dn = d (1 - z)   dz = d (h - n)   da_n = dn (1 - n^2)   da_z = sigma'(z) dz"""
    d = dh
    if HAS_D_OUT:
        d += tl.load(D_out + bh_t, mask=ok, other=0.0)
    if ZONE == 1:
        k = tl.load(Zone + bh_t, mask=ok, other=0.0)
        d_direct = d - k * d
        d = k * d
    elif ZONE == 2:
        d_direct = d - keep_eval * d
        d = keep_eval * d
    else:
        d_direct = 0.0
    dn = d - d * z
    da_z = _sigma_backward(z, d * (h_prev - n), ACT)
    da_n = dn * (1.0 - n * n)
    return d, d_direct, da_z, da_n


@triton.jit
def _reset_after_backward(r, aux, da_n, ACT: tl.constexpr):
    """reset-after, n = tanh(G_n + r a): da_r = sigma'(r) da_n a, da = da_n r (aux holds a)."""
    da_r = _sigma_backward(r, da_n * aux, ACT)
    da = da_n * r
    return da_r, da


@triton.jit
def _norm_backward(dx, xhat, mean_dx, mean_dxx, rstd):
    """Layer norm's backward for one gate: dP = rstd (dx - mean(dx) - xhat mean(dx xhat)), dx = dgh g."""
    return rstd * (dx - mean_dx - xhat * mean_dxx)


@triton.jit
def gru_forward_kernel(
    G, W_hh, B_hh, H0, M_rec, Zone, Len,            # inputs (float32 except Len int64)
    Out, H_n,                                       # outputs
    R_s, Z_s, N_s, Aux_s, Hprev_s,                  # saved for the backward (STORE), each (T, B, H)
    G_hh, Xhat_s, Rstd_s,                           # layer norm: gains (3H,), saved (T, B, 3H) and (T, B)
    T, B, H, keep_eval, eps,
    RESET_AFTER: tl.constexpr, ACT: tl.constexpr, REVERSE: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_B_HH: tl.constexpr, HAS_M_REC: tl.constexpr, ZONE: tl.constexpr, HAS_LEN: tl.constexpr,
    STORE: tl.constexpr, LAYER_NORM: tl.constexpr, RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr,
    HP: tl.constexpr,
):
    """The whole sequence for BLOCK_B rows. LAYER_NORM (reset-after only): the recurrent projection
    P = W_hh h_in is normalised over its 3H values per row, gh = (P - mean) rstd g_hh + b_hh, rstd =
    1 / sqrt(var + eps); the input side arrives in G already normalised."""
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, HP)
    row_ok = rows < B
    col_ok = cols < H
    ok = row_ok[:, None] & col_ok[None, :]
    bh = rows[:, None] * H + cols[None, :]          # offset of (row, unit) in a (B, H) matrix
    bg = rows[:, None] * (3 * H) + cols[None, :]    # offset of (row, unit of gate r) in a (B, 3H) matrix

    if HAS_H0:
        h = tl.load(H0 + bh, mask=ok, other=0.0)
    else:
        h = tl.full((BLOCK_B, HP), 0.0, tl.float32)
    if HAS_M_REC:
        m_rec = tl.load(M_rec + bh, mask=ok, other=0.0)
    if HAS_B_HH:
        b_hr = tl.load(B_hh + cols, mask=col_ok, other=0.0)[None, :]
        b_hz = tl.load(B_hh + H + cols, mask=col_ok, other=0.0)[None, :]
        b_hn = tl.load(B_hh + 2 * H + cols, mask=col_ok, other=0.0)[None, :]
    if LAYER_NORM:
        gain_r = tl.load(G_hh + cols, mask=col_ok, other=0.0)[None, :]
        gain_z = tl.load(G_hh + H + cols, mask=col_ok, other=0.0)[None, :]
        gain_n = tl.load(G_hh + 2 * H + cols, mask=col_ok, other=0.0)[None, :]
    if HAS_LEN:
        length = tl.load(Len + rows, mask=row_ok, other=0)
    else:
        length = 0  # no lengths: unused

    if RESIDENT:  # small layers: W_hh stays in registers for the whole sequence
        w_0 = _tile(W_hh, 0, H, HP, True)
        w_1 = _tile(W_hh, 1, H, HP, True)
        w_2 = _tile(W_hh, 2, H, HP, True)
    else:
        w_0 = 0.0
        w_1 = 0.0
        w_2 = 0.0
    for s in range(0, T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        g_t = G + t.to(tl.int64) * B * 3 * H + bg
        g_r = tl.load(g_t, mask=ok, other=0.0)
        g_z = tl.load(g_t + H, mask=ok, other=0.0)
        g_n = tl.load(g_t + 2 * H, mask=ok, other=0.0)
        if HAS_M_REC:
            h_in = m_rec * h
        else:
            h_in = h
        # the W_hh tiles are read at every step: after the first they come from L2
        p_r = tl.dot(h_in, _weights(w_0, W_hh, 0, H, HP, True, RESIDENT), input_precision="ieee")
        p_z = tl.dot(h_in, _weights(w_1, W_hh, 1, H, HP, True, RESIDENT), input_precision="ieee")
        if LAYER_NORM:  # over the 3H real units: the padded ones are 0 in P and masked out of the variance
            p_n = tl.dot(h_in, _weights(w_2, W_hh, 2, H, HP, True, RESIDENT), input_precision="ieee")
            mean = ((_row_sum(p_r) + _row_sum(p_z) + _row_sum(p_n)) / (3 * H))[:, None]
            c_r = tl.where(col_ok[None, :], p_r - mean, 0.0)
            c_z = tl.where(col_ok[None, :], p_z - mean, 0.0)
            c_n = tl.where(col_ok[None, :], p_n - mean, 0.0)
            var = (_row_sum(c_r * c_r) + _row_sum(c_z * c_z) + _row_sum(c_n * c_n)) / (3 * H)
            rstd = 1.0 / tl.sqrt_rn(var + eps)
            x_r = c_r * rstd[:, None]
            x_z = c_z * rstd[:, None]
            x_n = c_n * rstd[:, None]
            p_r = x_r * gain_r
            p_z = x_z * gain_z
            p_n = x_n * gain_n
        a_r = g_r + p_r
        a_z = g_z + p_z
        if RESET_AFTER:
            if LAYER_NORM:
                a = p_n
            else:
                a = tl.dot(h_in, _weights(w_2, W_hh, 2, H, HP, True, RESIDENT), input_precision="ieee")
            if HAS_B_HH:
                a_r += b_hr
                a_z += b_hz
                a += b_hn
            r, z, n = _reset_after_gates(a_r, a_z, g_n, a, ACT)
            aux = a
        else:
            r = _sigma(a_r, ACT)
            z = _sigma(a_z, ACT)
            aux = r * h_in  # rh
            p_n = tl.dot(aux, _weights(w_2, W_hh, 2, H, HP, True, RESIDENT), input_precision="ieee")
            n = _tanh(g_n + p_n)
        bh_t = t.to(tl.int64) * B * H + bh
        if HAS_LEN:
            valid = (t < length)[:, None]
        else:
            valid = 0  # no lengths: every step counts (unused)
        h_new, out = _new_state(h, z, n, Zone, bh_t, ok, keep_eval, valid, ZONE, HAS_LEN)
        tl.store(Out + bh_t, out, mask=ok)
        if STORE:
            _save_step(R_s, Z_s, N_s, Aux_s, Hprev_s, bh_t, ok, r, z, n, aux, h, valid, HAS_LEN)
            if LAYER_NORM:
                _save_xhat(Xhat_s, t.to(tl.int64) * B * 3 * H + bg, ok, H, x_r, x_z, x_n, valid, HAS_LEN)
                _save_rstd(Rstd_s, t, B, rows, row_ok, rstd, length, HAS_LEN)
        h = h_new
    tl.store(H_n + bh, h, mask=ok)


@triton.jit
def gru_backward_kernel(
    W_hh, M_rec, Zone, Len, R_s, Z_s, N_s, Aux_s, Hprev_s, D_out, D_hn,  # inputs
    D_G, D_a, D_h0,                                                    # outputs
    G_hh, Xhat_s, Rstd_s, D_P,                      # layer norm: gains, saved values; out dP (T, B, 3H)
    T, B, H, keep_eval,
    RESET_AFTER: tl.constexpr, ACT: tl.constexpr, REVERSE: tl.constexpr, HAS_D_OUT: tl.constexpr,
    HAS_D_HN: tl.constexpr, HAS_M_REC: tl.constexpr, ZONE: tl.constexpr, HAS_LEN: tl.constexpr,
    LAYER_NORM: tl.constexpr, RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """Walking the forward's steps backwards with dh = dL/dh' (+ dL/dout_t), per row and unit:
        zoneout: dh~ = k dh', and h itself gets (1 - k) dh'          (then dh stands for dh~)
        dn = dh (1 - z)   dz = dh (h - n)   da_n = dn (1 - n^2)   da_z = sigma'(z) dz   dh_prev = dh z + ...
        reset-after:  da_r = sigma'(r) da_n a,  da = da_n r,   dh_prev += m_h ([da_r|da_z|da] W_hh)
                      D_G = [da_r | da_z | da_n],  D_a = da
        reset-before: d(rh) = da_n W_hn,  da_r = sigma'(r) d(rh) h_in,
                      dh_prev += m_h (d(rh) r + [da_r|da_z] W_h[rz]),   D_G = [da_r | da_z | da_n]
    A padded step (t >= len) passed h through: dh flows past it and its D_G rows are 0.
    LAYER_NORM: the gradient of gh = xhat g_hh + b_hh, dgh = [da_r | da_z | da], goes through the norm's
    backward, dP = rstd (dgh g - mean(dgh g) - xhat mean(dgh g xhat)) (means over the 3H units), which takes
    dgh's place in the products: dh_prev += m_h (dP W_hh); D_P keeps it for dW_hh = dP^T h_in."""
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, HP)
    row_ok = rows < B
    col_ok = cols < H
    ok = row_ok[:, None] & col_ok[None, :]
    bh = rows[:, None] * H + cols[None, :]
    bg = rows[:, None] * (3 * H) + cols[None, :]

    if HAS_D_HN:
        dh = tl.load(D_hn + bh, mask=ok, other=0.0)
    else:
        dh = tl.full((BLOCK_B, HP), 0.0, tl.float32)
    if HAS_M_REC:
        m_rec = tl.load(M_rec + bh, mask=ok, other=0.0)
    if LAYER_NORM:
        gain_r = tl.load(G_hh + cols, mask=col_ok, other=0.0)[None, :]
        gain_z = tl.load(G_hh + H + cols, mask=col_ok, other=0.0)[None, :]
        gain_n = tl.load(G_hh + 2 * H + cols, mask=col_ok, other=0.0)[None, :]
    if HAS_LEN:
        length = tl.load(Len + rows, mask=row_ok, other=0)

    if RESIDENT:  # small layers: W_hh stays in registers for the whole sequence
        w_0 = _tile(W_hh, 0, H, HP, False)
        w_1 = _tile(W_hh, 1, H, HP, False)
        w_2 = _tile(W_hh, 2, H, HP, False)
    else:
        w_0 = 0.0
        w_1 = 0.0
        w_2 = 0.0
    for s in range(0, T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        bh_t = t.to(tl.int64) * B * H + bh
        bg_t = t.to(tl.int64) * B * 3 * H + bg
        r = tl.load(R_s + bh_t, mask=ok, other=0.0)
        z = tl.load(Z_s + bh_t, mask=ok, other=0.0)
        n = tl.load(N_s + bh_t, mask=ok, other=0.0)
        aux = tl.load(Aux_s + bh_t, mask=ok, other=0.0)
        h_prev = tl.load(Hprev_s + bh_t, mask=ok, other=0.0)
        d, d_direct, da_z, da_n = _step_backward(dh, D_out, Zone, bh_t, ok, keep_eval, z, n, h_prev,
                                                 HAS_D_OUT, ZONE, ACT)
        if RESET_AFTER:
            da_r, da = _reset_after_backward(r, aux, da_n, ACT)
            if LAYER_NORM:
                x_r = tl.load(Xhat_s + bg_t, mask=ok, other=0.0)
                x_z = tl.load(Xhat_s + bg_t + H, mask=ok, other=0.0)
                x_n = tl.load(Xhat_s + bg_t + 2 * H, mask=ok, other=0.0)
                rstd = tl.load(Rstd_s + t.to(tl.int64) * B + rows, mask=row_ok, other=0.0)[:, None]
                dx_r = da_r * gain_r  # the padded units have gain 0 and xhat 0
                dx_z = da_z * gain_z
                dx_n = da * gain_n
                mean_dx = ((_row_sum(dx_r) + _row_sum(dx_z) + _row_sum(dx_n)) / (3 * H))[:, None]
                mean_dxx = ((_row_sum(dx_r * x_r) + _row_sum(dx_z * x_z) + _row_sum(dx_n * x_n)) / (3 * H))[:, None]
                dp_r = tl.where(ok, _norm_backward(dx_r, x_r, mean_dx, mean_dxx, rstd), 0.0)
                dp_z = tl.where(ok, _norm_backward(dx_z, x_z, mean_dx, mean_dxx, rstd), 0.0)
                dp_n = tl.where(ok, _norm_backward(dx_n, x_n, mean_dx, mean_dxx, rstd), 0.0)
                tl.store(D_P + bg_t, dp_r, mask=ok)
                tl.store(D_P + bg_t + H, dp_z, mask=ok)
                tl.store(D_P + bg_t + 2 * H, dp_n, mask=ok)
            else:
                dp_r = da_r
                dp_z = da_z
                dp_n = da
            d_in = (tl.dot(dp_r, _weights(w_0, W_hh, 0, H, HP, False, RESIDENT), input_precision="ieee")
                    + tl.dot(dp_z, _weights(w_1, W_hh, 1, H, HP, False, RESIDENT), input_precision="ieee")
                    + tl.dot(dp_n, _weights(w_2, W_hh, 2, H, HP, False, RESIDENT), input_precision="ieee"))
        else:
            d_rh = tl.dot(da_n, _weights(w_2, W_hh, 2, H, HP, False, RESIDENT), input_precision="ieee")
            if HAS_M_REC:
                h_in = m_rec * h_prev
            else:
                h_in = h_prev
            da_r = _sigma_backward(r, d_rh * h_in, ACT)
            d_in = (d_rh * r
                    + tl.dot(da_r, _weights(w_0, W_hh, 0, H, HP, False, RESIDENT), input_precision="ieee")
                    + tl.dot(da_z, _weights(w_1, W_hh, 1, H, HP, False, RESIDENT), input_precision="ieee"))
        if HAS_M_REC:
            d_in = m_rec * d_in
        d_prev = d * z + d_in
        if ZONE != 0:
            d_prev += d_direct
        if HAS_LEN:
            valid = (t < length)[:, None]
            d_prev = tl.where(valid, d_prev, dh)
            da_r = tl.where(valid, da_r, 0.0)
            da_z = tl.where(valid, da_z, 0.0)
            da_n = tl.where(valid, da_n, 0.0)
            if RESET_AFTER:
                da = tl.where(valid, da, 0.0)
        tl.store(D_G + bg_t, da_r, mask=ok)
        tl.store(D_G + bg_t + H, da_z, mask=ok)
        tl.store(D_G + bg_t + 2 * H, da_n, mask=ok)
        if RESET_AFTER:
            tl.store(D_a + bh_t, da, mask=ok)
        dh = d_prev
    tl.store(D_h0 + bh, dh, mask=ok)


# ----------------------------------------------------------------------------------------------------
# Wide layers: the same steps with the state in a small global buffer and the products in column tiles.
#
# Above a few hundred units a whole (HP, HP) tile of W_hh no longer fits on chip for one tl.dot, and the state
# cannot be cut into column blocks while it sits in registers. These kernels keep each program's rows of h
# (and of the products P = W_hh h_in) in global buffers of (B, H) that stay in L1/L2, and compute every product
# tile by tile (BLOCK_B x BLOCK_N outputs, BLOCK_K at a time). A step is phases separated by barriers (all
# rows of a program belong to that program, so a barrier within the program orders them): products, then the
# gate pass column block by column block. The state is double-buffered (read step s's, write step s+1's).


@triton.jit
def _product(Src, src_stride, M_rec, W_hh, w_row0, rows, row_ok, H, j0,
             HAS_M_REC: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """Columns j0..j0+BLOCK_N of S @ M for the program's rows, summed over k < H in BLOCK_K steps.
    S: the rows' (., H) values at Src + row * src_stride (times m_h when HAS_M_REC).
    TRANSPOSED: M = W_hh[w_row0 : w_row0 + H]^T, column j being W_hh row w_row0 + j (the forward's W h);
    else M = W_hh[w_row0 : w_row0 + H], column j being W_hh column j (the backward's dG W)."""
    j = j0 + tl.arange(0, BLOCK_N)
    acc = tl.full((BLOCK_B, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        src_ok = row_ok[:, None] & (k < H)[None, :]
        src = tl.load(Src + rows[:, None] * src_stride + k[None, :], mask=src_ok, other=0.0)
        if HAS_M_REC:
            src = src * tl.load(M_rec + rows[:, None] * H + k[None, :], mask=src_ok, other=0.0)
        w_ok = (k < H)[:, None] & (j < H)[None, :]
        if TRANSPOSED:
            w = tl.load(W_hh + (w_row0 + j[None, :]) * H + k[:, None], mask=w_ok, other=0.0)
        else:
            w = tl.load(W_hh + (w_row0 + k[:, None]) * H + j[None, :], mask=w_ok, other=0.0)
        acc += tl.dot(src, w, input_precision="ieee")
    return acc


@triton.jit
def gru_forward_wide_kernel(
    G, W_hh, B_hh, H0, M_rec, Zone, Len,
    Out, H_n,
    R_s, Z_s, N_s, Aux_s, Hprev_s,
    G_hh, Xhat_s, Rstd_s,
    H_buf, P_buf, RH_buf,                           # scratch: (2, B, H) state, (B, 3H) products, (B, H) r*h_in
    T, B, H, keep_eval, eps,
    RESET_AFTER: tl.constexpr, ACT: tl.constexpr, REVERSE: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_B_HH: tl.constexpr, HAS_M_REC: tl.constexpr, ZONE: tl.constexpr, HAS_LEN: tl.constexpr,
    STORE: tl.constexpr, LAYER_NORM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """gru_forward_kernel's steps (same equations) for any H. LAYER_NORM: the rows' mean of P over 3H is
    summed from the product tiles, the variance in a second pass over P_buf, and the gate pass normalises."""
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_ok = rows < B
    if HAS_LEN:
        length = tl.load(Len + rows, mask=row_ok, other=0)
    else:
        length = 0  # no lengths: unused
    for c0 in range(0, H, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (cols < H)[None, :]
        bh = rows[:, None] * H + cols[None, :]
        if HAS_H0:
            h = tl.load(H0 + bh, mask=ok, other=0.0)
        else:
            h = tl.full((BLOCK_B, BLOCK_N), 0.0, tl.float32)
        tl.store(H_buf + bh, h, mask=ok)
    tl.debug_barrier()

    for s in range(0, T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        h_cur = H_buf + (s % 2) * B * H
        h_nxt = H_buf + ((s + 1) % 2) * B * H
        g_t = G + t.to(tl.int64) * B * 3 * H
        # products: P_r, P_z (and reset-after P_n = W_hn h_in) for every column
        p_sum = tl.full((BLOCK_B,), 0.0, tl.float32)
        for j0 in range(0, H, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            for gate in tl.static_range(3):
                if gate < 2 or RESET_AFTER:
                    acc = _product(h_cur, H, M_rec, W_hh, gate * H, rows, row_ok, H, j0, HAS_M_REC, True,
                                   BLOCK_B, BLOCK_N, BLOCK_K)
                    tl.store(P_buf + rows[:, None] * (3 * H) + gate * H + j[None, :], acc,
                             mask=row_ok[:, None] & (j < H)[None, :])
                    if LAYER_NORM:  # the padded units are 0 in acc
                        p_sum += _row_sum(acc)
        tl.debug_barrier()
        if LAYER_NORM:  # var = mean((P - mean)^2) over the 3H units, a second pass over P_buf
            mean = p_sum / (3 * H)
            p_var = tl.full((BLOCK_B,), 0.0, tl.float32)
            for c0 in range(0, 3 * H, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N)
                ok = row_ok[:, None] & (cols < 3 * H)[None, :]
                c = tl.where(ok, tl.load(P_buf + rows[:, None] * (3 * H) + cols[None, :], mask=ok, other=0.0)
                             - mean[:, None], 0.0)
                p_var += _row_sum(c * c)
            rstd = 1.0 / tl.sqrt_rn(p_var / (3 * H) + eps)
        if not RESET_AFTER:  # rh = r * h_in for every column, then P_n = W_hn rh
            for c0 in range(0, H, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N)
                ok = row_ok[:, None] & (cols < H)[None, :]
                bh = rows[:, None] * H + cols[None, :]
                bg = rows[:, None] * (3 * H) + cols[None, :]
                h_in = tl.load(h_cur + bh, mask=ok, other=0.0)
                if HAS_M_REC:
                    h_in = h_in * tl.load(M_rec + bh, mask=ok, other=0.0)
                r = _sigma(tl.load(g_t + bg, mask=ok, other=0.0) + tl.load(P_buf + bg, mask=ok, other=0.0), ACT)
                tl.store(RH_buf + bh, r * h_in, mask=ok)
            tl.debug_barrier()
            for j0 in range(0, H, BLOCK_N):
                j = j0 + tl.arange(0, BLOCK_N)
                acc = _product(RH_buf, H, M_rec, W_hh, 2 * H, rows, row_ok, H, j0, False, True,
                               BLOCK_B, BLOCK_N, BLOCK_K)
                tl.store(P_buf + rows[:, None] * (3 * H) + 2 * H + j[None, :], acc,
                         mask=row_ok[:, None] & (j < H)[None, :])
            tl.debug_barrier()
        # the gate pass, column block by column block
        for c0 in range(0, H, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_ok = cols < H
            ok = row_ok[:, None] & col_ok[None, :]
            bh = rows[:, None] * H + cols[None, :]
            bg = rows[:, None] * (3 * H) + cols[None, :]
            h = tl.load(h_cur + bh, mask=ok, other=0.0)
            p_r = tl.load(P_buf + bg, mask=ok, other=0.0)
            p_z = tl.load(P_buf + bg + H, mask=ok, other=0.0)
            p_n = tl.load(P_buf + bg + 2 * H, mask=ok, other=0.0)
            if LAYER_NORM:  # gh = xhat g_hh (+ b_hh below)
                x_r = tl.where(ok, (p_r - mean[:, None]) * rstd[:, None], 0.0)
                x_z = tl.where(ok, (p_z - mean[:, None]) * rstd[:, None], 0.0)
                x_n = tl.where(ok, (p_n - mean[:, None]) * rstd[:, None], 0.0)
                p_r = x_r * tl.load(G_hh + cols, mask=col_ok, other=0.0)[None, :]
                p_z = x_z * tl.load(G_hh + H + cols, mask=col_ok, other=0.0)[None, :]
                p_n = x_n * tl.load(G_hh + 2 * H + cols, mask=col_ok, other=0.0)[None, :]
            a_r = tl.load(g_t + bg, mask=ok, other=0.0) + p_r
            a_z = tl.load(g_t + bg + H, mask=ok, other=0.0) + p_z
            g_n = tl.load(g_t + bg + 2 * H, mask=ok, other=0.0)
            if RESET_AFTER:
                if HAS_B_HH:
                    a_r += tl.load(B_hh + cols, mask=col_ok, other=0.0)[None, :]
                    a_z += tl.load(B_hh + H + cols, mask=col_ok, other=0.0)[None, :]
                    p_n += tl.load(B_hh + 2 * H + cols, mask=col_ok, other=0.0)[None, :]
                r, z, n = _reset_after_gates(a_r, a_z, g_n, p_n, ACT)
                aux = p_n
            else:
                r = _sigma(a_r, ACT)
                z = _sigma(a_z, ACT)
                n = _tanh(g_n + p_n)
                aux = tl.load(RH_buf + bh, mask=ok, other=0.0)
            bh_t = t.to(tl.int64) * B * H + bh
            if HAS_LEN:
                valid = (t < length)[:, None]
            else:
                valid = 0  # no lengths: every step counts (unused)
            h_new, out = _new_state(h, z, n, Zone, bh_t, ok, keep_eval, valid, ZONE, HAS_LEN)
            tl.store(Out + bh_t, out, mask=ok)
            tl.store(h_nxt + bh, h_new, mask=ok)
            if STORE:
                _save_step(R_s, Z_s, N_s, Aux_s, Hprev_s, bh_t, ok, r, z, n, aux, h, valid, HAS_LEN)
                if LAYER_NORM:
                    _save_xhat(Xhat_s, t.to(tl.int64) * B * 3 * H + bg, ok, H, x_r, x_z, x_n, valid, HAS_LEN)
        if STORE:
            if LAYER_NORM:
                _save_rstd(Rstd_s, t, B, rows, row_ok, rstd, length, HAS_LEN)
        tl.debug_barrier()

    h_last = H_buf + (T % 2) * B * H
    for c0 in range(0, H, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (cols < H)[None, :]
        bh = rows[:, None] * H + cols[None, :]
        tl.store(H_n + bh, tl.load(h_last + bh, mask=ok, other=0.0), mask=ok)


@triton.jit
def gru_backward_wide_kernel(
    W_hh, M_rec, Zone, Len, R_s, Z_s, N_s, Aux_s, Hprev_s, D_out, D_hn,
    D_G, D_a, D_h0,
    G_hh, Xhat_s, Rstd_s, D_P,
    D_buf, DRH_buf,                                 # scratch: (2, B, H) dh, (B, H) d(rh) (reset-before)
    T, B, H, keep_eval,
    RESET_AFTER: tl.constexpr, ACT: tl.constexpr, REVERSE: tl.constexpr, HAS_D_OUT: tl.constexpr,
    HAS_D_HN: tl.constexpr, HAS_M_REC: tl.constexpr, ZONE: tl.constexpr, HAS_LEN: tl.constexpr,
    LAYER_NORM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gru_backward_kernel's steps (same equations) for any H. Per step: the elementwise part writes D_G's
    z and n blocks (reset-after also r and D_a) and the direct part of dh_prev (dh z + zoneout's share) into
    the next dh buffer; reset-before then forms d(rh) = da_n W_hn and da_r; layer norm sums the rows' means
    of dgh g and dgh g xhat in the elementwise part and then writes dP tile by tile; last the products add
    m_h (dG W_hh) (layer norm: m_h (dP W_hh)) to dh_prev."""
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_ok = rows < B
    if HAS_LEN:
        length = tl.load(Len + rows, mask=row_ok, other=0)
    for c0 in range(0, H, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (cols < H)[None, :]
        bh = rows[:, None] * H + cols[None, :]
        if HAS_D_HN:
            dh = tl.load(D_hn + bh, mask=ok, other=0.0)
        else:
            dh = tl.full((BLOCK_B, BLOCK_N), 0.0, tl.float32)
        tl.store(D_buf + bh, dh, mask=ok)
    tl.debug_barrier()

    for s in range(0, T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        d_cur = D_buf + (s % 2) * B * H
        d_nxt = D_buf + ((s + 1) % 2) * B * H
        dg_t = D_G + t.to(tl.int64) * B * 3 * H
        da_t = D_a + t.to(tl.int64) * B * H
        dp_t = D_P + t.to(tl.int64) * B * 3 * H
        if LAYER_NORM:
            sum_dx = tl.full((BLOCK_B,), 0.0, tl.float32)
            sum_dxx = tl.full((BLOCK_B,), 0.0, tl.float32)
        # elementwise part
        for c0 in range(0, H, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            ok = row_ok[:, None] & (cols < H)[None, :]
            bh = rows[:, None] * H + cols[None, :]
            bg = rows[:, None] * (3 * H) + cols[None, :]
            bh_t = t.to(tl.int64) * B * H + bh
            dh = tl.load(d_cur + bh, mask=ok, other=0.0)
            r = tl.load(R_s + bh_t, mask=ok, other=0.0)
            z = tl.load(Z_s + bh_t, mask=ok, other=0.0)
            n = tl.load(N_s + bh_t, mask=ok, other=0.0)
            h_prev = tl.load(Hprev_s + bh_t, mask=ok, other=0.0)
            d, d_direct, da_z, da_n = _step_backward(dh, D_out, Zone, bh_t, ok, keep_eval, z, n, h_prev,
                                                     HAS_D_OUT, ZONE, ACT)
            d_prev = d * z
            if ZONE != 0:
                d_prev += d_direct
            if RESET_AFTER:
                aux = tl.load(Aux_s + bh_t, mask=ok, other=0.0)
                da_r, da = _reset_after_backward(r, aux, da_n, ACT)
            if HAS_LEN:
                valid = (t < length)[:, None]
                d_prev = tl.where(valid, d_prev, dh)
                da_z = tl.where(valid, da_z, 0.0)
                da_n = tl.where(valid, da_n, 0.0)
                if RESET_AFTER:
                    da_r = tl.where(valid, da_r, 0.0)
                    da = tl.where(valid, da, 0.0)
            tl.store(dg_t + bg + H, da_z, mask=ok)
            tl.store(dg_t + bg + 2 * H, da_n, mask=ok)
            if RESET_AFTER:
                tl.store(dg_t + bg, da_r, mask=ok)
                tl.store(da_t + bh, da, mask=ok)
            tl.store(d_nxt + bh, d_prev, mask=ok)
            if LAYER_NORM:  # dgh g for the three gates of these units (padded units: gain 0, xhat 0)
                xt = Xhat_s + t.to(tl.int64) * B * 3 * H + bg
                dx_r = da_r * tl.load(G_hh + cols, mask=cols < H, other=0.0)[None, :]
                dx_z = da_z * tl.load(G_hh + H + cols, mask=cols < H, other=0.0)[None, :]
                dx_n = da * tl.load(G_hh + 2 * H + cols, mask=cols < H, other=0.0)[None, :]
                sum_dx += _row_sum(dx_r + dx_z + dx_n)
                sum_dxx += _row_sum(dx_r * tl.load(xt, mask=ok, other=0.0) + dx_z * tl.load(xt + H, mask=ok, other=0.0)
                                    + dx_n * tl.load(xt + 2 * H, mask=ok, other=0.0))
        tl.debug_barrier()
        if LAYER_NORM:  # dP = rstd (dgh g - mean(dgh g) - xhat mean(dgh g xhat)), gate by gate
            mean_dx = (sum_dx / (3 * H))[:, None]
            mean_dxx = (sum_dxx / (3 * H))[:, None]
            rstd = tl.load(Rstd_s + t.to(tl.int64) * B + rows, mask=row_ok, other=0.0)[:, None]
            for c0 in range(0, H, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N)
                ok = row_ok[:, None] & (cols < H)[None, :]
                bh = rows[:, None] * H + cols[None, :]
                bg = rows[:, None] * (3 * H) + cols[None, :]
                xt = Xhat_s + t.to(tl.int64) * B * 3 * H + bg
                for gate in tl.static_range(3):
                    if gate == 2:
                        dgh = tl.load(da_t + bh, mask=ok, other=0.0)
                    else:
                        dgh = tl.load(dg_t + bg + gate * H, mask=ok, other=0.0)
                    dx = dgh * tl.load(G_hh + gate * H + cols, mask=cols < H, other=0.0)[None, :]
                    x_g = tl.load(xt + gate * H, mask=ok, other=0.0)
                    tl.store(dp_t + bg + gate * H, _norm_backward(dx, x_g, mean_dx, mean_dxx, rstd), mask=ok)
            tl.debug_barrier()
        if not RESET_AFTER:  # d(rh) = da_n W_hn, then da_r = sigma'(r) d(rh) h_in
            for c0 in range(0, H, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N)
                ok = row_ok[:, None] & (cols < H)[None, :]
                bh = rows[:, None] * H + cols[None, :]
                bh_t = t.to(tl.int64) * B * H + bh
                d_rh = _product(dg_t + 2 * H, 3 * H, M_rec, W_hh, 2 * H, rows, row_ok, H, c0, False, False,
                                BLOCK_B, BLOCK_N, BLOCK_K)
                r = tl.load(R_s + bh_t, mask=ok, other=0.0)
                h_in = tl.load(Hprev_s + bh_t, mask=ok, other=0.0)
                if HAS_M_REC:
                    h_in = h_in * tl.load(M_rec + bh, mask=ok, other=0.0)
                da_r = _sigma_backward(r, d_rh * h_in, ACT)
                if HAS_LEN:
                    valid = (t < length)[:, None]
                    da_r = tl.where(valid, da_r, 0.0)
                    d_rh = tl.where(valid, d_rh, 0.0)
                tl.store(dg_t + rows[:, None] * (3 * H) + cols[None, :], da_r, mask=ok)
                tl.store(DRH_buf + bh, d_rh, mask=ok)
            tl.debug_barrier()
        # dh_prev += m_h (dG W_hh) (reset-before: m_h (d(rh) r + [da_r | da_z] W_h[rz]))
        for c0 in range(0, H, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            ok = row_ok[:, None] & (cols < H)[None, :]
            bh = rows[:, None] * H + cols[None, :]
            bh_t = t.to(tl.int64) * B * H + bh
            if LAYER_NORM:
                d_in = _product(dp_t, 3 * H, M_rec, W_hh, 0, rows, row_ok, H, c0, False, False,
                                BLOCK_B, BLOCK_N, BLOCK_K)
                d_in += _product(dp_t + H, 3 * H, M_rec, W_hh, H, rows, row_ok, H, c0, False, False,
                                 BLOCK_B, BLOCK_N, BLOCK_K)
                d_in += _product(dp_t + 2 * H, 3 * H, M_rec, W_hh, 2 * H, rows, row_ok, H, c0, False, False,
                                 BLOCK_B, BLOCK_N, BLOCK_K)
            else:
                d_in = _product(dg_t, 3 * H, M_rec, W_hh, 0, rows, row_ok, H, c0, False, False,
                                BLOCK_B, BLOCK_N, BLOCK_K)
                d_in += _product(dg_t + H, 3 * H, M_rec, W_hh, H, rows, row_ok, H, c0, False, False,
                                 BLOCK_B, BLOCK_N, BLOCK_K)
                if RESET_AFTER:
                    d_in += _product(da_t, H, M_rec, W_hh, 2 * H, rows, row_ok, H, c0, False, False,
                                     BLOCK_B, BLOCK_N, BLOCK_K)
                else:
                    d_in += tl.load(DRH_buf + bh, mask=ok, other=0.0) * tl.load(R_s + bh_t, mask=ok, other=0.0)
            if HAS_M_REC:
                d_in = d_in * tl.load(M_rec + bh, mask=ok, other=0.0)
            if HAS_LEN:
                d_in = tl.where((t < length)[:, None], d_in, 0.0)
            tl.store(d_nxt + bh, tl.load(d_nxt + bh, mask=ok, other=0.0) + d_in, mask=ok)
        tl.debug_barrier()

    d_last = D_buf + (T % 2) * B * H
    for c0 in range(0, H, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (cols < H)[None, :]
        bh = rows[:, None] * H + cols[None, :]
        tl.store(D_h0 + bh, tl.load(d_last + bh, mask=ok, other=0.0), mask=ok)
