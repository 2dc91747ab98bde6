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

// Training, and inference with big weights. Buffers in the padded gate layout (gru_cpu.h): a state row
// is Hp wide, a gate row 3 Hp (r | z | n at 0, Hp, 2 Hp), so every gate pass runs on whole vectors.
template <typename S>
struct Fwd {
  int64_t T, B, I, H, Hp;
  const S* x;                 // (T, B, I) user layout, strides (sT, sB, 1)
  int64_t sT, sB;
  const StepMatrix<S>* W_x;   // (I, 3Hp) = W_ih^T, padded gate blocks
  const StepMatrix<S>* W_h;   // reset-after (H, 3Hp) = W_hh^T; reset-before (H, 2Hp) = W_h[rz]^T
  const StepMatrix<S>* W_hn;  // reset-before (H, Hp) = W_hn^T
  const S* bias_x;            // (3Hp) initial value of G: reset-after b_ih + (b_hr, b_hz, 0); reset-before b
  const S* bias_h;            // (3Hp) initial value of the W_hh h product: reset-after (0, 0, b_hn), else null
  const int64_t* len;         // (B,) or nullptr
  bool reverse, training, h0_zero;
  S* out;                     // (T, B, H) user layout
  S* h_n;                     // (B, H) user layout: h0 in, h_n out
  S* xs;                      // training, chunk-major (T*B, I)
  S* gates;                   // training, chunk-major (T*B, 3Hp): G, overwritten by r | z | n
  S* aux;                     // training, chunk-major (T*B, Hp): a (reset-after) or rh (reset-before)
  S* hprev;                   // training, chunk-major (T*B, Hp): the h fed into each step
  S* scratch;                 // per row: gh (3Hp) + h_last (Hp) [+ inference: G (3Hp) + rh (Hp)]

  int64_t time_of(int64_t s) const { return reverse ? T - 1 - s : s; }
  int64_t scratch_per_row() const { return training ? 4 * Hp : 8 * Hp; }

  template <int ACT, bool RESET_AFTER>
  void chunk(int64_t b0, int64_t b1) const {
    const int64_t nb = b1 - b0, H3 = 3 * Hp, base = T * b0;  // base: first chunk-major row of this chunk
    if (T == 0 || nb == 0) return;
    S* gh = scratch + b0 * scratch_per_row();
    S* h_last = gh + nb * H3;    // the state after the last step (inference: the running state)
    S* G_inf = h_last + nb * Hp;
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
      if (training) W_x->mul(nb, xs + row * I, I, g_all, H3, false, bias_x);
      else W_x->mul(nb, x + t * sT + b0 * sB, sB, G_inf, H3, false, bias_x);
      const int64_t hcols = RESET_AFTER ? H3 : 2 * Hp;
      if (s == 0 && h0_zero) {  // W_h 0 = 0: only the bias
        for (int64_t i = 0; i < nb; ++i)
          if (bias_h) std::copy(bias_h, bias_h + hcols, gh + i * H3);
          else std::fill(gh + i * H3, gh + i * H3 + hcols, S(0));
      } else {
        W_h->mul(nb, hp_all, Hp, gh, H3, false, bias_h);  // reset-after: W_hh h + b_hh_n; reset-before: W_h[rz] h
      }
      if (!RESET_AFTER) {
        S* rh_all = training ? aux + row * Hp : rh_inf;
        for (int64_t i = 0; i < nb; ++i) {
          S* __restrict g = g_all + i * H3;
          const S* __restrict q = gh + i * H3;
          const S* __restrict hp = hp_all + i * Hp;
          S* __restrict rhb = rh_all + i * Hp;
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) {
            const S r = sigma<ACT>(g[j] + q[j]);
            const S z = sigma<ACT>(g[Hp + j] + q[Hp + j]);
            g[j] = r;
            g[Hp + j] = z;
            rhb[j] = r * hp[j];
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
          }
          continue;
        }
        if (RESET_AFTER) {
          S* __restrict a_out = training ? aux + (row + i) * Hp : nullptr;
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) {
            const S r = sigma<ACT>(g[j] + q[j]);
            const S z = sigma<ACT>(g[Hp + j] + q[Hp + j]);
            const S a = q[2 * Hp + j];
            const S n = tanh_(g[2 * Hp + j] + r * a);
            hn[j] = n + z * (hp[j] - n);
            g[j] = r;  // gates over G: backward reads r, z, n from here
            g[Hp + j] = z;
            g[2 * Hp + j] = n;
            if (a_out) a_out[j] = a;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < Hp; ++j) {
            const S z = g[Hp + j];
            const S n = tanh_(g[2 * Hp + j] + q[2 * Hp + j]);
            hn[j] = n + z * (hp[j] - n);
            g[2 * Hp + j] = n;
          }
        }
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
            const S z = sigma<ACT>(pr[Hp + j]);
            const S n = RESET_AFTER ? tanh_(pn[j] + sigma<ACT>(pr[j]) * pa[j]) : tanh_(pn[j]);
            h[j] = n + z * (h[j] - n);
          }
          std::copy(h, h + H, o);
        }
      }
      for (int64_t i = 0; i < nb; ++i) std::copy(xh + i * ldx + I, xh + i * ldx + I + H, h_n + (r0 + i) * H);
    }
  }
};

}  // namespace

