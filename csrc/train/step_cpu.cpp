// The training step on the CPU: fused kernels over the workspaces' raw buffers.
//
// forward:  a_l = act(a_{l-1} · W_lᵀ + b_l): one GEMM, bias and activation in
//           its epilogue (small layers) or in one pass after it
// loss:     value and dL/da_L in one pass, in chunks of rows
// backward: dL/dz_L and the bias gradient in one pass; then per layer
//           dW_l = dL/dz_lᵀ · a_{l-1}, and dL/da_{l-1} = dL/dz_l · W_l with the
//           derivative of layer l-1's activation in its epilogue (small
//           layers; else in the next pass), which also sums the bias gradient
// No tensor is allocated: everything lives in the Workspace (cpu_gemm.h).
// Small networks run the whole step on a team of threads, each member on its
// share of the rows, the weights and the biases (team.h, team_size below);
// larger ones split each product over the threads where it pays.
#include "cpu/dispatch.h"
#include "train/cpu_gemm.h"
#include "train/cpu_kernels.h"
#include "train/gemm_tiles.h"
#include "train/model.h"
#include "train/team.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

namespace torchext::train {
namespace {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Rows [r0, r1) of the forward pass; returns the last layer's output.
template <typename T>
const T* forward_layers(const Model& model, Workspace& ws, const T* x, int64_t r0, int64_t r1) {
  const T* input = x;
  int64_t in = model.in_features();
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const DenseLayer& layer = model.layers[l];
    const int64_t out = model.width(l);
    T* a = ptr<T>(ws.out[l]);
    T* z = ws.pre[l].defined() ? ptr<T>(ws.pre[l]) : a;
    cpu::dense_forward<T>(input + r0 * in, r1 - r0, in, ptr<T>(layer.weight), out,
                          ptr<T>(layer.bias), layer.activation, z + r0 * out, a + r0 * out);
    input = a;
    in = out;
  }
  return input;
}

// The number of threads a step over `rows` rows runs on as a team (team.h):
// every product on the unblocked tiles, at least a chunk of the loss
// (kLossRows >= kTileRowSplit rows, so a member's share of the batch takes the
// same tiles as the whole) and kMinMacsPerTeamMember multiply-adds a member;
// else 1, and the products split over threads one by one where they are large
// enough.
static_assert(cpu::kLossRows >= cpu::kTileRowSplit);
int team_size(const Model& model, int64_t rows) {
  if (at::in_parallel_region()) return 1;
  int64_t macs = 0;
  int64_t in = model.in_features();
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const int64_t out = model.width(l);
    const Activation below = l > 0 ? model.layers[l - 1].activation : Activation::Identity;
    if (!cpu::layer_on_unblocked_tiles(rows, in, out, below)) return 1;
    macs += 3 * rows * in * out;  // forward, weight gradient, input gradient
    in = out;
  }
  const int64_t size = std::min({static_cast<int64_t>(at::get_num_threads()), rows / cpu::kLossRows,
                                 macs / torchext::cpu::kMinMacsPerTeamMember});
  return static_cast<int>(std::max<int64_t>(size, 1));
}

