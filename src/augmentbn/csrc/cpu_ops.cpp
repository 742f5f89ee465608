// augmentbn's compiled CPU operators: the training-mode layers of functional.py without the
// per-call cost of small tensor operations.
//
// These are the C++ twins of functional.py's _AugmentBatchNormFunction and _IEBatchNormFunction
// and of the per-channel algebra around them (batch statistics, NABN's shifted statistics, IEBN's
// gate, the running averages). The formulas, their sources and their derivations are documented
// there and in DESIGN.md 1.1-1.2; this file computes the same quantities, and
// tests/test_cpu_ops.py holds the two implementations equal.
//
// Why: every small ATen operation costs 1-2 us and every Python call more, whatever the size of
// its (C,) tensor; a layer in Python takes some thirty of them around BatchNorm's kernels, which
// at small batches is most of its time (BENCHMARKS.md). Here the per-channel work is one loop,
// the batch statistics are two passes over rows that stay in cache (PyTorch's CPU statistics
// kernel is several times slower), and only the large elementwise passes go through ATen.
//
// functional.py calls these for contiguous float32/float64 CPU inputs outside torch.compile;
// everything else stays on the Python implementation. augmentbn/_cpu_ops.py builds this file on
// first use with torch.utils.cpp_extension.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<Tensor>;

Tensor value_or_undefined(const OptionalTensor& t) { return t.has_value() ? *t : Tensor(); }

bool given(const OptionalTensor& t) { return t.has_value() && t->defined(); }

// Autograd numbers its edges over the tensors given to a Function, skipping absent optional
// ones. Records, under each name, the edge of that argument (-1 when absent).
void record_edges(AutogradContext* ctx,
                  std::initializer_list<std::pair<const char*, const OptionalTensor*>> args) {
  int64_t edge = 0;
  for (const auto& [name, t] : args) {
    ctx->saved_data[name] = t == nullptr || given(*t) ? edge++ : int64_t{-1};
  }
}

// The backward passes below are not themselves differentiable: like functional.py's, marked
// @once_differentiable, they compute without recording a graph and, under create_graph=True,
// return gradients whose own backward raises instead of giving wrong second derivatives.
template <typename Compute>
variable_list once_differentiable(const variable_list& grad_outputs, Compute compute) {
  const bool recording = at::GradMode::is_enabled() &&
                         std::any_of(grad_outputs.begin(), grad_outputs.end(), [](const Tensor& g) {
                           return g.defined() && g.requires_grad();
                         });
  variable_list gradients;
  {
    at::NoGradGuard no_grad;
    gradients = compute();
  }
  if (!recording) return gradients;
  for (Tensor& g : gradients) {
    if (g.defined()) g = g.detach().requires_grad_(true);
  }
  torch::autograd::DelayedError error(
      "trying to differentiate twice a function that was marked with @once_differentiable "
      "(augmentbn's layers have no second derivatives)",
      static_cast<int64_t>(gradients.size()));
  return error.apply(std::move(gradients));
}

// The raw writes below bypass autograd's version counters; keep them counting.
void mark_modified(const Tensor& t) { torch::autograd::impl::bump_version(t); }

// The per-channel tensors the operators read and write through raw pointers must have C values.
void check_channels(const char* op, int64_t C,
                    std::initializer_list<std::pair<const char*, const OptionalTensor*>> args) {
  for (const auto& [name, t] : args) {
    TORCH_CHECK(!given(*t) || (*t)->numel() == C, op, ": ", name, " must have ", C,
                " values (one per channel), got ", (*t)->numel());
  }
}

bool needs_grad(AutogradContext* ctx, const char* name) {
  const int64_t edge = ctx->saved_data[name].toInt();
  return edge >= 0 && ctx->needs_input_grad(edge);
}

// A Function's gradients: those of its first arguments, undefined for the rest.
variable_list padded(variable_list gradients, size_t num_arguments) {
  gradients.resize(num_arguments);
  return gradients;
}

