// The mixed-precision step with ATen operators (see mixed_step.h): the ops a
// stock loop under torch.autocast runs, on workspaces in the compute dtype.
//
// forward:  x and the weights cast to the compute dtype; per layer addmm (or mm)
//           and the activation in the compute dtype: step_aten's forward over
//           the compute copies
// loss:     the output widened to float32, the float32 loss and its gradient
//           (times the loss scale under "16-mixed"), which is then rounded to
//           the compute dtype, as autocast's casts around a float32 op do
// backward: step_aten's backward over the compute copies: every gradient in the
//           compute dtype, as autograd computes it through the cast weights
// On CUDA the GEMMs are ATen's cuBLAS/cuBLASLt calls in the compute dtype; on
// the CPU, oneDNN's (AMX or AVX-512-BF16 where the CPU has them).
#include "train/mixed_step.h"

namespace torchext::train {
namespace {

at::Tensor rows_of(const at::Tensor& t, int64_t rows) { return t.narrow(0, 0, rows); }

}  // namespace

at::Tensor MixedStep::forward_aten(const at::Tensor& x) {
  const at::Tensor input = rows_of(input_, x.size(0)).copy_(x);
  return train::forward_aten(compute_, ws_, input);
}

void MixedStep::forward_backward_aten(const Model& model, const at::Tensor& x, const at::Tensor& y,
                                      bool backward) {
  const int64_t rows = x.size(0);
  const at::Tensor output = rows_of(output_f32_, rows).copy_(forward_aten(x));
  const at::Tensor grad = backward ? rows_of(grad_f32_, rows) : at::Tensor();
  loss_aten(model.loss, output, y, loss_ws_, incoming(), grad);
  if (!backward) return;
  rows_of(ws_.grad.back(), rows).copy_(grad);
  backward_aten(compute_, ws_, rows_of(input_, rows));
}

}  // namespace torchext::train
