// ProbUnetConvKernelGrad: the kernel and bias gradients of a stride-1 SAME convolution with an odd
// kernel (and a bias added to its output).
//
// dW[i, j, ci, co] = sum over (b, h, w) of x[b, h + i - kh/2, w + j - kw/2, ci] * dy[b, h, w, co].
// db[co] = sum over (b, h, w) of dy[b, h, w, co], summed while the chunks of dy are in cache for
// dW (TensorFlow's BiasAddGrad would read dy from memory once more).
//
// The input is copied once, zero-padded to the [B, H + kh - 1, W + kw - 1] grid, into a blocked
// layout of kRowBlock (6) channels per pixel ([C_in / 6, B * Hp * Wp, 6]), so that a block of
// one image row is contiguous. The output gradient is read in place (NHWC) when C_out is a
// multiple of 8, else from a copy with zero channels up to one. Output pixel (h, w) meets padded
// input pixel (h + i, w + j) for tap (i, j): every tap is a reduction over contiguous image rows.
// The products accumulate in 6 x 16 register blocks (6 input channels x 16 output channels;
// AVX2/FMA where the compiler targets it: the library is built with -march=native on the machine
// that runs it) over chunks of about kChunkRows pixels (whole image rows), which stay in cache
// while all taps and channel blocks read them. Threads split the (input block, output block
// pair) units into runs of equal cost, so each output element is summed by one thread in one
// fixed order: the result does not depend on the thread count and is the same on every call.

#include "op_common.h"

namespace tf_prob_unet {
namespace {

constexpr int64_t kChunkRows = 128;  // pixels per cache chunk (whole image rows, at least one)

// acc[q, 8 * v + c] += sum over segments s < segs and pixels w < len of
//   x[s * x_seg + w * kRowBlock + q] * g[s * g_seg + w * g_pixel + 8 * v + c]
// for q < kRows, c < 8, v < kVec: x is the blocked input (kRowBlock channels per pixel, the
// first kRows used), g the output gradient (g_pixel floats per pixel, 8 * kVec read at an
// offset); a segment is one image row.
template <int kRows, int kVec>
inline void Accumulate(const float* x, int64_t x_seg, const float* g, int64_t g_pixel,
                       int64_t g_seg, int64_t segs, int64_t len, float* acc,
                       int64_t acc_stride) {
#ifdef PROB_UNET_AVX2
  __m256 a[kRows][kVec];
#pragma GCC unroll 6
  for (int q = 0; q < kRows; ++q) {
    a[q][0] = _mm256_loadu_ps(acc + q * acc_stride);
    if (kVec == 2) a[q][kVec - 1] = _mm256_loadu_ps(acc + q * acc_stride + 8);
  }
  for (int64_t s = 0; s < segs; ++s) {
    const float* xs = x + s * x_seg;
    const float* gs = g + s * g_seg;
    for (int64_t w = 0; w < len; ++w) {
      const __m256 gv0 = _mm256_loadu_ps(gs + w * g_pixel);
      const __m256 gv1 = kVec == 2 ? _mm256_loadu_ps(gs + w * g_pixel + 8) : gv0;
      const float* xr = xs + w * kRowBlock;
#pragma GCC unroll 6
      for (int q = 0; q < kRows; ++q) {
        const __m256 xb = _mm256_broadcast_ss(xr + q);
        a[q][0] = _mm256_fmadd_ps(xb, gv0, a[q][0]);
        if (kVec == 2) a[q][kVec - 1] = _mm256_fmadd_ps(xb, gv1, a[q][kVec - 1]);
      }
    }
  }
#pragma GCC unroll 6
  for (int q = 0; q < kRows; ++q) {
    _mm256_storeu_ps(acc + q * acc_stride, a[q][0]);
    if (kVec == 2) _mm256_storeu_ps(acc + q * acc_stride + 8, a[q][kVec - 1]);
  }
#else
  for (int64_t s = 0; s < segs; ++s) {
    for (int64_t w = 0; w < len; ++w) {
      const float* xr = x + s * x_seg + w * kRowBlock;
      const float* gr = g + s * g_seg + w * g_pixel;
      for (int q = 0; q < kRows; ++q) {
        for (int c = 0; c < 8 * kVec; ++c) acc[q * acc_stride + c] += xr[q] * gr[c];
      }
    }
  }
#endif
}

// acc[8 * v + c] += sum over segments s < segs and pixels w < len of g[s * g_seg + w * g_pixel +
// 8 * v + c], for c < 8, v < kVec: one chunk's share of the bias gradient.
template <int kVec>
void AccumulateSum(const float* g, int64_t g_pixel, int64_t g_seg, int64_t segs, int64_t len,
                   float* acc) {
#ifdef PROB_UNET_AVX2
  __m256 a0 = _mm256_loadu_ps(acc), a1 = kVec == 2 ? _mm256_loadu_ps(acc + 8) : a0;
  for (int64_t s = 0; s < segs; ++s) {
    const float* gs = g + s * g_seg;
    for (int64_t w = 0; w < len; ++w) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(gs + w * g_pixel));
      if (kVec == 2) a1 = _mm256_add_ps(a1, _mm256_loadu_ps(gs + w * g_pixel + 8));
    }
  }
  _mm256_storeu_ps(acc, a0);
  if (kVec == 2) _mm256_storeu_ps(acc + 8, a1);
#else
  for (int64_t s = 0; s < segs; ++s) {
    for (int64_t w = 0; w < len; ++w) {
      for (int c = 0; c < 8 * kVec; ++c) acc[c] += g[s * g_seg + w * g_pixel + c];
    }
  }
#endif
}

