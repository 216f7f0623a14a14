"""The numbers the probe judges a machine by, each with where it comes from."""

from __future__ import annotations

#: Docker Model Runner's minimum NVIDIA driver on Linux for GPU inference (its CUDA 12.9
#: builds, as in vm_images/dmr; CUDA 12.9 Update 1 needs >= 575.57.08). Below it DMR runs on the CPU.
DMR_MIN_DRIVER = "575.57.08"

#: Our llama.cpp, vLLM and Ollama images carry the CUDA 12.8 runtime (vm_images/*/Dockerfile);
#: CUDA 12.8 needs driver >= 570.26 on Linux (CUDA 12.8 release notes). Golem's vm-nvidia
#: runtime ships the 570 server driver (golemfactory/golem-nvidia-kernel, debian/rules).
IMAGE_CUDA = "12.8"
IMAGE_MIN_DRIVER = "570.26"
#: CUDA minor-version compatibility: any CUDA 12.x build runs on a driver >= 525.60.13, except
#: kernels JIT-compiled from PTX newer than the driver (CUDA compatibility guide).
CUDA12_MIN_DRIVER = "525.60.13"
#: Ollama's NVIDIA support needs driver 531 or newer (Ollama docs, docs/gpu.md); it ships its
#: own CUDA libraries and picks one the driver supports.
OLLAMA_MIN_DRIVER = "531"

#: vLLM's CUDA kernels need compute capability 7.0 (Volta) or newer.
VLLM_MIN_COMPUTE_CAPABILITY = "7.0"

#: Prebuilt binaries of the runtimes (PyTorch wheels are manylinux_2_28, Ollama builds on a
#: glibc 2.28 base) need glibc >= 2.28.
MIN_GLIBC = "2.28"

#: NVIDIA's current drivers support kernels from 4.15; 5.15 is the oldest kernel of a
#: supported LTS distribution we test against (Ubuntu 22.04).
MIN_KERNEL = "4.15"
GOOD_KERNEL = "5.15"

#: Memory: models load through RAM; 16 GiB holds a 7-8B model's weights on the way to the GPU.
GOOD_RAM_GIB = 16.0
MIN_RAM_GIB = 8.0

#: Disk for the data volume: a VM image (5-15 GB) plus model weights.
GOOD_DISK_GIB = 50.0
MIN_DISK_GIB = 20.0

#: GPU memory below which only small models fit.
GOOD_VRAM_GIB = 8.0

#: x86-64 under its names; Golem's VM runtime and our images are x86-64 only.
X86_64 = ("x86_64", "amd64", "AMD64")
