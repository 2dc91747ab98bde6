// Python bindings of the fused CPU GRU (built by grunet.kernels.cpu.build with torch.utils.cpp_extension).
// The kernel itself is reached through its operators (gru_ops.cpp); these are what Python adds around them.
#include <torch/extension.h>

#include "gru_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "grunet fused CPU GRU: whole-sequence forward and backward of one layer and direction";
  using namespace grunet::op_signatures;
  // the layer through autograd is the operator torch.ops.grunet.gru_layer (gru_ops.cpp, gru_autograd.cpp);
  // this calls it from Python for ~3 us less than torch.ops (the dispatcher, and whatever records or
  // transforms there, sees the same call)
  m.def("gru_layer", [](const at::Tensor& x, const OptTensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& g_ih, const OptTensor& g_hh,
                        const OptTensor& recurrent_mask, const OptTensor& zoneout_mask, const OptTensor& lengths,
                        bool reset_after, int64_t activation, bool reverse, bool layer_norm, double zoneout,
                        int64_t threads) {
    static const auto op = grunet::find_op<Layer>("grunet::gru_layer");
    return op.call(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after,
                   activation, reverse, layer_norm, zoneout, threads);
  }, "gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, recurrent_mask, zoneout_mask, lengths, reset_after,"
     " activation, reverse, layer_norm, zoneout, threads) -> (out, h_n): the operator grunet::gru_layer");
  m.def("saved_columns", [](int64_t I, int64_t H, bool float64, bool layer_norm) {
    const int64_t Hp = float64 ? grunet::padded_units<double>(H) : grunet::padded_units<float>(H);
    return grunet::Saved::columns(I, Hp, layer_norm);
  }, "saved_columns(I, H, float64, layer_norm): the columns of each tensor the training forward keeps (T*B rows"
     " each), 0 for one left empty");
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
