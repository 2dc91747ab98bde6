// grunet fused CPU GRU, backward over the whole sequence (one layer, one direction).
//
// Forward (gru_forward.cpp): h' = n + z (h - n), n = tanh(a_n), r = sigma(a_r), z = sigma(a_z) with
//   reset-after:  a_n = G_n + r * a,  a = W_hn h + b_hn;      reset-before: a_n = G_n + W_hn (r h).
// Walking time backwards with dh = dL/dh' (+ dL/dout_t), per row and unit:
//   dn   = dh (1 - z)            dz = dh (h - n)            dh_prev = dh z  (+ the recurrent terms below)
//   da_n = dn (1 - n^2)          da_z = dz sigma'(z)
//   reset-after:   da_r = da_n a sigma'(r),   da = da_n r
//                  dG_h = [da_r | da_z | da]       -> dh_prev += dG_h W_hh          (one GEMM per step)
//                  dG_x = [da_r | da_z | da_n]     (input side: dx, dW_ih, db_ih)
//   reset-before:  d(rh) = da_n W_hn  (GEMM),  da_r = d(rh) h sigma'(r),  dh_prev += d(rh) r
//                  dG = [da_r | da_z | da_n]       -> dh_prev += dG_rz W_h[rz]      (second GEMM)
// After the loop, each thread multiplies its chunk's dG (all steps stacked, chunk-major, rows of padded
// gate blocks, see gru_cpu.h) in a few big products, and the per-chunk weight gradients are summed into
// chunk 0's at the end. The weight gradients go through small_gemm_tn (register tiles over the whole
// K = T * rows, stored by rows; MKL ran these transposed shapes at ~70% of this core's peak):
//   dx = dG_x W_ih,  dW_ih = dG_x^T x,  db_ih = sum dG_x,
//   reset-after:  dW_hh = dG_h^T hprev,  db_hh = sum dG_h
//   reset-before: dW_h[rz] = dG_rz^T hprev,  dW_hn = da_n^T (r h)
// Padded steps (t >= lengths[b]) passed h through unchanged: dh flows past them and their dG rows are 0.
// The cell options (grunet.contract):
//   zoneout h' = h + k (h~ - h):   the step above runs on dh~ = k dh', and dh_prev gains dh' - k dh'
//   recurrent dropout (h_in = m_h h in the products): dh_prev += m_h (dG_h W_hh) (reset-before:
//                  m_h (d(rh) r + dG_rz W_h[rz])), dW_hh = dG^T h_in; dz still reads h
//   layer_norm (gh = LN(P_h) g_hh + b_hh, P_h = W_hh h_in; the same on the input side): dG_h goes through
//                  the norm's backward to dP_h = rstd (dG_h g - mean(dG_h g) - xhat mean(dG_h g xhat)) per
//                  row, which then takes dG_h's place in the products; dg_hh = sum dG_h xhat_h, db_hh = sum dG_h
#include "gru_cpu.h"

