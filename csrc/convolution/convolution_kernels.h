// Portable kernels of the convolution family: per-element bodies (TS_HOST_DEVICE functors) and the ops written once
// over a launcher (common/launch.h on the CPU, common/launch_cuda.cuh on CUDA), so that the CPU suite runs the GPU's
// code. The dataflow is gather -> GEMM -> scatter:
//   1. one gather launch copies the input rows of every pair (all offsets) into a padded buffer, grouped as below;
//   2. GEMMs through ATen (cuBLAS on CUDA, MKL on the CPU): one plain GEMM per lone offset, one batched GEMM per
//      group of offsets whose pair counts are close; an identity offset (submanifold centre) is one GEMM on the
//      input itself, without gather or scatter;
//   3. an output-stationary sum: pairs are stably sorted by output row (CSR), and one body per (output row,
//      channel) adds its products in offset order. No float atomics: results are bitwise repeatable and do not
//      depend on the launcher (thread count, grid size).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/coords.h"

namespace torchsparse {

// Defaults of the grouping parameters (the schemas of convolution.cpp repeat them): chosen from CPU measurements on
// the bundled scan (see the report of the GPU backend issue); the tuner picks per-layer values.
constexpr double kDefaultGroupTolerance = 0.25;
constexpr int64_t kDefaultGroupMaxPairs = 65536;

// ---------------------------------------------------------------------------------------------------------------
// Argument checks shared by every op of the family, on both devices.

// The pairs of a kernel map, checked, as contiguous tensors the kernels may read: in_rows index the n_in input
// rows, out_rows the n_out output rows, sizes (CPU int64 (K,), non-negative) cut them into K offsets.
struct Pairs {
  at::Tensor in_rows, out_rows, sizes;
};

// On CUDA the two index checks read the minimum and maximum of each index tensor back to the host (two device
// synchronisations per call).
inline Pairs checked_pairs(const at::Tensor& input, const at::Tensor& in_rows, const at::Tensor& out_rows,
                           const at::Tensor& sizes, int64_t kernel_volume, int64_t n_out) {
  check_rows(in_rows, "in_rows");
  check_rows(out_rows, "out_rows");
  check_same_device({{&input, "input"}, {&in_rows, "in_rows"}, {&out_rows, "out_rows"}});
  TORCH_CHECK_VALUE(in_rows.size(0) == out_rows.size(0), "in_rows and out_rows must have the same length, got ",
                    in_rows.size(0), " and ", out_rows.size(0));
  Pairs p;
  p.sizes = checked_sizes(sizes, kernel_volume, in_rows.size(0));
  p.in_rows = checked_index(in_rows, "in_rows", 0, input.size(0));
  p.out_rows = checked_index(out_rows, "out_rows", 0, n_out);
  return p;
}

inline void check_features(const at::Tensor& feats, const char* name, const at::Tensor& weight) {
  check_dim(feats, name, 2, "(N, C)");
  check_floating(feats, name);
  TORCH_CHECK_TYPE(feats.scalar_type() == weight.scalar_type(), name, " and weight must have the same dtype, got ",
                   dtype_name(feats), " and ", dtype_name(weight));
  check_same_device(feats, name, weight, "weight");
}

inline void check_weight(const at::Tensor& input, const at::Tensor& weight) {
  check_dim(weight, "weight", 3, "(K, C_in, C_out)");
  check_features(input, "input", weight);
  TORCH_CHECK_VALUE(input.size(1) == weight.size(1), "input has ", input.size(1), " channels but weight expects ",
                    weight.size(1));
}

// input / grad_output of a weight gradient; returns the kernel volume K (the length of sizes).
inline int64_t check_weight_grad(const at::Tensor& input, const at::Tensor& grad_output, const at::Tensor& sizes) {
  check_dim(input, "input", 2, "(N_in, C_in)");
  check_dim(grad_output, "grad_output", 2, "(N_out, C_out)");
  check_floating(input, "input");
  TORCH_CHECK_TYPE(input.scalar_type() == grad_output.scalar_type(), "input and grad_output must have the same "
                   "dtype, got ", dtype_name(input), " and ", dtype_name(grad_output));
  check_same_device(input, "input", grad_output, "grad_output");
  check_dim(sizes, "sizes", 1, "1-D int64 (K,)");
  return sizes.size(0);
}

// The neighbour table of conv3d_fused (int32 (M, K), -1 where absent), checked and contiguous (on CUDA one more
// device synchronisation for its range).
inline at::Tensor checked_nbmap(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& nbmap,
                                int64_t tile) {
  check_dim(nbmap, "nbmap", 2, "int32 (M, K)");
  check_dtype(nbmap, "nbmap", at::kInt);
  check_same_device(input, "input", nbmap, "nbmap");
  TORCH_CHECK_VALUE(nbmap.size(1) == weight.size(0), "nbmap must be (M, K) with K = ", weight.size(0),
                    " (weight), got shape ", nbmap.sizes());
  TORCH_CHECK_VALUE(tile >= 1, "tile must be >= 1, got ", tile);
  return checked_index(nbmap, "nbmap", -1, input.size(0));
}

// The epilogue tensors of conv3d_fused, checked and contiguous (undefined where absent): bias (C_out,) and residual
// (M, C_out), both of input's dtype and device.
struct FusedEpilogue {
  at::Tensor bias, residual;
};

inline FusedEpilogue checked_epilogue(const at::Tensor& input, const at::Tensor& weight, int64_t m,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& residual) {
  FusedEpilogue e;
  const int64_t cout = weight.size(2);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == cout, "bias must be (C_out,) with C_out = ", cout,
                      ", got shape ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias must have input's dtype ", dtype_name(input),
                     ", got ", dtype_name(*bias));
    check_same_device(input, "input", *bias, "bias");
    e.bias = bias->contiguous();
  }
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK_VALUE(residual->dim() == 2 && residual->size(0) == m && residual->size(1) == cout,
                      "residual must be (M, C_out) = (", m, ", ", cout, "), got shape ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == input.scalar_type(), "residual must have input's dtype ",
                     dtype_name(input), ", got ", dtype_name(*residual));
    check_same_device(input, "input", *residual, "residual");
    e.residual = residual->contiguous();
  }
  return e;
}

