"""``precision: auto``: bfloat16 for the dense part where the CPU computes it natively, else fp32.

Under ``torch.autocast`` the MLPs, experts, gates and towers run their matrix products in bfloat16.
CPUs with AVX512-BF16 or AMX (or Arm's BF16 extension) do that natively, measured 4-5x faster than
fp32 on this project's machine (docs/performance.md), at equal quality on ml-100k's validation split;
elsewhere oneDNN emulates bfloat16 and it is slower than fp32, so ``auto`` keeps fp32 there. On CUDA
``auto`` is fp32 (not measured here). The tables, optimizer state and losses are fp32 in every case.
"""

from typing import Optional, Set, Tuple

# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16)
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags(path: str = "/proc/cpuinfo") -> Set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where unreadable (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_bf16(flags: Optional[Set[str]] = None) -> bool:
    """Whether this CPU computes bfloat16 natively (``flags``: :func:`cpu_flags` by default)."""
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_precision(precision: str, device_type: str, flags: Optional[Set[str]] = None) -> Tuple[str, str]:
    """The precision to run (``fp32`` or ``bf16``) and why: ``auto`` is decided here, any other
    value is the user's.

    Example::

        assert resolve_precision("auto", "cpu", {"avx512f", "avx512_bf16"}) == (
            "bf16", "auto: this CPU has native bfloat16 (avx512_bf16)")
        assert resolve_precision("auto", "cpu", {"avx512f"})[0] == "fp32"
        assert resolve_precision("fp32", "cpu", {"amx_bf16"}) == ("fp32", "asked")
    """
    if precision != "auto":
        return precision, "asked"
    if device_type != "cpu":
        return "fp32", f"auto: fp32 on {device_type}"
    found = sorted(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))
    if found:
        return "bf16", f"auto: this CPU has native bfloat16 ({', '.join(found)})"
    return "fp32", "auto: this CPU has no native bfloat16 (AVX512-BF16, AMX, Arm BF16): emulated, it is slower"


def device_type(device: Optional[str]) -> str:
    """The device type a run's ``device`` setting means (none: cuda when present, as the launcher does)."""
    if device:
        return device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
