// Fused CPU kernels of the training-loop core, over raw row-major buffers.
//
// Each function is one pass over its data: bias + activation after a GEMM;
// loss value + loss gradient; activation gradient + bias gradient; each in the
// AVX-512, AVX2 or portable build cpu_isa() picks. The GEMMs, and the passes
// they absorb for small layers, are in cpu_gemm.h.
// Legend: B batch rows, I in features, O out features (row-major [B, O] etc.).
#pragma once

#include <torchext/activation_loss.h>

#include <cstdint>

namespace torchext::train::cpu {

// Where the data of a pass were written, which decides when it splits over
// threads (csrc/cpu/dispatch.h): by the calling thread (the tiles, the loss),
// so they sit in its core's cache, or by BLAS, which spread them over torch's
// threads.
enum class Written { kByCallingThread, kByThreads };

// z[B, O] += bias (if non-null); out = act(z). `out` may alias `z` except for
// GELU, whose backward needs z.
template <typename T>
void bias_activation(T* z, const T* bias, int64_t rows, int64_t cols, Activation act, T* out,
                     Written written);

// Mean squared error of out against target (n elements); writes dL/dout into
// grad when non-null. Returns the loss.
template <typename T>
T mse_loss(const T* out, const T* target, int64_t n, T* grad);

// Mean cross-entropy of logits [B, C] against class indices; writes dL/dlogits
// into grad when non-null. Returns the loss.
template <typename T>
T cross_entropy_loss(const T* logits, const int64_t* target, int64_t rows, int64_t cols, T* grad);

// The loss of a training step in chunks of kLossRows batch rows, so that it
// splits over a team (team.h) and still sums in one order: loss_chunks writes
// the sum over each chunk of rows [r0, r1) (r0 a multiple of kLossRows) into
// chunk_sums[chunk], and dL/dout of those rows into grad when non-null;
// loss_of_chunks adds every chunk's sum in order and returns the mean. target
// [B, O] for MSE, classes [B] for cross-entropy (the other is unused).
constexpr int64_t kLossRows = 32;  // at least kTileRowSplit (step_cpu.cpp relies on it)
template <typename T>
void loss_chunks(Loss loss, const T* out, const T* target, const int64_t* classes, int64_t rows,
                 int64_t cols, int64_t r0, int64_t r1, T* grad, double* chunk_sums);
template <typename T>
T loss_of_chunks(Loss loss, const double* chunk_sums, int64_t rows, int64_t cols);

// grad [B, O]: dL/d(act output) in, dL/dz out (in place), given the layer's
// pre-activation z and output a (either may be all that act needs). Also writes
// the bias gradient Σ_B dL/dz into bias_grad when non-null.
template <typename T>
void activation_backward(T* grad, const T* z, const T* a, int64_t rows, int64_t cols,
                         Activation act, T* bias_grad, Written written);

// Columns [c0, c1) of activation_backward, on the calling thread: the share of
// one member of a team (team.h). Shares cut at multiples of kColumnsOfLine keep
// each cache line of grad and bias_grad with one thread.
template <typename T>
void activation_backward_columns(T* grad, const T* z, const T* a, int64_t rows, int64_t cols,
                                 int64_t c0, int64_t c1, Activation act, T* bias_grad);
template <typename T>
constexpr int64_t kColumnsOfLine = 64 / sizeof(T);

}  // namespace torchext::train::cpu