inline void check_grouping(double tolerance, int64_t max_pairs) {
  TORCH_CHECK_VALUE(tolerance >= 0 && tolerance <= 1, "group_tolerance must be in [0, 1], got ", tolerance);
  TORCH_CHECK_VALUE(max_pairs >= 0, "group_max_pairs must be >= 0, got ", max_pairs);
}

// ---------------------------------------------------------------------------------------------------------------
// Grouping plan (host code over the CPU sizes, shared by both devices).

// Offsets are laid out as slots of a padded buffer: group g holds `count` slots of `rows` rows each, slot s of it
// holding the pairs of one offset in its first sizes[offset] rows (the rest is zero padding).
struct Group {
  int64_t first_slot, count, rows, first_row;
};

struct GroupPlan {
  std::vector<Group> groups;
  std::vector<int64_t> offset;  // (S,) kernel offset of each slot
  // CPU int64 (3, S + 1): row 0 the first padded row of each slot (ascending, entry S = total rows), row 1 the
  // first pair of its offset in the pair list, row 2 its pair count (>= 1); entries S of rows 1 and 2 are unused.
  at::Tensor table;
  int64_t total_rows = 0;
};

// Groups the offsets with pairs, except `identity`. The symmetric offsets k and K-1-k of a submanifold map have
// equal counts and always share a group (a batched GEMM of two without padding). Other offsets join the group of a
// larger one when the padding is small: count >= (1 - tolerance) * rows, and only while rows <= max_pairs, since a
// GEMM of more rows fills the device alone and padding it would only add work. Equal counts always group.
// Groups are formed greedily over offsets by decreasing count (ties in offset order): a deterministic plan.
inline GroupPlan plan_groups(const int64_t* sizes, int64_t kv, int64_t identity, double tolerance, int64_t max_pairs) {
  std::vector<int64_t> start(kv + 1, 0);
  for (int64_t k = 0; k < kv; ++k) start[k + 1] = start[k] + sizes[k];
  std::vector<std::vector<int64_t>> atoms;
  std::vector<char> taken(kv, 0);
  for (int64_t k = 0; k < kv; ++k) {
    if (taken[k] || k == identity || sizes[k] == 0) continue;
    const int64_t mirror = kv - 1 - k;
    if (mirror > k && mirror != identity && sizes[mirror] == sizes[k]) {
      atoms.push_back({k, mirror});
      taken[mirror] = 1;
    } else {
      atoms.push_back({k});
    }
  }
  std::stable_sort(atoms.begin(), atoms.end(), [&](const auto& a, const auto& b) { return sizes[a[0]] > sizes[b[0]]; });
  GroupPlan plan;
  for (size_t i = 0; i < atoms.size();) {
    const int64_t rows = sizes[atoms[i][0]];
    Group g{static_cast<int64_t>(plan.offset.size()), 0, rows, plan.total_rows};
    size_t j = i;
    for (; j < atoms.size(); ++j) {
      const int64_t n = sizes[atoms[j][0]];
      if (j > i && n != rows && !(rows <= max_pairs && static_cast<double>(n) >= (1 - tolerance) * rows)) break;
      for (int64_t k : atoms[j]) plan.offset.push_back(k);
      g.count += static_cast<int64_t>(atoms[j].size());
    }
    // rows * count <= pairs * kernel volume: no overflow.
    plan.total_rows += rows * g.count;
    plan.groups.push_back(g);
    i = j;
  }
  const int64_t slots = static_cast<int64_t>(plan.offset.size());
  plan.table = at::zeros({3, slots + 1}, at::kLong);
  int64_t* t = plan.table.data_ptr<int64_t>();
  for (const Group& g : plan.groups) {
    for (int64_t s = g.first_slot; s < g.first_slot + g.count; ++s) {
      t[s] = g.first_row + (s - g.first_slot) * g.rows;
      t[slots + 1 + s] = start[plan.offset[s]];
      t[2 * (slots + 1) + s] = sizes[plan.offset[s]];
    }
  }
  t[slots] = plan.total_rows;
  return plan;
}

