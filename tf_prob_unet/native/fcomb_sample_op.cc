// ProbUnetFcombSample: the per-sample part of f_comb, fused, for sampling.
//
// For image b, latent draw m and pixel p:
//   h_0 = relu(projected[b, p, :] + z_part[b, m, :])              (first 1x1 conv, split)
//   h_l = relu(h_{l-1} @ kernels[l-1] + biases[l-1])               l = 1 .. num_hidden
//   out = h_{num_hidden} @ logits_kernel + logits_bias             [K]
// TensorFlow runs each of these as a separate op over a whole [pixels, channels] tensor, so the
// intermediates go through memory between ops. This kernel takes the pixels in tiles of
// kTileRows rows and runs the whole chain on a tile while it sits in L1, with register-blocked
// AVX2/FMA matmuls where the compiler targets them (the library is compiled on the machine that
// runs it, with -march=native; see tf_prob_unet/native/__init__.py). Inference only: no gradient.
//
// Output: out_type float -> logits [B, M, P, K]; out_type int32 -> labels [B, M, P], the first
// arg-max over K, or for K == 1 (a two-class logit difference l1 - l0) the label (out > 0).

#include "op_common.h"

namespace tf_prob_unet {
namespace {

constexpr int kTileRows = 16 * kRowBlock;     // pixels per tile (96)
static_assert(kTileRows % 8 == 0, "the outputs are written in groups of 8 rows");

inline int64_t RoundUp8(int64_t n) { return (n + 7) / 8 * 8; }

// out[r, :] = relu(in[r, :] @ w + b) for the kTileRows rows of a tile; `cp` (a multiple of 8)
// is both the input and the output width, w is [cp, cp] row-major, b is [cp].
void DenseRelu(const float* in, const float* w, const float* b, float* out, int64_t cp) {
#ifdef PROB_UNET_AVX2
  const __m256 zero = _mm256_setzero_ps();
  for (int r0 = 0; r0 < kTileRows; r0 += kRowBlock) {
    const float* x = in + r0 * cp;
    int64_t j = 0;
    for (; j + 16 <= cp; j += 16) {
      __m256 acc[kRowBlock][2];
      const __m256 b0 = _mm256_loadu_ps(b + j), b1 = _mm256_loadu_ps(b + j + 8);
#pragma GCC unroll 6
      for (int r = 0; r < kRowBlock; ++r) {
        acc[r][0] = b0;
        acc[r][1] = b1;
      }
      for (int64_t k = 0; k < cp; ++k) {
        const __m256 w0 = _mm256_loadu_ps(w + k * cp + j);
        const __m256 w1 = _mm256_loadu_ps(w + k * cp + j + 8);
#pragma GCC unroll 6
        for (int r = 0; r < kRowBlock; ++r) {
          const __m256 xr = _mm256_broadcast_ss(x + r * cp + k);
          acc[r][0] = _mm256_fmadd_ps(xr, w0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(xr, w1, acc[r][1]);
        }
      }
#pragma GCC unroll 6
      for (int r = 0; r < kRowBlock; ++r) {
        _mm256_storeu_ps(out + (r0 + r) * cp + j, _mm256_max_ps(acc[r][0], zero));
        _mm256_storeu_ps(out + (r0 + r) * cp + j + 8, _mm256_max_ps(acc[r][1], zero));
      }
    }
    if (j < cp) {  // one last block of 8 output channels
      __m256 acc[kRowBlock];
      const __m256 b0 = _mm256_loadu_ps(b + j);
#pragma GCC unroll 6
      for (int r = 0; r < kRowBlock; ++r) acc[r] = b0;
      for (int64_t k = 0; k < cp; ++k) {
        const __m256 w0 = _mm256_loadu_ps(w + k * cp + j);
#pragma GCC unroll 6
        for (int r = 0; r < kRowBlock; ++r) {
          acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * cp + k), w0, acc[r]);
        }
      }
#pragma GCC unroll 6
      for (int r = 0; r < kRowBlock; ++r) {
        _mm256_storeu_ps(out + (r0 + r) * cp + j, _mm256_max_ps(acc[r], zero));
      }
    }
  }
#else
  for (int r = 0; r < kTileRows; ++r) {
    float* o = out + r * cp;
    std::copy(b, b + cp, o);
    for (int64_t k = 0; k < cp; ++k) {
      const float xk = in[r * cp + k];
      const float* wk = w + k * cp;
      for (int64_t j = 0; j < cp; ++j) o[j] += xk * wk[j];
    }
    for (int64_t j = 0; j < cp; ++j) o[j] = std::max(o[j], 0.0f);
  }
#endif
}

// The dot product of two length-cp rows (cp a multiple of 8).
inline float Dot(const float* a, const float* b, int64_t cp) {
#ifdef PROB_UNET_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (int64_t c = 0; c < cp; c += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc);
  }
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
#else
  float s = 0.0f;
  for (int64_t c = 0; c < cp; ++c) s += a[c] * b[c];
  return s;
#endif
}

