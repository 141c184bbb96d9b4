// torchext._C.TrainerCore and _C.TrainerLock: the training core as the Python
// torchext.Trainer drives it (see src/torchext/trainer.py).
//
// The binding adds what only Python has:
//  - the optimizer: a torch.optim.SGD-like object whose param_groups and state
//    the core reads and writes through an OptimizerLink, with the GIL, under the
//    core's lock (so two Python threads on one Trainer cannot interleave a read
//    of the state with another thread's update);
//  - the model's module tree: ModelWatch re-checks at every call that the
//    modules and Parameters the core trains are still the model's (model.to()
//    and load_state_dict(assign=True) make new Parameter objects);
//  - Ctrl-C: SigintWatch lets fit and evaluate, which run without the GIL,
//    raise KeyboardInterrupt after the step during which it was pressed.
#include <torchext/trainer_core.h>

#include "bindings.h"

#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <atomic>
#include <csignal>
#include <string>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------------------
// Ctrl-C while the core runs without the GIL.
//
// Python runs signal handlers only when its main thread executes bytecode. While
// fit or evaluate runs on the main thread, SIGINT's C-level handler is wrapped:
// the wrapper notes the signal in an atomic flag and calls Python's own handler
// (which marks the signal pending, as always). After every step the core calls
// SigintWatch::check, which sees the flag and runs the pending Python handlers
// with the GIL (PyErr_CheckSignals): by default they raise KeyboardInterrupt,
// which stops the core after that step, with the step applied and counted.

std::atomic<bool> g_sigint_seen{false};
struct sigaction g_python_sigint {};
int g_watches = 0;                // active SigintWatch objects; guarded by the GIL
unsigned long g_main_thread = 0;  // PyThread ident of the main thread

extern "C" void forward_sigint(int sig, siginfo_t* info, void* context) {
  g_sigint_seen.store(true);
  if (g_python_sigint.sa_flags & SA_SIGINFO) {
    g_python_sigint.sa_sigaction(sig, info, context);
  } else if (g_python_sigint.sa_handler != SIG_DFL && g_python_sigint.sa_handler != SIG_IGN) {
    g_python_sigint.sa_handler(sig);
  }
}

class SigintWatch {
 public:
  // With the GIL.
  SigintWatch() {
    if (PyThread_get_thread_ident() != g_main_thread) return;  // handlers run on main only
    if (g_watches == 0) {
      struct sigaction current {};
      if (sigaction(SIGINT, nullptr, &current) != 0) return;
      const bool python_handles = (current.sa_flags & SA_SIGINFO) ||
                                  (current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN);
      if (!python_handles) return;  // default (the process ends) or ignored: nothing to do
      g_python_sigint = current;
      struct sigaction wrapped = current;
      wrapped.sa_flags |= SA_SIGINFO;
      wrapped.sa_sigaction = forward_sigint;
      g_sigint_seen.store(false);
      if (sigaction(SIGINT, &wrapped, nullptr) != 0) return;
    }
    ++g_watches;
    active_ = true;
  }
  // With the GIL.
  ~SigintWatch() {
    if (!active_ || --g_watches > 0) return;
    struct sigaction current {};
    // Someone (a progress callback) may have installed another handler meanwhile: keep it.
    if (sigaction(SIGINT, nullptr, &current) == 0 && (current.sa_flags & SA_SIGINFO) &&
        current.sa_sigaction == forward_sigint) {
      sigaction(SIGINT, &g_python_sigint, nullptr);
    }
  }
  SigintWatch(const SigintWatch&) = delete;
  SigintWatch& operator=(const SigintWatch&) = delete;

  // Without the GIL: runs pending Python signal handlers after a SIGINT.
  static void check() {
    if (!g_sigint_seen.exchange(false)) return;
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }

 private:
  bool active_ = false;
};

// ---------------------------------------------------------------------------
// The optimizer: torch.optim.SGD's param_groups and state, read and written by
// the core (always with the GIL, under the core's lock).

