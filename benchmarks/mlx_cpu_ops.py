"""Why MLX is slower than torch on this CPU: single operations timed in each (issue 24; BENCHMARKS.md, "Causal-LM
backends"). Run with the machine idle and one thread::

    OMP_NUM_THREADS=1 uv run --extra mlx python benchmarks/mlx_cpu_ops.py

Prints the median milliseconds of a tiny MLX op (dispatch), of the (320x64)@(64x172) product a stories260K step
is made of in MLX and in torch, and MLX's GFLOP/s on a 1024^3 product.
"""

import statistics
import time

import mlx.core as mx
import torch


def median_ms(fn, n: int = 50) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    one = mx.array([1.0])
    x, w = mx.random.normal((320, 64)), mx.random.normal((64, 172))
    big_x, big_w = mx.random.normal((1024, 1024)), mx.random.normal((1024, 1024))
    tx, tw = torch.randn(320, 64), torch.randn(64, 172)
    mx.eval(one, x, w, big_x, big_w)
    print(f"mlx tiny add: {median_ms(lambda: mx.eval(one + 1)):.3f} ms")
    print(f"mlx (320x64)@(64x172): {median_ms(lambda: mx.eval(x @ w)):.3f} ms")
    print(f"torch (320x64)@(64x172): {median_ms(lambda: tx @ tw):.4f} ms")
    big = median_ms(lambda: mx.eval(big_x @ big_w), n=5)
    print(f"mlx 1024^3 product: {big:.1f} ms, {2 * 1024**3 / big / 1e6:.2f} GFLOP/s")


if __name__ == "__main__":
    main()
