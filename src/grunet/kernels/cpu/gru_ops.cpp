// grunet fused CPU GRU as PyTorch operators (torch.library, namespace grunet), so that the dispatcher, and
// with it torch.compile, torch.export, torch.func and the TorchScript tracer, sees one call per layer:
//
//   grunet::gru_layer           the layer call (out, h_n); its Autograd kernel is in gru_autograd.cpp
//   grunet::gru_layer_train     the training forward: (out, h_n) and what the backward reads (Saved)
//   grunet::gru_layer_backward  the gradients from what gru_layer_train kept
//   grunet::gru_layer_double_backward  the gradients recomputed with the reference loop, differentiable
//                               (create_graph=True); implemented in Python (grunet.kernels.cpu.ops)
//
// The schemas spell out gru_cpu.h's contract argument by argument (exported programs refer to them by these
// names); the structs are built from them here, in one place (layer_tensors, layer_call), and this file is
// the one place that calls the kernels' entry points (gru_forward, gru_backward).
// Shapes for the fake (meta) implementations are in grunet.kernels.cpu.ops, the saved tensors' from
// Saved::columns. A tensor the kernel leaves undefined (a gradient the caller did not ask for, layer norm's
// saved rows without layer norm) comes back as an empty tensor: an operator returns real tensors.
#include <torch/library.h>

#include "gru_cpu.h"

namespace grunet {
namespace {

using namespace op_signatures;  // OptTensor, Tensors2/8/9: the operators' C++ types (gru_cpu.h)

LayerTensors layer_tensors(const at::Tensor& x, const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& g_ih, const OptTensor& g_hh) {
  return LayerTensors{x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh};
}

LayerCall layer_call(const OptTensor& recurrent_mask, const OptTensor& zoneout_mask, const OptTensor& lengths,
                     bool reset_after, int64_t activation, bool reverse, bool layer_norm, double zoneout,
                     int64_t chunks) {
  LayerCall call;
  call.cell.reset_after = reset_after;
  call.cell.activation = activation;
  call.cell.reverse = reverse;
  call.cell.layer_norm = layer_norm;
  call.cell.zoneout = zoneout;
  call.masks.recurrent = recurrent_mask;
  call.masks.zoneout = zoneout_mask;
  call.lengths = lengths;
  call.chunks = chunks;
  return call;
}

Tensors2 layer_cpu(const at::Tensor& x, const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& g_ih, const OptTensor& g_hh,
                   const OptTensor& recurrent_mask, const OptTensor& zoneout_mask, const OptTensor& lengths,
                   bool reset_after, int64_t activation, bool reverse, bool layer_norm, double zoneout,
                   int64_t threads) {
  const int64_t chunks = batch_chunks(x.size(1), w_hh.size(1), threads ? threads : at::get_num_threads());
  auto r = gru_forward(layer_tensors(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh),
                       layer_call(recurrent_mask, zoneout_mask, lengths, reset_after, activation, reverse, layer_norm,
                                  zoneout, chunks),
                       false);
  return {r.out, r.h_n};
}

Tensors9 layer_train_cpu(const at::Tensor& x, const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& g_ih, const OptTensor& g_hh,
                         const OptTensor& recurrent_mask, const OptTensor& zoneout_mask, const OptTensor& lengths,
                         bool reset_after, int64_t activation, bool reverse, bool layer_norm, double zoneout,
                         int64_t chunks) {
  auto r = gru_forward(layer_tensors(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh),
                       layer_call(recurrent_mask, zoneout_mask, lengths, reset_after, activation, reverse, layer_norm,
                                  zoneout, chunks),
                       true);
  // each placeholder its own tensor: an operator's outputs may not alias one another
  auto v = r.saved.list();
  for (auto& t : v)
    if (!t.defined()) t = at::empty({0}, r.out.options());
  return {r.out, r.h_n, v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
}

Tensors8 layer_backward_cpu(const OptTensor& dout, const OptTensor& dh_n, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const OptTensor& g_ih, const OptTensor& g_hh,
                            const OptTensor& recurrent_mask, const OptTensor& zoneout_mask, const OptTensor& lengths,
                            const at::Tensor& xs, const at::Tensor& gates, const at::Tensor& aux,
                            const at::Tensor& hprev, const at::Tensor& xhat_x, const at::Tensor& xhat_h,
                            const at::Tensor& rstd, bool reset_after, int64_t activation, bool reverse,
                            bool layer_norm, double zoneout, bool has_b_ih, bool has_b_hh, bool need_dx,
                            bool need_dh0, bool need_weights, int64_t chunks, c10::SymInt T) {
  // the backward reads only whether h0 and the biases were given, not their values
  LayerTensors p = layer_tensors(at::Tensor(), c10::nullopt, w_ih, w_hh, c10::nullopt, c10::nullopt, g_ih, g_hh);
  if (need_dh0) p.h0 = at::Tensor();
  if (has_b_ih) p.b_ih = at::Tensor();
  if (has_b_hh) p.b_hh = at::Tensor();
  // layer norm's rows are empty placeholders without it (see layer_train_cpu)
  const std::vector<at::Tensor> saved = {xs, gates, aux, hprev, layer_norm ? xhat_x : at::Tensor(),
                                         layer_norm ? xhat_h : at::Tensor(), layer_norm ? rstd : at::Tensor()};
  GradsNeeded needed;
  needed.x = need_dx, needed.h0 = need_dh0, needed.weights = need_weights;
  auto g = gru_backward(dout.value_or(at::Tensor()), dh_n.value_or(at::Tensor()), p,
                        layer_call(recurrent_mask, zoneout_mask, lengths, reset_after, activation, reverse,
                                   layer_norm, zoneout, chunks),
                        Saved::from_list(saved), needed, T.expect_int());
  // each placeholder its own tensor: an operator's outputs may not alias one another
  auto or_none = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, hprev.options()); };
  return {or_none(g.x),    or_none(g.h0),   or_none(g.w_ih), or_none(g.w_hh),
          or_none(g.b_ih), or_none(g.b_hh), or_none(g.g_ih), or_none(g.g_hh)};
}

}  // namespace

