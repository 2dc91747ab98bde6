// grunet fused CPU GRU, forward over the whole sequence (one layer, one direction).
//
// Symbols as in grunet.reference; x_t (B, I), h (B, H); G = x_t W_ih^T (+ bias), step by step:
//   reset-after:   r  = sigma(G_r + b_hr + W_hr h)            [b_hr folded into G's bias]
//                  z  = sigma(G_z + b_hz + W_hz h)            [b_hz folded into G's bias]
//                  a  = W_hn h + b_hn                          (kept for backward: dr needs it)
//                  n  = tanh(G_n + r * a)
//   reset-before:  r  = sigma(G_r + W_hr h),  z = sigma(G_z + W_hz h)      [b = b_ih folded into G]
//                  rh = r * h                                  (kept for backward: dW_hn needs it)
//                  n  = tanh(G_n + W_hn rh)
//   both:          h' = z * h + (1 - z) * n  =  n + z * (h - n)
// With lengths, rows with t >= lengths[b] keep h and output 0.
//
// Threads split the batch into chunks (gru_cpu.h); each runs the whole sequence on its rows.
// Per step: G = x_t W_ih^T, one (rows, H) x (H, 3H) GEMM (reset-before: (H, 2H), then (H, H) on r*h), then
// one fused vectorised pass per row. Training keeps, chunk-major (see Chunking): xs = a copy of x, gates =
// r | z | n written over G, aux = a (reset-after) or rh (reset-before), hprev = the h fed into each step.
// Inference keeps none of them: G goes to a (rows, 3H) scratch and h is updated in place (h' at (b, j)
// only reads h at (b, j) once the GEMM has consumed h).
#include "gru_cpu.h"

namespace grunet {
namespace {

// rows per block of the inference time loop (a multiple of small_gemm's 5-row tiles)
constexpr int64_t kInferenceRows = 64;

// Training, inference with big weights, and every cell option. Buffers in the padded gate layout
// (gru_cpu.h): a state row is Hp wide, a gate row 3 Hp (r | z | n at 0, Hp, 2 Hp), so every gate pass runs on
// whole vectors. The cell options, per step:
//   recurrent dropout: the products read h_in = m_h * h (reset-before: rh = r * h_in); the update reads h
//   layer_norm:        G = LN(x W_ih^T) g_ih + bias_x, gh = LN(h_in W_hh^T) g_hh + bias_h (biases after the
//                      norm, so the same folded bias vectors serve as the shifts)
//   zoneout:           h' = h + k (h~ - h), k from the (T, B, H) mask (training) or 1 - p (eval)
template <typename S>
struct Fwd {
  int64_t T = 0, B = 0, I = 0, H = 0, Hp = 0;
  const S* x = nullptr;             // (T, B, I) user layout, strides (sT, sB, 1)
  int64_t sT = 0, sB = 0;
  const StepMatrix<S>* W_x = nullptr;   // (I, 3Hp) = W_ih^T, padded gate blocks
  const StepMatrix<S>* W_h = nullptr;   // reset-after (H, 3Hp) = W_hh^T; reset-before (H, 2Hp) = W_h[rz]^T
  const StepMatrix<S>* W_hn = nullptr;  // reset-before (H, Hp) = W_hn^T
  const S* bias_x = nullptr;  // (3Hp) added to G: reset-after b_ih + (b_hr, b_hz, 0); reset-before b
  const S* bias_h = nullptr;  // (3Hp) added to the W_hh h product: reset-after (0, 0, b_hn), else null
  const int64_t* len = nullptr;     // (B,) or nullptr
  bool reverse = false, training = false, h0_zero = false;
  bool layer_norm = false;
  const CellVectors<S>* cv = nullptr;  // the gains, masks and zoneout shares in the padded layout
  S* out = nullptr;                 // (T, B, H) user layout
  S* h_n = nullptr;                 // (B, H) user layout: h0 in, h_n out
  S* xs = nullptr;                  // training, chunk-major (T*B, I)
  S* gates = nullptr;               // training, chunk-major (T*B, 3Hp): G, overwritten by r | z | n
  S* aux = nullptr;                 // training, chunk-major (T*B, Hp): a (reset-after) or rh (reset-before)
  S* hprev = nullptr;               // training, chunk-major (T*B, Hp): the h fed into each step
  S* xhat_x = nullptr;              // training with layer_norm, chunk-major (T*B, 3Hp)
  S* xhat_h = nullptr;              // training with layer_norm, chunk-major (T*B, 3Hp)
  S* rstd = nullptr;                // training with layer_norm, chunk-major (T*B, 2)
  S* scratch = nullptr;             // per row: gh (3Hp) + h_last (Hp) + h_in (Hp) [+ inference: G (3Hp) + rh (Hp)]