namespace grunet {
namespace {

template <typename S>
struct Bwd {
  int64_t T = 0, B = 0, I = 0, H = 0, Hp = 0;  // buffers in the padded gate layout (gru_cpu.h)
  const StepMatrix<S>* W_h = nullptr;   // reset-after (3Hp, Hp) = W_hh; reset-before (2Hp, Hp) = W_h[rz]; padded
  const StepMatrix<S>* W_hn = nullptr;  // reset-before (Hp, Hp) = W_hn, padded
  const S* w_ih = nullptr;              // (3H, I)
  const int64_t* len = nullptr;         // (B,) or nullptr
  bool reverse = false, reset_after = true, has_b_ih = false, has_b_hh = false;
  bool need_dx = false, need_dh0 = false, need_weights = false;
  bool layer_norm = false;
  const CellVectors<S>* cv = nullptr;  // the gains, masks and zoneout shares in the padded layout
  const S* rec_mask = nullptr;    // cv->rec_mask: recurrent dropout's (B, Hp) mask, or nullptr
  const S* dout = nullptr;        // (T, B, H) with strides (dsT, dsB, 1), or nullptr: no gradient reached the outputs
  int64_t dsT = 0, dsB = 0;
  const S* xs = nullptr;          // chunk-major (T*B, I)
  const S* gates = nullptr;       // chunk-major (T*B, 3Hp) r | z | n
  const S* aux = nullptr;         // chunk-major (T*B, Hp): a (reset-after) or rh (reset-before)
  const S* hprev = nullptr;       // chunk-major (T*B, Hp)
  const S* xhat_x = nullptr;      // layer_norm: chunk-major (T*B, 3Hp)
  const S* xhat_h = nullptr;      // layer_norm: chunk-major (T*B, 3Hp)
  const S* rstd = nullptr;        // layer_norm: chunk-major (T*B, 2)
  S* dG = nullptr;                // chunk-major (T*B, 3Hp): reset-after dG_h (dG_x: n block da_n); reset-before dG
  S* da_n = nullptr;              // chunk-major (T*B, Hp): reset-after only
  S* dP_h = nullptr;              // layer_norm: chunk-major (T*B, 3Hp) dG_h through the norm: d(W_hh h_in)
  S* dP_x = nullptr;              // layer_norm: chunk-major (T*B, 3Hp) dG_x through the norm: d(W_ih x)
  S* h_in = nullptr;              // recurrent dropout: chunk-major (T*B, Hp) m_h * hprev
  S* dh = nullptr;                // (B, Hp): in dh_n, out dh0
  S* drh = nullptr;               // (B, Hp) scratch: reset-before d(rh); recurrent dropout d(h_in)
  S* dh_direct = nullptr;         // zoneout: (B, Hp) scratch, the gradient of h' = h + k (h~ - h) to h itself
  S* dx = nullptr;                // (T, B, I) user layout
  S* dx_scratch = nullptr;        // chunk-major (T*B, I)
  S* dw_ih = nullptr;             // per chunk (3H, I)
  S* dw_hh = nullptr;             // per chunk (3H, H)
  S* db_ih = nullptr;             // per chunk (3H,)
  S* db_hh = nullptr;             // per chunk (3H,)
  S* dg_ih = nullptr;             // layer_norm: per chunk (3H,)
  S* dg_hh = nullptr;             // layer_norm: per chunk (3H,)
  // with lengths and a W_hh that is not finite: (B, Hp) copies of the padded rows' dh around the dh_prev
  // product, whose zero rows would add 0 * inf = NaN to a state that passed through; else nullptr
  S* dh_keep = nullptr;