// Accumulate for a block of `block_rows` (1 .. kRowBlock) input channels: the last block of a
// channel count that is not a multiple of kRowBlock computes only its real channels.
template <int kVec>
void AccumulateBlock(int block_rows, const float* x, int64_t x_seg, const float* g,
                     int64_t g_pixel, int64_t g_seg, int64_t segs, int64_t len, float* acc,
                     int64_t acc_stride) {
#define PROB_UNET_ACCUMULATE(R) \
  Accumulate<R, kVec>(x, x_seg, g, g_pixel, g_seg, segs, len, acc, acc_stride)
  switch (block_rows) {
    case 1: return PROB_UNET_ACCUMULATE(1);
    case 2: return PROB_UNET_ACCUMULATE(2);
    case 3: return PROB_UNET_ACCUMULATE(3);
    case 4: return PROB_UNET_ACCUMULATE(4);
    case 5: return PROB_UNET_ACCUMULATE(5);
    default: return PROB_UNET_ACCUMULATE(kRowBlock);
  }
#undef PROB_UNET_ACCUMULATE
}

// Copies `src` [B, H, W, C] into the blocked layout `dst` [ceil(C / kRowBlock), B * Hp * Wp,
// kRowBlock]: pixel (b, h, w) goes to position (b, h + top, w + left) of the Hp x Wp grid,
// channel c to block c / kRowBlock, lane c % kRowBlock; everything else (borders, lanes past C)
// is zero. Fills the padded image rows [start, limit) of the B * Hp rows, reading each source
// pixel's channels once, in order.
void PadToBlocks(const float* src, int64_t batch, int64_t height, int64_t width,
                 int64_t channels, float* dst, int64_t padded_height, int64_t padded_width,
                 int64_t top, int64_t left, int64_t start, int64_t limit) {
  const int64_t blocks = (channels + kRowBlock - 1) / kRowBlock;
  const int64_t full = channels / kRowBlock, rest = channels - full * kRowBlock;
  const int64_t block_stride = batch * padded_height * padded_width * kRowBlock;
  const int64_t right = padded_width - width - left;
  for (int64_t row = start; row < limit; ++row) {
    const int64_t b = row / padded_height, h = row % padded_height - top;
    float* out = dst + row * padded_width * kRowBlock;  // block 0 of this row
    if (h < 0 || h >= height) {
      for (int64_t k = 0; k < blocks; ++k) {
        std::memset(out + k * block_stride, 0, sizeof(float) * padded_width * kRowBlock);
      }
      continue;
    }
    for (int64_t k = 0; k < blocks; ++k) {
      float* o = out + k * block_stride;
      std::memset(o, 0, sizeof(float) * left * kRowBlock);
      std::memset(o + (left + width) * kRowBlock, 0, sizeof(float) * right * kRowBlock);
    }
    const float* in = src + (b * height + h) * width * channels;
    float* o = out + left * kRowBlock;
    for (int64_t w = 0; w < width; ++w, in += channels, o += kRowBlock) {
      for (int64_t k = 0; k < full; ++k) {
        std::memcpy(o + k * block_stride, in + k * kRowBlock, sizeof(float) * kRowBlock);
      }
      if (rest > 0) {
        float* t = o + full * block_stride;
        for (int64_t q = 0; q < kRowBlock; ++q) t[q] = q < rest ? in[full * kRowBlock + q] : 0.0f;
      }
    }
  }
}