// (C,) or (N, C) viewed to broadcast against an ndim-D (N, C, *S) tensor.
Tensor channel_view(const Tensor& t, int64_t ndim) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape.resize(t.dim() + ndim - 2, 1);
  return t.view(shape);
}

// The values of a small tensor (per channel or per (n, c)) in double, and back.
std::vector<double> to_doubles(const Tensor& t) {
  const Tensor c = t.contiguous();
  std::vector<double> values(c.numel());
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "augmentbn_to_doubles", [&] {
    std::copy_n(c.data_ptr<scalar_t>(), values.size(), values.begin());
  });
  return values;
}

Tensor tensor_of(const std::vector<double>& values, const at::TensorOptions& options) {
  Tensor t = at::empty({static_cast<int64_t>(values.size())}, options);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "augmentbn_tensor_of", [&] {
    std::copy(values.begin(), values.end(), t.data_ptr<scalar_t>());
  });
  return t;
}

// ------------------------------------------------------------------------------------------
// Batch statistics: two passes over the (n, c) rows of a contiguous input
// ------------------------------------------------------------------------------------------

constexpr int64_t kBlock = 128;  // values summed in the input's precision before going to double

// sum(x) over a row, in blocks.
template <typename scalar_t>
double row_sum(const scalar_t* x, int64_t size) {
  double total = 0;
  for (int64_t start = 0; start < size; start += kBlock) {
    const int64_t end = std::min(size, start + kBlock);
    scalar_t block = 0;
#pragma omp simd reduction(+ : block)
    for (int64_t i = start; i < end; ++i) block += x[i];
    total += block;
  }
  return total;
}

// sum(d) and sum(d^2) with d = x - center over a row, in blocks.
template <typename scalar_t>
std::pair<double, double> row_centered_sums(const scalar_t* x, int64_t size, scalar_t center) {
  double sum = 0, sum_sq = 0;
  for (int64_t start = 0; start < size; start += kBlock) {
    const int64_t end = std::min(size, start + kBlock);
    scalar_t block = 0, block_sq = 0;
#pragma omp simd reduction(+ : block, block_sq)
    for (int64_t i = start; i < end; ++i) {
      const scalar_t d = x[i] - center;
      block += d;
      block_sq += d * d;
    }
    sum += block;
    sum_sq += block_sq;
  }
  return {sum, sum_sq};
}

struct Moments {
  std::vector<double> mean, var;      // per channel: mean, biased variance
  std::vector<double> instance_mean;  // per (n, c), row-major
};

// The mean and biased variance of every channel and the mean of every (n, c) row, from two
// passes over the rows of a contiguous input: a first estimate c of each channel's mean, then
// the sums of d = x - c and d^2, from which mean = c + mean(d) and var = mean(d^2) - mean(d)^2
// without cancellation (the shifted-data algorithm). With batch_stats false, only the first pass
// runs, for the row means.
Moments moments(const Tensor& input, bool batch_stats) {
  TORCH_CHECK(input.device().is_cpu() && input.is_contiguous() && input.dim() >= 2 &&
                  input.numel() > 0,
              "augmentbn: the CPU operators take a contiguous, non-empty CPU input of shape "
              "(N, C, *S), got shape ",
              input.sizes());
  const int64_t N = input.size(0), C = input.size(1), NC = N * C;
  const int64_t size = input.numel() / NC;
  const double count = static_cast<double>(N * size);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / size);  // rows
  Moments m;
  m.instance_mean.resize(NC);
  m.mean.assign(C, 0.0);
  m.var.assign(C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "augmentbn_moments", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    std::vector<double> row_sums(NC);
    at::parallel_for(0, NC, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) row_sums[row] = row_sum(x + row * size, size);
    });
    std::vector<double> estimate(C, 0.0);
    for (int64_t row = 0; row < NC; ++row) {
      m.instance_mean[row] = row_sums[row] / size;
      estimate[row % C] += row_sums[row];
    }
    if (!batch_stats) return;
    std::vector<scalar_t> center(C);
    for (int64_t c = 0; c < C; ++c) center[c] = static_cast<scalar_t>(estimate[c] / count);
    std::vector<std::pair<double, double>> row_d(NC);
    at::parallel_for(0, NC, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        row_d[row] = row_centered_sums(x + row * size, size, center[row % C]);
      }
    });
    std::vector<double> sum_d(C, 0.0), sum_d2(C, 0.0);
    for (int64_t row = 0; row < NC; ++row) {
      const int64_t c = row % C;
      m.instance_mean[row] = center[c] + row_d[row].first / size;
      sum_d[c] += row_d[row].first;
      sum_d2[c] += row_d[row].second;
    }
    for (int64_t c = 0; c < C; ++c) {
      const double mean_d = sum_d[c] / count;
      m.mean[c] = center[c] + mean_d;
      m.var[c] = std::max(sum_d2[c] / count - mean_d * mean_d, 0.0);
    }
  });
  return m;
}

