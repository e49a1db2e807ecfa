// Emulated build of kernels/cuda/matmul.cu: the same source compiled by the host
// compiler with cuda_emu.h force-included (see that header).
#include "kernels/cuda/matmul.cu"