// The offset whose pairs are (j, j) for every row j of input and output, or -1. Only offsets with as many pairs as
// rows are candidates (usually one); each costs one device synchronisation on CUDA.
inline int64_t find_identity(const Pairs& p, int64_t num_in, int64_t num_out) {
  if (num_in != num_out || num_in == 0) return -1;
  const int64_t* sp = p.sizes.data_ptr<int64_t>();
  at::Tensor iota;
  int64_t start = 0;
  for (int64_t k = 0; k < p.sizes.size(0); start += sp[k], ++k) {
    if (sp[k] != num_in) continue;
    if (!iota.defined()) iota = at::arange(num_in, p.in_rows.options());
    auto in = p.in_rows.narrow(0, start, num_in), out = p.out_rows.narrow(0, start, num_in);
    if (in.eq(iota).logical_and_(out.eq(iota)).all().item<bool>()) return k;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------------------------
// Per-element bodies.

// For padded row r: pair_of_row[r] = the pair whose values it holds, or -1 for padding; and, when row_of_pair is
// given, row_of_pair[pair] = r (each pair lies in exactly one slot: no two bodies write one entry).
struct LayoutBody {
  const int64_t* table;  // GroupPlan::table, (3, slots + 1)
  int64_t slots;
  int64_t* pair_of_row;
  int64_t* row_of_pair;  // may be null

  TS_HOST_DEVICE void operator()(int64_t r) const {
    const int64_t* first_row = table;
    const int64_t* first_pair = table + slots + 1;
    const int64_t* count = table + 2 * (slots + 1);
    int64_t lo = 0, hi = slots;  // first_row[lo] <= r < first_row[hi]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (first_row[mid] <= r) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const int64_t local = r - first_row[lo];
    if (local < count[lo]) {
      pair_of_row[r] = first_pair[lo] + local;
      if (row_of_pair != nullptr) row_of_pair[first_pair[lo] + local] = r;
    } else {
      pair_of_row[r] = -1;
    }
  }
};

// dst[r, c] = src[rows[pair_of_row[r]], c], or 0 for a padding row; i = r * channels + c.
template <typename scalar_t>
struct GatherBody {
  const scalar_t* src;
  const int32_t* rows;
  const int64_t* pair_of_row;
  scalar_t* dst;
  int64_t channels;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t r = i / channels, c = i - r * channels;
    const int64_t p = pair_of_row[r];
    dst[i] = p < 0 ? scalar_t(0) : src[static_cast<int64_t>(rows[p]) * channels + c];
  }
};

// Output-stationary sum: out[o, c] (+)= sum over q in [row_ptr[o], row_ptr[o + 1]) of products[product_row[q], c],
// in q order, accumulated in float for half / bfloat16; i = o * channels + c. Each element is written by one body.
template <typename scalar_t>
struct RowSumBody {
  const scalar_t* products;
  const int64_t* row_ptr;
  const int64_t* product_row;
  scalar_t* out;
  int64_t channels;
  bool accumulate;  // out holds the identity offset's product: add to it

  TS_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t o = i / channels, c = i - o * channels;
    acc_t acc = accumulate ? static_cast<acc_t>(out[i]) : acc_t(0);
    for (int64_t q = row_ptr[o]; q < row_ptr[o + 1]; ++q)
      acc += static_cast<acc_t>(products[product_row[q] * channels + c]);
    out[i] = static_cast<scalar_t>(acc);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Ops over a launcher.

// Gathers rows[p] of src (n, channels) for every pair p of the plan into a padded (total_rows, channels) buffer.
template <typename Launch>
at::Tensor gather_padded(const at::Tensor& src, const at::Tensor& rows, const at::Tensor& pair_of_row,
                         int64_t total_rows, const Launch& launch) {
  const int64_t channels = src.size(1);
  auto dst = at::empty({total_rows, channels}, src.options());
  const int64_t n = checked_mul(total_rows, channels, "gather buffer size");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "conv3d_gather", [&] {
    launch(n, GatherBody<scalar_t>{src.data_ptr<scalar_t>(), rows.data_ptr<int32_t>(), pair_of_row.data_ptr<int64_t>(),
                                   dst.data_ptr<scalar_t>(), channels});
  });
  return dst;
}

// conv3d by gather, grouped GEMMs and an output-stationary sum; see the schema of conv3d_grouped.
template <typename Launch>
at::Tensor conv3d_grouped_with(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_rows,
                               const at::Tensor& out_rows, const at::Tensor& sizes, int64_t num_out, double tolerance,
                               int64_t max_pairs, const Launch& launch) {
  check_weight(input, weight);
  TORCH_CHECK_VALUE(num_out >= 0, "num_out must be >= 0, got ", num_out);
  check_grouping(tolerance, max_pairs);
  const Pairs pairs = checked_pairs(input, in_rows, out_rows, sizes, weight.size(0), num_out);
  const int64_t cout = weight.size(2), num_pairs = pairs.in_rows.size(0);
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const int64_t identity = find_identity(pairs, x.size(0), num_out);
  const GroupPlan plan = plan_groups(pairs.sizes.data_ptr<int64_t>(), w.size(0), identity, tolerance, max_pairs);
  auto out = identity >= 0 ? at::mm(x, w[identity]) : at::empty({num_out, cout}, x.options());
  // Nothing to sum (this also keeps num_out + 1 below from overflowing when C_out is 0).
  if (out.numel() == 0) return out;
  const auto index_options = x.options().dtype(at::kLong);
  auto table = plan.table.to(x.device());
  auto pair_of_row = at::empty({plan.total_rows}, index_options);
  // Entries of the identity offset's pairs stay unwritten: they are sorted past the last output row, never read.
  auto row_of_pair = at::empty({num_pairs}, index_options);
  const int64_t slots = static_cast<int64_t>(plan.offset.size());
  launch(plan.total_rows, LayoutBody{table.data_ptr<int64_t>(), slots, pair_of_row.data_ptr<int64_t>(),
                                     row_of_pair.data_ptr<int64_t>()});
  auto gathered = gather_padded(x, pairs.in_rows, pair_of_row, plan.total_rows, launch);
  auto products = at::empty({plan.total_rows, cout}, x.options());
  for (const Group& g : plan.groups) {
    auto a = gathered.narrow(0, g.first_row, g.rows * g.count);
    auto c = products.narrow(0, g.first_row, g.rows * g.count);
    if (g.count == 1) {
      at::mm_out(c, a, w[plan.offset[g.first_slot]]);
    } else {
      auto ks = at::tensor(std::vector<int64_t>(plan.offset.begin() + g.first_slot,
                                                plan.offset.begin() + g.first_slot + g.count), at::kLong);
      auto c3 = c.view({g.count, g.rows, cout});
      at::bmm_out(c3, a.view({g.count, g.rows, x.size(1)}), w.index_select(0, ks.to(x.device())));
    }
  }
  // CSR over output rows: a stable sort keeps each row's pairs in offset order. The identity offset's pairs get the
  // key num_out, past every row.
  auto key = pairs.out_rows.to(at::kLong);
  if (identity >= 0) {
    const int64_t* sp = pairs.sizes.data_ptr<int64_t>();
    int64_t start = 0;
    for (int64_t k = 0; k < identity; ++k) start += sp[k];
    key.narrow(0, start, sp[identity]).fill_(num_out);
  }
  auto [sorted_key, order] = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto row_ptr = at::searchsorted(sorted_key, at::arange(num_out + 1, index_options));
  auto product_row = row_of_pair.index_select(0, order);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv3d_row_sum", [&] {
    launch(num_out * cout, RowSumBody<scalar_t>{products.data_ptr<scalar_t>(), row_ptr.data_ptr<int64_t>(),
                                                product_row.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), cout,
                                                identity >= 0});
  });
  return out;
}