// running <- running + momentum * (value - running), channel by channel, skipping channels
// whose variance is not finite (functional._update_running_stats).
void update_running_stats(const Tensor& running_mean, const Tensor& running_var,
                          const std::vector<double>& mean, const std::vector<double>& var,
                          double momentum) {
  AT_DISPATCH_FLOATING_TYPES(running_mean.scalar_type(), "augmentbn_running", [&] {
    scalar_t* rm = running_mean.data_ptr<scalar_t>();
    scalar_t* rv = running_var.data_ptr<scalar_t>();
    for (size_t c = 0; c < mean.size(); ++c) {
      if (!(var[c] < INFINITY)) continue;  // NaN or inf
      rm[c] = static_cast<scalar_t>(rm[c] + momentum * (mean[c] - rm[c]));
      rv[c] = static_cast<scalar_t>(rv[c] + momentum * (var[c] - rv[c]));
    }
  });
  mark_modified(running_mean);
  mark_modified(running_var);
}

double momentum_value(double momentum, const OptionalTensor& momentum_tensor) {
  return given(momentum_tensor) ? momentum_tensor->item<double>() : momentum;
}

// ------------------------------------------------------------------------------------------
// NABN: functional._AugmentBatchNormFunction
// ------------------------------------------------------------------------------------------

// Forward: the native per-channel affine at (mean', var'). Backward: BatchNorm's backward at
// (mean', s = 1/sqrt(var' + eps)) minus, for gaussian_clip and uniform, the per-channel
// gamma s^2 delta mean(g xhat) (`correction` holds gamma s^2 delta); for gaussian_reject,
// channels where max(., 0) clamps (`clamped`, a bool mask) get gamma s (g - mean(g)) directly,
// since there the backward's xhat mean(g xhat) would cancel against a term of the same size.
struct AugmentBatchNormFunction : public torch::autograd::Function<AugmentBatchNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const OptionalTensor& weight,
                        const OptionalTensor& bias, const Tensor& shifted_mean,
                        const Tensor& var_used, const Tensor& invstd,
                        const OptionalTensor& correction, const OptionalTensor& clamped,
                        double eps) {
    record_edges(ctx, {{"input", nullptr}, {"weight", &weight}, {"bias", &bias}});
    Tensor output = std::get<0>(
        at::native_batch_norm(input, weight, bias, shifted_mean, var_used, false, 0.0, eps));
    ctx->save_for_backward({input, value_or_undefined(weight), shifted_mean, invstd,
                            value_or_undefined(correction), value_or_undefined(clamped)});
    ctx->saved_data["eps"] = eps;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return once_differentiable(grad_outputs, [&] { return gradients(ctx, grad_outputs); });
  }

  static variable_list gradients(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[1], &shifted_mean = saved[2];
    const Tensor &invstd = saved[3], &correction = saved[4], &clamped = saved[5];
    const bool need_input = needs_grad(ctx, "input");
    const Tensor grad_output = grad_outputs[0].contiguous();
    auto [grad_input, grad_weight, grad_bias] = at::native_batch_norm_backward(
        grad_output, input, weight, Tensor(), Tensor(), shifted_mean, invstd, true,
        ctx->saved_data["eps"].toDouble(),
        {need_input, true, needs_grad(ctx, "bias") || clamped.defined()});
    if (need_input) {
      const int64_t ndim = input.dim();
      const double count = static_cast<double>(input.numel() / input.size(1));
      if (correction.defined()) {
        // grad_weight = sum(g xhat) = M mean(g xhat); grad_input is ours to update in place.
        grad_input.add_(channel_view(correction * grad_weight, ndim), -1.0 / count);
      }
      if (clamped.defined()) {
        const Tensor gain = weight.defined() ? weight * invstd : invstd;
        const Tensor direct = at::addcmul(channel_view(-gain * grad_bias / count, ndim),
                                          grad_output, channel_view(gain, ndim));
        grad_input = at::where(channel_view(clamped, ndim), direct, grad_input);
      }
    }
    return padded(
        {need_input ? grad_input : Tensor(), needs_grad(ctx, "weight") ? grad_weight : Tensor(),
         needs_grad(ctx, "bias") ? grad_bias : Tensor()},
        9);
  }
};

