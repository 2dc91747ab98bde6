// grunet fused CPU GRU as an autograd function written in C++ (torch::autograd::Function): the training
// forward keeps xs, gates, aux and hprev for the backward, which the autograd engine then runs without
// entering Python. A Python autograd.Function cost ~30 us per forward + backward, ~2% of the tutorial
// model's whole training step.
#include <torch/extension.h>

#include "gru_cpu.h"

namespace grunet {
namespace {

// The call's options and masks by name in the context (saved_data holds IValues), for the backward.
c10::IValue optional_ivalue(const c10::optional<at::Tensor>& t) { return t.has_value() ? c10::IValue(*t) : c10::IValue(); }
c10::optional<at::Tensor> optional_tensor(const c10::IValue& v) {
  return v.isNone() ? c10::nullopt : c10::optional<at::Tensor>(v.toTensor());
}

void save_call(torch::autograd::AutogradContext* ctx, const LayerCall& call) {
  auto& d = ctx->saved_data;
  d["reset_after"] = call.cell.reset_after;
  d["activation"] = call.cell.activation;
  d["reverse"] = call.cell.reverse;
  d["layer_norm"] = call.cell.layer_norm;
  d["zoneout"] = call.cell.zoneout;
  d["recurrent_mask"] = optional_ivalue(call.masks.recurrent);
  d["zoneout_mask"] = optional_ivalue(call.masks.zoneout);
  d["lengths"] = optional_ivalue(call.lengths);
  d["chunks"] = call.chunks;
}

LayerCall load_call(torch::autograd::AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  LayerCall call;
  call.cell.reset_after = d["reset_after"].toBool();
  call.cell.activation = d["activation"].toInt();
  call.cell.reverse = d["reverse"].toBool();
  call.cell.layer_norm = d["layer_norm"].toBool();
  call.cell.zoneout = d["zoneout"].toDouble();
  call.masks.recurrent = optional_tensor(d["recurrent_mask"]);
  call.masks.zoneout = optional_tensor(d["zoneout_mask"]);
  call.lengths = optional_tensor(d["lengths"]);
  call.chunks = d["chunks"].toInt();
  return call;
}

struct FusedGRUFunction : public torch::autograd::Function<FusedGRUFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                                                const at::Tensor& w_hh,
                                                const c10::optional<at::Tensor>& b_ih,
                                                const c10::optional<at::Tensor>& b_hh,
                                                const c10::optional<at::Tensor>& g_ih,
                                                const c10::optional<at::Tensor>& g_hh, const LayerCall& call) {
    auto r = gru_forward(LayerTensors{x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh}, call, true);
    auto saved = r.saved.list();
    saved.insert(saved.begin(), {w_ih, w_hh, g_ih.value_or(at::Tensor()), g_hh.value_or(at::Tensor())});
    ctx->save_for_backward(saved);
    save_call(ctx, call);
    ctx->saved_data["T"] = x.size(0);
    ctx->saved_data["has_h0"] = h0.has_value();
    ctx->saved_data["has_b_ih"] = b_ih.has_value();
    ctx->saved_data["has_b_hh"] = b_hh.has_value();
    ctx->set_materialize_grads(false);  // an unused output (a classifier reads only h_n) costs no zeros
    return {r.out, r.h_n};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "grunet: the fused CPU kernel's backward is not itself differentiable (create_graph=True); use "
                "impl='reference' for higher-order gradients");
    torch::autograd::variable_list none(9);  // one per forward argument
    const auto& dout = grads[0];
    const auto& dh_n = grads[1];
    if (!dout.defined() && !dh_n.defined()) return none;  // no gradient reached either output
    auto saved = ctx->get_saved_variables();
    const LayerCall call = load_call(ctx);
    auto& d = ctx->saved_data;
    const bool has_h0 = d["has_h0"].toBool(), has_b_ih = d["has_b_ih"].toBool(), has_b_hh = d["has_b_hh"].toBool();
    const bool has_g = call.cell.layer_norm;
    // autograd's output edges: x, h0 when given, w_ih, w_hh, then the biases and gains that were given
    const size_t i_wih = has_h0 ? 2 : 1, i_bih = i_wih + 2, i_bhh = i_bih + (has_b_ih ? 1 : 0);
    const size_t i_gih = i_bhh + (has_b_hh ? 1 : 0), i_ghh = i_gih + 1;
    auto needs = [&](bool given, size_t i) { return given && ctx->needs_input_grad(i); };
    GradsNeeded needed;
    needed.x = ctx->needs_input_grad(0);
    needed.h0 = needs(has_h0, 1);
    needed.weights = ctx->needs_input_grad(i_wih) || ctx->needs_input_grad(i_wih + 1) || needs(has_b_ih, i_bih) ||
                     needs(has_b_hh, i_bhh) || needs(has_g, i_gih) || needs(has_g, i_ghh);
    LayerTensors p;
    p.w_ih = saved[0], p.w_hh = saved[1];
    if (has_h0) p.h0 = at::Tensor();  // only whether it was given matters to the backward
    if (has_b_ih) p.b_ih = at::Tensor();
    if (has_b_hh) p.b_hh = at::Tensor();
    if (has_g) p.g_ih = saved[2], p.g_hh = saved[3];
    const std::vector<at::Tensor> rest(saved.begin() + 4, saved.end());
    auto g = gru_backward(dout, dh_n, p, call, Saved::from_list(rest), needed, d["T"].toInt());
    torch::autograd::variable_list out = {g.x, g.h0, needed.weights ? g.w_ih : at::Tensor(),
                                          needed.weights ? g.w_hh : at::Tensor(), at::Tensor(), at::Tensor(),
                                          at::Tensor(), at::Tensor(), at::Tensor()};
    if (needs(has_b_ih, i_bih)) out[4] = g.b_ih;
    if (needs(has_b_hh, i_bhh)) out[5] = g.b_hh;
    if (needs(has_g, i_gih)) out[6] = g.g_ih;
    if (needs(has_g, i_ghh)) out[7] = g.g_hh;
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> gru_autograd(const LayerTensors& p, const LayerCall& call) {
  return FusedGRUFunction::apply(p.x, p.h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.g_ih, p.g_hh, call);
}

}  // namespace grunet