// conv3d_weight_grad by two gathers into the grouped layout and one (batched) GEMM A^T B per group; padding rows are
// zero in both operands and add nothing. An identity offset is one GEMM on the inputs themselves.
template <typename Launch>
at::Tensor conv3d_weight_grad_grouped_with(const at::Tensor& input, const at::Tensor& grad_output,
                                           const at::Tensor& in_rows, const at::Tensor& out_rows,
                                           const at::Tensor& sizes, double tolerance, int64_t max_pairs,
                                           const Launch& launch) {
  const int64_t kv = check_weight_grad(input, grad_output, sizes);
  check_grouping(tolerance, max_pairs);
  const Pairs pairs = checked_pairs(input, in_rows, out_rows, sizes, kv, grad_output.size(0));
  const int64_t cin = input.size(1), cout = grad_output.size(1);
  auto x = input.contiguous();
  auto dy = grad_output.contiguous();
  const int64_t identity = find_identity(pairs, x.size(0), dy.size(0));
  const GroupPlan plan = plan_groups(pairs.sizes.data_ptr<int64_t>(), kv, identity, tolerance, max_pairs);
  auto grad = at::zeros({kv, cin, cout}, x.options());
  if (identity >= 0) {
    auto g = grad[identity];
    at::mm_out(g, x.t(), dy);
  }
  const int64_t slots = static_cast<int64_t>(plan.offset.size());
  if (slots == 0) return grad;
  auto table = plan.table.to(x.device());
  auto pair_of_row = at::empty({plan.total_rows}, x.options().dtype(at::kLong));
  launch(plan.total_rows, LayoutBody{table.data_ptr<int64_t>(), slots, pair_of_row.data_ptr<int64_t>(), nullptr});
  auto a = gather_padded(x, pairs.in_rows, pair_of_row, plan.total_rows, launch);
  auto b = gather_padded(dy, pairs.out_rows, pair_of_row, plan.total_rows, launch);
  auto per_slot = at::empty({slots, cin, cout}, x.options());
  for (const Group& g : plan.groups) {
    auto ag = a.narrow(0, g.first_row, g.rows * g.count);
    auto bg = b.narrow(0, g.first_row, g.rows * g.count);
    if (g.count == 1) {
      auto c = per_slot[g.first_slot];
      at::mm_out(c, ag.t(), bg);
    } else {
      auto c = per_slot.narrow(0, g.first_slot, g.count);
      at::bmm_out(c, ag.view({g.count, g.rows, cin}).transpose(1, 2), bg.view({g.count, g.rows, cout}));
    }
  }
  // Every slot is a distinct offset: each row of grad is written once.
  grad.index_copy_(0, at::tensor(plan.offset, at::kLong).to(x.device()), per_slot);
  return grad;
}

}  // namespace torchsparse