  int64_t time_of(int64_t s) const { return reverse ? T - 1 - s : s; }
  int64_t scratch_per_row() const { return training ? 5 * Hp : 9 * Hp; }

  template <int ACT, bool RESET_AFTER>
  void chunk(int64_t b0, int64_t b1) const {
    const int64_t nb = b1 - b0, H3 = 3 * Hp, base = T * b0;  // base: first chunk-major row of this chunk
    if (T == 0 || nb == 0) return;
    S* gh = scratch + b0 * scratch_per_row();
    S* h_last = gh + nb * H3;    // the state after the last step (inference: the running state)
    S* h_in_buf = h_last + nb * Hp;
    S* G_inf = h_in_buf + nb * Hp;
    S* rh_inf = G_inf + nb * H3;
    // the state fed into step 0, zero-padded
    S* h_first = training ? hprev + (base + time_of(0) * nb) * Hp : h_last;
    for (int64_t i = 0; i < nb; ++i) {
      std::copy(h_n + (b0 + i) * H, h_n + (b0 + i + 1) * H, h_first + i * Hp);
      std::fill(h_first + i * Hp + H, h_first + (i + 1) * Hp, S(0));
    }
    if (training) {
      for (int64_t t = 0; t < T; ++t)  // chunk-major copy of x for the GEMMs (here and in backward)
        for (int64_t b = b0; b < b1; ++b) {
          S* row = xs + (base + t * nb + b - b0) * I;
          // a padded step's x takes no part (torch.nn.GRU on packed sequences never reads it): zeros, so
          // that a NaN there cannot reach dW_ih through its zero gradient rows
          if (len && t >= len[b]) std::fill(row, row + I, S(0));
          else std::copy(x + t * sT + b * sB, x + t * sT + b * sB + I, row);
        }
    }
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_of(s), row = base + t * nb;
      const S* hp_all = training ? hprev + row * Hp : h_last;
      S* hn_all = training && s + 1 < T ? hprev + (base + time_of(s + 1) * nb) * Hp : h_last;
      S* g_all = training ? gates + row * H3 : G_inf;
      // G for this step, just before the gate pass reads it (computed for all steps up front, the (T*rows, 3Hp)
      // G had left L2 before the pass read it back; per step the forward is 2-3% faster)
      const S* bx = layer_norm ? nullptr : bias_x;
      if (training) W_x->mul(nb, xs + row * I, I, g_all, H3, false, bx);
      else W_x->mul(nb, x + t * sT + b0 * sB, sB, G_inf, H3, false, bx);
      if (layer_norm)
        for (int64_t i = 0; i < nb; ++i) {
          const S rs = layer_norm_row(g_all + i * H3, cv->unit, H, Hp, cv->gain_x, bias_x, training ? xhat_x + (row + i) * H3 : nullptr);
          if (training) rstd[(row + i) * 2] = rs;
        }
      const S* hin_all = hp_all;  // what the recurrent products read
      if (cv->rec_mask) {
        for (int64_t i = 0; i < nb; ++i) {
          const S* __restrict m = cv->rec_mask + (b0 + i) * Hp;
          const S* __restrict hp = hp_all + i * Hp;
          S* __restrict hm = h_in_buf + i * Hp;
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) hm[j] = m[j] * hp[j];
        }
        hin_all = h_in_buf;
      }
      const int64_t hcols = RESET_AFTER ? H3 : 2 * Hp;
      const S* bh = layer_norm ? nullptr : bias_h;
      if (s == 0 && h0_zero) {  // W_h 0 = 0: only the bias
        for (int64_t i = 0; i < nb; ++i)
          if (bh) std::copy(bh, bh + hcols, gh + i * H3);
          else std::fill(gh + i * H3, gh + i * H3 + hcols, S(0));
      } else {
        W_h->mul(nb, hin_all, Hp, gh, H3, false, bh);  // reset-after: W_hh h + b_hh_n; reset-before: W_h[rz] h
      }
      if (layer_norm)
        for (int64_t i = 0; i < nb; ++i) {
          const S rs = layer_norm_row(gh + i * H3, cv->unit, H, Hp, cv->gain_h, bias_h, training ? xhat_h + (row + i) * H3 : nullptr);
          if (training) rstd[(row + i) * 2 + 1] = rs;
        }
      if (!RESET_AFTER) {
        S* rh_all = training ? aux + row * Hp : rh_inf;
        for (int64_t i = 0; i < nb; ++i) {
          S* __restrict g = g_all + i * H3;
          const S* __restrict q = gh + i * H3;
          const S* __restrict hin = hin_all + i * Hp;
          S* __restrict rhb = rh_all + i * Hp;
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) {
            const S r = sigma<ACT>(g[j] + q[j]);
            const S z = sigma<ACT>(g[Hp + j] + q[Hp + j]);
            g[j] = r;
            g[Hp + j] = z;
            rhb[j] = r * hin[j];
          }
        }
        W_hn->mul(nb, rh_all, Hp, gh + 2 * Hp, H3, false);  // W_hn (r * h)
      }
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t b = b0 + i;
        S* __restrict g = g_all + i * H3;
        const S* __restrict q = gh + i * H3;
        const S* hp = hp_all + i * Hp;  // hn == hp in inference: no __restrict (same-index read, then write)
        S* hn = hn_all + i * Hp;
        S* __restrict o = out + (t * B + b) * H;
        if (len && t >= len[b]) {  // padding: keep the state, output zero
          if (hn != hp) std::copy(hp, hp + Hp, hn);
          std::fill(o, o + H, S(0));
          if (training) {  // backward's weight products read these rows with zero gradients: keep
            // them finite (a NaN state of a sequence that ended must not reach dW_hh as 0 * NaN)
            std::fill(const_cast<S*>(hp), const_cast<S*>(hp) + Hp, S(0));
            std::fill(aux + (row + i) * Hp, aux + (row + i + 1) * Hp, S(0));
            if (layer_norm) std::fill(xhat_h + (row + i) * H3, xhat_h + (row + i + 1) * H3, S(0));
          }
          continue;
        }
        const S* k = cv->zone_of(t, b, B);  // zoneout's share, or none
        S* a_out = RESET_AFTER && training ? aux + (row + i) * Hp : nullptr;
        // one gate pass, with or without zoneout's step (a compile-time choice: no branch per unit)
        auto pass = [&](auto zone) {
          constexpr bool ZONEOUT = decltype(zone)::value;
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) {
            const S h = hp[j];
            S h_tilde;
            if (RESET_AFTER) {
              S r, z, n;
              const S a = q[2 * Hp + j];
              h_tilde = reset_after_cell<ACT>(g[j] + q[j], g[Hp + j] + q[Hp + j], g[2 * Hp + j], a, h, r, z, n);
              g[j] = r;  // gates over G: backward reads r, z, n from here
              g[Hp + j] = z;
              g[2 * Hp + j] = n;
              if (a_out) a_out[j] = a;
            } else {
              const S n = tanh_(g[2 * Hp + j] + q[2 * Hp + j]);
              h_tilde = state_update(g[Hp + j], n, h);
              g[2 * Hp + j] = n;
            }
            hn[j] = ZONEOUT ? zoneout_update(h, h_tilde, k[j]) : h_tilde;
          }
        };
        if (k) pass(std::true_type{});
        else pass(std::false_type{});
        std::copy(hn, hn + H, o);
      }
    }
    for (int64_t i = 0; i < nb; ++i) std::copy(h_last + i * Hp, h_last + i * Hp + H, h_n + (b0 + i) * H);
  }
};

