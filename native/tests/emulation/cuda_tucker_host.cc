// The backend source cuda_tucker.cu compiled by the host compiler for the emulation
// (a separate file so that CMake can give it the C++ language).
#include "cuda/cuda_tucker.cu"
