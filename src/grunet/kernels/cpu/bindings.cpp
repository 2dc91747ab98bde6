// Python bindings of the fused CPU GRU (built by grunet.kernels.cpu.build with torch.utils.cpp_extension).
#include <torch/extension.h>

#include "gru_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "grunet fused CPU GRU: whole-sequence forward and backward of one layer and direction";
  m.def("forward", &grunet::gru_forward,
        "forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, activation, reverse, training, chunks)"
        " -> [out, h_n] or, training, [out, h_n, xs, gates, aux, hprev]");
  m.def("backward", &grunet::gru_backward,
        "backward(dout, dh_n, w_ih, w_hh, xs, gates, aux, hprev, lengths, reset_after, activation, reverse,"
        " has_b_ih, has_b_hh, need_dx, need_dh0, need_weights, chunks, T) -> [dx, dh0, dw_ih, dw_hh, db_ih, db_hh];"
        " dout and dh_n may be None (no gradient)");
  // the layer through autograd is the operator torch.ops.grunet.gru_layer (gru_ops.cpp, gru_autograd.cpp);
  // this calls it from Python for ~3 us less than torch.ops (the dispatcher, and whatever records or
  // transforms there, sees the same call)
  m.def("gru_layer", [](const at::Tensor& x, const c10::optional<at::Tensor>& h0, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                        const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
                        bool reset_after, int64_t activation, bool reverse, int64_t threads) {
    using Signature = std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
        const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, bool,
        int64_t, bool, int64_t);
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("grunet::gru_layer", "").typed<Signature>();
    return op.call(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, activation, reverse, threads);
  }, "gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, activation, reverse, threads) -> (out, h_n):"
     " the operator grunet::gru_layer");
  m.def("padded_units", [](int64_t H, bool float64) {
    return float64 ? grunet::padded_units<double>(H) : grunet::padded_units<float>(H);
  }, "padded_units(H, float64): the units of a kernel-private state row (H rounded up to whole vectors)");
  m.def("batch_chunks", &grunet::batch_chunks, "batch_chunks(B, H, threads): how many threads split the batch");
  m.def("vector_math", []() {
    // which math the elementwise loops were compiled against (libmvec vector calls need fast-math + simd)
#if defined(__FAST_MATH__)
    return std::string("fast-math");
#else
    return std::string("plain");
#endif
  });
}
