// What every kernel of tf_prob_unet/native includes: the standard headers, TensorFlow's op and
// kernel framework, and PROB_UNET_AVX2, defined when the compiler targets AVX2 and FMA (the
// libraries are built with -march=native on the machine that runs them; see __init__.py).

#ifndef TF_PROB_UNET_NATIVE_OP_COMMON_H_
#define TF_PROB_UNET_NATIVE_OP_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PROB_UNET_AVX2 1
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tf_prob_unet {

using ::tensorflow::DataType;
using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

// Rows (pixels or channels) of one 6 x 16 register block: 12 accumulators of the 16 AVX2
// registers, two for the loaded vectors and one for the broadcast.
constexpr int kRowBlock = 6;

}  // namespace tf_prob_unet

#endif  // TF_PROB_UNET_NATIVE_OP_COMMON_H_
