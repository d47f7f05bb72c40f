"""The BLAS that MLX's CPU matrix products run on (Linux).

MLX's CPU wheel bundles the reference BLAS, many times slower than a tuned one; `./lab` preloads a tuned library
before MLX starts. Which one, and which of its kernels, is measured once per machine (`probe`, `choice`): Debian's
OpenBLAS picks its kernel from the processor's model number and can fall back to an old one inside virtual
machines; Debian's BLIS picks from the instruction flags and is faster on some processors for the lab's thin
products and single rows. `loaded` says what this process actually runs and sets its thread count."""
