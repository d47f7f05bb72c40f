"""What models exist and how each loads: the registry, the CIFAR ResNets, SmolLM2 from its GGUF, training."""
