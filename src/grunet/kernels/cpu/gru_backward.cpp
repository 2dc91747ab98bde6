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
#include "gru_cpu.h"

namespace grunet {
namespace {

template <typename S>
struct Bwd {
  int64_t T, B, I, H, Hp;     // buffers in the padded gate layout (gru_cpu.h): rows of Hp, gate rows of 3 Hp
  const StepMatrix<S>* W_h;   // reset-after (3Hp, Hp) = W_hh; reset-before (2Hp, Hp) = W_h[rz]; padded
  const StepMatrix<S>* W_hn;  // reset-before (Hp, Hp) = W_hn, padded
  const S* w_ih;              // (3H, I)
  const int64_t* len;         // (B,) or nullptr
  bool reverse, reset_after, has_b_ih, has_b_hh, need_dx, need_dh0, need_weights;
  const S* dout;              // (T, B, H) with strides (dsT, dsB, 1), or nullptr: no gradient reached the outputs
  int64_t dsT, dsB;
  const S* xs;                // chunk-major (T*B, I)
  const S* gates;             // chunk-major (T*B, 3Hp) r | z | n
  const S* aux;               // chunk-major (T*B, Hp): a (reset-after) or rh (reset-before)
  const S* hprev;             // chunk-major (T*B, Hp)
  S* dG;                      // chunk-major (T*B, 3Hp): reset-after dG_h (dG_x: n block da_n); reset-before dG
  S* da_n;                    // chunk-major (T*B, Hp): reset-after only
  S* dh;                      // (B, Hp): in dh_n, out dh0
  S* drh;                     // (B, Hp) scratch, reset-before
  S* dx;                      // (T, B, I) user layout
  S* dx_scratch;              // chunk-major (T*B, I)
  S* dw_ih;                   // per chunk (3H, I)
  S* dw_hh;                   // per chunk (3H, H)
  S* db_ih;                   // per chunk (3H,)
  S* db_hh;                   // per chunk (3H,)
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
        continue;
      }
      if (dout) {  // dh += dL/dout_t (H units; the padding's gradient stays 0)
        const S* __restrict dO = dout + t * dsT + b * dsB;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d[j] += dO[j];
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
    }
    const bool need_dh_prev = !last || need_dh0;
    if (RESET_AFTER) {
      if (need_dh_prev) dh_prev_product(t, b0, nb, dG_t);  // dh_prev += [da_r | da_z | da] W_hh
      return;
    }
    S* drh_c = drh + b0 * Hp;
    W_hn->mul(nb, dG_t + 2 * Hp, H3, drh_c, Hp, false);  // d(rh) = da_n W_hn
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t b = b0 + i, row = row0 + i;
      if (len && t >= len[b]) continue;
      const S* __restrict g = gates + row * H3;
      const S* __restrict hp = hprev + row * Hp;
      const S* __restrict q = drh_c + i * Hp;
      S* __restrict dg = dG + row * H3;
      S* __restrict d = dh_c + i * Hp;
#pragma omp simd
      for (int64_t j = 0; j < Hp; ++j) {
        const S r = g[j];
        dg[j] = sigma_backward<ACT>(r, q[j] * hp[j]);  // da_r
        d[j] += q[j] * r;
      }
    }
    if (need_dh_prev) dh_prev_product(t, b0, nb, dG_t);  // dh_prev += [da_r | da_z] W_h[rz]
  }

  // dh += dG_t W_h for the chunk's rows; rows of padded steps keep their dh (see dh_keep)
  void dh_prev_product(int64_t t, int64_t b0, int64_t nb, const S* dG_t) const {
    S* dh_c = dh + b0 * Hp;
    if (dh_keep)
      for (int64_t i = 0; i < nb; ++i)
        if (t >= len[b0 + i]) std::copy(dh_c + i * Hp, dh_c + (i + 1) * Hp, dh_keep + (b0 + i) * Hp);
    W_h->mul(nb, dG_t, 3 * Hp, dh_c, Hp, true);
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
    if (need_weights) {
      // the step that read h0 adds nothing to dW_hh when h0 = 0 (a fresh state): leave its rows out
      const int64_t first = reverse && T > 0 ? base + (T - 1) * nb : base;
      const S* h0p = hprev + first * Hp;
      // (0 * inf and 0 * NaN are NaN: only when the step's gradients are finite)
      const bool skip = T > 0 && std::all_of(h0p, h0p + nb * Hp, [](S v) { return v == S(0); }) &&
                        all_finite(dGc + (first - base) * H3, nb * H3);
      const int64_t r0 = skip && !reverse ? nb : 0, nrows = skip ? rows - nb : rows;
      const S* hp = hprev + (base + r0) * Hp;
      const S* dGr = dGc + r0 * H3;
      S* dwh = dw_hh + c * 3 * H * H;
      if (reset_after) {
        weight_grad(tn, 3, H, nrows, hp, Hp, dGr, H3, dwh);  // dW_hh = dG_h^T hprev
        if (has_b_hh) gate_column_sums(dGc, rows, H3, 3, H, Hp, db_hh + c * 3 * H);
      } else {
        weight_grad(tn, 2, H, nrows, hp, Hp, dGr, H3, dwh);  // dW_h[rz] = dG_rz^T hprev
        // dW_hn = da_n^T (r h): one block
        weight_grad(tn, 1, H, rows, aux + base * Hp, Hp, dGc + 2 * Hp, H3, dwh + 2 * H * H);
      }
    }
    // dG_x = [da_r | da_z | da_n]: dG's r and z blocks and, for reset-after, da_n's rows as the n block
    // (read where they are rather than copied over dG_h's n block)
    const S* dGn = reset_after ? da_n + base * Hp : dGc + 2 * Hp;
    const int64_t ldn = reset_after ? Hp : H3;
    if (need_weights) {
      S* dwi = dw_ih + c * 3 * H * I;
      weight_grad(tn, 2, I, rows, xs + base * I, I, dGc, H3, dwi);  // dW_ih = dG_x^T x: r, z blocks
      weight_grad(tn, 1, I, rows, xs + base * I, I, dGn, ldn, dwi + 2 * H * I);  // n block
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
      for (int64_t g = 0; g < 3; ++g)  // dx = dG_x W_ih, gate block by gate block
        gemm<S>(false, false, rows, I, H, S(1), g < 2 ? dGc + g * Hp : dGn, g < 2 ? H3 : ldn, w_ih + g * H * I, I,
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

// Returns [dx (T,B,I), dh0 (B,H), dw_ih, dw_hh, db_ih, db_hh]; undefined where not asked for or no bias
// (for reset-before db_ih is the grad of the one bias).
std::vector<at::Tensor> gru_backward(const c10::optional<at::Tensor>& dout_in, const c10::optional<at::Tensor>& dh_n,
                                     const at::Tensor& w_ih_in, const at::Tensor& w_hh_in, const at::Tensor& xs,
                                     const at::Tensor& gates, const at::Tensor& aux, const at::Tensor& hprev,
                                     const c10::optional<at::Tensor>& lengths, bool reset_after, int64_t activation,
                                     bool reverse, bool has_b_ih, bool has_b_hh, bool need_dx, bool need_dh0,
                                     bool need_weights, int64_t chunks, int64_t T) {
  const auto w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  // dout may be absent (the outputs were not used; the Python side does not materialise zeros for it); it
  // is read through its strides (the gradient of a batch-first output needs no transposing copy)
  at::Tensor dout;
  if (dout_in.has_value()) dout = dout_in->stride(2) == 1 ? *dout_in : dout_in->contiguous();
  const int64_t I = w_ih.size(1), H = w_hh.size(1), Hp = hprev.size(1);
  const int64_t B = dout.defined() ? dout.size(1) : dh_n.has_value() ? dh_n->size(0) : T > 0 ? hprev.size(0) / T : 0;
  if (dout.defined()) TORCH_CHECK(dout.size(0) == T && dout.size(2) == H, "grunet: dout must be (T, B, H)");
  TORCH_CHECK(gates.size(1) == 3 * Hp && aux.size(1) == Hp && Hp >= H, "grunet: saved tensors of another layout");
  const auto opt = hprev.options();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();

  auto dh = BufferPool::empty({B, Hp}, opt);  // dh_n, zero-padded (filled below)
  const auto dh_in = dh_n.has_value() ? dh_n->to(hprev.scalar_type()).contiguous() : at::Tensor();
  auto dG = BufferPool::empty({T * B, 3 * Hp}, opt);
  auto da_n = reset_after ? BufferPool::empty({T * B, Hp}, opt) : at::Tensor();
  auto drh = reset_after ? at::Tensor() : BufferPool::empty({B, Hp}, opt);
  auto dh_keep = len.defined() ? BufferPool::empty({B, Hp}, opt) : at::Tensor();
  at::Tensor dx, dx_scratch, dw_ih, dw_hh, db_ih, db_hh;
  if (need_dx) {
    dx = BufferPool::empty({T, B, I}, opt);
    dx_scratch = BufferPool::empty({T * B, I}, opt);
  }
  if (need_weights) {
    // per-chunk partials, summed into chunk 0's after the loop (a chunk without rows zeroes its own)
    dw_ih = BufferPool::empty({chunks, 3 * H, I}, opt);
    dw_hh = BufferPool::empty({chunks, 3 * H, H}, opt);
    if (has_b_ih) db_ih = BufferPool::empty({chunks, 3 * H}, opt);
    if (has_b_hh && reset_after) db_hh = BufferPool::empty({chunks, 3 * H}, opt);
  }
  const Chunking ch{T, B, chunks};
  const bool big_steps = B * H * 3 * H >= ((int64_t)1 << 20);

  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "grunet_gru_backward", [&] {
    using S = scalar_t;
    TORCH_CHECK(Hp == padded_units<S>(H), "grunet: saved tensors of another layout");
    const S* wh = w_hh.data_ptr<S>();
    S* d = dh.data_ptr<S>();
    const S* d_in = dh_in.defined() ? dh_in.data_ptr<S>() : nullptr;
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    Bwd<S> bw0{T, B, I, H, Hp, nullptr, nullptr, w_ih.data_ptr<S>(), len.defined() ? len.data_ptr<int64_t>() : nullptr,
              reverse, reset_after, has_b_ih, has_b_hh && reset_after, need_dx, need_dh0, need_weights,
              ptr(dout), dout.defined() ? dout.stride(0) : 0, dout.defined() ? dout.stride(1) : 0,
              ptr(xs), ptr(gates), ptr(aux), ptr(hprev), ptr(dG), ptr(da_n), ptr(dh),
              ptr(drh), ptr(dx), ptr(dx_scratch), ptr(dw_ih), ptr(dw_hh), ptr(db_ih), ptr(db_hh)};
    if (len.defined() && !all_finite(wh, 3 * H * H)) bw0.dh_keep = ptr(dh_keep);
    with_activation(activation, [&](auto act) {
      constexpr int ACT = decltype(act)::value;
      for_batch_chunks(ch, big_steps, [&](int64_t c, int64_t b0, int64_t b1) {
        const int64_t nb = b1 - b0;
        for (int64_t b = b0; b < b1; ++b) {  // dh_n, zero-padded, for this chunk's rows
          if (d_in) std::copy(d_in + b * H, d_in + (b + 1) * H, d + b * Hp);
          std::fill(d + b * Hp + (d_in ? H : 0), d + (b + 1) * Hp, S(0));
        }
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
            auto zero = [&](const at::Tensor& p) { if (p.defined()) p[c].zero_(); };
            zero(dw_ih), zero(dw_hh), zero(db_ih), zero(db_hh);
          }
          return;
        }
        for (int64_t s = T - 1; s >= 0; --s) {  // the forward's processing order, reversed
          const int64_t t = reverse ? T - 1 - s : s;
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
  at::Tensor dh0;
  if (need_dh0) dh0 = dh.narrow(1, 0, H).contiguous();
  return {dx, dh0, reduce(dw_ih), reduce(dw_hh), reduce(db_ih), reduce(db_hh)};
}

}  // namespace grunet
