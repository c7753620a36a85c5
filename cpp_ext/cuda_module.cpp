// pybind11 bindings of the CUDA kernels: the module fmsr_infer._ext_cuda.
//
// Pointers and the stream are Python ints: device pointers on the current device (torch
// `tensor.data_ptr()`, cuda-python `int(ptr)`) and a cudaStream_t handle (torch
// `torch.cuda.current_stream().cuda_stream`, cuda-python `int(stream)`, 0 for the
// legacy default stream). Buffers are C-contiguous with the layouts of the CPU module
// fmsr_infer._ext; dtypes are given by name: "uint8", "uint16", "float16", "float32".
// The bindings check sizes, tile bounds, dtypes and null pointers; they cannot check
// that a pointer owns enough memory. Each call enqueues one kernel and returns without
// synchronizing; a failed launch raises RuntimeError.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_kernels.h"
#include "step_scalars.h"

namespace py = pybind11;
using fmsr::DType;

namespace {

[[noreturn]] void invalid(const std::string& message) { throw py::value_error(message); }

DType parse_dtype(const std::string& name, const char* argument,
                  std::initializer_list<DType> allowed, const char* allowed_text) {
  DType dtype;
  if (name == "uint8") {
    dtype = DType::kUint8;
  } else if (name == "uint16") {
    dtype = DType::kUint16;
  } else if (name == "float16") {
    dtype = DType::kFloat16;
  } else if (name == "float32") {
    dtype = DType::kFloat32;
  } else {
    invalid(std::string(argument) + " must be one of " + allowed_text + ", got '" + name +
            "'");
  }
  for (DType candidate : allowed) {
    if (candidate == dtype) return dtype;
  }
  invalid(std::string(argument) + " must be one of " + allowed_text + ", got '" + name +
          "'");
}

DType parse_network_dtype(const std::string& name, const char* argument) {
  return parse_dtype(name, argument, {DType::kFloat32, DType::kFloat16},
                     "'float32', 'float16'");
}

template <typename T>
T* device_pointer(std::uintptr_t address, const char* argument) {
  if (address == 0) invalid(std::string(argument) + " is a null pointer");
  return reinterpret_cast<T*>(address);
}

void* stream_handle(std::uintptr_t stream) { return reinterpret_cast<void*>(stream); }

void require_non_negative(int64_t value, const char* argument) {
  if (value < 0) {
    invalid(std::string(argument) + " must be non-negative, got " + std::to_string(value));
  }
}

void require_positive(int64_t value, const char* argument) {
  if (value < 1) {
    invalid(std::string(argument) + " must be positive, got " + std::to_string(value));
  }
}

void require_floor(double floor) {
  if (!(floor > 0.0)) invalid("floor must be positive, got " + std::to_string(floor));
}

void check(int error, const char* kernel) {
  if (error != 0) {
    throw std::runtime_error(std::string("CUDA launch of ") + kernel + " failed: " +
                             fmsr::cuda::error_string(error) + " (cudaError " +
                             std::to_string(error) + ")");
  }
}

// ---------------------------------------------------------------------------------

void gaussian_noise(std::uintptr_t out, uint64_t seed, int64_t channels, int64_t height,
                    int64_t width, int64_t row0, int64_t col0, std::uintptr_t stream) {
  require_non_negative(channels, "channels");
  require_non_negative(height, "height");
  require_non_negative(width, "width");
  if (channels > (int64_t{1} << 32)) invalid("channels must be at most 2^32");
  check(fmsr::cuda::gaussian_noise(device_pointer<float>(out, "out"), seed, channels,
                                   height, width, row0, col0, stream_handle(stream)),
        "gaussian_noise");
}

void upsample(std::uintptr_t lr, const std::string& lr_dtype, int64_t batch, int64_t in_h,
              int64_t in_w, int64_t channels, std::uintptr_t row_weights,
              std::uintptr_t row_indices, int64_t table_rows, int64_t row_taps,
              std::uintptr_t col_weights, std::uintptr_t col_indices, int64_t table_cols,
              int64_t col_taps, int64_t out_row0, int64_t out_col0, int64_t out_h,
              int64_t out_w, std::uintptr_t out, const std::string& out_dtype,
              std::uintptr_t stream) {
  const DType lr_type = parse_dtype(lr_dtype, "lr_dtype",
                                    {DType::kUint8, DType::kUint16, DType::kFloat32},
                                    "'uint8', 'uint16', 'float32'");
  const DType out_type = parse_network_dtype(out_dtype, "out_dtype");
  require_non_negative(batch, "batch");
  require_positive(in_h, "in_h");
  require_positive(in_w, "in_w");
  require_positive(channels, "channels");
  require_positive(row_taps, "row_taps");
  require_positive(col_taps, "col_taps");
  require_non_negative(out_h, "out_h");
  require_non_negative(out_w, "out_w");
  if (out_row0 < 0 || out_row0 + out_h > table_rows) {
    invalid("rows [" + std::to_string(out_row0) + ", " + std::to_string(out_row0 + out_h) +
            ") are outside the row table of " + std::to_string(table_rows) + " outputs");
  }
  if (out_col0 < 0 || out_col0 + out_w > table_cols) {
    invalid("columns [" + std::to_string(out_col0) + ", " +
            std::to_string(out_col0 + out_w) + ") are outside the column table of " +
            std::to_string(table_cols) + " outputs");
  }
  // Offset the tables to the tile; the kernel indexes them from its first row/column.
  const float* tile_row_weights =
      device_pointer<const float>(row_weights, "row_weights") + out_row0 * row_taps;
  const int32_t* tile_row_indices =
      device_pointer<const int32_t>(row_indices, "row_indices") + out_row0 * row_taps;
  const float* tile_col_weights =
      device_pointer<const float>(col_weights, "col_weights") + out_col0 * col_taps;
  const int32_t* tile_col_indices =
      device_pointer<const int32_t>(col_indices, "col_indices") + out_col0 * col_taps;
  check(fmsr::cuda::upsample(device_pointer<const void>(lr, "lr"), lr_type, batch, in_h,
                             in_w, channels, tile_row_weights, tile_row_indices, row_taps,
                             tile_col_weights, tile_col_indices, col_taps, out_h, out_w,
                             device_pointer<void>(out, "out"), out_type,
                             stream_handle(stream)),
        "upsample");
}

void euler_step(std::uintptr_t x, std::uintptr_t v, const std::string& v_dtype, int64_t n,
                double dt, std::uintptr_t stream) {
  require_non_negative(n, "n");
  check(fmsr::cuda::euler_step(device_pointer<float>(x, "x"),
                               device_pointer<const void>(v, "v"),
                               parse_network_dtype(v_dtype, "v_dtype"), n,
                               static_cast<float>(dt), stream_handle(stream)),
        "euler_step");
}

void heun_predict(std::uintptr_t x, std::uintptr_t v, const std::string& v_dtype,
                  std::uintptr_t x_pred, int64_t n, double dt, std::uintptr_t stream) {
  require_non_negative(n, "n");
  check(fmsr::cuda::heun_predict(device_pointer<const float>(x, "x"),
                                 device_pointer<const void>(v, "v"),
                                 parse_network_dtype(v_dtype, "v_dtype"),
                                 device_pointer<float>(x_pred, "x_pred"), n,
                                 static_cast<float>(dt), stream_handle(stream)),
        "heun_predict");
}

void heun_correct(std::uintptr_t x, std::uintptr_t v, std::uintptr_t v_pred,
                  const std::string& v_dtype, int64_t n, double dt, std::uintptr_t stream) {
  require_non_negative(n, "n");
  check(fmsr::cuda::heun_correct(device_pointer<float>(x, "x"),
                                 device_pointer<const void>(v, "v"),
                                 device_pointer<const void>(v_pred, "v_pred"),
                                 parse_network_dtype(v_dtype, "v_dtype"), n,
                                 fmsr::heun_half_step(dt), stream_handle(stream)),
        "heun_correct");
}

void euler_step_x1(std::uintptr_t x, std::uintptr_t x1_hat, const std::string& x1_dtype,
                   int64_t n, double t, double dt, double floor, std::uintptr_t stream) {
  require_non_negative(n, "n");
  require_floor(floor);
  check(fmsr::cuda::euler_step_x1(device_pointer<float>(x, "x"),
                                  device_pointer<const void>(x1_hat, "x1_hat"),
                                  parse_network_dtype(x1_dtype, "x1_dtype"), n,
                                  fmsr::x1_step_scale(t, dt, floor), stream_handle(stream)),
        "euler_step_x1");
}

void heun_predict_x1(std::uintptr_t x, std::uintptr_t x1_hat, const std::string& x1_dtype,
                     std::uintptr_t x_pred, int64_t n, double t, double dt, double floor,
                     std::uintptr_t stream) {
  require_non_negative(n, "n");
  require_floor(floor);
  check(fmsr::cuda::heun_predict_x1(device_pointer<const float>(x, "x"),
                                    device_pointer<const void>(x1_hat, "x1_hat"),
                                    parse_network_dtype(x1_dtype, "x1_dtype"),
                                    device_pointer<float>(x_pred, "x_pred"), n,
                                    fmsr::x1_step_scale(t, dt, floor),
                                    stream_handle(stream)),
        "heun_predict_x1");
}

void heun_correct_x1(std::uintptr_t x, std::uintptr_t x1_hat, std::uintptr_t x_pred,
                     std::uintptr_t x1_hat_pred, const std::string& x1_dtype, int64_t n,
                     double t, double dt, double floor, std::uintptr_t stream) {
  require_non_negative(n, "n");
  require_floor(floor);
  check(fmsr::cuda::heun_correct_x1(
            device_pointer<float>(x, "x"), device_pointer<const void>(x1_hat, "x1_hat"),
            device_pointer<const float>(x_pred, "x_pred"),
            device_pointer<const void>(x1_hat_pred, "x1_hat_pred"),
            parse_network_dtype(x1_dtype, "x1_dtype"), n, fmsr::heun_half_step(dt),
            fmsr::x1_rate(t, floor), fmsr::x1_rate(t + dt, floor), stream_handle(stream)),
        "heun_correct_x1");
}

void midpoint_step_x1(std::uintptr_t x, std::uintptr_t x_mid, std::uintptr_t x1_hat_mid,
                      const std::string& x1_dtype, int64_t n, double t, double dt,
                      double floor, std::uintptr_t stream) {
  require_non_negative(n, "n");
  require_floor(floor);
  check(fmsr::cuda::midpoint_step_x1(device_pointer<float>(x, "x"),
                                     device_pointer<const float>(x_mid, "x_mid"),
                                     device_pointer<const void>(x1_hat_mid, "x1_hat_mid"),
                                     parse_network_dtype(x1_dtype, "x1_dtype"), n,
                                     fmsr::midpoint_step_scale(t, dt, floor),
                                     stream_handle(stream)),
        "midpoint_step_x1");
}

void state_to_image(std::uintptr_t x, std::uintptr_t upsample,
                    const std::string& upsample_dtype, int64_t batch, int64_t channels,
                    int64_t height, int64_t width, double residual_scale,
                    std::uintptr_t out, const std::string& out_dtype,
                    std::uintptr_t stream) {
  require_non_negative(batch, "batch");
  require_non_negative(channels, "channels");
  require_non_negative(height, "height");
  require_non_negative(width, "width");
  const DType upsample_type = parse_network_dtype(upsample_dtype, "upsample_dtype");
  if (upsample == 0 && residual_scale != 1.0) {
    invalid("residual_scale has no effect without upsample; pass upsample or leave it at 1.0");
  }
  if (upsample != 0 && (residual_scale == 0.0 || !std::isfinite(residual_scale))) {
    invalid("residual_scale must be finite and non-zero, got " + std::to_string(residual_scale));
  }
  const DType out_type =
      parse_dtype(out_dtype, "out_dtype", {DType::kUint8, DType::kUint16}, "'uint8', 'uint16'");
  // upsample == 0 selects the non-residual target, so it is not a null-pointer error.
  check(fmsr::cuda::state_to_image(device_pointer<const float>(x, "x"),
                                   reinterpret_cast<const void*>(upsample), upsample_type,
                                   batch, channels, height, width,
                                   static_cast<float>(residual_scale),
                                   device_pointer<void>(out, "out"), out_type,
                                   stream_handle(stream)),
        "state_to_image");
}

void blend_tile(std::uintptr_t accum, std::uintptr_t weight_sum, int64_t channels,
                int64_t height, int64_t width, std::uintptr_t tile,
                const std::string& tile_dtype, std::uintptr_t weight, int64_t tile_h,
                int64_t tile_w, int64_t row0, int64_t col0, std::uintptr_t stream) {
  require_non_negative(channels, "channels");
  require_non_negative(tile_h, "tile_h");
  require_non_negative(tile_w, "tile_w");
  if (row0 < 0 || col0 < 0 || row0 + tile_h > height || col0 + tile_w > width) {
    invalid("tile [" + std::to_string(tile_h) + ", " + std::to_string(tile_w) + "] at (" +
            std::to_string(row0) + ", " + std::to_string(col0) +
            ") is outside the accumulator [" + std::to_string(height) + ", " +
            std::to_string(width) + "]");
  }
  check(fmsr::cuda::blend_tile(device_pointer<float>(accum, "accum"),
                               device_pointer<float>(weight_sum, "weight_sum"), channels,
                               height, width, device_pointer<const void>(tile, "tile"),
                               parse_network_dtype(tile_dtype, "tile_dtype"),
                               device_pointer<const float>(weight, "weight"), tile_h,
                               tile_w, row0, col0, stream_handle(stream)),
        "blend_tile");
}

void normalize_blend(std::uintptr_t accum, std::uintptr_t weight_sum, std::uintptr_t out,
                     int64_t channels, int64_t height, int64_t width,
                     std::uintptr_t stream) {
  require_non_negative(channels, "channels");
  require_non_negative(height, "height");
  require_non_negative(width, "width");
  check(fmsr::cuda::normalize_blend(device_pointer<const float>(accum, "accum"),
                                    device_pointer<const float>(weight_sum, "weight_sum"),
                                    device_pointer<float>(out, "out"), channels, height,
                                    width, stream_handle(stream)),
        "normalize_blend");
}

}  // namespace