class PyOptimizerLink final : public torchext::OptimizerLink {
 public:
  // `params`: the core's parameters as Python objects, in the core's order;
  // `scaler`: the torch.amp.GradScaler of a 16-mixed trainer, else None. With the GIL.
  PyOptimizerLink(py::object optimizer, std::vector<py::object> params, py::object scaler)
      : optimizer_(std::move(optimizer)), params_(std::move(params)), scaler_(std::move(scaler)) {
    for (size_t i = 0; i < params_.size(); ++i) {
      index_[params_[i].ptr()] = static_cast<int64_t>(i);
      // torch.Tensor.__hash__ is id(): computed once here, it spares a call into
      // Python for every state lookup of every step.
      const Py_hash_t hash = PyObject_Hash(params_[i].ptr());
      if (hash == -1) throw py::error_already_set();
      hashes_.push_back(hash);
    }
  }

  // Runs at every step, so it reads through interned keys (sgd_keys) and the
  // cached parameter hashes, and allocates little: on a small model it is a good
  // part of the step's fixed cost.
  std::vector<torchext::SGDGroup> read_groups() override {
    py::gil_scoped_acquire gil;
    const SGDKeys& k = sgd_keys();
    std::vector<torchext::SGDGroup> out;
    const py::object state = attribute(optimizer_, k.state);
    const py::object groups = attribute(optimizer_, k.param_groups);
    size_t g = 0;
    for (const py::handle group : groups) {
      torchext::SGDGroup spec;
      spec.lr = number(group, k.lr, g);
      spec.options.momentum = number(group, k.momentum, g);
      spec.options.dampening = number(group, k.dampening, g);
      spec.options.weight_decay = number(group, k.weight_decay, g);
      spec.options.nesterov = flag(group, k.nesterov, g);
      spec.options.maximize = flag(group, k.maximize, g);
      const bool with_momentum = spec.options.momentum != 0;
      if (with_momentum && !PyDict_Check(state.ptr())) {  // where buffer_of looks
        throw py::type_error("torchext.Trainer: optimizer.state must be a dict");
      }
      for_each_item(entry(group, k.params, g), [&](PyObject* p) {
        auto it = index_.find(p);
        if (it == index_.end()) return;  // not the model's: no gradient, so no update
        spec.params.push_back(it->second);
        if (with_momentum) spec.momentum_buffers.push_back(buffer_of(state, it->second, g));
      });
      out.push_back(std::move(spec));
      ++g;
    }
    return out;
  }

  // The GradScaler's own state tensors (stepped in place, so scaler.get_scale()
  // and scaler.state_dict() follow the training) and its settings. torchext.Trainer
  // creates the tensors (GradScaler does it lazily) before each training call.
  torchext::LossScaler read_loss_scaler() override {
    py::gil_scoped_acquire gil;
    if (scaler_.is_none()) return OptimizerLink::read_loss_scaler();
    torchext::LossScaler out;
    out.enabled = scaler_.attr("is_enabled")().cast<bool>();
    if (!out.enabled) return out;
    out.scale = state_tensor("_scale");
    out.growth_tracker = state_tensor("_growth_tracker");
    out.growth_factor = scaler_.attr("get_growth_factor")().cast<double>();
    out.backoff_factor = scaler_.attr("get_backoff_factor")().cast<double>();
    out.growth_interval = scaler_.attr("get_growth_interval")().cast<int64_t>();
    return out;
  }

  void store_new_buffers(const std::vector<torchext::NewMomentumBuffer>& buffers) override {
    py::gil_scoped_acquire gil;
    const py::object state = optimizer_.attr("state");
    std::vector<py::object> stored;  // the per-parameter state dicts written so far
    try {
      for (const auto& created : buffers) {
        py::object param_state = state[params_[created.param]];  // a defaultdict(dict)
        param_state["momentum_buffer"] = py::cast(created.buffer);
        stored.push_back(std::move(param_state));
      }
    } catch (...) {  // all or nothing (see OptimizerLink); the Python error is already fetched
      for (const auto& param_state : stored) {
        if (PyDict_Check(param_state.ptr()) &&
            PyDict_DelItemString(param_state.ptr(), "momentum_buffer") != 0) {
          PyErr_Clear();
        }
      }
      throw;
    }
  }