// Inference with small weights (the tutorial model): a leaner loop than Fwd's. Gate blocks are padded to
// Hp = H rounded up to whole vectors, so that every product and every gate pass runs on whole vectors (no
// tail units), and each thread keeps per block of rows one buffer xh = [x_t | h] (rows, I + Hp):
//   rz = [x_t | h] [W_ir W_iz; W_hr W_hz]^T + (b_ir + b_hr | b_iz + b_hz)   one product, K = I + H
//   gn = x_t W_in^T + b_in
//   reset-after:  an = h W_hn^T + b_hn;  n = tanh(gn + sigma(rz_r) * an)
//   reset-before: gn += (sigma(rz_r) h) W_hn^T;  n = tanh(gn)
//   h' = n + sigma(rz_z) (h - n), written over h inside xh and copied to out.
// The biases are the products' initial values, so the gate pass reads 4 values per unit instead of 10.
template <typename S>
struct Infer {
  static constexpr int W = Vec<S>::kWidth;
  int64_t T, B, I, H, Hp;
  const S* x;        // (T, B, I) with strides (sT, sB, 1): the caller's batch-first view needs no copy
  int64_t sT, sB;
  const int64_t* len;
  bool reverse;
  PackedB<S> Wrz, Wxn, Whn;                  // (I+H, 2Hp), (I, Hp), (H, Hp)
  std::vector<S> brz, bxn, bhn;              // (2Hp), (Hp), (Hp)
  S* out;                                    // (T, B, H)
  S* h_n;                                    // (B, H): h0 in, h_n out