// Returns [out (T,B,H), h_n (B,H)] and, when training, the chunk-major [xs, gates, aux, hprev].
std::vector<at::Tensor> gru_forward(const at::Tensor& x_in, const c10::optional<at::Tensor>& h0,
                                    const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
                                    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                    const c10::optional<at::Tensor>& lengths,
                                    bool reset_after, int64_t activation, bool reverse, bool training,
                                    int64_t chunks) {
  TORCH_CHECK(x_in.dim() == 3 && (!h0.has_value() || h0->dim() == 2), "grunet: x must be (T, B, I) and h0 (B, H)");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "grunet: the fused CPU kernel takes float32 or float64");
  const int64_t T = x_in.size(0), B = x_in.size(1), I = x_in.size(2), H = w_hh_in.size(1);
  // x is read through its strides (the caller's batch-first view needs no transposing copy)
  const auto x = x_in.stride(2) == 1 && x_in.stride(1) >= I && x_in.stride(0) >= I ? x_in : x_in.contiguous();
  // inference with small weights: the Infer loop (its packed weights stay in L2)
  const bool lean = !training && (I + H) * 3 * (H + 15) * (int64_t)x_in.element_size() <= ((int64_t)1 << 20);
  const auto w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  TORCH_CHECK((!h0.has_value() || (h0->size(0) == B && h0->size(1) == H)) && w_ih.size(0) == 3 * H &&
                  w_ih.size(1) == I && w_hh.size(0) == 3 * H && w_hh.size(1) == H,
              "grunet: shape mismatch between x, h0, w_ih and w_hh");
  TORCH_CHECK(chunks >= 1 && chunks <= std::max<int64_t>(B, 1), "grunet: chunks must be in [1, B]");
  const auto opt = x.options();
  // (raw buffers below, not ATen ops: a call's fixed cost is a few percent of the tutorial model's step)
  const auto bi = b_ih.has_value() ? b_ih->to(x.scalar_type()).contiguous() : at::Tensor();
  const auto bh = reset_after && b_hh.has_value() ? b_hh->to(x.scalar_type()).contiguous() : at::Tensor();
  // no h0: a fresh state of zeros (the caller need not allocate one, and step 0 skips its W_hh h product)
  const auto h0c = h0.has_value() ? h0->to(x.scalar_type()).contiguous() : at::Tensor();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->to(at::kLong).contiguous();

  auto out = BufferPool::empty({T, B, H}, opt);
  auto h_n = at::empty({B, H}, opt);  // h0 copied in below; h_n out
  const int64_t Hp = x.scalar_type() == at::kDouble ? padded_units<double>(H) : padded_units<float>(H);
  at::Tensor xs, gates, aux, hprev;
  if (training) {
    // backward's weight-gradient products read xs's rows in whole vectors, past the last row's end too
    auto xs_buf = BufferPool::empty({T * B * I + kVectorSlack}, opt);  // the slack is zeroed below
    xs = xs_buf.narrow(0, 0, T * B * I).view({T * B, I});
    gates = BufferPool::empty({T * B, 3 * Hp}, opt);
    aux = BufferPool::empty({T * B, Hp}, opt);
    hprev = BufferPool::empty({T * B, Hp}, opt);
  }
  const Chunking ch{T, B, chunks};
  const bool big_steps = B * H * 3 * H >= ((int64_t)1 << 20);  // worth BLAS threads when unchunked

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grunet_gru_forward", [&] {
    using S = scalar_t;
    if (h0c.defined()) std::copy(h0c.data_ptr<S>(), h0c.data_ptr<S>() + B * H, h_n.data_ptr<S>());
    else std::fill(h_n.data_ptr<S>(), h_n.data_ptr<S>() + B * H, S(0));
    if (training) std::fill(xs.data_ptr<S>() + T * B * I, xs.data_ptr<S>() + T * B * I + kVectorSlack, S(0));
    // the bias added to G: reset-after b_ih + (b_hr, b_hz, 0); reset-before the one bias b (= b_ih); b_hn
    std::vector<S> bias_g(3 * H, S(0)), b_hn(H, S(0));
    if (bi.defined()) std::copy(bi.data_ptr<S>(), bi.data_ptr<S>() + 3 * H, bias_g.begin());
    if (bh.defined()) {
      const S* p = bh.data_ptr<S>();
      for (int64_t j = 0; j < 2 * H; ++j) bias_g[j] += p[j];
      std::copy(p + 2 * H, p + 3 * H, b_hn.begin());
    }
    if (lean) {
      Infer<S> inf{T, B, I, H, 0, x.data_ptr<S>(), x.stride(0), x.stride(1),
                   len.defined() ? len.data_ptr<int64_t>() : nullptr, reverse};
      inf.init(w_ih.data_ptr<S>(), w_hh.data_ptr<S>(), bias_g.data(), b_hn.data());
      inf.out = out.data_ptr<S>();
      inf.h_n = h_n.data_ptr<S>();
      with_activation(activation, [&](auto act) {
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
    auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    Fwd<S> f{T, B, I, H, Hp, x.data_ptr<S>(), x.stride(0), x.stride(1), nullptr, nullptr, nullptr, bias_x.data(),
             reset_after ? bias_h.data() : nullptr, len.defined() ? len.data_ptr<int64_t>() : nullptr, reverse,
             training, h0_zero, out.data_ptr<S>(), h_n.data_ptr<S>(), ptr(xs), ptr(gates), ptr(aux), ptr(hprev),
             nullptr};
    auto scratch = BufferPool::empty({B * f.scratch_per_row()}, opt);
    f.scratch = scratch.data_ptr<S>();
    with_activation(activation, [&](auto act) {
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
        // instead of streaming a (rows, 8 Hp) scratch through L3 every step.
        const int64_t step = training ? std::max<int64_t>(b1 - b0, 1) : kInferenceRows;
        for (int64_t r0 = b0; r0 < b1; r0 += step) {
          const int64_t r1 = std::min(b1, r0 + step);
          if (reset_after) fc.template chunk<ACT, true>(r0, r1);
          else fc.template chunk<ACT, false>(r0, r1);
        }
      });
    });
  });
  if (training) return {out, h_n, xs, gates, aux, hprev};
  return {out, h_n};
}

}  // namespace grunet
