// Direct bindings of torchext::fused_sgd_ for torchext.optim.SGD.
//
// torch.ops.torchext.fused_sgd_ parses its arguments against the schema in
// Python-facing generic code, which costs several microseconds per call: as
// much as the whole step of a small network. These bindings convert the
// arguments with pybind11's fixed casters and call the same dispatcher entry
// (torchext::fused_sgd_ in registration.cpp), so devices, version counters and
// error messages are those of the op. torchext/optim.py uses them only where no
// Python-level dispatch has to see the call (not under torch.compile, no tensor
// subclass or __torch_function__ mode); everywhere else it calls torch.ops.
// fused_sgd_calls_ makes the several calls of a multi-group step in one go,
// checking all of them before the first writes (csrc/ops/fused_sgd_calls.h);
// sgd_step_ does a whole step of the usual kind, reading the optimizer's groups
// and state itself (see below).
#include "bindings.h"
#include "ops/fused_sgd_calls.h"

#include <torchext/ops.h>

#include <torch/csrc/autograd/python_variable.h>

#include <c10/util/SmallVector.h>

#include <map>
#include <optional>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

namespace py = pybind11;

namespace {

using torchext::SGDStepOptions;

// The options struct of the C++ API from the op's keyword arguments.
SGDStepOptions options(double momentum, double dampening, double weight_decay, bool nesterov,
                       bool maximize) {
  SGDStepOptions o;
  o.momentum = momentum;
  o.dampening = dampening;
  o.weight_decay = weight_decay;
  o.nesterov = nesterov;
  o.maximize = maximize;
  return o;
}

// ArrayRef<bool> needs contiguous bools, which std::vector<bool> does not hold.
using Flags = c10::SmallVector<bool, 64>;

Flags flags(const std::vector<bool>& v) { return Flags(v.begin(), v.end()); }

// The op with lr as a float (Lr = double) or a one-element tensor (Lr = at::Tensor).
template <typename Lr>
void fused_sgd_direct(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                      const std::vector<at::Tensor>& momentum_buffers,
                      const std::vector<bool>& is_first_step, const Lr& lr, double momentum,
                      double dampening, double weight_decay, bool nesterov, bool maximize,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf) {
  const Flags first = flags(is_first_step);
  torchext::fused_sgd_(params, grads, momentum_buffers, first, lr,
                       options(momentum, dampening, weight_decay, nesterov, maximize), grad_scale,
                       found_inf);
}

// One call of fused_sgd_calls_, as the Python side lists it: fused_sgd_'s
// positional arguments, lr a float or a one-element tensor.
using CallArgs =
    std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<bool>, std::variant<at::Tensor, double>, double, double, double, bool,
               bool, std::optional<at::Tensor>, std::optional<at::Tensor>>;

void fused_sgd_calls_direct(std::vector<CallArgs> args) {
  std::vector<torchext::SGDCall> calls(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    auto& [params, grads, buffers, first, lr, momentum, dampening, weight_decay, nesterov, maximize,
           grad_scale, found_inf] = args[i];
    torchext::SGDCall& call = calls[i];
    call.params = std::move(params);
    call.grads = std::move(grads);
    call.momentum_buffers = std::move(buffers);
    call.is_first_step.assign(first.begin(), first.end());
    if (std::holds_alternative<at::Tensor>(lr)) {
      call.lr_tensor = std::get<at::Tensor>(lr);
    } else {
      call.lr = std::get<double>(lr);
    }
    call.options = options(momentum, dampening, weight_decay, nesterov, maximize);
    call.grad_scale = std::move(grad_scale);
    call.found_inf = std::move(found_inf);
  }
  torchext::fused_sgd_calls_(calls);
}

// ---------------------------------------------------------------------------
// sgd_step_: a whole torchext.optim.SGD step of the usual kind in one call.
//
// torchext/_sgd_step.py plans a step in Python: for a small network that costs
// more than the update, and more with every parameter group. This reads the
// groups and the state in C++ instead, validates every call of the step, makes
// them, and stores the momentum buffers they create, as the Python plan does.
// It takes only what needs none of the Python plan's decisions: plain float
// or int hyper-parameters, bool flags, no fused=True, dense gradients and
// buffers, parameters of exactly torch.Tensor or torch.nn.Parameter, one
// device and dtype per group. Anything else, or a call its kernel would refuse,
// is declined before anything is written (False), and the Python plan then
// steps it or names the problem. An error while the validated calls run (say,
// out of memory) propagates: the step is not retried on half-written state.

// A float or int (not bool) entry of a group dict.
bool plain_number(PyObject* group, PyObject* key, double& out) {
  PyObject* v = PyDict_GetItem(group, key);
  if (v != nullptr && PyFloat_CheckExact(v)) {
    out = PyFloat_AS_DOUBLE(v);
    return true;
  }
  if (v == nullptr || !PyLong_CheckExact(v)) return false;
  out = PyLong_AsDouble(v);
  if (out == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

bool plain_flag(PyObject* group, PyObject* key, bool& out) {
  PyObject* v = PyDict_GetItem(group, key);
  if (v != Py_True && v != Py_False) return false;
  out = v == Py_True;
  return true;
}

bool plain_tensor_type(PyObject* obj) {
  static PyObject* parameter =
      py::object(py::module_::import("torch.nn").attr("Parameter")).release().ptr();
  return Py_TYPE(obj) == reinterpret_cast<PyTypeObject*>(THPVariableClass) ||
         Py_TYPE(obj) == reinterpret_cast<PyTypeObject*>(parameter);
}

bool plain_dense(const at::Tensor& t) {
  return t.layout() == at::kStrided && !t.is_complex() &&
         !t.key_set().has(c10::DispatchKey::Python);
}

// The momentum buffer of `param` in `state` (undefined if none yet), without
// creating entries; false if the entry is not one the fast path takes.
bool buffer_of(PyObject* state, PyObject* param, const SGDKeys& keys, at::Tensor& out) {
  PyObject* param_state = PyDict_GetItem(state, param);
  if (param_state == nullptr) return true;
  if (!PyDict_Check(param_state)) return false;
  PyObject* buffer = PyDict_GetItem(param_state, keys.momentum_buffer);
  if (buffer == nullptr) return true;
  if (!plain_tensor_type(buffer)) return false;
  out = THPVariable_Unpack(buffer);
  return plain_dense(out);
}

// One group as a fused_sgd_ call; false to leave the step to Python.
bool read_group(PyObject* group, PyObject* state, const SGDKeys& keys, torchext::SGDCall& call,
                std::vector<std::pair<PyObject*, at::Tensor>>& created) {
  if (!PyDict_Check(group)) return false;
  PyObject* fused = PyDict_GetItem(group, keys.fused);
  if (fused != Py_None && fused != Py_False) return false;
  torchext::SGDStepOptions& o = call.options;
  if (!plain_number(group, keys.lr, call.lr) || !plain_number(group, keys.momentum, o.momentum) ||
      !plain_number(group, keys.dampening, o.dampening) ||
      !plain_number(group, keys.weight_decay, o.weight_decay) ||
      !plain_flag(group, keys.nesterov, o.nesterov) ||
      !plain_flag(group, keys.maximize, o.maximize)) {
    return false;
  }
  PyObject* params = PyDict_GetItem(group, keys.params);
  if (params == nullptr || !PyList_CheckExact(params)) return false;
  const Py_ssize_t n = PyList_GET_SIZE(params);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* param = PyList_GET_ITEM(params, i);
    if (!plain_tensor_type(param)) return false;
    const at::Tensor& p = THPVariable_Unpack(param);
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (!plain_dense(p) || !plain_dense(g)) return false;
    if (!call.params.empty() && (p.device() != call.params.front().device() ||
                                 p.scalar_type() != call.params.front().scalar_type())) {
      return false;  // several buckets: the Python plan groups them
    }
    call.params.push_back(p);
    call.grads.push_back(g);
    if (o.momentum == 0) continue;
    at::Tensor buffer;
    if (!buffer_of(state, param, keys, buffer)) return false;
    call.is_first_step.push_back(!buffer.defined());
    if (!buffer.defined()) {
      buffer = at::empty_like(p);  // the op sets it to the gradient
      created.emplace_back(param, buffer);
    }
    call.momentum_buffers.push_back(std::move(buffer));
  }
  return true;
}

// True when the step was made; false when it is left to Python (nothing done).
bool sgd_step(const py::list& groups, const py::dict& state) {
  const SGDKeys& keys = sgd_keys();
  std::vector<torchext::SGDCall> calls;
  std::vector<std::pair<PyObject*, at::Tensor>> created;  // params borrowed from the groups
  calls.reserve(groups.size());
  for (const py::handle group : groups) {
    torchext::SGDCall call;
    if (!read_group(group.ptr(), state.ptr(), keys, call, created)) return false;
    if (!call.params.empty()) calls.push_back(std::move(call));
  }
  {
    py::gil_scoped_release no_gil;
    try {
      torchext::validate_sgd_calls(calls);
    } catch (const c10::Error&) {
      return false;  // the Python plan names the problem
    }
    torchext::run_sgd_calls(calls);
  }
  // Only now, after every call was accepted, do buffers enter the state
  // (state is a defaultdict: state[p] makes p's dict).
  for (const auto& [param, buffer] : created) {
    py::object param_state =
        py::reinterpret_steal<py::object>(PyObject_GetItem(state.ptr(), param));
    if (!param_state) throw py::error_already_set();
    param_state[py::handle(keys.momentum_buffer)] =
        py::reinterpret_steal<py::object>(THPVariable_Wrap(buffer));
  }
  return true;
}

template <typename Lr>
void def_fused_sgd(py::module_& m, const char* name, const char* doc) {
  m.def(name, &fused_sgd_direct<Lr>, py::arg("params"), py::arg("grads"),
        py::arg("momentum_buffers"), py::arg("is_first_step"), py::arg("lr"), py::arg("momentum"),
        py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"),
        py::arg("grad_scale"), py::arg("found_inf"), py::call_guard<py::gil_scoped_release>(), doc);
}

}  // namespace

const SGDKeys& sgd_keys() {
  auto interned = [](const char* text) {
    PyObject* s = PyUnicode_InternFromString(text);
    if (s == nullptr) throw py::error_already_set();
    return s;
  };
  static const SGDKeys keys{
      interned("state"),        interned("param_groups"),   interned("params"),
      interned("lr"),           interned("momentum"),       interned("dampening"),
      interned("weight_decay"), interned("nesterov"),       interned("maximize"),
      interned("fused"),        interned("momentum_buffer")};
  return keys;
}

void bind_optim(py::module_& m) {
  def_fused_sgd<double>(m, "fused_sgd_",
                        "torch.ops.torchext.fused_sgd_ (float lr), bound directly; positional "
                        "arguments");
  def_fused_sgd<at::Tensor>(m, "fused_sgd_tensor_lr_",
                            "torch.ops.torchext.fused_sgd_.tensor_lr, bound directly; positional "
                            "arguments");
  m.def("sgd_step_", &sgd_step, py::arg("param_groups"), py::arg("state"),
        "One torchext.optim.SGD step over param_groups and state, if it is of the usual kind "
        "(returns False, having done nothing, otherwise)");
  m.def("fused_sgd_calls_", &fused_sgd_calls_direct, py::arg("calls"),
        py::call_guard<py::gil_scoped_release>(),
        "Several fused_sgd_ calls (tuples of its positional arguments): all are validated "
        "before the first is made");
}
