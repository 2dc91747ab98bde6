// grunet fused CPU GRU as an autograd function written in C++ (torch::autograd::Function): the training
// forward keeps xs, gates, aux and hprev for the backward, which the autograd engine then runs without
// entering Python. A Python autograd.Function cost ~30 us per forward + backward, ~2% of the tutorial
// model's whole training step.
#include <torch/extension.h>

#include "gru_cpu.h"

namespace grunet {
namespace {

// The arguments that are not tensors autograd should track (lengths is an integer tensor).
struct LayerOptions {
  c10::optional<at::Tensor> lengths;
  bool reset_after;
  int64_t activation;
  bool reverse;
  int64_t chunks;
};

struct FusedGRUFunction : public torch::autograd::Function<FusedGRUFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                                                const at::Tensor& w_hh,
                                                const c10::optional<at::Tensor>& b_ih,
                                                const c10::optional<at::Tensor>& b_hh, const LayerOptions& o) {
    auto r = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, o.lengths, o.reset_after, o.activation, o.reverse, true,
                         o.chunks);
    // r = out, h_n, xs, gates, aux, hprev
    ctx->save_for_backward({w_ih, w_hh, r[2], r[3], r[4], r[5]});
    ctx->saved_data["lengths"] = o.lengths.has_value() ? c10::IValue(*o.lengths) : c10::IValue();
    ctx->saved_data["config"] = std::vector<int64_t>{o.reset_after, o.activation, o.reverse, b_ih.has_value(),
                                                     b_hh.has_value(), o.chunks, x.size(0), h0.has_value()};
    ctx->set_materialize_grads(false);  // an unused output (a classifier reads only h_n) costs no zeros
    return {r[0], r[1]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "grunet: the fused CPU kernel's backward is not itself differentiable (create_graph=True); use "
                "impl='reference' for higher-order gradients");
    torch::autograd::variable_list none(7);  // one per forward argument
    const auto& dout = grads[0];
    const auto& dh_n = grads[1];
    if (!dout.defined() && !dh_n.defined()) return none;  // no gradient reached either output
    const auto saved = ctx->get_saved_variables();
    const auto cfg = ctx->saved_data["config"].toIntVector();
    const bool reset_after = cfg[0], reverse = cfg[2], has_b_ih = cfg[3], has_b_hh = cfg[4], has_h0 = cfg[7];
    const auto len_iv = ctx->saved_data["lengths"];
    const c10::optional<at::Tensor> lengths = len_iv.isNone() ? c10::nullopt : c10::optional<at::Tensor>(len_iv.toTensor());
    // autograd's output edges: x, h0 when given, w_ih, w_hh, then the biases that were given
    const size_t i_wih = has_h0 ? 2 : 1, i_bih = i_wih + 2, i_bhh = i_bih + (has_b_ih ? 1 : 0);
    const bool need_dh0 = has_h0 && ctx->needs_input_grad(1);
    const bool need_weights = ctx->needs_input_grad(i_wih) || ctx->needs_input_grad(i_wih + 1) ||
                              (has_b_ih && ctx->needs_input_grad(i_bih)) || (has_b_hh && ctx->needs_input_grad(i_bhh));
    auto g = gru_backward(dout.defined() ? c10::optional<at::Tensor>(dout) : c10::nullopt,
                          dh_n.defined() ? c10::optional<at::Tensor>(dh_n) : c10::nullopt, saved[0], saved[1],
                          saved[2], saved[3], saved[4], saved[5], lengths, reset_after, cfg[1], reverse, has_b_ih,
                          has_b_hh, ctx->needs_input_grad(0), need_dh0, need_weights, cfg[5], cfg[6]);
    // g = dx, dh0, dw_ih, dw_hh, db_ih, db_hh
    torch::autograd::variable_list out = {g[0], g[1], need_weights ? g[2] : at::Tensor(),
                                          need_weights ? g[3] : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    if (has_b_ih && ctx->needs_input_grad(i_bih)) out[4] = g[4];
    if (has_b_hh && ctx->needs_input_grad(i_bhh)) out[5] = g[5];
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> gru_autograd(const at::Tensor& x, const c10::optional<at::Tensor>& h0,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                     const c10::optional<at::Tensor>& lengths,
                                     bool reset_after, int64_t activation, bool reverse, int64_t chunks) {
  return FusedGRUFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh,
                                 LayerOptions{lengths, reset_after, activation, reverse, chunks});
}

}  // namespace grunet