// One member's part of the step (the whole step for a team of one):
// - forward: its rows of every layer and of the loss (whole chunks of it, whose
//   sums the leader adds in order, whatever the team);
// - backward, per layer: the activation's derivative and the bias gradient by
//   columns, dW by rows of dW, and dL/da of the layer below by batch rows,
//   meeting where a pass needs rows or columns another member wrote.
// Each element is computed as by one thread, so the team changes no bit.
template <typename T>
void forward_backward(const Model& model, Workspace& ws, const at::Tensor& x, const at::Tensor& y,
                      bool backward, const Team& team, double* loss_chunk_sums) {
  const int64_t rows = x.size(0);
  const auto [r0, r1] = team.share(rows, cpu::kLossRows);
  const size_t depth = model.layers.size();
  const T* output = forward_layers<T>(model, ws, ptr<T>(x), r0, r1);

  T* grad_out = backward ? ptr<T>(ws.grad[depth - 1]) : nullptr;
  const int64_t classes = model.out_features();
  cpu::loss_chunks<T>(model.loss, output, model.loss == Loss::MSE ? ptr<T>(y) : nullptr,
                      model.loss == Loss::MSE ? nullptr : y.data_ptr<int64_t>(), rows, classes, r0,
                      r1, grad_out, loss_chunk_sums);
  team.barrier();
  if (team.leader()) {
    *ptr<T>(ws.loss) = cpu::loss_of_chunks<T>(model.loss, loss_chunk_sums, rows, classes);
  }
  if (!backward) return;

  // Down to the lowest layer with a trainable parameter; frozen parameters get
  // no gradient (the gradient still flows through their layers).
  const size_t stop = model.first_trained_layer();
  bool derivative_applied = false;  // ws.grad[l] already holds dL/dz_l
  for (size_t l = depth; l-- > stop;) {
    const DenseLayer& layer = model.layers[l];
    const int64_t out = model.width(l), in = layer.weight.size(1);
    T* grad = ptr<T>(ws.grad[l]);
    const T* a = ptr<T>(ws.out[l]);
    const T* z = ws.pre[l].defined() ? ptr<T>(ws.pre[l]) : a;
    T* bias_grad =
        model.trains(model.bias_param[l]) ? ptr<T>(ws.param_grads[model.bias_param[l]]) : nullptr;
    const Activation still_to_apply = derivative_applied ? Activation::Identity : layer.activation;
    if (still_to_apply != Activation::Identity || bias_grad != nullptr) {
      if (team.size == 1) {
        // The loss and the tiles (which apply the derivative) write on the
        // calling thread; an input gradient that left it to this pass came
        // from BLAS (input_gradient, cpu_gemm.h).
        const auto written = l + 1 < depth && !derivative_applied ? cpu::Written::kByThreads
                                                                  : cpu::Written::kByCallingThread;
        cpu::activation_backward<T>(grad, z, a, rows, out, still_to_apply, bias_grad, written);
      } else {
        const auto [c0, c1] = team.share(out, cpu::kColumnsOfLine<T>);
        cpu::activation_backward_columns<T>(grad, z, a, rows, out, c0, c1, still_to_apply,
                                            bias_grad);
        // The products below read every row of the columns this pass changed.
        if (still_to_apply != Activation::Identity) team.barrier();
      }
    }

    const T* input = l == 0 ? ptr<T>(x) : ptr<T>(ws.out[l - 1]);
    if (model.trains(model.weight_param[l])) {
      T* weight_grad = ptr<T>(ws.param_grads[model.weight_param[l]]);
      if (team.size == 1) {
        cpu::weight_gradient<T>(grad, rows, out, input, in, weight_grad);
      } else {
        const auto [o0, o1] = team.share(out);
        cpu::weight_gradient_rows<T>(grad, rows, out, input, in, weight_grad, o0, o1);
      }
    }
    derivative_applied = false;
    if (l > stop) {
      derivative_applied = cpu::input_gradient<T>(
          grad + r0 * out, r1 - r0, out, ptr<T>(layer.weight), in, ptr<T>(ws.grad[l - 1]) + r0 * in,
          model.layers[l - 1].activation, input + r0 * in);
      team.barrier();  // the layer below reads every row of its gradient
    }
  }
}

std::atomic<int64_t> team_steps{0};

template <typename T>
void forward_backward(const Model& model, Workspace& ws, const at::Tensor& x, const at::Tensor& y,
                      bool backward) {
  // One sum per chunk of the loss (cpu_kernels.h), on the stack up to 2048 rows.
  c10::SmallVector<double, 64> loss_chunk_sums((x.size(0) + cpu::kLossRows - 1) / cpu::kLossRows);
  const int size = team_size(model, x.size(0));
  if (size > 1) team_steps.fetch_add(1, std::memory_order_relaxed);
  run_team(size, [&](const Team& team) {
    forward_backward<T>(model, ws, x, y, backward, team, loss_chunk_sums.data());
  });
}

}  // namespace

void forward_backward_cpu(const Model& model, Workspace& ws, const at::Tensor& x,
                          const at::Tensor& y, bool backward) {
  if (model.dtype == at::kDouble) {
    forward_backward<double>(model, ws, x, y, backward);
  } else {
    forward_backward<float>(model, ws, x, y, backward);
  }
}

int64_t cpu_team_steps() { return team_steps.load(std::memory_order_relaxed); }

at::Tensor forward_cpu(const Model& model, Workspace& ws, const at::Tensor& x) {
  const int64_t rows = x.size(0);
  if (model.dtype == at::kDouble) {
    forward_layers<double>(model, ws, ptr<double>(x), 0, rows);
  } else {
    forward_layers<float>(model, ws, ptr<float>(x), 0, rows);
  }
  return ws.out.back().narrow(0, 0, rows);
}

}  // namespace torchext::train