PYBIND11_MODULE(_ext_cuda, m) {
  m.doc() =
      "CUDA kernels of the fmsr runtime on raw device pointers (Python ints) and a CUDA "
      "stream handle. Each call enqueues one kernel without synchronizing. Layouts and "
      "arithmetic equal those of fmsr_infer._ext; see fmsr_infer/kernels.py.";
  // Every call only reads ints and strings, so the GIL is released while it launches.
  const auto release = py::call_guard<py::gil_scoped_release>();

  m.def("gaussian_noise", &gaussian_noise, py::arg("out"), py::arg("seed"),
        py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("row0"),
        py::arg("col0"), py::arg("stream"), release,
        "Fill out, float32 [channels, height, width], with the noise tile at (row0, col0) "
        "of the seed's field.");
  m.def("upsample", &upsample, py::arg("lr"), py::arg("lr_dtype"), py::arg("batch"),
        py::arg("in_h"), py::arg("in_w"), py::arg("channels"), py::arg("row_weights"),
        py::arg("row_indices"), py::arg("table_rows"), py::arg("row_taps"),
        py::arg("col_weights"), py::arg("col_indices"), py::arg("table_cols"),
        py::arg("col_taps"), py::arg("out_row0"), py::arg("out_col0"), py::arg("out_h"),
        py::arg("out_w"), py::arg("out"), py::arg("out_dtype"), py::arg("stream"), release,
        "Resample lr [batch, in_h, in_w, channels] with the full tables of "
        "fmsr_infer.resize.upsample_tables (float32 weights, int32 indices, "
        "[table_rows, row_taps] and [table_cols, col_taps], on the device) into out "
        "[batch, channels, out_h, out_w], the tile at (out_row0, out_col0), in network "
        "units 2v - 1.");
  m.def("euler_step", &euler_step, py::arg("x"), py::arg("v"), py::arg("v_dtype"),
        py::arg("n"), py::arg("dt"), py::arg("stream"), release,
        "x += dt * v over n float32 elements of x.");
  m.def("heun_predict", &heun_predict, py::arg("x"), py::arg("v"), py::arg("v_dtype"),
        py::arg("x_pred"), py::arg("n"), py::arg("dt"), py::arg("stream"), release,
        "x_pred = x + dt * v.");
  m.def("heun_correct", &heun_correct, py::arg("x"), py::arg("v"), py::arg("v_pred"),
        py::arg("v_dtype"), py::arg("n"), py::arg("dt"), py::arg("stream"), release,
        "x += 0.5 * dt * (v + v_pred).");
  m.def("euler_step_x1", &euler_step_x1, py::arg("x"), py::arg("x1_hat"),
        py::arg("x1_dtype"), py::arg("n"), py::arg("t"), py::arg("dt"), py::arg("floor"),
        py::arg("stream"), release,
        "x += dt * v with v = (x1_hat - x) / max(1 - t, floor).");
  m.def("heun_predict_x1", &heun_predict_x1, py::arg("x"), py::arg("x1_hat"),
        py::arg("x1_dtype"), py::arg("x_pred"), py::arg("n"), py::arg("t"), py::arg("dt"),
        py::arg("floor"), py::arg("stream"), release,
        "x_pred = x + dt * v with v = (x1_hat - x) / max(1 - t, floor).");
  m.def("heun_correct_x1", &heun_correct_x1, py::arg("x"), py::arg("x1_hat"),
        py::arg("x_pred"), py::arg("x1_hat_pred"), py::arg("x1_dtype"), py::arg("n"),
        py::arg("t"), py::arg("dt"), py::arg("floor"), py::arg("stream"), release,
        "x += 0.5 * dt * (v + v_pred), v from (x, x1_hat) at t and v_pred from "
        "(x_pred, x1_hat_pred) at t + dt.");
  m.def("midpoint_step_x1", &midpoint_step_x1, py::arg("x"), py::arg("x_mid"),
        py::arg("x1_hat_mid"), py::arg("x1_dtype"), py::arg("n"), py::arg("t"),
        py::arg("dt"), py::arg("floor"), py::arg("stream"), release,
        "x += dt * v_mid with v_mid = (x1_hat_mid - x_mid) / max(1 - t_mid, floor) at "
        "the midpoint t_mid = t + dt / 2.");
  m.def("state_to_image", &state_to_image, py::arg("x"), py::arg("upsample"),
        py::arg("upsample_dtype"), py::arg("batch"), py::arg("channels"),
        py::arg("height"), py::arg("width"), py::arg("residual_scale"), py::arg("out"),
        py::arg("out_dtype"), py::arg("stream"), release,
        "Write x [batch, channels, height, width] (plus upsample unless it is 0, as "
        "upsample + x / residual_scale) as an image into out [batch, height, width, "
        "channels] uint8 or uint16.");
  m.def("blend_tile", &blend_tile, py::arg("accum"), py::arg("weight_sum"),
        py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("tile"),
        py::arg("tile_dtype"), py::arg("weight"), py::arg("tile_h"), py::arg("tile_w"),
        py::arg("row0"), py::arg("col0"), py::arg("stream"), release,
        "accum += tile * weight and weight_sum += weight over the tile at (row0, col0).");
  m.def("normalize_blend", &normalize_blend, py::arg("accum"), py::arg("weight_sum"),
        py::arg("out"), py::arg("channels"), py::arg("height"), py::arg("width"),
        py::arg("stream"), release, "out = accum / weight_sum where weight_sum > 0, else 0.");
}