  // bias_g (3H): b_ih + (b_hr, b_hz, 0) (reset-before: the one bias); b_hn (H): reset-after's, else 0
  void init(const S* w_ih, const S* w_hh, const S* bias_g, const S* b_hn) {
    Hp = padded_units<S>(H);
    std::vector<S> m((I + H) * 2 * Hp, S(0));  // [W_ir W_iz; W_hr W_hz]^T: two weight matrices, one K
    for (int64_t g = 0; g < 2; ++g)
      for (int64_t u = 0; u < H; ++u) {
        for (int64_t k = 0; k < I; ++k) m[k * 2 * Hp + g * Hp + u] = w_ih[(g * H + u) * I + k];
        for (int64_t k = 0; k < H; ++k) m[(I + k) * 2 * Hp + g * Hp + u] = w_hh[(g * H + u) * H + k];
      }
    Wrz.pack(m.data(), 2 * Hp, false, I + H, 2 * Hp);
    Wxn.pack_gates_transposed(w_ih + 2 * H * I, I, 1, H, I, Hp);
    Whn.pack_gates_transposed(w_hh + 2 * H * H, H, 1, H, H, Hp);
    brz = pad_gates(bias_g, 2, H, Hp);
    bxn = pad_gates(bias_g + 2 * H, 1, H, Hp);
    bhn = pad_gates(b_hn, 1, H, Hp);
  }