 private:
  static py::object attribute(const py::object& object, PyObject* name) {
    PyObject* value = PyObject_GetAttr(object.ptr(), name);
    if (value == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(value);
  }

  // f(item) for each item of `items`: directly for a list or tuple, else through
  // the iterator protocol.
  template <typename F>
  static void for_each_item(const py::object& items, F&& f) {
    if (PyList_Check(items.ptr()) || PyTuple_Check(items.ptr())) {
      const py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(items.ptr(), ""));
      if (!fast) throw py::error_already_set();
      PyObject** item = PySequence_Fast_ITEMS(fast.ptr());
      for (Py_ssize_t i = 0, n = PySequence_Fast_GET_SIZE(fast.ptr()); i < n; ++i) f(item[i]);
      return;
    }
    for (const py::handle item : items) f(item.ptr());
  }

  static py::object entry(py::handle group, PyObject* key, size_t g) {
    if (!PyDict_Check(group.ptr())) {
      throw py::type_error("torchext.Trainer: optimizer.param_groups[" + std::to_string(g) +
                           "] must be a dict");
    }
    PyObject* value = PyDict_GetItemWithError(group.ptr(), key);
    if (value == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      throw py::key_error("torchext.Trainer: optimizer.param_groups[" + std::to_string(g) +
                          "] has no '" + PyUnicode_AsUTF8(key) + "'");
    }
    return py::reinterpret_borrow<py::object>(value);
  }

  static double number(py::handle group, PyObject* key, size_t g) {
    const py::object value = entry(group, key, g);
    const double d = PyFloat_AsDouble(value.ptr());  // floats, ints, one-element tensors
    if (d == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      throw py::type_error("torchext.Trainer: optimizer.param_groups[" + std::to_string(g) + "]['" +
                           PyUnicode_AsUTF8(key) + "'] must be a number, got " +
                           std::string(py::str(py::type::handle_of(value).attr("__name__"))));
    }
    return d;
  }

  static bool flag(py::handle group, PyObject* key, size_t g) {
    const int truth = PyObject_IsTrue(entry(group, key, g).ptr());
    if (truth < 0) throw py::error_already_set();
    return truth != 0;
  }

  // The momentum buffer of parameter `param` in optimizer.state (a dict), or undefined.
  at::Tensor buffer_of(const py::object& state, int64_t param, size_t g) const {
    // Without defaultdict's __missing__: reading must not create entries.
    PyObject* param_state =
        _PyDict_GetItem_KnownHash(state.ptr(), params_[param].ptr(), hashes_[param]);
    if (param_state == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      return at::Tensor();
    }
    if (!PyDict_Check(param_state)) {
      throw py::type_error("torchext.Trainer: the optimizer's state of a parameter in group " +
                           std::to_string(g) + " must be a dict");
    }
    PyObject* buffer = PyDict_GetItemWithError(param_state, sgd_keys().momentum_buffer);
    if (buffer == nullptr && PyErr_Occurred()) throw py::error_already_set();
    if (buffer == nullptr || buffer == Py_None) return at::Tensor();
    if (!THPVariable_Check(buffer)) {
      throw py::type_error("torchext.Trainer: a momentum_buffer in the optimizer's state (group " +
                           std::to_string(g) + ") must be a tensor, got " +
                           std::string(Py_TYPE(buffer)->tp_name));
    }
    return THPVariable_Unpack(buffer);
  }

  at::Tensor state_tensor(const char* name) const {
    const py::object value = scaler_.attr(name);
    if (!THPVariable_Check(value.ptr())) {
      throw py::type_error(std::string("torchext.Trainer: the GradScaler's ") + name +
                           " must be a tensor, got " + std::string(Py_TYPE(value.ptr())->tp_name));
    }
    return THPVariable_Unpack(value.ptr());
  }

  py::object optimizer_;
  std::vector<py::object> params_;
  std::unordered_map<PyObject*, int64_t> index_;  // keys kept alive by params_
  std::vector<Py_hash_t> hashes_;                 // hash(params_[i])
  py::object scaler_;
};

// ---------------------------------------------------------------------------
// The model's module tree, as the core was built for it.

class ModelWatch {
 public:
  // Entries (dict, key, expected, message): dict[key] must still be `expected`
  // (a module or Parameter), or, with key None, len(dict) must still be `expected`;
  // `message` completes "the model's ..." to say what changed and what to do.
  explicit ModelWatch(const py::list& entries) {
    for (const py::handle item : entries) {
      const auto t = item.cast<py::tuple>();
      Entry e{t[0].cast<py::object>(), t[1].cast<py::object>(), t[2].cast<py::object>(), 0,
              t[3].cast<std::string>()};
      if (e.key.is_none()) e.expected_size = e.expected.cast<Py_ssize_t>();
      entries_.push_back(std::move(e));
      if (!PyDict_Check(entries_.back().dict.ptr())) {
        throw py::type_error("ModelWatch: entries must watch dicts");
      }
    }
  }

