"""Device choice and a description of the machine, recorded with every run (timings mean little without it)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version


def pick_device(requested: str | None = None):
    """``requested`` if given, else CUDA, then Apple MPS, then CPU."""
    import torch

    from ._errors import MetapeftError

    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise MetapeftError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MetapeftError("--device cuda was asked for but no CUDA GPU is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise MetapeftError("--device mps was asked for but Apple MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(device=None) -> dict:
    import torch

    device = device or pick_device()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "packages": {p: package_version(p) for p in ("metapeft", "torch", "transformers", "peft", "optuna", "mlflow")},
    }
    if device.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(device)
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


@functools.cache
def processor() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS; elsewhere what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":  # platform.processor() says only "arm" on every Apple silicon Mac
        try:
            brand = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            if brand:
                return brand
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def same_host(env: dict) -> bool:
    """Whether a recorded ``environment()`` is this computer's, as far as can be told without importing torch (its
    architecture, processor and core count)."""
    return (env.get("machine"), env.get("processor"), env.get("cpu_count")) == (
        platform.machine(),
        processor(),
        os.cpu_count(),
    )


def machine_key(env: dict) -> str | None:
    """What a run's speed depends on besides the run itself: runs with the same key ran at the same speed up to noise.

    Args:
        env: A run's recorded ``environment()`` (with its ``backend``).

    Returns:
        ``backend|device|GPU name`` or, on CPU, ``backend|device|processor|N threads`` (torch's); ``None`` when the
        record says too little (runs recorded before the processor was).
    """
    device = str(env.get("device", "")).split(":")[0]
    if not device:
        return None
    where = env.get("accelerator") if device == "cuda" else env.get("processor")
    if not where:
        return None
    n = env.get("torch_threads")
    threads = f"|{n} thread{'' if n == 1 else 's'}" if device == "cpu" else ""
    return f"{env.get('backend', 'torch')}|{device}|{where}{threads}"


def check_machine(machine) -> None:
    """A request's ``machine`` option: ``None`` or the ``machine_key`` string that ``metapeft info`` prints.

    Raises:
        MetapeftError: Anything else.
    """
    from ._errors import MetapeftError

    if machine is not None and (not isinstance(machine, str) or not 0 < len(machine) <= 200):
        raise MetapeftError(f"machine must be the machine_key `metapeft info` prints (a string), got {machine!r:.60}")


def quiet_libraries() -> None:
    """Silence library deprecation chatter: not actionable for our users; real problems arrive as exceptions."""
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):  # peft's PeftWarning is a UserWarning
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def single_threaded(fn):
    """Run ``fn`` with one torch thread: for tiny networks (the meta-learners) extra threads only add
    synchronisation, and they stall badly when the cores are busy, e.g. beside a benchmark."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch  # here, not at decoration: importing the decorated module must not import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def interrupt_once(grace_s: float = 10.0) -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt the first time; for ``grace_s`` after it, more are ignored; after
    that, one ends the process at once. Why: the first stops the work and the clean-up marks the cut run
    interrupted; a second one close behind (Ctrl-C pressed twice, or a terminal's SIGINT followed by a parent's
    terminate) would cut that clean-up, leave the run "running" and print a traceback; yet a clean-up that hangs
    must not leave the user without a way out but SIGKILL."""
    import signal
    import time

    stopped_at: list[float] = []

    def handle(signum, frame):
        if not stopped_at:
            stopped_at.append(time.monotonic())
            raise KeyboardInterrupt
        if time.monotonic() - stopped_at[0] > grace_s:
            os._exit(130)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