// functional.augment_batch_norm in training mode, given the mean shift delta: batch statistics,
// mean' = mean + delta and var' (sigma^2 + delta^2, or max(sigma^2 - delta (mean + mean'), 0) for
// gaussian_reject), the running averages, then the Function above.
Tensor augment_batch_norm_train(const Tensor& input, const OptionalTensor& weight,
                                const OptionalTensor& bias, const Tensor& mean_shift,
                                const OptionalTensor& running_mean,
                                const OptionalTensor& running_var, double momentum,
                                const OptionalTensor& momentum_tensor, bool reject,
                                bool clean_running_stats, double eps,
                                const OptionalTensor& clamp_count) {
  const int64_t C = input.size(1);
  check_channels("augmentbn::augment_batch_norm_train", C,
                 {{"weight", &weight},
                  {"bias", &bias},
                  {"running_mean", &running_mean},
                  {"running_var", &running_var}});
  TORCH_CHECK(mean_shift.numel() == C, "augmentbn::augment_batch_norm_train: mean_shift must have ",
              C, " values (one per channel), got ", mean_shift.numel());
  const double count = static_cast<double>(input.numel() / C);
  const Moments m = moments(input, /*batch_stats=*/true);
  const std::vector<double> delta = to_doubles(mean_shift);
  const std::vector<double> gamma = given(weight) ? to_doubles(*weight) : std::vector<double>();
  std::vector<double> shifted(C), var_used(C), invstd(C), correction(C), clamped(C, 0.0);
  bool any_clamped = false;
  for (int64_t c = 0; c < C; ++c) {
    shifted[c] = m.mean[c] + delta[c];
    double v;
    if (reject) {
      const double raw = m.var[c] - delta[c] * (m.mean[c] + shifted[c]);
      v = std::max(raw, 0.0);
      clamped[c] = raw < 0 ? 1.0 : 0.0;
      any_clamped = any_clamped || raw < 0;
    } else {
      v = m.var[c] + delta[c] * delta[c];
    }
    var_used[c] = v;
    invstd[c] = 1.0 / std::sqrt(v + eps);
    correction[c] = delta[c] * (gamma.empty() ? 1.0 : gamma[c]) / (v + eps);
  }
  if (given(running_mean) && given(running_var)) {
    const double w = momentum_value(momentum, momentum_tensor);
    if (clean_running_stats) {
      std::vector<double> unbiased(C);
      for (int64_t c = 0; c < C; ++c) unbiased[c] = m.var[c] * (count / (count - 1));
      update_running_stats(*running_mean, *running_var, m.mean, unbiased, w);
    } else {
      update_running_stats(*running_mean, *running_var, shifted, var_used, w);
    }
  }
  if (given(clamp_count) && any_clamped) {
    int64_t clamped_channels = 0;
    for (int64_t c = 0; c < C; ++c) clamped_channels += clamped[c] > 0 ? 1 : 0;
    clamp_count->add_(clamped_channels);
  }
  const auto options = input.options();
  return AugmentBatchNormFunction::apply(
      input, weight, bias, tensor_of(shifted, options), tensor_of(var_used, options),
      tensor_of(invstd, options),
      reject ? std::nullopt : OptionalTensor(tensor_of(correction, options)),
      any_clamped ? OptionalTensor(tensor_of(clamped, options).to(at::kBool)) : std::nullopt, eps);
}