  // With the GIL.
  void check(const char* who) const {
    for (const Entry& e : entries_) {
      bool same;
      if (e.key.is_none()) {
        same = PyDict_Size(e.dict.ptr()) == e.expected_size;
      } else {
        PyObject* now = PyDict_GetItemWithError(e.dict.ptr(), e.key.ptr());
        if (now == nullptr && PyErr_Occurred()) throw py::error_already_set();
        same = now == e.expected.ptr();
      }
      if (!same) throw py::value_error(std::string(who) + ": the model's " + e.message);
    }
  }

 private:
  struct Entry {
    py::object dict, key, expected;
    Py_ssize_t expected_size;  // `expected` as a number, for key None
    std::string message;
  };
  std::vector<Entry> entries_;
};

// ---------------------------------------------------------------------------

struct PyTrainer {
  torchext::TrainerCore core;
  PyOptimizerLink optimizer;
  ModelWatch model;
};

PyTrainer* make_trainer(const std::vector<at::Tensor>& weights,
                        const std::vector<c10::optional<at::Tensor>>& biases,
                        const std::vector<std::string>& activations, const std::string& loss,
                        py::object optimizer, std::vector<py::object> params, const py::list& watch,
                        const py::object& process_group,
                        const std::vector<std::string>& parameter_names,
                        const std::string& precision, py::object scaler) {
  TORCH_CHECK(weights.size() == biases.size() && weights.size() == activations.size(),
              "TrainerCore: weights, biases and activations must have one entry per layer");
  std::vector<torchext::DenseLayer> layers;
  for (size_t l = 0; l < weights.size(); ++l) {
    layers.push_back({weights[l], biases[l].value_or(at::Tensor()),
                      torchext::activation_from_name(activations[l])});
  }
  const torchext::Loss loss_kind = torchext::loss_from_name(loss);
  const torchext::Precision precision_kind = torchext::precision_from_name(precision);
  auto build = [&]() {
    if (process_group.is_none()) {
      return torchext::TrainerCore(std::move(layers), loss_kind, precision_kind);
    }
    TORCH_CHECK(precision_kind == torchext::Precision::Default,
                "TrainerCore: a mixed precision does not train data-parallel");
    torchext::DataParallelOptions data_parallel{
        process_group_from(process_group, "torchext.Trainer"), parameter_names};
    py::gil_scoped_release no_gil;  // a collective: it waits for the other ranks
    return torchext::TrainerCore(std::move(layers), loss_kind, data_parallel);
  };
  torchext::TrainerCore core = build();
  TORCH_CHECK(params.size() == core.parameters().size(),
              "TrainerCore: params must list the core's ", core.parameters().size(), " parameters");
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(THPVariable_Check(params[i].ptr()) &&
                    THPVariable_Unpack(params[i].ptr()).is_same(core.parameters()[i]),
                "TrainerCore: params[", i, "] is not the core's parameter ", i);
  }
  return new PyTrainer{std::move(core),
                       PyOptimizerLink(std::move(optimizer), std::move(params), std::move(scaler)),
                       ModelWatch(watch)};
}

// `with lock.hold(access, who):` — waits for the lock with the GIL released.
class HoldContext {
 public:
  HoldContext(torchext::TrainerLock& lock, torchext::TrainerLock::Access access, std::string who)
      : lock_(lock), access_(access), who_(std::move(who)) {}
  void enter() {
    auto hold = lock_.try_acquire(access_, who_.c_str());
    if (hold) {
      hold_.emplace(std::move(*hold));
      return;
    }
    py::gil_scoped_release no_gil;  // another thread holds it: wait without blocking Python
    hold_.emplace(lock_.acquire(access_, who_.c_str()));
  }
  void exit() { hold_.reset(); }

 private:
  torchext::TrainerLock& lock_;
  torchext::TrainerLock::Access access_;
  std::string who_;
  c10::optional<torchext::TrainerLock::Hold> hold_;
};