  // one step backwards; `last`: the step that reads h0 (its dh_prev is dh0)
  template <int ACT, bool RESET_AFTER>
  void step(int64_t t, int64_t b0, int64_t nb, bool last) const {
    const int64_t H3 = 3 * Hp, row0 = T * b0 + t * nb;
    S* dG_t = dG + row0 * H3;
    S* dh_c = dh + b0 * Hp;
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t b = b0 + i, row = row0 + i;
      S* __restrict d = dh_c + i * Hp;
      S* __restrict dg = dG + row * H3;
      if (len && t >= len[b]) {  // padding: h passed through, the output was a constant 0
        std::fill(dg, dg + H3, S(0));
        if (RESET_AFTER) std::fill(da_n + row * Hp, da_n + (row + 1) * Hp, S(0));
        if (layer_norm) std::fill(dP_h + row * H3, dP_h + (row + 1) * H3, S(0));
        continue;
      }
      if (dout) {  // dh += dL/dout_t (H units; the padding's gradient stays 0)
        const S* __restrict dO = dout + t * dsT + b * dsB;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d[j] += dO[j];
      }
      const S* k = cv->zone_of(t, b, B);
      S* __restrict dd = k ? dh_direct + b * Hp : nullptr;
      if (k) {  // zoneout h' = h + k (h~ - h): dh~ = k dh', and h itself gets dh' - k dh'
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) {
          const S dt = k[j] * d[j];
          dd[j] = d[j] - dt;
          d[j] = dt;
        }
      }
      const S* __restrict g = gates + row * H3;
      const S* __restrict hp = hprev + row * Hp;
      const S* __restrict a = aux + row * Hp;
      if (RESET_AFTER) {
        S* __restrict dan = da_n + row * Hp;
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) {
          const S r = g[j], z = g[Hp + j], n = g[2 * Hp + j];
          const S dhj = d[j];
          const S dn = dhj - dhj * z;  // torch's order (h' = (h - n) z + n): dh = inf, z = 0.5 gives NaN
          const S dz = dhj * (hp[j] - n);
          const S dan_j = dn * (S(1) - n * n);
          dg[j] = sigma_backward<ACT>(r, dan_j * a[j]);  // da_r
          dg[Hp + j] = sigma_backward<ACT>(z, dz);       // da_z
          dg[2 * Hp + j] = dan_j * r;                 // da = d(W_hn h + b_hn)
          dan[j] = dan_j;
          d[j] = dhj * z;
        }
        if (layer_norm) {  // dG_h through gh's norm: the gradient of the W_hh h_in product
          layer_norm_backward_row(dg, dg + 2 * Hp, dP_h + row * H3, xhat_h + row * H3, rstd[row * 2 + 1], cv->gain_h,
                                  cv->unit, H, Hp);
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) {
          const S z = g[Hp + j], n = g[2 * Hp + j];
          const S dhj = d[j];
          const S dn = dhj - dhj * z;
          const S dz = dhj * (hp[j] - n);
          dg[Hp + j] = sigma_backward<ACT>(z, dz);
          dg[2 * Hp + j] = dn * (S(1) - n * n);
          d[j] = dhj * z;
        }
      }
      if (k) {
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) d[j] += dd[j];
      }
    }
    const bool need_dh_prev = !last || need_dh0;
    const S* D_t = layer_norm ? dP_h + row0 * H3 : dG_t;  // what multiplies W_hh
    if (RESET_AFTER) {
      if (!need_dh_prev) return;
      if (!rec_mask) return dh_prev_product(t, b0, nb, D_t);  // dh_prev += [da_r | da_z | da] W_hh
      S* q = drh + b0 * Hp;  // d(h_in) = D_t W_hh; dh_prev += m_h d(h_in)
      W_h->mul(nb, D_t, H3, q, Hp, false);
      add_masked(t, b0, nb, q);
      return;
    }
    S* drh_c = drh + b0 * Hp;
    W_hn->mul(nb, dG_t + 2 * Hp, H3, drh_c, Hp, false);  // d(rh) = da_n W_hn
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t b = b0 + i, row = row0 + i;
      if (len && t >= len[b]) continue;
      const S* __restrict g = gates + row * H3;
      const S* __restrict hin = (rec_mask ? h_in : hprev) + row * Hp;
      S* __restrict q = drh_c + i * Hp;
      S* __restrict dg = dG + row * H3;
      S* __restrict d = dh_c + i * Hp;
      if (rec_mask) {  // rh = r h_in: d(h_in) = d(rh) r, kept in q for the mask below
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) {
          const S r = g[j];
          dg[j] = sigma_backward<ACT>(r, q[j] * hin[j]);  // da_r
          q[j] = q[j] * r;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) {
          const S r = g[j];
          dg[j] = sigma_backward<ACT>(r, q[j] * hin[j]);  // da_r
          d[j] += q[j] * r;
        }
      }
    }
    if (!rec_mask) {
      if (need_dh_prev) dh_prev_product(t, b0, nb, dG_t);  // dh_prev += [da_r | da_z] W_h[rz]
      return;
    }
    if (!need_dh_prev) return;
    W_h->mul(nb, dG_t, H3, drh_c, Hp, true);  // d(h_in) += [da_r | da_z] W_h[rz]
    add_masked(t, b0, nb, drh_c);
  }

  // h_in = m_h * hprev for the chunk's rows: the state the recurrent products read, chunk-major like hprev
  void fill_h_in(int64_t b0, int64_t nb) const {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t row = T * b0 + t * nb + i;
        const S* __restrict hp = hprev + row * Hp;
        const S* __restrict m = rec_mask + (b0 + i) * Hp;
        S* __restrict o = h_in + row * Hp;
#pragma omp simd
        for (int64_t j = 0; j < Hp; ++j) o[j] = m[j] * hp[j];
      }
  }

  // dh += m_h q for the chunk's rows that took part in step t (a padded step's q may be 0 * inf)
  void add_masked(int64_t t, int64_t b0, int64_t nb, const S* q) const {
    for (int64_t i = 0; i < nb; ++i) {
      if (len && t >= len[b0 + i]) continue;
      S* __restrict d = dh + (b0 + i) * Hp;
      const S* __restrict m = rec_mask + (b0 + i) * Hp;
      const S* __restrict qi = q + i * Hp;
#pragma omp simd
      for (int64_t j = 0; j < Hp; ++j) d[j] += m[j] * qi[j];
    }
  }

  // dh += D_t W_h for the chunk's rows; rows of padded steps keep their dh (see dh_keep)
  void dh_prev_product(int64_t t, int64_t b0, int64_t nb, const S* D_t) const {
    S* dh_c = dh + b0 * Hp;
    if (dh_keep)
      for (int64_t i = 0; i < nb; ++i)
        if (t >= len[b0 + i]) std::copy(dh_c + i * Hp, dh_c + (i + 1) * Hp, dh_keep + (b0 + i) * Hp);
    W_h->mul(nb, D_t, 3 * Hp, dh_c, Hp, true);
    if (dh_keep)
      for (int64_t i = 0; i < nb; ++i)
        if (t >= len[b0 + i]) std::copy(dh_keep + (b0 + i) * Hp, dh_keep + (b0 + i + 1) * Hp, dh_c + i * Hp);
  }

  // out (G * H, M) = D[:, blocks]^T A over `rows` rows, D's G gate blocks Hp apart in rows of ldd:
  // small_gemm_tn, or BLAS gate block by gate block
  void weight_grad(bool tn, int64_t G, int64_t M, int64_t rows, const S* A, int64_t lda, const S* D, int64_t ldd,
                   S* out) const {
    if (tn) return small_gemm_tn<S>(M, rows, A, lda, D, ldd, G, Hp, H, out, M);
    for (int64_t g = 0; g < G; ++g)
      gemm<S>(true, false, H, M, rows, S(1), D + g * Hp, ldd, A, lda, S(0), out + g * H * M, M);
  }

  // the chunk's weight, bias and input gradients: big GEMMs over its T * nb rows
  void after_loop(int64_t c, int64_t b0, int64_t nb) const {
    const int64_t H3 = 3 * Hp, base = T * b0, rows = T * nb;
    const bool tn = H <= 256 && I <= 256;  // small_gemm_tn beat MKL up to H = 256, not at H = 1024
    S* dGc = dG + base * H3;
    // dG_x = [da_r | da_z | da_n]: dG's r and z blocks and, for reset-after, da_n's rows as the n block
    // (read where they are rather than copied over dG_h's n block)
    const S* dGn = reset_after ? da_n + base * Hp : dGc + 2 * Hp;
    const int64_t ldn = reset_after ? Hp : H3;
    if (layer_norm) {
      // dP_x: dG_x through G's norm, in one buffer (its n block from da_n); in the same pass over the rows the
      // gains' gradients dg_ih = sum dG_x xhat_x and dg_hh = sum dG_h xhat_h (dG is read once, not three times)
      GateRowSums<S> dgx(Hp), dgh(Hp);
      for (int64_t i = 0; i < rows; ++i) {
        const S* d01 = dGc + i * H3;
        const S* d2 = dGn + i * ldn;
        const S* xx = xhat_x + (base + i) * H3;
        layer_norm_backward_row(d01, d2, dP_x + (base + i) * H3, xx, rstd[(base + i) * 2], cv->gain_x, cv->unit, H, Hp);
        if (need_weights) {
          dgx.add_product(d01, d2, xx);
          dgh.add_product(d01, d01 + 2 * Hp, xhat_h + (base + i) * H3);
        }
      }
      if (need_weights) {
        dgx.write(dg_ih + c * 3 * H, H);
        dgh.write(dg_hh + c * 3 * H, H);
      }
    }
    // what multiplies x and W_ih: gate blocks 0, 1 of (Dx01, ld H3) and block 2 of (Dx2, ldx2)
    const S* Dx01 = layer_norm ? dP_x + base * H3 : dGc;
    const S* Dx2 = layer_norm ? dP_x + base * H3 + 2 * Hp : dGn;
    const int64_t ldx2 = layer_norm ? H3 : ldn;
    if (need_weights) {
      const S* Dh = layer_norm ? dP_h + base * H3 : dGc;  // what multiplies h_in
      const S* Hin = rec_mask ? h_in : hprev;
      // the step that read h0 adds nothing to dW_hh when h0 = 0 (a fresh state): leave its rows out
      const int64_t first = reverse && T > 0 ? base + (T - 1) * nb : base;
      const S* h0p = Hin + first * Hp;
      // (0 * inf and 0 * NaN are NaN: only when the step's gradients are finite)
      const bool skip = T > 0 && std::all_of(h0p, h0p + nb * Hp, [](S v) { return v == S(0); }) &&
                        all_finite(Dh + (first - base) * H3, nb * H3);
      const int64_t r0 = skip && !reverse ? nb : 0, nrows = skip ? rows - nb : rows;
      const S* hp = Hin + (base + r0) * Hp;
      const S* Dr = Dh + r0 * H3;
      S* dwh = dw_hh + c * 3 * H * H;
      if (reset_after) {
        weight_grad(tn, 3, H, nrows, hp, Hp, Dr, H3, dwh);  // dW_hh = dP_h^T h_in
        if (has_b_hh) gate_column_sums(dGc, rows, H3, 3, H, Hp, db_hh + c * 3 * H);
      } else {
        weight_grad(tn, 2, H, nrows, hp, Hp, Dr, H3, dwh);  // dW_h[rz] = dG_rz^T h_in
        // dW_hn = da_n^T (r h_in): one block
        weight_grad(tn, 1, H, rows, aux + base * Hp, Hp, dGc + 2 * Hp, H3, dwh + 2 * H * H);
      }
      S* dwi = dw_ih + c * 3 * H * I;
      weight_grad(tn, 2, I, rows, xs + base * I, I, Dx01, H3, dwi);  // dW_ih = dP_x^T x: r, z blocks
      weight_grad(tn, 1, I, rows, xs + base * I, I, Dx2, ldx2, dwi + 2 * H * I);  // n block
      if (has_b_ih) {
        S* dbi = db_ih + c * 3 * H;
        if (reset_after && has_b_hh)  // dG_x and dG_h differ only in the n block
          std::copy(db_hh + c * 3 * H, db_hh + c * 3 * H + 2 * H, dbi);
        else
          gate_column_sums(dGc, rows, H3, 2, H, Hp, dbi);
        gate_column_sums(dGn, rows, ldn, 1, H, Hp, dbi + 2 * H);
      }
    }
    if (need_dx) {
      S* dxc = dx_scratch + base * I;
      for (int64_t g = 0; g < 3; ++g)  // dx = dP_x W_ih, gate block by gate block
        gemm<S>(false, false, rows, I, H, S(1), g < 2 ? Dx01 + g * Hp : Dx2, g < 2 ? H3 : ldx2, w_ih + g * H * I, I,
                g > 0 ? S(1) : S(0), dxc, I);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < nb; ++i) {  // a padded step's x took no part: its gradient is 0, not 0 W_ih
          S* row = dx + (t * B + b0 + i) * I;
          if (len && t >= len[b0 + i]) std::fill(row, row + I, S(0));
          else std::copy(dxc + (t * nb + i) * I, dxc + (t * nb + i + 1) * I, row);
        }
    }
  }
};