#ifdef PROB_UNET_AVX2
// The dot products of 8 consecutive length-cp rows of `h` (row stride cp, a multiple of 8) with
// `w`, as one vector: lane partial sums per row, then a transposing reduction (hadd tree), so
// the 8 horizontal sums cost a few shuffles instead of a reduction each.
inline __m256 RowDots8(const float* h, int64_t cp, const float* w) {
  __m256 v[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) v[r] = _mm256_mul_ps(_mm256_loadu_ps(h + r * cp), _mm256_loadu_ps(w));
  for (int64_t c = 8; c < cp; c += 8) {
    const __m256 wc = _mm256_loadu_ps(w + c);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) v[r] = _mm256_fmadd_ps(_mm256_loadu_ps(h + r * cp + c), wc, v[r]);
  }
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                       _mm256_permute2f128_ps(s0123, s4567, 0x31));
}
#endif

class FcombSampleOp : public OpKernel {
 public:
  explicit FcombSampleOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_hidden", &num_hidden_));
    DataType out_type;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("out_type", &out_type));
    labels_ = out_type == ::tensorflow::DT_INT32;
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& projected = ctx->input(0);
    const Tensor& z_part = ctx->input(1);
    OpInputList kernels, biases;
    OP_REQUIRES_OK(ctx, ctx->input_list("kernels", &kernels));
    OP_REQUIRES_OK(ctx, ctx->input_list("biases", &biases));
    const Tensor& logits_kernel = ctx->input(2 + 2 * num_hidden_);
    const Tensor& logits_bias = ctx->input(3 + 2 * num_hidden_);

    OP_REQUIRES(ctx, projected.dims() == 3,
                InvalidArgument("projected: expected [B, P, C], found shape ",
                                projected.shape().DebugString()));
    OP_REQUIRES(ctx, z_part.dims() == 3,
                InvalidArgument("z_part: expected [B, M, C], found shape ",
                                z_part.shape().DebugString()));
    const int64_t batch = projected.dim_size(0), pixels = projected.dim_size(1);
    const int64_t channels = projected.dim_size(2), num = z_part.dim_size(1);
    OP_REQUIRES(ctx, z_part.dim_size(0) == batch && z_part.dim_size(2) == channels,
                InvalidArgument("z_part: expected [", batch, ", M, ", channels, "], found ",
                                z_part.shape().DebugString()));
    for (int l = 0; l < num_hidden_; ++l) {
      OP_REQUIRES(ctx, kernels[l].shape() == TensorShape({channels, channels}),
                  InvalidArgument("kernels[", l, "]: expected [", channels, ", ", channels,
                                  "], found ", kernels[l].shape().DebugString()));
      OP_REQUIRES(ctx, biases[l].shape() == TensorShape({channels}),
                  InvalidArgument("biases[", l, "]: expected [", channels, "], found ",
                                  biases[l].shape().DebugString()));
    }
    OP_REQUIRES(ctx, logits_kernel.dims() == 2 && logits_kernel.dim_size(0) == channels,
                InvalidArgument("logits_kernel: expected [", channels, ", K], found ",
                                logits_kernel.shape().DebugString()));
    const int64_t k_out = logits_kernel.dim_size(1);
    OP_REQUIRES(ctx, k_out >= 1 && logits_bias.shape() == TensorShape({k_out}),
                InvalidArgument("logits_bias: expected [", k_out, "], found ",
                                logits_bias.shape().DebugString()));

    Tensor* output = nullptr;
    TensorShape out_shape({batch, num, pixels});
    if (!labels_) out_shape.AddDim(k_out);
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &output));
    if (output->NumElements() == 0) return;

    // Weights zero-padded to a multiple of 8 channels: padded channels stay exactly 0.
    const int64_t cp = RoundUp8(channels);
    std::vector<float> w(std::max<int64_t>(num_hidden_, 1) * cp * cp, 0.0f);
    std::vector<float> b(std::max<int64_t>(num_hidden_, 1) * cp, 0.0f);
    for (int l = 0; l < num_hidden_; ++l) {
      const float* src = kernels[l].flat<float>().data();
      for (int64_t i = 0; i < channels; ++i) {
        std::copy(src + i * channels, src + (i + 1) * channels, &w[(l * cp + i) * cp]);
      }
      const float* bs = biases[l].flat<float>().data();
      std::copy(bs, bs + channels, &b[l * cp]);
    }
    std::vector<float> wl(k_out * cp, 0.0f);  // transposed: [K, cp]
    const float* lk = logits_kernel.flat<float>().data();
    for (int64_t i = 0; i < channels; ++i) {
      for (int64_t k = 0; k < k_out; ++k) wl[k * cp + i] = lk[i * k_out + k];
    }
    const float* lb = logits_bias.flat<float>().data();
    const float* proj = projected.flat<float>().data();
    const float* zp = z_part.flat<float>().data();
    float* out_logits = labels_ ? nullptr : output->flat<float>().data();
    int32_t* out_labels = labels_ ? output->flat<int32_t>().data() : nullptr;

    const int64_t tiles = (pixels + kTileRows - 1) / kTileRows;
    const int64_t units = batch * num * tiles;
    const int64_t cost = kTileRows * (2 * num_hidden_ * cp * cp + 2 * k_out * cp + 2 * cp);
    const int num_hidden = num_hidden_;
    const bool labels = labels_;

    auto work = [&](int64_t start, int64_t limit) {
      std::vector<float> buf_a(kTileRows * cp, 0.0f), buf_b(kTileRows * cp, 0.0f);
      std::vector<float> row_out(k_out);
      for (int64_t u = start; u < limit; ++u) {
        // Consecutive units are the samples of one tile: its projected rows stay in cache.
        const int64_t m = u % num, tile = (u / num) % tiles, bi = u / num / tiles;
        const int64_t bm = bi * num + m;
        const int64_t p0 = tile * kTileRows;
        const int64_t rows = std::min<int64_t>(kTileRows, pixels - p0);
        const float* zrow = zp + bm * channels;
        float* h = buf_a.data();
        float* g = buf_b.data();
        for (int64_t r = 0; r < rows; ++r) {
          const float* src = proj + (bi * pixels + p0 + r) * channels;
          float* dst = h + r * cp;
          int64_t c = 0;
#ifdef PROB_UNET_AVX2
          for (; c + 8 <= channels; c += 8) {
            _mm256_storeu_ps(dst + c, _mm256_max_ps(_mm256_add_ps(_mm256_loadu_ps(src + c),
                                                                  _mm256_loadu_ps(zrow + c)),
                                                    _mm256_setzero_ps()));
          }
#endif
          for (; c < channels; ++c) dst[c] = std::max(src[c] + zrow[c], 0.0f);
        }
        if (rows < kTileRows) std::fill(h + rows * cp, h + kTileRows * cp, 0.0f);
        for (int l = 0; l < num_hidden; ++l) {
          DenseRelu(h, &w[l * cp * cp], &b[l * cp], g, cp);
          std::swap(h, g);
        }
        const int64_t base = bm * pixels + p0;
        int64_t r = 0;
#ifdef PROB_UNET_AVX2
        // Groups of 8 rows (kTileRows is a multiple of 8; rows past `rows` hold finite values
        // and are not written out).
        for (; r < rows; r += 8) {
          const int64_t n = std::min<int64_t>(8, rows - r);
          const float* hr = h + r * cp;
          alignas(32) float vals[8];
          alignas(32) int32_t labs[8];
          if (!labels) {
            for (int64_t k = 0; k < k_out; ++k) {
              _mm256_store_ps(vals, _mm256_add_ps(RowDots8(hr, cp, &wl[k * cp]),
                                                  _mm256_set1_ps(lb[k])));
              for (int64_t i = 0; i < n; ++i) out_logits[(base + r + i) * k_out + k] = vals[i];
            }
            continue;
          }
          __m256i best;
          if (k_out == 1) {
            const __m256 v = _mm256_add_ps(RowDots8(hr, cp, wl.data()), _mm256_set1_ps(lb[0]));
            best = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(),
                                                                        _CMP_GT_OQ)),
                                    _mm256_set1_epi32(1));
          } else {  // the first arg-max: a later class wins only if strictly greater
            __m256 best_value = _mm256_add_ps(RowDots8(hr, cp, wl.data()), _mm256_set1_ps(lb[0]));
            best = _mm256_setzero_si256();
            for (int64_t k = 1; k < k_out; ++k) {
              const __m256 v = _mm256_add_ps(RowDots8(hr, cp, &wl[k * cp]), _mm256_set1_ps(lb[k]));
              const __m256 greater = _mm256_cmp_ps(v, best_value, _CMP_GT_OQ);
              best_value = _mm256_blendv_ps(best_value, v, greater);
              best = _mm256_castps_si256(_mm256_blendv_ps(
                  _mm256_castsi256_ps(best),
                  _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(k))), greater));
            }
          }
          if (n == 8 && (reinterpret_cast<uintptr_t>(out_labels + base + r) & 31) == 0) {
            // Streamed past the cache: the labels are not read again here.
            _mm256_stream_si256(reinterpret_cast<__m256i*>(out_labels + base + r), best);
          } else if (n == 8) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_labels + base + r), best);
          } else {
            _mm256_store_si256(reinterpret_cast<__m256i*>(labs), best);
            std::copy(labs, labs + n, out_labels + base + r);
          }
        }
