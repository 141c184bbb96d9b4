// float16/bfloat16 in the CPU kernel of torchext::fused_sgd_: where torch's
// elementwise ops round, reproduced so that the fused step is bit-identical to
// torch.optim.SGD's default CPU path.
//
// That path runs one ATen op per step of the update (csrc/ops/sgd_math.h), and
// each op rounds its result to the tensor's dtype. In `x.add(y, alpha=a)` the
// scalar `a` is first converted to that dtype; in `x.mul(m)` it stays float32.
// How the float32 arithmetic inside an op rounds depends on where an element
// falls:
//  - "vector" elements (the vectorised loop of torch's AVX2/AVX-512 kernels):
//    x + a·y is one fused multiply-add in float32, then one rounding;
//  - "scalar" elements (the loop's tail, and every element of torch's DEFAULT
//    kernels): a·y is rounded to the dtype, then x + (a·y) is rounded again.
//
// Which rounding an element gets depends on where torch's elementwise loop puts
// it. A torch op over n contiguous elements is split into chunks the way
// at::parallel_for splits TensorIterator work (serial below GRAIN_SIZE
// elements), and each chunk runs its vectorised loop over whole blocks of
// kTorchVectorBlock elements (two AVX2 vectors of 16-bit values; torch's AVX-512
// builds use the AVX2 loop for add and mul) and its scalar loop over the rest.
#pragma once

#include "fused_sgd_kernel.h"

#include <ATen/core/Tensor.h>
#include <c10/util/SmallVector.h>

namespace torchext::fused_sgd {

constexpr int64_t kTorchVectorBlock = 32;

// A run of consecutive elements of one tensor that torch's loops round alike.
struct ElementRun {
  int64_t begin, end;
  bool vector_semantics;
};

// The runs of an n-element update; with torch_vectorises false (its DEFAULT
// kernels), every element rounds the scalar way.
c10::SmallVector<ElementRun, 4> torch_elementwise_runs(int64_t numel, bool torch_vectorises);

// The step's scalars as torch's ops see them for a float16/bfloat16 tensor
// (each `alpha` converted to the dtype, with torch's overflow check).
Coeffs<float> reduced_coeffs(at::ScalarType dtype, const StepArgs& args);

// Steps n elements of a float16/bfloat16 tensor the "scalar" way, without ISA
// extensions (the reference for the SIMD spans, and the path of torch's DEFAULT
// kernels).
void reduced_span_portable(at::ScalarType dtype, void* p, void* g, void* b, int64_t n,
                           bool first_step, const Coeffs<float>& c);

}  // namespace torchext::fused_sgd
