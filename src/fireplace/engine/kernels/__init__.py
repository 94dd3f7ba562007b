"""CPU kernels written in C, compiled with the system compiler at first use (see cpu_build)."""
