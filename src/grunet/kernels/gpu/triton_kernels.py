"""The Triton kernels of the GRU time loop: one persistent program per block of batch rows.

The input side G = x W_ih^T + b_ih (T, B, 3H), rows r | z | n, is computed for all steps before the loop
(one large product). Each program then walks the whole sequence holding its rows' state h (BLOCK_B, HP) in
registers; HP is H padded to a power of two >= 16 (what tl.dot needs), the padding being zero in the weight
tiles, so padded units stay 0 and never reach a real one. Symbols as in grunet.reference and grunet.contract:

    h_in = m_h * h                     (recurrent dropout; h_in = h without it)
    reset-after:   a   = W_hn h_in + b_hn
                   r = sigma(G_r + W_hr h_in + b_hr)   z = sigma(G_z + W_hz h_in + b_hz)   n = tanh(G_n + r a)
    reset-before:  rh  = r * h_in
                   r = sigma(G_r + W_hr h_in)          z = sigma(G_z + W_hz h_in)          n = tanh(G_n + W_hn rh)
    h~ = z h + (1 - z) n,   zoneout: h' = h + k (h~ - h)   (k: the (T, B, H) mask in training, 1 - p in eval)
    lengths: a row with t >= len keeps h and outputs 0

The backward walks time the other way (equations beside it, as in kernels/cpu/gru_backward.cpp) and stores
dG = [da_r | da_z | da_n] for every step, from which the caller forms dx, dW_ih, dW_hh and the biases with
a few large products outside the loop.

This file is imported twice by grunet.kernels.gpu.triton_layer: compiled for CUDA tensors and, with
TRITON_INTERPRET=1 while it is imported, interpreted (numpy) for CPU tensors. The kernels call only
triton.language's builtins (tl.full, not tl.zeros; tl.reduce with a combine function of this file, not
tl.sum): the helpers triton.language itself defines with @triton.jit were decorated when triton was first
imported, compiled if that was without TRITON_INTERPRET (torch.compile imports triton), and the interpreter
cannot call those.
"""
import triton
import triton.language as tl

