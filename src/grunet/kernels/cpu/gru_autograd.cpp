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

using OptTensor = c10::optional<at::Tensor>;
using Tensors2 = std::tuple<at::Tensor, at::Tensor>;
using Tensors6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LayerSignature = Tensors2(const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
                                const OptTensor&, const OptTensor&, const OptTensor&, bool, int64_t, bool, int64_t);
using TrainSignature = Tensors6(const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
                                const OptTensor&, const OptTensor&, const OptTensor&, bool, int64_t, bool, int64_t);
using BackwardSignature = Tensors6(const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const OptTensor&, bool, int64_t, bool, bool, bool, bool, bool, bool, int64_t,
                                   c10::SymInt);
using DoubleBackwardSignature = Tensors6(const OptTensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
                                         const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                         const OptTensor&, bool, int64_t, bool);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The arguments that are not tensors autograd should track (lengths is an integer tensor).
struct LayerOptions {
  OptTensor lengths;
  bool reset_after;
  int64_t activation;
  bool reverse;
  int64_t chunks;  // resolved from the threads argument once, here, so that forward and backward agree
};

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

struct FusedGRUFunction : public torch::autograd::Function<FusedGRUFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh, const LayerOptions& o) {
    static const auto train = op<TrainSignature>("grunet::gru_layer_train");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_n, xs, gates, aux, hprev] =
        train.call(x, h0, w_ih, w_hh, b_ih, b_hh, o.lengths, o.reset_after, o.activation, o.reverse, o.chunks);
    // x, h0 and the biases only for a differentiable backward (create_graph=True), which recomputes
    ctx->save_for_backward({w_ih, w_hh, xs, gates, aux, hprev, x, h0.value_or(at::Tensor()),
                            b_ih.value_or(at::Tensor()), b_hh.value_or(at::Tensor()),
                            o.lengths.value_or(at::Tensor())});
    ctx->saved_data["reset_after"] = o.reset_after;
    ctx->saved_data["activation"] = o.activation;
    ctx->saved_data["reverse"] = o.reverse;
    ctx->saved_data["chunks"] = o.chunks;
    ctx->saved_data["steps"] = x.sym_size(0);
    ctx->set_materialize_grads(false);  // an unused output (a classifier reads only h_n) costs no zeros
    return {out, h_n};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list none(7);  // one per forward argument
    const auto& dout = grads[0];
    const auto& dh_n = grads[1];
    if (!dout.defined() && !dh_n.defined()) return none;  // no gradient reached either output
    const auto s = ctx->get_saved_variables();
    const at::Tensor &w_ih = s[0], &w_hh = s[1], &x = s[6], &h0 = s[7], &b_ih = s[8], &b_hh = s[9], &lengths = s[10];
    const bool reset_after = ctx->saved_data["reset_after"].toBool(), reverse = ctx->saved_data["reverse"].toBool();
    const int64_t activation = ctx->saved_data["activation"].toInt();
    const bool has_h0 = h0.defined(), has_b_ih = b_ih.defined(), has_b_hh = b_hh.defined();
    // autograd's output edges: x, h0 when given, w_ih, w_hh, then the biases that were given
    const size_t i_wih = has_h0 ? 2 : 1, i_bih = i_wih + 2, i_bhh = i_bih + (has_b_ih ? 1 : 0);
    const bool need_dx = ctx->needs_input_grad(0), need_dh0 = has_h0 && ctx->needs_input_grad(1);
    const bool need_b_ih = has_b_ih && ctx->needs_input_grad(i_bih), need_b_hh = has_b_hh && ctx->needs_input_grad(i_bhh);
    const bool need_w_ih = ctx->needs_input_grad(i_wih), need_w_hh = ctx->needs_input_grad(i_wih + 1);
    const bool need_weights = need_w_ih || need_w_hh || need_b_ih || need_b_hh;
    at::Tensor dx, dh0, dw_ih, dw_hh, db_ih, db_hh;
    if (at::GradMode::is_enabled()) {  // create_graph=True: gradients that autograd can differentiate again
      static const auto twice = op<DoubleBackwardSignature>("grunet::gru_layer_double_backward");
      std::tie(dx, dh0, dw_ih, dw_hh, db_ih, db_hh) =
          twice.call(optional(dout), optional(dh_n), x, optional(h0), w_ih, w_hh, optional(b_ih), optional(b_hh),
                     optional(lengths), reset_after, activation, reverse);
    } else {
      static const auto once = op<BackwardSignature>("grunet::gru_layer_backward");
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(dx, dh0, dw_ih, dw_hh, db_ih, db_hh) =
          once.call(optional(dout), optional(dh_n), w_ih, w_hh, s[2], s[3], s[4], s[5], optional(lengths),
                    reset_after, activation, reverse, has_b_ih, has_b_hh, need_dx, need_dh0, need_weights,
                    ctx->saved_data["chunks"].toInt(), ctx->saved_data["steps"].toSymInt());
    }
    // an operator returns an empty tensor for a gradient nobody asked for; autograd wants it undefined
    return {need_dx ? dx : at::Tensor(), need_dh0 ? dh0 : at::Tensor(), need_w_ih ? dw_ih : at::Tensor(),
            need_w_hh ? dw_hh : at::Tensor(), need_b_ih ? db_ih : at::Tensor(), need_b_hh ? db_hh : at::Tensor(),
            at::Tensor()};
  }
};

bool requires_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

Tensors2 layer_autograd(const at::Tensor& x, const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths, bool reset_after,
                        int64_t activation, bool reverse, int64_t threads) {
  if (at::GradMode::is_enabled() && (x.requires_grad() || requires_grad(h0) || w_ih.requires_grad() ||
                                     w_hh.requires_grad() || requires_grad(b_ih) || requires_grad(b_hh))) {
    // a batch size only known at run time (a symbolic shape under torch.compile(dynamic=True)): one chunk
    const auto B = x.sym_size(1).maybe_as_int();
    const int64_t chunks = B ? batch_chunks(*B, w_hh.size(1), threads ? threads : at::get_num_threads()) : 1;
    auto r = FusedGRUFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh,
                                     LayerOptions{lengths, reset_after, activation, reverse, chunks});
    return {r[0], r[1]};
  }
  // nothing to differentiate: the inference forward, which keeps no gate activations
  static const auto layer = op<LayerSignature>("grunet::gru_layer");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return layer.call(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, activation, reverse, threads);
}

}  // namespace

TORCH_LIBRARY_IMPL(grunet, Autograd, m) { m.impl("gru_layer", &layer_autograd); }

}  // namespace grunet