// ------------------------------------------------------------------------------------------
// IEBN: functional._IEBatchNormFunction on the (1, N*C, |S|) instance view
// ------------------------------------------------------------------------------------------

// (x - mean_c) * scale[n, c] + shift[n, c]: eval-mode BatchNorm on the instance view, whose
// running statistics are the flat mean and ones (functional._instance_affine).
Tensor instance_affine(const Tensor& input, const Tensor& flat_mean, const Tensor& ones,
                       const Tensor& scale, const Tensor& shift) {
  const int64_t N = input.size(0), C = input.size(1);
  const Tensor output = std::get<0>(at::native_batch_norm(input.view({1, N * C, -1}), scale, shift,
                                                          flat_mean, ones, false, 0.0, 0.0));
  // Not a view: the output must allow in-place operations (ReLU(inplace=True)).
  return at::_unsafe_view(output, input.sizes());
}

// dx = (x - mean_c) slope_c + offset[n, c] + gain[n, c] g, in one pass over contiguous rows.
template <typename scalar_t>
void instance_grad_input(scalar_t* dx, const scalar_t* x, const scalar_t* g, int64_t N, int64_t C,
                         int64_t size, const double* mean, const double* slope,
                         const double* offset, const double* gain) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / size);  // rows
  at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row % C;
      const auto m = static_cast<scalar_t>(mean[c]);
      const auto a = static_cast<scalar_t>(slope[c]);
      const auto b = static_cast<scalar_t>(offset[row]);
      const auto k = static_cast<scalar_t>(gain[row]);
      const int64_t base = row * size;
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) dx[base + i] = (x[base + i] - m) * a + b + k * g[base + i];
    }
  });
}