SIGMOID, HARD_SIGMOID_KERAS2, HARD_SIGMOID_KERAS3 = 0, 1, 2
ZONE_NONE, ZONE_MASK, ZONE_EVAL = 0, 1, 2


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
def gru_forward_kernel(
    G, W_hh, B_hh, H0, M_rec, Zone, Len,            # inputs (float32 except Len int64)
    Out, H_n,                                       # outputs
    R_s, Z_s, N_s, Aux_s, Hprev_s,                  # saved for the backward (STORE), each (T, B, H)
    T, B, H, keep_eval,
    RESET_AFTER: tl.constexpr, ACT: tl.constexpr, REVERSE: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_B_HH: tl.constexpr, HAS_M_REC: tl.constexpr, ZONE: tl.constexpr, HAS_LEN: tl.constexpr,
    STORE: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
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
    if HAS_LEN:
        length = tl.load(Len + rows, mask=row_ok, other=0)

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
        a_r = g_r + tl.dot(h_in, _tile(W_hh, 0, H, HP, True), input_precision="ieee")
        a_z = g_z + tl.dot(h_in, _tile(W_hh, 1, H, HP, True), input_precision="ieee")
        if RESET_AFTER:
            a = tl.dot(h_in, _tile(W_hh, 2, H, HP, True), input_precision="ieee")
            if HAS_B_HH:
                a_r += b_hr
                a_z += b_hz
                a += b_hn
            r = _sigma(a_r, ACT)
            z = _sigma(a_z, ACT)
            n = _tanh(g_n + r * a)
            aux = a
        else:
            r = _sigma(a_r, ACT)
            z = _sigma(a_z, ACT)
            aux = r * h_in  # rh
            n = _tanh(g_n + tl.dot(aux, _tile(W_hh, 2, H, HP, True), input_precision="ieee"))
        h_new = z * h + (1.0 - z) * n
        bh_t = t.to(tl.int64) * B * H + bh
        if ZONE == 1:
            k = tl.load(Zone + bh_t, mask=ok, other=0.0)
            h_new = h + k * (h_new - h)
        elif ZONE == 2:
            h_new = h + keep_eval * (h_new - h)
        if HAS_LEN:
            valid = (t < length)[:, None]
            h_new = tl.where(valid, h_new, h)
            out = tl.where(valid, h_new, 0.0)
        else:
            out = h_new
        tl.store(Out + bh_t, out, mask=ok)
        if STORE:
            if HAS_LEN:  # a padded row's saved values take no part (its dG is 0): zeros keep NaN from x out
                r = tl.where(valid, r, 0.0)
                z = tl.where(valid, z, 0.0)
                n = tl.where(valid, n, 0.0)
                aux = tl.where(valid, aux, 0.0)
                h_save = tl.where(valid, h, 0.0)
            else:
                h_save = h
            tl.store(R_s + bh_t, r, mask=ok)
            tl.store(Z_s + bh_t, z, mask=ok)
            tl.store(N_s + bh_t, n, mask=ok)
            tl.store(Aux_s + bh_t, aux, mask=ok)
            tl.store(Hprev_s + bh_t, h_save, mask=ok)
        h = h_new
    tl.store(H_n + bh, h, mask=ok)


@triton.jit
def gru_backward_kernel(
    W_hh, M_rec, Zone, Len, R_s, Z_s, N_s, Aux_s, Hprev_s, D_out, D_hn,  # inputs
    D_G, D_a, D_h0,                                                    # outputs
    T, B, H, keep_eval,
    RESET_AFTER: tl.constexpr, ACT: tl.constexpr, REVERSE: tl.constexpr, HAS_D_OUT: tl.constexpr,
    HAS_D_HN: tl.constexpr, HAS_M_REC: tl.constexpr, ZONE: tl.constexpr, HAS_LEN: tl.constexpr,
    BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """Walking the forward's steps backwards with dh = dL/dh' (+ dL/dout_t), per row and unit:
        zoneout: dh~ = k dh', and h itself gets (1 - k) dh'          (then dh stands for dh~)
        dn = dh (1 - z)   dz = dh (h - n)   da_n = dn (1 - n^2)   da_z = sigma'(z) dz   dh_prev = dh z + ...
        reset-after:  da_r = sigma'(r) da_n a,  da = da_n r,   dh_prev += m_h ([da_r|da_z|da] W_hh)
                      D_G = [da_r | da_z | da_n],  D_a = da
        reset-before: d(rh) = da_n W_hn,  da_r = sigma'(r) d(rh) h_in,
                      dh_prev += m_h (d(rh) r + [da_r|da_z] W_h[rz]),   D_G = [da_r | da_z | da_n]
    A padded step (t >= len) passed h through: dh flows past it and its D_G rows are 0."""
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
    if HAS_LEN:
        length = tl.load(Len + rows, mask=row_ok, other=0)

    for s in range(0, T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        bh_t = t.to(tl.int64) * B * H + bh
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
        r = tl.load(R_s + bh_t, mask=ok, other=0.0)
        z = tl.load(Z_s + bh_t, mask=ok, other=0.0)
        n = tl.load(N_s + bh_t, mask=ok, other=0.0)
        aux = tl.load(Aux_s + bh_t, mask=ok, other=0.0)
        h_prev = tl.load(Hprev_s + bh_t, mask=ok, other=0.0)
        dn = d - d * z
        da_z = _sigma_backward(z, d * (h_prev - n), ACT)
        da_n = dn * (1.0 - n * n)
        if RESET_AFTER:
            da_r = _sigma_backward(r, da_n * aux, ACT)
            da = da_n * r
            d_in = (tl.dot(da_r, _tile(W_hh, 0, H, HP, False), input_precision="ieee")
                    + tl.dot(da_z, _tile(W_hh, 1, H, HP, False), input_precision="ieee")
                    + tl.dot(da, _tile(W_hh, 2, H, HP, False), input_precision="ieee"))
        else:
            d_rh = tl.dot(da_n, _tile(W_hh, 2, H, HP, False), input_precision="ieee")
            if HAS_M_REC:
                h_in = m_rec * h_prev
            else:
                h_in = h_prev
            da_r = _sigma_backward(r, d_rh * h_in, ACT)
            d_in = (d_rh * r + tl.dot(da_r, _tile(W_hh, 0, H, HP, False), input_precision="ieee")
                    + tl.dot(da_z, _tile(W_hh, 1, H, HP, False), input_precision="ieee"))
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
        bg_t = t.to(tl.int64) * B * 3 * H + bg
        tl.store(D_G + bg_t, da_r, mask=ok)
        tl.store(D_G + bg_t + H, da_z, mask=ok)
        tl.store(D_G + bg_t + 2 * H, da_n, mask=ok)
        if RESET_AFTER:
            tl.store(D_a + bh_t, da, mask=ok)
        dh = d_prev
    tl.store(D_h0 + bh, dh, mask=ok)
