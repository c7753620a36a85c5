// Element types of the buffers that the CPU and CUDA kernels read and write.
#pragma once

namespace fmsr {

enum class DType { kUint8, kUint16, kFloat16, kFloat32 };

}  // namespace fmsr