class ConvKernelGradOp : public OpKernel {
 public:
  explicit ConvKernelGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> kernel_size;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel_size", &kernel_size));
    OP_REQUIRES(ctx, kernel_size.size() == 2 && kernel_size[0] % 2 == 1 &&
                         kernel_size[1] % 2 == 1 && kernel_size[0] > 0 && kernel_size[1] > 0,
                InvalidArgument("kernel_size: expected two positive odd sizes, found ",
                                kernel_size.size(), " values"));
    kh_ = kernel_size[0];
    kw_ = kernel_size[1];
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    OP_REQUIRES(ctx, input.dims() == 4,
                InvalidArgument("input: expected [B, H, W, C_in], found shape ",
                                input.shape().DebugString()));
    OP_REQUIRES(ctx, grad.dims() == 4 && grad.dim_size(0) == input.dim_size(0) &&
                         grad.dim_size(1) == input.dim_size(1) &&
                         grad.dim_size(2) == input.dim_size(2),
                InvalidArgument("grad_output: expected [", input.dim_size(0), ", ",
                                input.dim_size(1), ", ", input.dim_size(2),
                                ", C_out] (the input's B, H, W), found shape ",
                                grad.shape().DebugString()));
    const int64_t batch = input.dim_size(0), height = input.dim_size(1);
    const int64_t width = input.dim_size(2), c_in = input.dim_size(3), c_out = grad.dim_size(3);
    Tensor* output = nullptr;
    Tensor* bias_output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({kh_, kw_, c_in, c_out}), &output));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({c_out}), &bias_output));
    float* out = output->flat<float>().data();
    float* bias_out = bias_output->flat<float>().data();
    if (c_out == 0) return;
    const int64_t pixels = batch * height * width;
    if (pixels == 0 || c_in == 0) {  // no kernel to speak of: zeros, and the plain bias sum
      std::fill(out, out + output->NumElements(), 0.0f);
      std::fill(bias_out, bias_out + c_out, 0.0f);
      const float* dy = grad.flat<float>().data();
      for (int64_t p = 0; p < pixels; ++p) {
        for (int64_t c = 0; c < c_out; ++c) bias_out[c] += dy[p * c_out + c];
      }
      return;
    }

    const int64_t ph = kh_ / 2, pw = kw_ / 2;
    const int64_t hp = height + 2 * ph, wp = width + 2 * pw;
    const int64_t x_blocks = (c_in + kRowBlock - 1) / kRowBlock, g_blocks = (c_out + 7) / 8;
    const int64_t cip = x_blocks * kRowBlock, cop = g_blocks * 8;
    const int64_t padded_rows = batch * hp, grid = padded_rows * wp;
    Tensor xp_t, gp_t, acc_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({grid * cip}),
                                           &xp_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({kh_ * kw_ * cip * cop}), &acc_t));
    float* xp = xp_t.flat<float>().data();  // [x_blocks, grid, kRowBlock]
    float* acc = acc_t.flat<float>().data();  // [kh * kw, cip, cop]
    std::vector<float> bias_acc(cop, 0.0f);
    const float* x = input.flat<float>().data();
    const float* g = grad.flat<float>().data();  // read in place when C_out % 8 == 0
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    if (cop != c_out) {  // else: a copy with zero channels up to a multiple of 8
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                             TensorShape({pixels * cop}), &gp_t));
      float* gp = gp_t.flat<float>().data();
      ::tensorflow::Shard(workers->num_threads, workers->workers, pixels, cop,
                          [&](int64_t start, int64_t limit) {
                            for (int64_t p = start; p < limit; ++p) {
                              std::copy(g + p * c_out, g + (p + 1) * c_out, gp + p * cop);
                              std::fill(gp + p * cop + c_out, gp + (p + 1) * cop, 0.0f);
                            }
                          });
      g = gp;
    }
    ::tensorflow::Shard(
        workers->num_threads, workers->workers, padded_rows, wp * cip * 2,
        [&](int64_t start, int64_t limit) {
          PadToBlocks(x, batch, height, width, c_in, xp, hp, wp, ph, pw, start, limit);
        });

    // A chunk is a run of image rows of one image (about kChunkRows pixels): its input and
    // gradient rows stay in cache while every tap and unit reads them.
    const int64_t chunk = std::max<int64_t>(1, kChunkRows / width);
    const int64_t taps = kh_ * kw_, kw = kw_;
    // A unit of work: one pair of 8-channel output blocks (or the last single block) and one
    // input-channel block, pairs outer. Each thread takes a contiguous run of units of about
    // equal cost (input and output channel counts rarely split evenly into blocks per thread).
    // Every output element belongs to one unit and is summed over the chunks in one fixed order,
    // so the result depends on neither the partition nor the thread count.
    const int64_t pairs = (g_blocks + 1) / 2, num_units = pairs * x_blocks;
    auto unit_cost = [&](int64_t u) {  // FMAs + loads per pixel and tap
      const int64_t rows = std::min<int64_t>(kRowBlock, c_in - (u % x_blocks) * kRowBlock);
      const int64_t vecs = std::min<int64_t>(2, g_blocks - (u / x_blocks) * 2);
      return rows * vecs + rows + vecs;
    };
    int64_t total_cost = 0;
    for (int64_t u = 0; u < num_units; ++u) total_cost += unit_cost(u);
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(workers->num_threads, num_units));
    std::vector<int64_t> bounds = {0};
    for (int64_t u = 0, done = 0; u < num_units; ++u) {  // cut nearest to each k / parts
      const int64_t target = total_cost * static_cast<int64_t>(bounds.size()) / parts;
      const int64_t next = done + unit_cost(u);
      if (static_cast<int64_t>(bounds.size()) < parts && next >= target) {
        bounds.push_back(target - done < next - target ? u : u + 1);
      }
      done = next;
    }
    while (static_cast<int64_t>(bounds.size()) <= parts) bounds.push_back(num_units);
    auto work = [&](int64_t first_part, int64_t last_part) {
      const int64_t u0 = bounds[first_part], u1 = bounds[last_part];
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t ob = (u / x_blocks) * 2, cb = u % x_blocks;
        const int64_t cols = 8 * std::min<int64_t>(2, g_blocks - ob);
        for (int64_t t = 0; t < taps; ++t) {
          for (int64_t c = cb * kRowBlock; c < (cb + 1) * kRowBlock; ++c) {
            float* a = acc + (t * cip + c) * cop + ob * 8;
            std::fill(a, a + cols, 0.0f);
          }
        }
      }
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h0 = 0; h0 < height; h0 += chunk) {
          const int64_t segs = std::min(chunk, height - h0);
          const float* g_chunk = g + (b * height + h0) * width * cop;
          for (int64_t u = u0; u < u1; ++u) {
            const int64_t ob = (u / x_blocks) * 2, cb = u % x_blocks;
            const int block_rows = static_cast<int>(std::min<int64_t>(kRowBlock,
                                                                      c_in - cb * kRowBlock));
            if (cb == 0) {  // the bias gradient, by the units of the first input block
              if (ob + 1 < g_blocks) {
                AccumulateSum<2>(g_chunk + ob * 8, cop, width * cop, segs, width,
                                 &bias_acc[ob * 8]);
              } else {
                AccumulateSum<1>(g_chunk + ob * 8, cop, width * cop, segs, width,
                                 &bias_acc[ob * 8]);
              }
            }
            // Output pixel (h, w) meets padded input pixel (h + i, w + j) for tap (i, j).
            const float* x_chunk = xp + (cb * grid + (b * hp + h0) * wp) * kRowBlock;
            for (int64_t t = 0; t < taps; ++t) {
              const float* xc = x_chunk + ((t / kw) * wp + t % kw) * kRowBlock;
              float* a = acc + (t * cip + cb * kRowBlock) * cop + ob * 8;
              if (ob + 1 < g_blocks) {
                AccumulateBlock<2>(block_rows, xc, wp * kRowBlock, g_chunk + ob * 8, cop,
                                   width * cop, segs, width, a, cop);
              } else {
                AccumulateBlock<1>(block_rows, xc, wp * kRowBlock, g_chunk + ob * 8, cop,
                                   width * cop, segs, width, a, cop);
              }
            }
          }
        }
      }
    };
    // One shard per part (a cost per part far above Shard's minimum per shard).
    ::tensorflow::Shard(parts, workers->workers, parts, pixels * taps * total_cost, work);

    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t c = 0; c < c_in; ++c) {
        std::copy(acc + (t * cip + c) * cop, acc + (t * cip + c) * cop + c_out,
                  out + (t * c_in + c) * c_out);
      }
    }
    std::copy(bias_acc.begin(), bias_acc.begin() + c_out, bias_out);
  }

 private:
  int64_t kh_ = 3, kw_ = 3;
};

REGISTER_KERNEL_BUILDER(Name("ProbUnetConvKernelGrad").Device(DEVICE_CPU), ConvKernelGradOp);

}  // namespace
}  // namespace tf_prob_unet

REGISTER_OP("ProbUnetConvKernelGrad")
    .Input("input: float")
    .Input("grad_output: float")
    .Output("kernel_grad: float")
    .Output("bias_grad: float")
    .Attr("kernel_size: list(int)")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle input, grad;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &grad));
      std::vector<int32_t> kernel_size;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &kernel_size));
      if (kernel_size.size() != 2) {
        return ::tensorflow::errors::InvalidArgument("kernel_size: expected 2 values, found ",
                                                     kernel_size.size());
      }
      c->set_output(0, c->MakeShape({c->MakeDim(kernel_size[0]), c->MakeDim(kernel_size[1]),
                                     c->Dim(input, 3), c->Dim(grad, 3)}));
      c->set_output(1, c->Vector(c->Dim(grad, 3)));
      return ::tensorflow::OkStatus();
    });
