// Python bindings of the fused CPU GRU (built by grunet.kernels.cpu.build with torch.utils.cpp_extension).
#include <torch/extension.h>

#include "gru_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "grunet fused CPU GRU: whole-sequence forward and backward of one layer and direction";
  namespace py = pybind11;
  // the layer call's contract (gru_cpu.h), built field by field in grunet.kernels.cpu.call_arguments
  py::class_<grunet::CellOptions>(m, "CellOptions")
      .def(py::init<>())
      .def_readwrite("reset_after", &grunet::CellOptions::reset_after)
      .def_readwrite("activation", &grunet::CellOptions::activation)
      .def_readwrite("reverse", &grunet::CellOptions::reverse)
      .def_readwrite("layer_norm", &grunet::CellOptions::layer_norm)
      .def_readwrite("zoneout", &grunet::CellOptions::zoneout);
  py::class_<grunet::LayerTensors>(m, "LayerTensors")
      .def(py::init<>())
      .def_readwrite("x", &grunet::LayerTensors::x)
      .def_readwrite("h0", &grunet::LayerTensors::h0)
      .def_readwrite("w_ih", &grunet::LayerTensors::w_ih)
      .def_readwrite("w_hh", &grunet::LayerTensors::w_hh)
      .def_readwrite("b_ih", &grunet::LayerTensors::b_ih)
      .def_readwrite("b_hh", &grunet::LayerTensors::b_hh)
      .def_readwrite("g_ih", &grunet::LayerTensors::g_ih)
      .def_readwrite("g_hh", &grunet::LayerTensors::g_hh);
  py::class_<grunet::LayerMasks>(m, "LayerMasks")
      .def(py::init<>())
      .def_readwrite("recurrent", &grunet::LayerMasks::recurrent)
      .def_readwrite("zoneout", &grunet::LayerMasks::zoneout);
  py::class_<grunet::LayerCall>(m, "LayerCall")
      .def(py::init<>())
      .def_readwrite("cell", &grunet::LayerCall::cell)
      .def_readwrite("masks", &grunet::LayerCall::masks)
      .def_readwrite("lengths", &grunet::LayerCall::lengths)
      .def_readwrite("chunks", &grunet::LayerCall::chunks);
  m.def(
      "forward",
      [](const grunet::LayerTensors& p, const grunet::LayerCall& call, bool keep_for_backward) {
        auto r = grunet::gru_forward(p, call, keep_for_backward);
        std::vector<at::Tensor> v{r.out, r.h_n};
        if (keep_for_backward)
          for (const auto& t : r.saved.list()) v.push_back(t);
        return v;
      },
      "forward(tensors, call, keep_for_backward) -> [out, h_n] (+ the saved tensors when keep_for_backward)");
  m.def(
      "backward",
      [](const c10::optional<at::Tensor>& dout, const c10::optional<at::Tensor>& dh_n, const grunet::LayerTensors& p,
         const grunet::LayerCall& call, const std::vector<c10::optional<at::Tensor>>& saved_in, bool need_x,
         bool need_h0, bool need_weights) {
        TORCH_CHECK(saved_in.size() == grunet::Saved().list().size(),
                    "grunet: backward takes the saved tensors forward returned after out and h_n");
        std::vector<at::Tensor> saved;
        for (const auto& t : saved_in) saved.push_back(t.value_or(at::Tensor()));
        grunet::GradsNeeded needed;
        needed.x = need_x, needed.h0 = need_h0, needed.weights = need_weights;
        auto g = grunet::gru_backward(dout.value_or(at::Tensor()), dh_n.value_or(at::Tensor()), p, call,
                                      grunet::Saved::from_list(saved), needed, p.x.size(0));
        return std::vector<at::Tensor>{g.x, g.h0, g.w_ih, g.w_hh, g.b_ih, g.b_hh, g.g_ih, g.g_hh};
      },
      "backward(dout, dh_n, tensors, call, saved, need_x, need_h0, need_weights) -> [dx, dh0, dw_ih, dw_hh, db_ih,"
      " db_hh, dg_ih, dg_hh]; dout and dh_n may be None (no gradient)");
  m.def("gru_autograd", &grunet::gru_autograd,
        "gru_autograd(tensors, call) -> [out, h_n] through autograd (the backward runs gru_backward)");
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
