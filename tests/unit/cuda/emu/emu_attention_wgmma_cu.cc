// Emulated build of kernels/cuda/attention_wgmma.cu: the same source compiled by the host
// compiler with cuda_emu.h force-included (see that header).
#include "kernels/cuda/attention_wgmma.cu"
