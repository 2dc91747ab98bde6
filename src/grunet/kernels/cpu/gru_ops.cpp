// grunet fused CPU GRU as PyTorch operators (torch.library, namespace grunet), so that the dispatcher, and
// with it torch.compile, torch.export, torch.func and the TorchScript tracer, sees one call per layer:
//
//   grunet::gru_layer           the layer call (out, h_n); its Autograd kernel is in gru_autograd.cpp
//   grunet::gru_layer_train     the training forward: (out, h_n) and what the backward reads
//   grunet::gru_layer_backward  the gradients from what gru_layer_train kept
//   grunet::gru_layer_double_backward  the gradients recomputed with the reference loop, differentiable
//                               (create_graph=True); implemented in Python (grunet.kernels.cpu.ops)
//
// Shapes for the fake (meta) implementations are in grunet.kernels.cpu.ops. A gradient the caller did not
// ask for comes back as an empty tensor, not an undefined one: an operator returns real tensors.
// This file is the one place that calls the kernels' entry points (gru_forward, gru_backward).
#include <torch/library.h>

#include "gru_cpu.h"

namespace grunet {
namespace {

using Tensors2 = std::tuple<at::Tensor, at::Tensor>;
using Tensors6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Tensors2 layer_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                   const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                   const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths, bool reset_after,
                   int64_t activation, bool reverse, int64_t threads) {
  const int64_t chunks = batch_chunks(x.size(1), w_hh.size(1), threads ? threads : at::get_num_threads());
  auto r = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, activation, reverse, false, chunks);
  return {r[0], r[1]};
}

Tensors6 layer_train_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                         const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                         const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
                         bool reset_after, int64_t activation, bool reverse, int64_t chunks) {
  auto r = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, activation, reverse, true, chunks);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};  // out, h_n, xs, gates, aux, hprev
}

Tensors6 layer_backward_cpu(const c10::optional<at::Tensor>& dout, const c10::optional<at::Tensor>& dh_n,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& xs,
                            const at::Tensor& gates, const at::Tensor& aux, const at::Tensor& hprev,
                            const c10::optional<at::Tensor>& lengths, bool reset_after, int64_t activation,
                            bool reverse, bool has_b_ih, bool has_b_hh, bool need_dx, bool need_dh0,
                            bool need_weights, int64_t chunks, c10::SymInt T) {
  auto g = gru_backward(dout, dh_n, w_ih, w_hh, xs, gates, aux, hprev, lengths, reset_after, activation, reverse,
                        has_b_ih, has_b_hh, need_dx, need_dh0, need_weights, chunks, T.expect_int());
  const auto none = at::empty({0}, hprev.options());
  auto or_none = [&](const at::Tensor& t) { return t.defined() ? t : none; };
  return {or_none(g[0]), or_none(g[1]), or_none(g[2]), or_none(g[3]), or_none(g[4]), or_none(g[5])};
}

}  // namespace

TORCH_LIBRARY(grunet, m) {
  // threads: how many threads may split the batch, 0 for torch's thread count when the layer runs;
  // chunks: how many did (the training forward's buffers are laid out by chunk, and its backward reads them so)
  m.def("gru_layer(Tensor x, Tensor? h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "
        "bool reset_after, int activation, bool reverse, int threads) -> (Tensor, Tensor)");
  m.def("gru_layer_train(Tensor x, Tensor? h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
        "Tensor? lengths, bool reset_after, int activation, bool reverse, int chunks) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_layer_backward(Tensor? dout, Tensor? dh_n, Tensor w_ih, Tensor w_hh, Tensor xs, Tensor gates, "
        "Tensor aux, Tensor hprev, Tensor? lengths, bool reset_after, int activation, bool reverse, bool has_b_ih, "
        "bool has_b_hh, bool need_dx, bool need_dh0, bool need_weights, int chunks, SymInt T) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_layer_double_backward(Tensor? dout, Tensor? dh_n, Tensor x, Tensor? h0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, Tensor? lengths, bool reset_after, int activation, bool reverse) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(grunet, CPU, m) {
  m.impl("gru_layer", &layer_cpu);
  m.impl("gru_layer_train", &layer_train_cpu);
  m.impl("gru_layer_backward", &layer_backward_cpu);
}

}  // namespace grunet
