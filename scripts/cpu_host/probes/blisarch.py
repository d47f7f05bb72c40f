"""Which BLIS sub-configuration the preloaded BLIS selected."""
import ctypes
lib = ctypes.CDLL(None)
try:
    lib.bli_arch_string.restype = ctypes.c_char_p
    print("BLIS sub-config:", lib.bli_arch_string(lib.bli_arch_query_id()).decode())
except AttributeError:
    print("no BLIS")