// p[0:n] += p[c * n : (c + 1) * n] for c in [1, chunks)
template <typename S>
void sum_into_first(S* p, int64_t chunks, int64_t n) {
  for (int64_t c = 1; c < chunks; ++c) {
    S* __restrict p0 = p;
    const S* __restrict pc = p + c * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) p0[i] += pc[i];
  }
}

}  // namespace

// The gradients of the layer call; undefined where not asked for or absent (for reset-before b_ih is the
// one bias).
LayerGrads gru_backward(const at::Tensor& dout_in, const at::Tensor& dh_n, const LayerTensors& p, const LayerCall& call,
                        const Saved& sv, const GradsNeeded& needed, int64_t T) {
  const CellOptions& cell = call.cell;
  const bool reset_after = cell.reset_after, layer_norm = cell.layer_norm;
  const bool has_b_ih = p.b_ih.has_value(), has_b_hh = reset_after && p.b_hh.has_value();
  const bool need_dx = needed.x, need_dh0 = needed.h0 && p.h0.has_value(), need_weights = needed.weights;
  const auto w_ih = p.w_ih.contiguous(), w_hh = p.w_hh.contiguous();
  const auto& hprev = sv.hprev;
  // dout may be absent (the outputs were not used; the Python side does not materialise zeros for it); it
  // is read through its strides (the gradient of a batch-first output needs no transposing copy)
  at::Tensor dout;
  if (dout_in.defined()) dout = dout_in.stride(2) == 1 ? dout_in : dout_in.contiguous();
  const int64_t I = w_ih.size(1), H = w_hh.size(1), Hp = hprev.size(1);
  const int64_t B = dout.defined() ? dout.size(1) : dh_n.defined() ? dh_n.size(0) : T > 0 ? hprev.size(0) / T : 0;
  if (dout.defined()) TORCH_CHECK(dout.size(0) == T && dout.size(2) == H, "grunet: dout must be (T, B, H)");
  TORCH_CHECK(sv.gates.size(1) == 3 * Hp && sv.aux.size(1) == Hp && Hp >= H, "grunet: saved tensors of another layout");
  TORCH_CHECK(!layer_norm || (sv.xhat_x.defined() && p.g_ih.has_value() && p.g_hh.has_value()),
              "grunet: layer_norm's backward needs its saved tensors and gains");
  const auto opt = hprev.options();
  const auto dtype = hprev.scalar_type();
  at::Tensor len;
  if (call.lengths.has_value()) len = call.lengths->to(at::kLong).contiguous();
  auto as_s = [&](const c10::optional<at::Tensor>& t) { return t.has_value() ? t->to(dtype).contiguous() : at::Tensor(); };
  const auto m_h = as_s(call.masks.recurrent), m_z = as_s(call.masks.zoneout);
  const auto gi = layer_norm ? as_s(p.g_ih) : at::Tensor(), gh = layer_norm ? as_s(p.g_hh) : at::Tensor();
  const bool zoneout = m_z.defined() || cell.zoneout > 0;

  auto dh = BufferPool::empty({B, Hp}, opt);  // dh_n, zero-padded (filled below)
  const auto dh_in = dh_n.defined() ? dh_n.to(dtype).contiguous() : at::Tensor();
  auto dG = BufferPool::empty({T * B, 3 * Hp}, opt);
  auto da_n = reset_after ? BufferPool::empty({T * B, Hp}, opt) : at::Tensor();
  auto drh = !reset_after || m_h.defined() ? BufferPool::empty({B, Hp}, opt) : at::Tensor();
  auto dh_keep = len.defined() ? BufferPool::empty({B, Hp}, opt) : at::Tensor();
  auto dh_direct = zoneout ? BufferPool::empty({B, Hp}, opt) : at::Tensor();
  auto h_in = m_h.defined() ? BufferPool::empty({T * B, Hp}, opt) : at::Tensor();
  at::Tensor dP_h, dP_x;
  if (layer_norm) {
    dP_h = BufferPool::empty({T * B, 3 * Hp}, opt);
    dP_x = BufferPool::empty({T * B, 3 * Hp}, opt);
  }
  LayerGrads grads;
  at::Tensor dx_scratch;
  const int64_t chunks = call.chunks;
  if (need_dx) {
    grads.x = BufferPool::empty({T, B, I}, opt);
    dx_scratch = BufferPool::empty({T * B, I}, opt);
  }
  if (need_weights) {
    // per-chunk partials, summed into chunk 0's after the loop (a chunk without rows zeroes its own)
    grads.w_ih = BufferPool::empty({chunks, 3 * H, I}, opt);
    grads.w_hh = BufferPool::empty({chunks, 3 * H, H}, opt);
    if (has_b_ih) grads.b_ih = BufferPool::empty({chunks, 3 * H}, opt);
    if (has_b_hh) grads.b_hh = BufferPool::empty({chunks, 3 * H}, opt);
    if (layer_norm) {
      grads.g_ih = BufferPool::empty({chunks, 3 * H}, opt);
      grads.g_hh = BufferPool::empty({chunks, 3 * H}, opt);
    }
  }
  const Chunking ch{T, B, chunks};
  const bool big_steps = B * H * 3 * H >= ((int64_t)1 << 20);

  AT_DISPATCH_FLOATING_TYPES(dtype, "grunet_gru_backward", [&] {
    using S = scalar_t;
    TORCH_CHECK(Hp == padded_units<S>(H), "grunet: saved tensors of another layout");
    const S* wh = w_hh.data_ptr<S>();
    S* d = dh.data_ptr<S>();
    const S* d_in = dh_in.defined() ? dh_in.data_ptr<S>() : nullptr;
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    const CellVectors<S> cv(layer_norm, cell.zoneout, gi, gh, m_h, m_z, T, B, H, Hp);
    Bwd<S> bw0;
    bw0.T = T, bw0.B = B, bw0.I = I, bw0.H = H, bw0.Hp = Hp;
    bw0.w_ih = w_ih.data_ptr<S>(), bw0.len = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    bw0.reverse = cell.reverse, bw0.reset_after = reset_after, bw0.has_b_ih = has_b_ih, bw0.has_b_hh = has_b_hh;
    bw0.need_dx = need_dx, bw0.need_dh0 = need_dh0, bw0.need_weights = need_weights;
    bw0.layer_norm = layer_norm, bw0.cv = &cv, bw0.rec_mask = cv.rec_mask;
    bw0.dout = ptr(dout), bw0.dsT = dout.defined() ? dout.stride(0) : 0, bw0.dsB = dout.defined() ? dout.stride(1) : 0;
    bw0.xs = ptr(sv.xs), bw0.gates = ptr(sv.gates), bw0.aux = ptr(sv.aux), bw0.hprev = ptr(hprev);
    bw0.xhat_x = ptr(sv.xhat_x), bw0.xhat_h = ptr(sv.xhat_h), bw0.rstd = ptr(sv.rstd);
    bw0.dG = ptr(dG), bw0.da_n = ptr(da_n), bw0.dP_h = ptr(dP_h), bw0.dP_x = ptr(dP_x), bw0.h_in = ptr(h_in);
    bw0.dh = ptr(dh), bw0.drh = ptr(drh), bw0.dh_direct = ptr(dh_direct);
    bw0.dx = ptr(grads.x), bw0.dx_scratch = ptr(dx_scratch);
    bw0.dw_ih = ptr(grads.w_ih), bw0.dw_hh = ptr(grads.w_hh), bw0.db_ih = ptr(grads.b_ih), bw0.db_hh = ptr(grads.b_hh);
    bw0.dg_ih = ptr(grads.g_ih), bw0.dg_hh = ptr(grads.g_hh);
    if (len.defined() && !all_finite(wh, 3 * H * H)) bw0.dh_keep = ptr(dh_keep);
    with_activation(cell.activation, [&](auto act) {
      constexpr int ACT = decltype(act)::value;
      for_batch_chunks(ch, big_steps, [&](int64_t c, int64_t b0, int64_t b1) {
        const int64_t nb = b1 - b0;
        for (int64_t b = b0; b < b1; ++b) {  // dh_n, zero-padded, for this chunk's rows
          if (d_in) std::copy(d_in + b * H, d_in + (b + 1) * H, d + b * Hp);
          std::fill(d + b * Hp + (d_in ? H : 0), d + (b + 1) * Hp, S(0));
        }
        if (bw0.h_in) bw0.fill_h_in(b0, nb);
        // each thread packs the weights it multiplies by (see gru_forward); K runs over dG's padded gate
        // blocks, whose padding the packed products skip (segments of H in Hp)
        StepMatrix<S> W_h, W_hn;
        if (reset_after) {
          W_h.init_rows(wh, H, 3, H, Hp);
        } else {
          W_h.init_rows(wh, H, 2, H, Hp);
          W_hn.init_rows(wh + 2 * H * H, H, 1, H, Hp);
        }
        Bwd<S> bw = bw0;
        bw.W_h = &W_h, bw.W_hn = &W_hn;
        if (nb == 0) {
          if (need_weights) {
            auto zero = [&](const at::Tensor& q) { if (q.defined()) q[c].zero_(); };
            zero(grads.w_ih), zero(grads.w_hh), zero(grads.b_ih), zero(grads.b_hh), zero(grads.g_ih), zero(grads.g_hh);
          }
          return;
        }
        for (int64_t s = T - 1; s >= 0; --s) {  // the forward's processing order, reversed
          const int64_t t = cell.reverse ? T - 1 - s : s;
          if (reset_after) bw.template step<ACT, true>(t, b0, nb, s == 0);
          else bw.template step<ACT, false>(t, b0, nb, s == 0);
        }
        bw.after_loop(c, b0, nb);
      });
    });
  });
  auto reduce = [&](const at::Tensor& partials) {  // sum of the per-chunk gradients, into chunk 0's
    if (!partials.defined()) return partials;
    AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "grunet_gru_backward_reduce", [&] {
      sum_into_first<scalar_t>(partials.data_ptr<scalar_t>(), chunks, partials.numel() / chunks);
    });
    return partials[0];
  };
  if (need_dh0) grads.h0 = dh.narrow(1, 0, H).contiguous();
  grads.w_ih = reduce(grads.w_ih), grads.w_hh = reduce(grads.w_hh);
  grads.b_ih = reduce(grads.b_ih), grads.b_hh = reduce(grads.b_hh);
  grads.g_ih = reduce(grads.g_ih), grads.g_hh = reduce(grads.g_hh);
  return grads;
}

}  // namespace grunet
