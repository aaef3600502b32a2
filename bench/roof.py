"""The machine's roof for the paper network: fp32 4096² matmul GFLOP/s on all cores ÷ 14.49 GFLOP per image.

One 224×224 crop costs 724.4 M multiply-adds (1.449 GFLOP) in the paper network; ten crops per image make
14.49 GFLOP. The matmul is measured with ONNX Runtime's MatMul (MLAS, the kernels the model runs on) and with
numpy's BLAS; the roof is the faster of the two, since it stands for what this CPU can do in fp32. (numpy's
OpenBLAS wheel may pick an older kernel than the CPU has, e.g. AVX2 on an AVX-512 machine: the printout names it.)
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass, field

import numpy as np

MACS_PER_CROP = 724.4e6  # the paper network (grouped convs, 1000 classes), per 224×224 crop
GFLOP_PER_CROP = 2 * MACS_PER_CROP / 1e9
GFLOP_PER_TEN_CROP_IMAGE = 10 * GFLOP_PER_CROP  # 14.49
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_tile", "amx_int8", "amx_bf16", "f16c", "neon", "asimd", "sve")


@dataclass
class CpuInfo:
    model: str
    usable_cpus: int
    flags: list[str] = field(default_factory=list)
    isa: str = ""

    def summary(self) -> str:
        return f"{self.model}, {self.usable_cpus} CPUs, {self.isa}"


def cpu_info() -> CpuInfo:
    """CPU model name and the SIMD flags that matter for fp32/int8 speed, from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        f = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
        flags = sorted(set(f.group(1).split())) if f else []
    except OSError:
        pass
    chosen = [f for f in INTERESTING_FLAGS if f in flags]
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        isa = "AVX-512 + VNNI" if "avx512f" in flags else "AVX2 + AVX-VNNI"
    elif "avx512f" in flags:
        isa = "AVX-512 (no VNNI)"
    elif "avx2" in flags:
        isa = "AVX2 only (no AVX-512, no VNNI)"
    else:
        isa = ", ".join(chosen) or "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(model=model, usable_cpus=usable, flags=chosen, isa=isa)


class MatmulRoof:
    """fp32 n×n matmul timers; call `ort()` / `numpy()` repeatedly (interleaved with other work) for GFLOP/s."""

    def __init__(self, n: int = 4096, intra_op_threads: int = 0, seed: int = 0) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        self.n = n
        rng = np.random.default_rng(seed)
        self.a = rng.random((n, n), dtype=np.float32)
        self.b = rng.random((n, n), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", n]),  # any rows: bench/profile.py slices
             helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.flop = 2.0 * n ** 3
        self.ort()  # warm up both
        self.numpy()

    def ort(self) -> float:
        start = time.perf_counter()
        self.session.run(None, {"a": self.a, "b": self.b})
        return self.flop / (time.perf_counter() - start) / 1e9

    def numpy(self) -> float:
        start = time.perf_counter()
        np.matmul(self.a, self.b)
        return self.flop / (time.perf_counter() - start) / 1e9


def numpy_blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            i = info[0]
            return f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernels, " \
                   f"{i.get('num_threads')} threads)"
    except ImportError:
        pass
    return "unknown BLAS"


@dataclass
class Roof:
    ort_gflops: float
    numpy_gflops: float
    gflops: float
    images_per_s: float  # ten-crop images/s at the roof


def measure_roof(rounds: int = 5, n: int = 4096, intra_op_threads: int = 0) -> Roof:
    """Best of `rounds` (contention only ever slows a run down)."""
    timer = MatmulRoof(n, intra_op_threads)
    ort_best = max(timer.ort() for _ in range(rounds))
    np_best = max(timer.numpy() for _ in range(rounds))
    best = max(ort_best, np_best)
    return Roof(ort_gflops=ort_best, numpy_gflops=np_best, gflops=best, images_per_s=best / GFLOP_PER_TEN_CROP_IMAGE)


def main() -> None:
    roof = measure_roof()
    cpu = cpu_info()  # not part of Roof: only this printout uses the CPU and BLAS names
    print(f"CPU: {cpu.summary()}  flags: {' '.join(cpu.flags)}")
    print(f"fp32 4096² matmul: ONNX Runtime {roof.ort_gflops:.0f} GFLOP/s, numpy {roof.numpy_gflops:.0f} GFLOP/s "
          f"({numpy_blas()})")
    print(f"roof for the paper network: {roof.gflops:.0f} / {GFLOP_PER_TEN_CROP_IMAGE:.2f} = "
          f"{roof.images_per_s:.2f} ten-crop images/s   (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