// The arguments, in the order of gru_cpu.h's structs:
//   LayerTensors  x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh (the layer-norm gains)
//   LayerMasks    recurrent_mask (B, H), zoneout_mask (T, B, H): training only
//   LayerCall     lengths, then CellOptions reset_after, activation (0 sigmoid, 1 Keras 2 hard sigmoid,
//                 2 Keras 3), reverse, layer_norm, zoneout (p), then threads or chunks:
// threads: how many threads may split the batch, 0 for torch's thread count when the layer runs;
// chunks: how many did (the training forward's buffers are laid out by chunk, and its backward reads them so)
TORCH_LIBRARY(grunet, m) {
#define GRUNET_LAYER_ARGS                                                                                      \
  "Tensor x, Tensor? h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? g_ih, Tensor? g_hh, " \
  "Tensor? recurrent_mask, Tensor? zoneout_mask, Tensor? lengths, bool reset_after, int activation, "         \
  "bool reverse, bool layer_norm, float zoneout"
  m.def("gru_layer(" GRUNET_LAYER_ARGS ", int threads) -> (Tensor out, Tensor h_n)");
  m.def("gru_layer_train(" GRUNET_LAYER_ARGS ", int chunks) -> (Tensor out, Tensor h_n, Tensor xs, Tensor gates, "
        "Tensor aux, Tensor hprev, Tensor xhat_x, Tensor xhat_h, Tensor rstd)");
  m.def("gru_layer_backward(Tensor? dout, Tensor? dh_n, Tensor w_ih, Tensor w_hh, Tensor? g_ih, Tensor? g_hh, "
        "Tensor? recurrent_mask, Tensor? zoneout_mask, Tensor? lengths, Tensor xs, Tensor gates, Tensor aux, "
        "Tensor hprev, Tensor xhat_x, Tensor xhat_h, Tensor rstd, bool reset_after, int activation, bool reverse, "
        "bool layer_norm, float zoneout, bool has_b_ih, bool has_b_hh, bool need_dx, bool need_dh0, "
        "bool need_weights, int chunks, SymInt T) -> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, "
        "Tensor db_ih, Tensor db_hh, Tensor dg_ih, Tensor dg_hh)");
  m.def("gru_layer_double_backward(Tensor? dout, Tensor? dh_n, " GRUNET_LAYER_ARGS ") -> (Tensor dx, Tensor dh0, "
        "Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dg_ih, Tensor dg_hh)");
#undef GRUNET_LAYER_ARGS
}

TORCH_LIBRARY_IMPL(grunet, CPU, m) {
  m.impl("gru_layer", &layer_cpu);
  m.impl("gru_layer_train", &layer_train_cpu);
  m.impl("gru_layer_backward", &layer_backward_cpu);
}

}  // namespace grunet
