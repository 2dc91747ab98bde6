// grunet fused CPU GRU: the Autograd kernel of grunet::gru_layer, a C++ autograd function
// (torch::autograd::Function). The training forward keeps what the backward reads, and the autograd engine
// then runs the backward without entering Python: a Python autograd.Function cost ~30 us per forward +
// backward, ~2% of the tutorial model's whole training step.
//
// Forward and backward call grunet::gru_layer_train and grunet::gru_layer_backward through the dispatcher
// below autograd, so that whatever sits there sees them: the CPU kernels in eager mode, the fake (meta)
// implementations and the graph recorders under torch.compile, torch.export and torch.func.
// With create_graph=True the backward must itself be differentiable: it then calls
// grunet::gru_layer_double_backward, which recomputes the gradients with the reference loop in autograd.
#include <torch/extension.h>
#include <torch/library.h>

#include "gru_cpu.h"

namespace grunet {
namespace {

using namespace op_signatures;

// The arguments that are not tensors autograd should track: the masks (random constants), lengths (an
// integer tensor) and the cell's options.
struct LayerOptions {
  OptTensor recurrent_mask, zoneout_mask, lengths;
  bool reset_after;
  int64_t activation;
  bool reverse;
  bool layer_norm;
  double zoneout;
  int64_t chunks;  // resolved from the threads argument once, here, so that forward and backward agree
};

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }
at::Tensor or_undefined(const OptTensor& t) { return t.value_or(at::Tensor()); }

// save_for_backward's order (a list); the seven Saved tensors sit at kSaved
enum SavedIndex : size_t {
  kWih, kWhh, kGih, kGhh, kX, kH0, kBih, kBhh, kRecurrentMask, kZoneoutMask, kLengths, kSaved
};

struct FusedGRUFunction : public torch::autograd::Function<FusedGRUFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& g_ih,
                                                const OptTensor& g_hh, const LayerOptions& o) {
    static const auto train = find_op<LayerTrain>("grunet::gru_layer_train");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_n, xs, gates, aux, hprev, xhat_x, xhat_h, rstd] =
        train.call(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, o.recurrent_mask, o.zoneout_mask, o.lengths,
                   o.reset_after, o.activation, o.reverse, o.layer_norm, o.zoneout, o.chunks);
    // x, h0 and the biases only for a differentiable backward (create_graph=True), which recomputes
    ctx->save_for_backward({w_ih, w_hh, or_undefined(g_ih), or_undefined(g_hh), x, or_undefined(h0),
                            or_undefined(b_ih), or_undefined(b_hh), or_undefined(o.recurrent_mask),
                            or_undefined(o.zoneout_mask), or_undefined(o.lengths), xs, gates, aux, hprev, xhat_x,
                            xhat_h, rstd});
    auto& d = ctx->saved_data;
    d["reset_after"] = o.reset_after;
    d["activation"] = o.activation;
    d["reverse"] = o.reverse;
    d["layer_norm"] = o.layer_norm;
    d["zoneout"] = o.zoneout;
    d["chunks"] = o.chunks;
    d["steps"] = x.sym_size(0);
    ctx->set_materialize_grads(false);  // an unused output (a classifier reads only h_n) costs no zeros
    return {out, h_n};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list none(9);  // one per forward argument
    const auto& dout = grads[0];
    const auto& dh_n = grads[1];
    if (!dout.defined() && !dh_n.defined()) return none;  // no gradient reached either output
    const auto s = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    const bool reset_after = d["reset_after"].toBool(), reverse = d["reverse"].toBool();
    const bool layer_norm = d["layer_norm"].toBool();
    const int64_t activation = d["activation"].toInt();
    const double zoneout = d["zoneout"].toDouble();
    const bool has_h0 = s[kH0].defined(), has_b_ih = s[kBih].defined(), has_b_hh = s[kBhh].defined();
    const bool has_g_ih = s[kGih].defined(), has_g_hh = s[kGhh].defined();
    // autograd's output edges: x, h0 when given, w_ih, w_hh, then the biases and gains that were given
    const size_t i_wih = has_h0 ? 2 : 1, i_bih = i_wih + 2, i_bhh = i_bih + (has_b_ih ? 1 : 0);
    const size_t i_gih = i_bhh + (has_b_hh ? 1 : 0), i_ghh = i_gih + (has_g_ih ? 1 : 0);
    auto needs = [&](bool given, size_t i) { return given && ctx->needs_input_grad(i); };
    const bool need_dx = ctx->needs_input_grad(0), need_dh0 = needs(has_h0, 1);
    const bool need_w_ih = ctx->needs_input_grad(i_wih), need_w_hh = ctx->needs_input_grad(i_wih + 1);
    const bool need_b_ih = needs(has_b_ih, i_bih), need_b_hh = needs(has_b_hh, i_bhh);
    const bool need_g_ih = needs(has_g_ih, i_gih), need_g_hh = needs(has_g_hh, i_ghh);
    const bool need_weights = need_w_ih || need_w_hh || need_b_ih || need_b_hh || need_g_ih || need_g_hh;
    at::Tensor dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh;
    if (at::GradMode::is_enabled()) {  // create_graph=True: gradients that autograd can differentiate again
      static const auto twice = find_op<LayerDoubleBackward>("grunet::gru_layer_double_backward");
      std::tie(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh) =
          twice.call(optional(dout), optional(dh_n), s[kX], optional(s[kH0]), s[kWih], s[kWhh], optional(s[kBih]),
                     optional(s[kBhh]), optional(s[kGih]), optional(s[kGhh]), optional(s[kRecurrentMask]),
                     optional(s[kZoneoutMask]), optional(s[kLengths]), reset_after, activation, reverse, layer_norm,
                     zoneout);
    } else {
      static const auto once = find_op<LayerBackward>("grunet::gru_layer_backward");
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh) =
          once.call(optional(dout), optional(dh_n), s[kWih], s[kWhh], optional(s[kGih]), optional(s[kGhh]),
                    optional(s[kRecurrentMask]), optional(s[kZoneoutMask]), optional(s[kLengths]), s[kSaved],
                    s[kSaved + 1], s[kSaved + 2], s[kSaved + 3], s[kSaved + 4], s[kSaved + 5], s[kSaved + 6],
                    reset_after, activation, reverse, layer_norm, zoneout, has_b_ih, has_b_hh, need_dx, need_dh0,
                    need_weights, d["chunks"].toInt(), d["steps"].toSymInt());
    }
    // an operator returns an empty tensor for a gradient nobody asked for; autograd wants it undefined
    auto when = [](bool needed, const at::Tensor& g) { return needed ? g : at::Tensor(); };
    return {when(need_dx, dx),     when(need_dh0, dh0),     when(need_w_ih, dw_ih), when(need_w_hh, dw_hh),
            when(need_b_ih, db_ih), when(need_b_hh, db_hh), when(need_g_ih, dg_ih), when(need_g_hh, dg_hh),
            at::Tensor()};
  }
};