#endif
        for (; r < rows; ++r) {
          const float* hr = h + r * cp;
          if (!labels) {
            float* o = out_logits + (base + r) * k_out;
            for (int64_t k = 0; k < k_out; ++k) o[k] = lb[k] + Dot(hr, &wl[k * cp], cp);
            continue;
          }
          if (k_out == 1) {
            out_labels[base + r] = lb[0] + Dot(hr, wl.data(), cp) > 0.0f ? 1 : 0;
            continue;
          }
          int32_t best = 0;
          float best_value = lb[0] + Dot(hr, wl.data(), cp);
          for (int64_t k = 1; k < k_out; ++k) {
            const float v = lb[k] + Dot(hr, &wl[k * cp], cp);
            if (v > best_value) {
              best_value = v;
              best = static_cast<int32_t>(k);
            }
          }
          out_labels[base + r] = best;
        }
      }
#ifdef PROB_UNET_AVX2
      _mm_sfence();  // the streamed stores are visible before the shard reports done
#endif
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, units, cost, work);
  }

 private:
  int num_hidden_ = 0;
  bool labels_ = false;
};

REGISTER_KERNEL_BUILDER(Name("ProbUnetFcombSample").Device(DEVICE_CPU), FcombSampleOp);

}  // namespace
}  // namespace tf_prob_unet

REGISTER_OP("ProbUnetFcombSample")
    .Input("projected: float")
    .Input("z_part: float")
    .Input("kernels: num_hidden * float")
    .Input("biases: num_hidden * float")
    .Input("logits_kernel: float")
    .Input("logits_bias: float")
    .Output("output: out_type")
    .Attr("num_hidden: int >= 0")
    .Attr("out_type: {float, int32} = DT_FLOAT")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle projected, z_part, logits_kernel;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &projected));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &z_part));
      int num_hidden;
      TF_RETURN_IF_ERROR(c->GetAttr("num_hidden", &num_hidden));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2 + 2 * num_hidden), 2, &logits_kernel));
      ::tensorflow::DataType out_type;
      TF_RETURN_IF_ERROR(c->GetAttr("out_type", &out_type));
      std::vector<::tensorflow::shape_inference::DimensionHandle> dims = {
          c->Dim(projected, 0), c->Dim(z_part, 1), c->Dim(projected, 1)};
      if (out_type == ::tensorflow::DT_FLOAT) dims.push_back(c->Dim(logits_kernel, 1));
      c->set_output(0, c->MakeShape(dims));
      return ::tensorflow::OkStatus();
    });