// y = (x - mean) gamma a s + beta with a = sigmoid(w mean_S(x) + b); see
// functional._IEBatchNormFunction for the backward, whose per-(n, c) algebra runs here in one
// loop and whose input gradient is one pass.
struct IEBatchNormFunction : public torch::autograd::Function<IEBatchNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const OptionalTensor& weight,
                        const OptionalTensor& bias, const Tensor& weight_readjust,
                        const Tensor& bias_readjust, const Tensor& flat_mean, const Tensor& gain,
                        const OptionalTensor& flat_bias, const Tensor& per_channel,
                        const Tensor& gate, const Tensor& instance_mean, bool batch_stats) {
    record_edges(ctx, {{"input", nullptr},
                       {"weight", &weight},
                       {"bias", &bias},
                       {"weight_readjust", nullptr},
                       {"bias_readjust", nullptr}});
    const int64_t NC = flat_mean.numel();
    const Tensor ones = at::ones({NC}, flat_mean.options());
    Tensor output = instance_affine(input, flat_mean, ones, gain, value_or_undefined(flat_bias));
    ctx->save_for_backward({input, per_channel, gate, gain, instance_mean, flat_mean, ones});
    ctx->saved_data["batch_stats"] = batch_stats;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return once_differentiable(grad_outputs, [&] { return gradients(ctx, grad_outputs); });
  }

  static variable_list gradients(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &per_channel = saved[1], &gate_t = saved[2];
    const Tensor &gain_t = saved[3], &instance_mean_t = saved[4];
    const Tensor &flat_mean = saved[5], &ones = saved[6];
    const Tensor grad_output = grad_outputs[0].contiguous();
    const int64_t N = input.size(0), C = input.size(1), NC = N * C;
    const int64_t size = input.numel() / NC;             // |S|
    const double count = static_cast<double>(N * size);  // M
    const bool batch_stats = ctx->saved_data["batch_stats"].toBool();

    // sum_S(g) and sum_S(g (x - mean_c)) per (n, c): eval-mode BatchNorm backward's reductions
    // on the instance view, whose running mean is the flat mean.
    const std::vector<double> pc = to_doubles(per_channel);  // rows: mean, invstd, gamma, w
    const double *mean = pc.data(), *invstd = mean + C, *gamma = invstd + C, *w = gamma + C;
    auto sums = at::native_batch_norm_backward(grad_output.view({1, NC, -1}),
                                               input.view({1, NC, -1}), Tensor(), flat_mean, ones,
                                               Tensor(), Tensor(), false, 0.0, {false, true, true});
    const std::vector<double> sum_g_xc = to_doubles(std::get<1>(sums));
    const std::vector<double> sum_g = to_doubles(std::get<2>(sums));
    const std::vector<double> gate = to_doubles(gate_t);
    const std::vector<double> gain = to_doubles(gain_t);
    const std::vector<double> instance_mean = to_doubles(instance_mean_t);

    std::vector<double> grad_weight(C, 0.0), grad_bias(C, 0.0), grad_w(C, 0.0), grad_b(C, 0.0);
    std::vector<double> gate_sum_g(C, 0.0), grad_logit(NC);
    for (int64_t row = 0; row < NC; ++row) {
      const int64_t c = row % C;
      const double a = gate[row];
      const double gate_sum_g_xhat = a * sum_g_xc[row] * invstd[c];  // a S_gxhat
      grad_weight[c] += gate_sum_g_xhat;
      grad_bias[c] += sum_g[row];
      gate_sum_g[c] += a * sum_g[row];
      const double logit = gate_sum_g_xhat * (1 - a) * gamma[c];  // gamma S_gxhat a (1 - a)
      grad_logit[row] = logit;
      grad_w[c] += logit * instance_mean[row];
      grad_b[c] += logit;
    }

    Tensor grad_input;
    if (needs_grad(ctx, "input")) {
      std::vector<double> slope(C, 0.0), offset(NC);
      for (int64_t row = 0; row < NC; ++row) {
        const int64_t c = row % C;
        double shift = grad_logit[row] * w[c] / size;
        if (batch_stats) {
          const double coef = -gamma[c] * invstd[c] / count;  // -gamma s / M
          slope[c] = coef * invstd[c] * grad_weight[c];
          shift += coef * gate_sum_g[c];
        }
        offset[row] = shift;
      }
      grad_input = at::empty_like(input);
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "augmentbn_iebn_grad_input", [&] {
        instance_grad_input(grad_input.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
                            grad_output.data_ptr<scalar_t>(), N, C, size, mean, slope.data(),
                            offset.data(), gain.data());
      });
    }
    const auto options = input.options();
    auto out = [&](const char* name, const std::vector<double>& values) {
      return needs_grad(ctx, name) ? tensor_of(values, options) : Tensor();
    };
    return padded({grad_input, out("weight", grad_weight), out("bias", grad_bias),
                   out("weight_readjust", grad_w), out("bias_readjust", grad_b)},
                  12);
  }
};