bool requires_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

Tensors2 layer_autograd(const at::Tensor& x, const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& g_ih, const OptTensor& g_hh,
                        const OptTensor& recurrent_mask, const OptTensor& zoneout_mask, const OptTensor& lengths,
                        bool reset_after, int64_t activation, bool reverse, bool layer_norm, double zoneout,
                        int64_t threads) {
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || requires_grad(h0) || w_ih.requires_grad() || w_hh.requires_grad() ||
       requires_grad(b_ih) || requires_grad(b_hh) || requires_grad(g_ih) || requires_grad(g_hh))) {
    // a batch size only known at run time (a symbolic shape under torch.compile(dynamic=True)): one chunk
    const auto B = x.sym_size(1).maybe_as_int();
    const int64_t chunks = B ? batch_chunks(*B, w_hh.size(1), threads ? threads : at::get_num_threads()) : 1;
    auto r = FusedGRUFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh,
                                     LayerOptions{recurrent_mask, zoneout_mask, lengths, reset_after, activation,
                                                  reverse, layer_norm, zoneout, chunks});
    return {r[0], r[1]};
  }
  // nothing to differentiate: the inference forward, which keeps no gate activations
  static const auto layer = find_op<Layer>("grunet::gru_layer");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return layer.call(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after,
                    activation, reverse, layer_norm, zoneout, threads);
}

}  // namespace

TORCH_LIBRARY_IMPL(grunet, Autograd, m) { m.impl("gru_layer", &layer_autograd); }

}  // namespace grunet
