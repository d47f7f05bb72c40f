"""MLX Quant Lab: all logic, no Streamlit."""
from core import runtime as _runtime

_runtime.tune_allocator()  # large MLX buffers on the Linux CPU: see runtime.tune_allocator
_runtime.use_device_setting()  # MLXQ_DEVICE=cpu: the CPU even where a GPU exists
_runtime.default_blas_threads()  # BLIS starts with one thread: see runtime.default_blas_threads