  // rows [b0, b1) through the whole sequence, kInferenceRows rows at a time
  template <int ACT, bool RESET_AFTER>
  void chunk(int64_t b0, int64_t b1) const {
    const int64_t R = kInferenceRows, ldx = I + Hp;
    std::vector<S> buf(R * (ldx + 4 * Hp) + 4 * W, S(0));
    S* xh = buf.data();
    S* rz = xh + R * ldx;
    S* gn = rz + R * 2 * Hp;
    S* an = gn + R * Hp;  // reset-after W_hn h + b_hn; reset-before r * h
    for (int64_t r0 = b0; r0 < b1; r0 += R) {
      const int64_t nb = std::min(R, b1 - r0);
      for (int64_t i = 0; i < nb; ++i) std::copy(h_n + (r0 + i) * H, h_n + (r0 + i + 1) * H, xh + i * ldx + I);
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        for (int64_t i = 0; i < nb; ++i)
          std::copy(x + t * sT + (r0 + i) * sB, x + t * sT + (r0 + i) * sB + I, xh + i * ldx);
        small_gemm<S>(nb, xh, ldx, Wrz, rz, 2 * Hp, false, brz.data());
        small_gemm<S>(nb, xh, ldx, Wxn, gn, Hp, false, bxn.data());
        if (RESET_AFTER) {
          small_gemm<S>(nb, xh + I, ldx, Whn, an, Hp, false, bhn.data());
        } else {
          for (int64_t i = 0; i < nb; ++i) {
            const S* __restrict pr = rz + i * 2 * Hp;
            const S* __restrict h = xh + i * ldx + I;
            S* __restrict rh = an + i * Hp;
#pragma omp simd
            for (int64_t j = 0; j < Hp; ++j) rh[j] = sigma<ACT>(pr[j]) * h[j];
          }
          small_gemm<S>(nb, an, Hp, Whn, gn, Hp, true);  // gn += (r h) W_hn^T
        }
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t b = r0 + i;
          S* o = out + (t * B + b) * H;
          if (len && t >= len[b]) {  // padding: keep the state, output zero
            std::fill(o, o + H, S(0));
            continue;
          }
          const S* __restrict pr = rz + i * 2 * Hp;
          const S* __restrict pn = gn + i * Hp;
          const S* __restrict pa = an + i * Hp;
          S* h = xh + i * ldx + I;  // read, then written at the same unit
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) {
            if (RESET_AFTER) {
              S r, z, n;
              h[j] = reset_after_cell<ACT>(pr[j], pr[Hp + j], pn[j], pa[j], h[j], r, z, n);
            } else {
              h[j] = state_update(sigma<ACT>(pr[Hp + j]), tanh_(pn[j]), h[j]);
            }
          }
          std::copy(h, h + H, o);
        }
      }
      for (int64_t i = 0; i < nb; ++i) std::copy(xh + i * ldx + I, xh + i * ldx + I + H, h_n + (r0 + i) * H);
    }
  }
};

}  // namespace