torchext::TrainerLock::Access access_from_name(const std::string& name) {
  if (name == "run") return torchext::TrainerLock::Access::Run;
  if (name == "read") return torchext::TrainerLock::Access::Read;
  if (name == "write") return torchext::TrainerLock::Access::Write;
  throw py::value_error("TrainerLock.hold: access must be 'run', 'read' or 'write'");
}

}  // namespace

void bind_trainer(py::module_& m) {
  g_main_thread =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();

  py::class_<HoldContext>(m, "_TrainerLockHold")
      .def("__enter__", [](HoldContext& h) { h.enter(); })
      .def("__exit__", [](HoldContext& h, const py::args&) { h.exit(); });

  py::class_<torchext::TrainerLock>(m, "TrainerLock")
      .def(py::init<>())
      .def(
          "hold",
          [](torchext::TrainerLock& lock, const std::string& access, const std::string& who) {
            return HoldContext(lock, access_from_name(access), who);
          },
          py::arg("access"), py::arg("who"), py::keep_alive<0, 1>());

  py::class_<PyTrainer>(m, "TrainerCore")
      .def(py::init(&make_trainer), py::arg("weights"), py::arg("biases"), py::arg("activations"),
           py::arg("loss"), py::arg("optimizer"), py::arg("params"), py::arg("watch"),
           py::arg("process_group") = py::none(),
           py::arg("parameter_names") = std::vector<std::string>(), py::arg("precision") = "",
           py::arg("scaler") = py::none())
      .def_property_readonly("rank", [](const PyTrainer& t) { return t.core.rank(); })
      .def_property_readonly("world_size", [](const PyTrainer& t) { return t.core.world_size(); })
      .def_property_readonly(
          "precision",
          [](const PyTrainer& t) { return torchext::precision_name(t.core.precision()); })
      .def_property_readonly("mixed_kernels",
                             [](const PyTrainer& t) { return t.core.mixed_kernels(); })
      .def_property_readonly("backend", [](const PyTrainer& t) { return t.core.backend(); })
      .def_property_readonly("steps", [](const PyTrainer& t) { return t.core.steps(); })
      .def(
          "set_steps", [](PyTrainer& t, int64_t steps) { t.core.set_steps(steps); },
          "Sets the step count; hold the lock for 'write' around it.")
      .def_property_readonly(
          "lock", [](PyTrainer& t) -> torchext::TrainerLock& { return t.core.lock(); },
          py::return_value_policy::reference_internal)
      .def("step",
           [](PyTrainer& t, const at::Tensor& x, const at::Tensor& y) {
             t.model.check("torchext.Trainer.step");
             py::gil_scoped_release no_gil;
             return t.core.step(x, y, t.optimizer);
           })
      .def("fit",
           [](PyTrainer& t, const at::Tensor& x, const at::Tensor& y, int64_t epochs,
              int64_t batch_size, bool shuffle, c10::optional<at::Generator> generator,
              const py::object& progress, c10::optional<int64_t> seed, int64_t start_epoch) {
             t.model.check("torchext.Trainer.fit");
             torchext::FitOptions options;
             options.epochs = epochs;
             options.batch_size = batch_size;
             options.shuffle = shuffle;
             options.generator = generator;
             options.seed = seed;
             options.start_epoch = start_epoch;
             options.interruption_point = SigintWatch::check;
             torchext::ProgressCallback callback;
             if (!progress.is_none()) {
               callback = [&progress](const torchext::FitProgress& p) {
                 py::gil_scoped_acquire gil;
                 progress(p.epoch, p.step, p.steps_per_epoch, p.mean_loss);
               };
             }
             SigintWatch ctrl_c;
             py::gil_scoped_release no_gil;
             return t.core.fit(x, y, t.optimizer, options, callback);
           })
      .def("evaluate",
           [](PyTrainer& t, const at::Tensor& x, const at::Tensor& y, int64_t batch_size) {
             t.model.check("torchext.Trainer.evaluate");
             SigintWatch ctrl_c;
             py::gil_scoped_release no_gil;
             return t.core.evaluate(x, y, batch_size, SigintWatch::check);
           })
      .def(
          "use_reference_kernels",
          [](PyTrainer& t, bool enabled) { t.core.use_reference_kernels(enabled); },
          py::arg("enabled"), py::call_guard<py::gil_scoped_release>());
}
