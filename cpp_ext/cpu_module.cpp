// pybind11 bindings of the CPU kernels: the module fmsr_infer._ext.
//
// Every function validates dtypes, shapes, C-contiguity and writeability of its numpy
// arguments and raises ValueError naming the argument, so no call can read or write out
// of bounds. Outputs are written in place into arrays that the caller allocates
// (fmsr_infer/kernels.py does that). The GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "half.h"
#include "step_scalars.h"

namespace py = pybind11;
using fmsr::DType;

namespace {

std::string shape_string(const py::array& array) {
  std::string text = "(";
  for (py::ssize_t axis = 0; axis < array.ndim(); ++axis) {
    if (axis > 0) text += ", ";
    text += std::to_string(array.shape(axis));
  }
  return text + (array.ndim() == 1 ? ",)" : ")");
}

[[noreturn]] void invalid(const std::string& message) { throw py::value_error(message); }

DType dtype_of(const py::array& array, const char* name) {
  const py::dtype dtype = array.dtype();
  if (!dtype.attr("isnative").cast<bool>()) {
    invalid(std::string(name) + " must have native byte order, got dtype " +
            py::str(dtype).cast<std::string>());
  }
  const char kind = dtype.kind();
  const py::ssize_t size = dtype.itemsize();
  if (kind == 'u' && size == 1) return DType::kUint8;
  if (kind == 'u' && size == 2) return DType::kUint16;
  if (kind == 'f' && size == 2) return DType::kFloat16;
  if (kind == 'f' && size == 4) return DType::kFloat32;
  invalid(std::string(name) + " has unsupported dtype " + py::str(dtype).cast<std::string>());
}

void require_dtype(const py::array& array, const char* name,
                   std::initializer_list<DType> allowed, const char* allowed_text) {
  const DType dtype = dtype_of(array, name);
  for (DType candidate : allowed) {
    if (dtype == candidate) return;
  }
  invalid(std::string(name) + " must be " + allowed_text + ", got dtype " +
          py::str(array.dtype()).cast<std::string>());
}

void require_int32(const py::array& array, const char* name) {
  const py::dtype dtype = array.dtype();
  if (dtype.kind() != 'i' || dtype.itemsize() != 4 || !dtype.attr("isnative").cast<bool>()) {
    invalid(std::string(name) + " must be int32, got dtype " +
            py::str(dtype).cast<std::string>());
  }
}

void require_layout(const py::array& array, const char* name, py::ssize_t ndim,
                    bool writeable) {
  if (array.ndim() != ndim) {
    invalid(std::string(name) + " must have " + std::to_string(ndim) +
            " dimensions, got shape " + shape_string(array));
  }
  if (!(array.flags() & py::array::c_style)) {
    invalid(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
  }
  if (writeable && !array.writeable()) {
    invalid(std::string(name) + " must be writeable");
  }
}

void require_same_shape(const py::array& array, const char* name, const py::array& like,
                        const char* like_name) {
  bool same = array.ndim() == like.ndim();
  for (py::ssize_t axis = 0; same && axis < array.ndim(); ++axis) {
    same = array.shape(axis) == like.shape(axis);
  }
  if (!same) {
    invalid(std::string(name) + " must have the shape of " + like_name + " " +
            shape_string(like) + ", got " + shape_string(array));
  }
}

void require_contiguous_same_shape(const py::array& array, const char* name,
                                   const py::array& like, const char* like_name,
                                   bool writeable) {
  require_same_shape(array, name, like, like_name);
  require_layout(array, name, array.ndim(), writeable);
}

// State and network-output arrays of an ODE update: x is float32, the network output
// float32 or float16.
void require_state(const py::array& x, const char* name, bool writeable) {
  require_dtype(x, name, {DType::kFloat32}, "float32");
  require_layout(x, name, x.ndim(), writeable);
}

DType require_network_output(const py::array& output, const char* name,
                             const py::array& x) {
  require_dtype(output, name, {DType::kFloat32, DType::kFloat16}, "float32 or float16");
  require_contiguous_same_shape(output, name, x, "x", false);
  return dtype_of(output, name);
}

void require_floor(double floor) {
  if (!(floor > 0.0)) {
    invalid("floor must be positive, got " + std::to_string(floor));
  }
}

fmsr::cpu::ResampleTable tile_table(const py::array& weights, const py::array& indices,
                                    const std::string& axis, int64_t start, int64_t length,
                                    int64_t source_length) {
  const std::string weights_name = axis + "_weights";
  const std::string indices_name = axis + "_indices";
  require_dtype(weights, weights_name.c_str(), {DType::kFloat32}, "float32");
  require_layout(weights, weights_name.c_str(), 2, false);
  require_int32(indices, indices_name.c_str());
  require_contiguous_same_shape(indices, indices_name.c_str(), weights, weights_name.c_str(),
                                false);
  const int64_t table_length = weights.shape(0);
  const int64_t taps = weights.shape(1);
  if (taps < 1) invalid(weights_name + " has no taps");
  if (start < 0 || start + length > table_length) {
    invalid("the tile's " + axis + "s [" + std::to_string(start) + ", " +
            std::to_string(start + length) + ") are outside " + weights_name + " with " +
            std::to_string(table_length) + " outputs");
  }
  const auto* weight_data = static_cast<const float*>(weights.data());
  const auto* index_data = static_cast<const int32_t*>(indices.data());
  for (int64_t i = start * taps; i < (start + length) * taps; ++i) {
    if (index_data[i] < 0 || index_data[i] >= source_length) {
      invalid(indices_name + " contains " + std::to_string(index_data[i]) +
              ", outside [0, " + std::to_string(source_length) + ")");
    }
  }
  return {weight_data + start * taps, index_data + start * taps, length, taps};
}

// ---------------------------------------------------------------------------------

void gaussian_noise(py::array out, const std::vector<uint64_t>& seeds, int64_t row0,
                    int64_t col0) {
  require_dtype(out, "out", {DType::kFloat32}, "float32");
  require_layout(out, "out", 4, true);
  const int64_t batch = out.shape(0);
  if (static_cast<int64_t>(seeds.size()) != batch) {
    invalid("out has " + std::to_string(batch) + " images but " +
            std::to_string(seeds.size()) + " seeds were given");
  }
  if (out.shape(1) > (int64_t{1} << 32)) invalid("channels must be at most 2^32");
  auto* data = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release release;
  fmsr::cpu::gaussian_noise(data, seeds.data(), batch, out.shape(1), out.shape(2),
                            out.shape(3), row0, col0);
}

void upsample(py::array lr, py::array row_weights, py::array row_indices,
              py::array col_weights, py::array col_indices, py::array out,
              int64_t out_row0, int64_t out_col0) {
  require_dtype(lr, "lr", {DType::kUint8, DType::kUint16, DType::kFloat32},
                "uint8, uint16 or float32");
  require_layout(lr, "lr", 4, false);
  require_dtype(out, "out", {DType::kFloat32, DType::kFloat16}, "float32 or float16");
  require_layout(out, "out", 4, true);
  const int64_t batch = lr.shape(0);
  const int64_t in_h = lr.shape(1);
  const int64_t in_w = lr.shape(2);
  const int64_t channels = lr.shape(3);
  if (out.shape(0) != batch || out.shape(1) != channels) {
    invalid("out must be [batch, channels, height, width] = [" + std::to_string(batch) +
            ", " + std::to_string(channels) + ", ...] to match lr, got " +
            shape_string(out));
  }
  const auto rows = tile_table(row_weights, row_indices, "row", out_row0, out.shape(2), in_h);
  const auto cols = tile_table(col_weights, col_indices, "col", out_col0, out.shape(3), in_w);
  const DType lr_type = dtype_of(lr, "lr");
  const DType out_type = dtype_of(out, "out");
  const void* lr_data = lr.data();
  void* out_data = out.mutable_data();
  py::gil_scoped_release release;
  fmsr::cpu::upsample(lr_data, lr_type, batch, in_h, in_w, channels, rows, cols, out_data,
                      out_type);
}

void euler_step(py::array x, py::array v, double dt) {
  require_state(x, "x", true);
  const DType net_type = require_network_output(v, "v", x);
  auto* x_data = static_cast<float*>(x.mutable_data());
  const void* v_data = v.data();
  const float dt_float = static_cast<float>(dt);
  py::gil_scoped_release release;
  fmsr::cpu::euler_step(x_data, v_data, net_type, x.size(), dt_float);
}

void heun_predict(py::array x, py::array v, py::array x_pred, double dt) {
  require_state(x, "x", false);
  const DType net_type = require_network_output(v, "v", x);
  require_state(x_pred, "x_pred", true);
  require_same_shape(x_pred, "x_pred", x, "x");
  const auto* x_data = static_cast<const float*>(x.data());
  const void* v_data = v.data();
  auto* pred_data = static_cast<float*>(x_pred.mutable_data());
  const float dt_float = static_cast<float>(dt);
  py::gil_scoped_release release;
  fmsr::cpu::heun_predict(x_data, v_data, net_type, pred_data, x.size(), dt_float);
}

void heun_correct(py::array x, py::array v, py::array v_pred, double dt) {
  require_state(x, "x", true);
  const DType net_type = require_network_output(v, "v", x);
  if (require_network_output(v_pred, "v_pred", x) != net_type) {
    invalid("v and v_pred must have the same dtype");
  }
  auto* x_data = static_cast<float*>(x.mutable_data());
  const void* v_data = v.data();
  const void* v_pred_data = v_pred.data();
  const float half_dt = fmsr::heun_half_step(dt);
  py::gil_scoped_release release;
  fmsr::cpu::heun_correct(x_data, v_data, v_pred_data, net_type, x.size(), half_dt);
}

void euler_step_x1(py::array x, py::array x1_hat, double t, double dt, double floor) {
  require_floor(floor);
  require_state(x, "x", true);
  const DType net_type = require_network_output(x1_hat, "x1_hat", x);
  auto* x_data = static_cast<float*>(x.mutable_data());
  const void* x1_data = x1_hat.data();
  const float scale = fmsr::x1_step_scale(t, dt, floor);
  py::gil_scoped_release release;
  fmsr::cpu::euler_step_x1(x_data, x1_data, net_type, x.size(), scale);
}

void heun_predict_x1(py::array x, py::array x1_hat, py::array x_pred, double t, double dt,
                     double floor) {
  require_floor(floor);
  require_state(x, "x", false);
  const DType net_type = require_network_output(x1_hat, "x1_hat", x);
  require_state(x_pred, "x_pred", true);
  require_same_shape(x_pred, "x_pred", x, "x");
  const auto* x_data = static_cast<const float*>(x.data());
  const void* x1_data = x1_hat.data();
  auto* pred_data = static_cast<float*>(x_pred.mutable_data());
  const float scale = fmsr::x1_step_scale(t, dt, floor);
  py::gil_scoped_release release;
  fmsr::cpu::heun_predict_x1(x_data, x1_data, net_type, pred_data, x.size(), scale);
}

void heun_correct_x1(py::array x, py::array x1_hat, py::array x_pred, py::array x1_hat_pred,
                     double t, double dt, double floor) {
  require_floor(floor);
  require_state(x, "x", true);
  const DType net_type = require_network_output(x1_hat, "x1_hat", x);
  require_state(x_pred, "x_pred", false);
  require_same_shape(x_pred, "x_pred", x, "x");
  if (require_network_output(x1_hat_pred, "x1_hat_pred", x) != net_type) {
    invalid("x1_hat and x1_hat_pred must have the same dtype");
  }
  auto* x_data = static_cast<float*>(x.mutable_data());
  const void* x1_data = x1_hat.data();
  const auto* pred_data = static_cast<const float*>(x_pred.data());
  const void* x1_pred_data = x1_hat_pred.data();
  const float half_dt = fmsr::heun_half_step(dt);
  const float rate = fmsr::x1_rate(t, floor);
  const float rate_next = fmsr::x1_rate(t + dt, floor);
  py::gil_scoped_release release;
  fmsr::cpu::heun_correct_x1(x_data, x1_data, pred_data, x1_pred_data, net_type, x.size(),
                             half_dt, rate, rate_next);
}

void midpoint_step_x1(py::array x, py::array x_mid, py::array x1_hat_mid, double t,
                      double dt, double floor) {
  require_floor(floor);
  require_state(x, "x", true);
  require_state(x_mid, "x_mid", false);
  require_same_shape(x_mid, "x_mid", x, "x");
  const DType net_type = require_network_output(x1_hat_mid, "x1_hat_mid", x);
  auto* x_data = static_cast<float*>(x.mutable_data());
  const auto* mid_data = static_cast<const float*>(x_mid.data());
  const void* x1_mid_data = x1_hat_mid.data();
  const float scale = fmsr::midpoint_step_scale(t, dt, floor);
  py::gil_scoped_release release;
  fmsr::cpu::midpoint_step_x1(x_data, mid_data, x1_mid_data, net_type, x.size(), scale);
}

void state_to_image(py::array x, std::optional<py::array> upsample, double residual_scale,
                    py::array out) {
  require_state(x, "x", false);
  if (x.ndim() != 4) invalid("x must be [batch, channels, height, width], got " + shape_string(x));
  DType upsample_type = DType::kFloat32;
  const void* upsample_data = nullptr;
  if (upsample) {
    upsample_type = require_network_output(*upsample, "upsample", x);
    upsample_data = upsample->data();
    if (residual_scale == 0.0 || !std::isfinite(residual_scale)) {
      invalid("residual_scale must be finite and non-zero, got " +
              std::to_string(residual_scale));
    }
  }
  require_dtype(out, "out", {DType::kUint8, DType::kUint16}, "uint8 or uint16");
  require_layout(out, "out", 4, true);
  const int64_t batch = x.shape(0);
  const int64_t channels = x.shape(1);
  const int64_t height = x.shape(2);
  const int64_t width = x.shape(3);
  if (out.shape(0) != batch || out.shape(1) != height || out.shape(2) != width ||
      out.shape(3) != channels) {
    invalid("out must be [batch, height, width, channels] for x " + shape_string(x) +
            ", got " + shape_string(out));
  }
  const auto* x_data = static_cast<const float*>(x.data());
  const DType out_type = dtype_of(out, "out");
  void* out_data = out.mutable_data();
  const float scale = static_cast<float>(residual_scale);
  py::gil_scoped_release release;
  fmsr::cpu::state_to_image(x_data, upsample_data, upsample_type, batch, channels, height,
                            width, scale, out_data, out_type);
}

void blend_tile(py::array accum, py::array weight_sum, py::array tile, py::array weight,
                int64_t row0, int64_t col0) {
  require_dtype(accum, "accum", {DType::kFloat32}, "float32");
  require_layout(accum, "accum", 3, true);
  require_dtype(weight_sum, "weight_sum", {DType::kFloat32}, "float32");
  require_layout(weight_sum, "weight_sum", 2, true);
  require_dtype(tile, "tile", {DType::kFloat32, DType::kFloat16}, "float32 or float16");
  require_layout(tile, "tile", 3, false);
  require_dtype(weight, "weight", {DType::kFloat32}, "float32");
  require_layout(weight, "weight", 2, false);
  const int64_t channels = accum.shape(0);
  const int64_t height = accum.shape(1);
  const int64_t width = accum.shape(2);
  const int64_t tile_h = tile.shape(1);
  const int64_t tile_w = tile.shape(2);
  if (weight_sum.shape(0) != height || weight_sum.shape(1) != width) {
    invalid("weight_sum must be [height, width] of accum " + shape_string(accum) +
            ", got " + shape_string(weight_sum));
  }
  if (tile.shape(0) != channels) {
    invalid("tile must have the " + std::to_string(channels) + " channels of accum, got " +
            shape_string(tile));
  }
  if (weight.shape(0) != tile_h || weight.shape(1) != tile_w) {
    invalid("weight must be [tile_h, tile_w] of tile " + shape_string(tile) + ", got " +
            shape_string(weight));
  }
  if (row0 < 0 || col0 < 0 || row0 + tile_h > height || col0 + tile_w > width) {
    invalid("tile " + shape_string(tile) + " at (" + std::to_string(row0) + ", " +
            std::to_string(col0) + ") is outside accum " + shape_string(accum));
  }
  auto* accum_data = static_cast<float*>(accum.mutable_data());
  auto* sum_data = static_cast<float*>(weight_sum.mutable_data());
  const void* tile_data = tile.data();
  const DType tile_type = dtype_of(tile, "tile");
  const auto* weight_data = static_cast<const float*>(weight.data());
  py::gil_scoped_release release;
  fmsr::cpu::blend_tile(accum_data, sum_data, channels, height, width, tile_data,
                        tile_type, weight_data, tile_h, tile_w, row0, col0);
}

void normalize_blend(py::array accum, py::array weight_sum, py::array out) {
  require_dtype(accum, "accum", {DType::kFloat32}, "float32");
  require_layout(accum, "accum", 3, false);
  require_dtype(weight_sum, "weight_sum", {DType::kFloat32}, "float32");
  require_layout(weight_sum, "weight_sum", 2, false);
  require_dtype(out, "out", {DType::kFloat32}, "float32");
  require_contiguous_same_shape(out, "out", accum, "accum", true);
  if (weight_sum.shape(0) != accum.shape(1) || weight_sum.shape(1) != accum.shape(2)) {
    invalid("weight_sum must be [height, width] of accum " + shape_string(accum) +
            ", got " + shape_string(weight_sum));
  }
  const auto* accum_data = static_cast<const float*>(accum.data());
  const auto* sum_data = static_cast<const float*>(weight_sum.data());
  auto* out_data = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release release;
  fmsr::cpu::normalize_blend(accum_data, sum_data, out_data, accum.shape(0),
                             accum.shape(1), accum.shape(2));
}

py::array_t<uint16_t> float_to_half_bits(
    py::array_t<float, py::array::c_style | py::array::forcecast> values) {
  py::array_t<uint16_t> bits(values.request().shape);
  const float* in = values.data();
  uint16_t* out = bits.mutable_data();
  const int64_t n = values.size();
  {
    py::gil_scoped_release release;
    fmsr::cpu::float_to_half_array(in, out, n);
  }
  return bits;
}

py::array_t<float> half_bits_to_float(
    py::array_t<uint16_t, py::array::c_style | py::array::forcecast> bits) {
  py::array_t<float> values(bits.request().shape);
  const uint16_t* in = bits.data();
  float* out = values.mutable_data();
  const int64_t n = bits.size();
  {
    py::gil_scoped_release release;
    fmsr::cpu::half_to_float_array(in, out, n);
  }
  return values;
}

}  // namespace

PYBIND11_MODULE(_ext, m) {
  m.doc() =
      "CPU kernels of the fmsr runtime (OpenMP). Call them through fmsr_infer.kernels, "
      "which allocates the outputs; these functions write into arrays given to them.";

  m.def("gaussian_noise", &gaussian_noise, py::arg("out"), py::arg("seeds"),
        py::arg("row0"), py::arg("col0"),
        "Fill out, float32 [N, C, H, W], with the noise tile at (row0, col0) of each of "
        "the N seeds.");
  m.def("upsample", &upsample, py::arg("lr"), py::arg("row_weights"),
        py::arg("row_indices"), py::arg("col_weights"), py::arg("col_indices"),
        py::arg("out"), py::arg("out_row0"), py::arg("out_col0"),
        "Resample lr [N, H, W, C] (uint8, uint16 or float32) with the tables, rows "
        "first, into out [N, C, h, w] (float32 or float16) in network units 2v - 1; "
        "out covers table rows [out_row0, out_row0 + h) and columns likewise.");
  m.def("euler_step", &euler_step, py::arg("x"), py::arg("v"), py::arg("dt"),
        "x += dt * v in place.");
  m.def("heun_predict", &heun_predict, py::arg("x"), py::arg("v"), py::arg("x_pred"),
        py::arg("dt"), "x_pred = x + dt * v.");
  m.def("heun_correct", &heun_correct, py::arg("x"), py::arg("v"), py::arg("v_pred"),
        py::arg("dt"), "x += 0.5 * dt * (v + v_pred) in place.");
  m.def("euler_step_x1", &euler_step_x1, py::arg("x"), py::arg("x1_hat"), py::arg("t"),
        py::arg("dt"), py::arg("floor"),
        "x += dt * v in place with v = (x1_hat - x) / max(1 - t, floor).");
  m.def("heun_predict_x1", &heun_predict_x1, py::arg("x"), py::arg("x1_hat"),
        py::arg("x_pred"), py::arg("t"), py::arg("dt"), py::arg("floor"),
        "x_pred = x + dt * v with v = (x1_hat - x) / max(1 - t, floor).");
  m.def("heun_correct_x1", &heun_correct_x1, py::arg("x"), py::arg("x1_hat"),
        py::arg("x_pred"), py::arg("x1_hat_pred"), py::arg("t"), py::arg("dt"),
        py::arg("floor"),
        "x += 0.5 * dt * (v + v_pred) in place, v from (x, x1_hat) at t and v_pred from "
        "(x_pred, x1_hat_pred) at t + dt.");
  m.def("midpoint_step_x1", &midpoint_step_x1, py::arg("x"), py::arg("x_mid"),
        py::arg("x1_hat_mid"), py::arg("t"), py::arg("dt"), py::arg("floor"),
        "x += dt * v_mid in place with v_mid = (x1_hat_mid - x_mid) / max(1 - t_mid, "
        "floor) at the midpoint t_mid = t + dt / 2.");
  m.def("state_to_image", &state_to_image, py::arg("x"), py::arg("upsample"),
        py::arg("residual_scale"), py::arg("out"),
        "Write the state x [N, C, H, W] (plus upsample, if given, as upsample + x / "
        "residual_scale) as an image into out [N, H, W, C] uint8 or uint16.");
  m.def("blend_tile", &blend_tile, py::arg("accum"), py::arg("weight_sum"),
        py::arg("tile"), py::arg("weight"), py::arg("row0"), py::arg("col0"),
        "accum[:, r, c] += tile * weight and weight_sum[r, c] += weight over the tile at "
        "(row0, col0).");
  m.def("normalize_blend", &normalize_blend, py::arg("accum"), py::arg("weight_sum"),
        py::arg("out"), "out = accum / weight_sum where weight_sum > 0, else 0.");
  m.def("float_to_half_bits", &float_to_half_bits, py::arg("values"),
        "Convert float32 values to float16 bit patterns (uint16), as the kernels do.");
  m.def("half_bits_to_float", &half_bits_to_float, py::arg("bits"),
        "Convert float16 bit patterns (uint16) to float32, as the kernels do.");
}