// The layer call of gru_cpu.h's contract; keep_for_backward: also the chunk-major Saved tensors.
ForwardResult gru_forward(const LayerTensors& p, const LayerCall& call, bool training) {
  const CellOptions& cell = call.cell;
  const bool reset_after = cell.reset_after, reverse = cell.reverse;
  const at::Tensor& x_in = p.x;
  const auto& h0 = p.h0;
  TORCH_CHECK(x_in.dim() == 3 && (!h0.has_value() || h0->dim() == 2), "grunet: x must be (T, B, I) and h0 (B, H)");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "grunet: the fused CPU kernel takes float32 or float64");
  TORCH_CHECK(!cell.layer_norm || (reset_after && p.g_ih.has_value() && p.g_hh.has_value()),
              "grunet: layer_norm needs reset_after and both gains");
  const int64_t T = x_in.size(0), B = x_in.size(1), I = x_in.size(2), H = p.w_hh.size(1);
  const auto dtype = x_in.scalar_type();
  const bool recurrent_dropout = call.masks.recurrent.has_value();
  const bool zoneout = call.masks.zoneout.has_value() || cell.zoneout > 0;
  // x is read through its strides (the caller's batch-first view needs no transposing copy)
  const auto x = x_in.stride(2) == 1 && x_in.stride(1) >= I && x_in.stride(0) >= I ? x_in : x_in.contiguous();
  // plain inference with small weights: the Infer loop (its packed weights stay in L2)
  const bool lean = !training && !cell.layer_norm && !recurrent_dropout && !zoneout &&
                    (I + H) * 3 * (H + 15) * (int64_t)x_in.element_size() <= ((int64_t)1 << 20);
  const auto w_ih = p.w_ih.contiguous(), w_hh = p.w_hh.contiguous();
  TORCH_CHECK((!h0.has_value() || (h0->size(0) == B && h0->size(1) == H)) && w_ih.size(0) == 3 * H &&
                  w_ih.size(1) == I && w_hh.size(0) == 3 * H && w_hh.size(1) == H,
              "grunet: shape mismatch between x, h0, w_ih and w_hh");
  TORCH_CHECK(call.chunks >= 1 && call.chunks <= std::max<int64_t>(B, 1), "grunet: chunks must be in [1, B]");
  const auto opt = x.options();
  // (raw buffers below, not ATen ops: a call's fixed cost is a few percent of the tutorial model's step)
  auto as_x = [&](const c10::optional<at::Tensor>& t) { return t.has_value() ? t->to(dtype).contiguous() : at::Tensor(); };
  const auto bi = as_x(p.b_ih);
  const auto bh = reset_after ? as_x(p.b_hh) : at::Tensor();
  const auto gi = cell.layer_norm ? as_x(p.g_ih) : at::Tensor(), gh_gain = cell.layer_norm ? as_x(p.g_hh) : at::Tensor();
  const auto m_h = as_x(call.masks.recurrent), m_z = as_x(call.masks.zoneout);
  if (m_h.defined()) TORCH_CHECK(m_h.dim() == 2 && m_h.size(0) == B && m_h.size(1) == H, "grunet: recurrent mask must be (B, H)");
  if (m_z.defined())
    TORCH_CHECK(m_z.dim() == 3 && m_z.size(0) == T && m_z.size(1) == B && m_z.size(2) == H, "grunet: zoneout mask must be (T, B, H)");
  // no h0: a fresh state of zeros (the caller need not allocate one, and step 0 skips its W_hh h product)
  const auto h0c = as_x(h0);
  at::Tensor len;
  if (call.lengths.has_value()) len = call.lengths->to(at::kLong).contiguous();

  ForwardResult result;
  auto out = BufferPool::empty({T, B, H}, opt);
  auto h_n = at::empty({B, H}, opt);  // h0 copied in below; h_n out
  const int64_t Hp = dtype == at::kDouble ? padded_units<double>(H) : padded_units<float>(H);
  Saved& sv = result.saved;
  if (training) {
    // backward's weight-gradient products read xs's rows in whole vectors, past the last row's end too
    auto xs_buf = BufferPool::empty({T * B * I + kVectorSlack}, opt);  // the slack is zeroed below
    sv.xs = xs_buf.narrow(0, 0, T * B * I).view({T * B, I});
    sv.gates = BufferPool::empty({T * B, 3 * Hp}, opt);
    sv.aux = BufferPool::empty({T * B, Hp}, opt);
    sv.hprev = BufferPool::empty({T * B, Hp}, opt);
    if (cell.layer_norm) {
      sv.xhat_x = BufferPool::empty({T * B, 3 * Hp}, opt);
      sv.xhat_h = BufferPool::empty({T * B, 3 * Hp}, opt);
      sv.rstd = BufferPool::empty({T * B, 2}, opt);
    }
  }
  const Chunking ch{T, B, call.chunks};
  const bool big_steps = B * H * 3 * H >= ((int64_t)1 << 20);  // worth BLAS threads when unchunked

  AT_DISPATCH_FLOATING_TYPES(dtype, "grunet_gru_forward", [&] {
    using S = scalar_t;
    if (h0c.defined()) std::copy(h0c.data_ptr<S>(), h0c.data_ptr<S>() + B * H, h_n.data_ptr<S>());
    else std::fill(h_n.data_ptr<S>(), h_n.data_ptr<S>() + B * H, S(0));
    if (training) std::fill(sv.xs.data_ptr<S>() + T * B * I, sv.xs.data_ptr<S>() + T * B * I + kVectorSlack, S(0));
    // the bias added to G: reset-after b_ih + (b_hr, b_hz, 0); reset-before the one bias b (= b_ih); b_hn
    std::vector<S> bias_g(3 * H, S(0)), b_hn(H, S(0));
    if (bi.defined()) std::copy(bi.data_ptr<S>(), bi.data_ptr<S>() + 3 * H, bias_g.begin());
    if (bh.defined()) {
      const S* q = bh.data_ptr<S>();
      for (int64_t j = 0; j < 2 * H; ++j) bias_g[j] += q[j];
      std::copy(q + 2 * H, q + 3 * H, b_hn.begin());
    }
    const int64_t* len_p = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    if (lean) {
      Infer<S> inf{T, B, I, H, 0, x.data_ptr<S>(), x.stride(0), x.stride(1), len_p, reverse};
      inf.init(w_ih.data_ptr<S>(), w_hh.data_ptr<S>(), bias_g.data(), b_hn.data());
      inf.out = out.data_ptr<S>();
      inf.h_n = h_n.data_ptr<S>();
      with_activation(cell.activation, [&](auto act) {
        constexpr int ACT = decltype(act)::value;
        for_batch_chunks(ch, false, [&](int64_t, int64_t b0, int64_t b1) {
          if (reset_after) inf.template chunk<ACT, true>(b0, b1);
          else inf.template chunk<ACT, false>(b0, b1);
        });
      });
      return;
    }
    const S* wi = w_ih.data_ptr<S>();
    const S* wh = w_hh.data_ptr<S>();
    const S* h0p = h_n.data_ptr<S>();
    // step 0 without the W_hh h product, which is then exactly 0 (not so for 0 * inf or 0 * NaN)
    const bool h0_zero = (!h0c.defined() || std::all_of(h0p, h0p + B * H, [](S v) { return v == S(0); })) &&
                         all_finite(wh, 3 * H * H);
    std::vector<S> bias_h;
    if (reset_after) {
      bias_h.assign(3 * Hp, S(0));
      std::copy(b_hn.begin(), b_hn.end(), bias_h.data() + 2 * Hp);
    }
    const std::vector<S> bias_x = pad_gates(bias_g.data(), 3, H, Hp);
    const CellVectors<S> cv(cell.layer_norm, cell.zoneout, gi, gh_gain, m_h, m_z, T, B, H, Hp);
    auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    Fwd<S> f;
    f.T = T, f.B = B, f.I = I, f.H = H, f.Hp = Hp;
    f.x = x.data_ptr<S>(), f.sT = x.stride(0), f.sB = x.stride(1);
    f.bias_x = bias_x.data(), f.bias_h = reset_after ? bias_h.data() : nullptr;
    f.len = len_p, f.reverse = reverse, f.training = training, f.h0_zero = h0_zero;
    f.layer_norm = cell.layer_norm, f.cv = &cv;
    f.out = out.data_ptr<S>(), f.h_n = h_n.data_ptr<S>();
    f.xs = ptr(sv.xs), f.gates = ptr(sv.gates), f.aux = ptr(sv.aux), f.hprev = ptr(sv.hprev);
    f.xhat_x = ptr(sv.xhat_x), f.xhat_h = ptr(sv.xhat_h), f.rstd = ptr(sv.rstd);
    auto scratch = BufferPool::empty({B * f.scratch_per_row()}, opt);
    f.scratch = scratch.data_ptr<S>();
    with_activation(cell.activation, [&](auto act) {
      constexpr int ACT = decltype(act)::value;
      for_batch_chunks(ch, big_steps, [&](int64_t, int64_t b0, int64_t b1) {
        // each thread packs the weights it multiplies by: no serial packing before the threads start, and
        // the packed panels are in the cache of the core that reads them (~10% of a 2-thread forward)
        StepMatrix<S> W_x, W_h, W_hn;
        W_x.init_transposed(wi, I, 3, H, I, Hp);
        if (reset_after) {
          W_h.init_transposed(wh, H, 3, H, H, Hp);
        } else {
          W_h.init_transposed(wh, H, 2, H, H, Hp);
          W_hn.init_transposed(wh + 2 * H * H, H, 1, H, H, Hp);
        }
        Fwd<S> fc = f;
        fc.W_x = &W_x, fc.W_h = &W_h, fc.W_hn = &W_hn;
        // Inference: rows are independent and nothing is kept per step, so each thread runs the whole
        // sequence on blocks of kInferenceRows rows at a time: the block's G, W_hh h and h stay in L1/L2
        // instead of streaming a (rows, 9 Hp) scratch through L3 every step.
        const int64_t step = training ? std::max<int64_t>(b1 - b0, 1) : kInferenceRows;
        for (int64_t r0 = b0; r0 < b1; r0 += step) {
          const int64_t r1 = std::min(b1, r0 + step);
          if (reset_after) fc.template chunk<ACT, true>(r0, r1);
          else fc.template chunk<ACT, false>(r0, r1);
        }
      });
    });
  });
  result.out = out;
  result.h_n = h_n;
  return result;
}

}  // namespace grunet