// functional.ie_batch_norm: batch statistics in training or without running statistics (and
// then the running averages updated as nn.BatchNorm does), running statistics otherwise.
Tensor ie_batch_norm_fused(const Tensor& input, const OptionalTensor& weight,
                           const OptionalTensor& bias, const Tensor& weight_readjust,
                           const Tensor& bias_readjust, const OptionalTensor& running_mean,
                           const OptionalTensor& running_var, double momentum,
                           const OptionalTensor& momentum_tensor, bool training, double eps) {
  const int64_t N = input.size(0), C = input.size(1), NC = N * C;
  check_channels("augmentbn::ie_batch_norm", C,
                 {{"weight", &weight},
                  {"bias", &bias},
                  {"running_mean", &running_mean},
                  {"running_var", &running_var}});
  TORCH_CHECK(weight_readjust.numel() == C && bias_readjust.numel() == C,
              "augmentbn::ie_batch_norm: weight_readjust and bias_readjust must have ", C,
              " values (one per channel)");
  const bool tracked = given(running_mean) && given(running_var);
  const bool batch_stats = training || !tracked;
  Moments m = moments(input, batch_stats);
  const double count = static_cast<double>(input.numel() / C);
  if (batch_stats && training && tracked) {
    std::vector<double> unbiased(C);
    for (int64_t c = 0; c < C; ++c) unbiased[c] = m.var[c] * (count / (count - 1));
    update_running_stats(*running_mean, *running_var, m.mean, unbiased,
                         momentum_value(momentum, momentum_tensor));
  } else if (!batch_stats) {
    m.mean = to_doubles(*running_mean);
    m.var = to_doubles(*running_var);
  }
  const std::vector<double> w = to_doubles(weight_readjust), b = to_doubles(bias_readjust);
  const std::vector<double> gamma = given(weight) ? to_doubles(*weight) : std::vector<double>(C, 1);
  const std::vector<double> beta = given(bias) ? to_doubles(*bias) : std::vector<double>();
  // per_channel rows: mean, invstd, gamma, w; per (n, c): flat mean, gate a, gain gamma a s, beta.
  std::vector<double> per_channel(4 * C), flat_mean(NC), gate(NC), gain(NC), flat_bias(NC);
  for (int64_t c = 0; c < C; ++c) {
    per_channel[c] = m.mean[c];
    per_channel[C + c] = 1.0 / std::sqrt(m.var[c] + eps);
    per_channel[2 * C + c] = gamma[c];
    per_channel[3 * C + c] = w[c];
  }
  for (int64_t row = 0; row < NC; ++row) {
    const int64_t c = row % C;
    const double a = 1.0 / (1.0 + std::exp(-(w[c] * m.instance_mean[row] + b[c])));
    flat_mean[row] = m.mean[c];
    gate[row] = a;
    gain[row] = gamma[c] * a * per_channel[C + c];
    flat_bias[row] = beta.empty() ? 0.0 : beta[c];
  }
  const auto options = input.options();
  return IEBatchNormFunction::apply(
      input, weight, bias, weight_readjust, bias_readjust, tensor_of(flat_mean, options),
      tensor_of(gain, options),
      beta.empty() ? OptionalTensor() : OptionalTensor(tensor_of(flat_bias, options)),
      tensor_of(per_channel, options), tensor_of(gate, options),
      tensor_of(m.instance_mean, options), batch_stats);
}

// The per-channel mean and biased variance that the operators above normalize with (for the
// statistics benchmark and tests).
std::tuple<Tensor, Tensor> batch_moments(const Tensor& input) {
  const Moments m = moments(input, /*batch_stats=*/true);
  return {tensor_of(m.mean, input.options()), tensor_of(m.var, input.options())};
}

}  // namespace

TORCH_LIBRARY(augmentbn, m) {
  m.def("batch_moments(Tensor input) -> (Tensor mean, Tensor var)", &batch_moments);
  m.def(
      "augment_batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor mean_shift, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum, "
      "Tensor? momentum_tensor, bool reject, bool clean_running_stats, float eps, "
      "Tensor(c!)? clamp_count=None) -> Tensor",
      &augment_batch_norm_train);
  m.def(
      "ie_batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor weight_readjust, "
      "Tensor bias_readjust, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "float momentum, Tensor? momentum_tensor, bool training, float eps) -> Tensor",
      &ie_batch_norm_fused);
}
